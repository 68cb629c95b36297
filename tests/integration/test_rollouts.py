"""FlagRollout on the real control plane: a ramp in steps, pause and resume, approval, abort, one per flag, drift.

Each test runs its own operator (as the shipped ServiceAccount, so the RBAC and admission policies
the rollout controller needs are the real ones) in its own namespace. Holds are a few seconds;
every wait has a deadline. What is asserted is what a user reads: the rollout's status and
conditions, its schedules (``kubectl get fs -l flagscheduler.dev/rollout=...``), the flag's spec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import Kubectl
from flag_scheduler.rollout.durations import parse_duration
from operator_harness import Cluster, OperatorProcess, parse_time, wait_for

ROLLOUTS = "flagrollouts"
GROUP, VERSION = "flagscheduler.dev", "v1alpha1"


class Rollouts:
    """FlagRollouts and their schedules in the test's namespace, as the admin."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.custom, self.ns = cluster.custom, cluster.ns

    def create(self, name: str, flag: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagRollout", "metadata": {"name": name},
                "spec": {"flagRef": {"name": flag}, "steps": steps, **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, ROLLOUTS, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, ROLLOUTS, name)

    def patch(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, ROLLOUTS, name, {"spec": spec})

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait(self, name: str, phase: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """Wait until the rollout's phase is ``phase`` (and the status has ``fields``); return the status."""
        def ready() -> dict[str, Any] | None:
            s = self.status(name)
            return s if s.get("phase") == phase and all(s.get(k) == v for k, v in fields.items()) else None
        return wait_for(ready, timeout, what=f"rollout {name} phase {phase} {fields or ''}")

    def schedules(self, name: str) -> dict[str, dict[str, Any]]:
        """The rollout's schedules by name (its label)."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, "flagschedules", label_selector=f"flagscheduler.dev/rollout={name}")["items"]
        return {s["metadata"]["name"]: s for s in items}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next(c for c in self.status(name)["conditions"] if c["type"] == type_)


@pytest.fixture
def rollouts(cluster: Cluster) -> Rollouts:
    return Rollouts(cluster)


@pytest.fixture
def operator(
    start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path, namespace: str
) -> Callable[..., OperatorProcess]:
    """Start an operator as the shipped ServiceAccount (its RBAC, the shipped admission policies).

    Its Lease lives where the ServiceAccount may hold one, under a name of this test's own; a short
    lease so that a replica started after a kill takes over within seconds.
    """
    lease = {"FLAG_SCHEDULER_LEASE_NAMESPACE": "flag-scheduler-system", "FLAG_SCHEDULER_LEASE_NAME": f"ro-{namespace}",
             "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3", "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2.5",
             "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1"}
    return lambda log_name="operator.log", **env: start_operator(operator_kubeconfig, log_name, **{**lease, **env})


RAMP = [
    {"name": "canary", "updates": {"enabled": True, "rolloutPercentage": 10}, "hold": "2s"},
    {"name": "half", "updates": {"rolloutPercentage": 50}, "hold": "2s"},
    {"name": "full", "updates": {"rolloutPercentage": 100}},
]


def test_three_steps_apply_in_order_each_due_its_hold_after_the_previous_appliedAt(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    operator()
    cluster.flag("checkout-v2", enabled=False, rollout=0)
    rollouts.create("checkout-v2", "checkout-v2", RAMP)
    status = rollouts.wait("checkout-v2", "Completed")

    assert cluster.get_flag("checkout-v2")["spec"] == {"enabled": True, "rolloutPercentage": 100}
    assert status["currentStep"] == "3/3 full" and status["stepsApplied"] == 3
    assert status["baseline"] == {"enabled": False, "rolloutPercentage": 0}
    assert [s["name"] for s in status["steps"]] == ["canary", "half", "full"]
    names = [s["schedule"] for s in status["steps"]]
    assert names == ["checkout-v2.1-canary", "checkout-v2.2-half", "checkout-v2.3-full"]
    schedules = rollouts.schedules("checkout-v2")
    assert sorted(schedules) == sorted(names)  # one schedule per step, no more
    applied = [parse_time(schedules[n]["status"]["appliedAt"]) for n in names]
    assert applied == sorted(applied)
    for i in (1, 2):  # due exactly its hold after the previous step landed, applied no earlier
        due = parse_time(schedules[names[i]]["spec"]["scheduledAt"])
        assert due == applied[i - 1] + timedelta(seconds=2)
        assert applied[i] >= due
    for name in names:
        s = schedules[name]
        owners = {(o["kind"], o.get("controller", False)) for o in s["metadata"]["ownerReferences"]}
        assert ("FlagRollout", True) in owners  # deleting the rollout deletes its schedules
        assert s["metadata"]["labels"]["flagscheduler.dev/rollout"] == "checkout-v2"
    rollout = rollouts.get("checkout-v2")
    assert [(o["kind"], o["name"]) for o in rollout["metadata"]["ownerReferences"]] == [("FeatureFlag", "checkout-v2")]
    completed = rollouts.condition("checkout-v2", "Completed")
    assert (completed["status"], completed["reason"]) == ("True", "AllStepsApplied")
    kubectl("wait", "-n", cluster.ns, "flagrollout/checkout-v2", "--for=condition=Completed", "--timeout=10s")
    table = kubectl("get", "flagrollouts", "-n", cluster.ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "FLAG", "STEP", "PHASE", "NEXT-STEP-AT", "AGE"]
    assert table[1].split()[:5] == ["checkout-v2", "checkout-v2", "3/3", "full", "Completed"]
    # kubectl describe tells the story: the first step scheduled, each step landing, the end.
    cluster.wait_event("checkout-v2", "AllStepsApplied", "Normal")
    told = [e for e in cluster.events("checkout-v2") if e["reason"] in ("StepScheduled", "StepApplied")]
    assert [e["type"] for e in told] == ["Normal"] * 3
    assert sorted(e["reason"] for e in told) == ["StepApplied", "StepApplied", "StepScheduled"]
    landed = next(e["message"] for e in told if "step 1/3 canary applied" in e["message"])
    assert "'checkout-v2.1-canary'" in landed and "'checkout-v2.2-half' created" in landed


def test_pause_cancels_the_pending_step_and_resume_keeps_the_remaining_hold(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess]
) -> None:
    operator()
    cluster.flag("f", enabled=False, rollout=0)
    steps = [{**RAMP[0], "hold": "6s"}, {**RAMP[2]}]
    rollouts.create("ramp", "f", steps)
    progressing = wait_for(lambda: (s := rollouts.status("ramp")).get("stepsApplied") == 1 and s.get("nextStepAt")
                           and s, 30, what="the canary applied")
    due = parse_time(progressing["nextStepAt"])
    rollouts.patch("ramp", {"paused": True})
    paused = rollouts.wait("ramp", "Paused")
    assert "spec.paused" in cluster.wait_event("ramp", "PausedBySpec", "Normal")["message"]
    remaining = parse_duration(paused["remainingHold"])
    assert timedelta(0) < remaining <= timedelta(seconds=6)
    assert "nextStepAt" not in paused  # no next step while paused
    assert "spec.paused" in paused["waitingFor"]
    wait_for(lambda: rollouts.schedules("ramp")["ramp.2-full"].get("status", {}).get("phase") == "Cancelled",
             10, what="the pending step's schedule cancelled")
    wait_for(lambda: datetime.now(UTC) > due + timedelta(seconds=1), 15, what="the original due time to pass")
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 10  # the paused step did not run
    assert rollouts.status("ramp")["remainingHold"] == paused["remainingHold"]  # the hold did not run down

    before = datetime.now(UTC)
    rollouts.patch("ramp", {"paused": False})
    done = rollouts.wait("ramp", "Completed")
    resumed = rollouts.schedules("ramp")["ramp.2-full.r1"]
    new_due = parse_time(resumed["spec"]["scheduledAt"])
    assert before + remaining - timedelta(milliseconds=5) <= new_due <= datetime.now(UTC) + remaining
    assert done["steps"][1] | {"schedule": "ramp.2-full.r1", "attempt": 1} == done["steps"][1]
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 100


def test_a_step_that_requires_approval_gets_no_schedule_until_approved(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess]
) -> None:
    operator()
    cluster.flag("f", enabled=False, rollout=0)
    rollouts.create("gate", "f", [{**RAMP[0], "hold": "1s"}, {**RAMP[2], "requiresApproval": True}])
    waiting = rollouts.wait("gate", "AwaitingApproval")
    assert "add 'full' to spec.approvedSteps" in waiting["waitingFor"]
    assert rollouts.condition("gate", "AwaitingApproval")["status"] == "True"
    assert list(rollouts.schedules("gate")) == ["gate.1-canary"]
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 10
    rollouts.patch("gate", {"approvedSteps": ["full"]})
    rollouts.wait("gate", "Completed")
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 100


def test_abort_cancels_the_pending_step_and_restores_the_baseline(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess]
) -> None:
    operator()
    cluster.flag("f", enabled=False, rollout=0, description="before")
    rollouts.create("ab", "f", [{**RAMP[0], "hold": "1h"}, RAMP[2]])
    rollouts.wait("ab", "Progressing", stepsApplied=1)
    assert cluster.get_flag("f")["spec"] == {"enabled": True, "rolloutPercentage": 10, "description": "before"}
    rollouts.patch("ab", {"abort": True})
    status = wait_for(lambda: (s := rollouts.status("ab")).get("restore", {}).get("phase") == "Applied" and s, 30,
                      what="the baseline restored")
    assert status["phase"] == "Aborted" and rollouts.condition("ab", "Aborted")["reason"] == "BaselineRestore"
    assert "spec.abort is true" in cluster.wait_event("ab", "Aborting", "Warning")["message"]
    assert cluster.get_flag("f")["spec"] == {"enabled": False, "rolloutPercentage": 0, "description": "before"}
    schedules = rollouts.schedules("ab")
    assert schedules["ab.2-full"]["status"]["phase"] == "Cancelled"
    assert schedules["ab.restore"]["spec"]["updates"] == {"enabled": False, "rolloutPercentage": 0}


def test_a_second_rollout_of_the_same_flag_is_refused_with_a_status_naming_the_first(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess]
) -> None:
    operator()
    cluster.flag("f", enabled=False, rollout=0)
    rollouts.create("first", "f", [{**RAMP[0], "hold": "1h"}, RAMP[2]])
    rollouts.wait("first", "Progressing", stepsApplied=1)
    rollouts.create("second", "f", [{"name": "all", "updates": {"rolloutPercentage": 100}}])
    status = rollouts.wait("second", "Failed")
    failed = rollouts.condition("second", "Failed")
    assert failed["reason"] == "AnotherRolloutActive"
    assert "FlagRollout 'first' is already rolling out FeatureFlag 'f'" in failed["message"]
    assert status.get("steps", []) == [] and rollouts.schedules("second") == {}
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 10


def test_an_out_of_band_flag_edit_pauses_the_rollout_with_flag_drifted(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    operator()
    cluster.flag("f", enabled=False, rollout=0)
    rollouts.create("dr", "f", [{**RAMP[0], "hold": "1h"}, RAMP[2]])
    rollouts.wait("dr", "Progressing", stepsApplied=1)
    kubectl("patch", "ff", "f", "-n", cluster.ns, "--type=merge", "-p", json.dumps({"spec": {"rolloutPercentage": 77}}))
    rollouts.wait("dr", "Paused")
    drifted = rollouts.condition("dr", "FlagDrifted")
    assert drifted["status"] == "True" and "rolloutPercentage=77 (rollout set 10)" in drifted["message"]
    wait_for(lambda: rollouts.schedules("dr")["dr.2-full"].get("status", {}).get("phase") == "Cancelled", 10,
             what="the pending step cancelled")
    assert cluster.get_flag("f")["spec"]["rolloutPercentage"] == 77  # the rollout does not fight the user
    kubectl("patch", "ff", "f", "-n", cluster.ns, "--type=merge", "-p", json.dumps({"spec": {"rolloutPercentage": 10}}))
    rollouts.wait("dr", "Progressing")
    assert rollouts.condition("dr", "FlagDrifted")["status"] == "False"
    # The status names the step's new schedule before it is created (crash safety: see the
    # failpoint rollout.before-create), so the schedule may follow the phase by a moment.
    wait_for(lambda: "dr.2-full.r1" in rollouts.schedules("dr"), 10, what="the step's schedule made again")


@pytest.mark.parametrize("point", ["rollout.before-create", "rollout.after-create"])
def test_killed_between_steps_or_while_creating_one_resumes_without_duplicate_or_skipped_step(
    cluster: Cluster, rollouts: Rollouts, operator: Callable[..., OperatorProcess], point: str
) -> None:
    crashing = operator(FLAG_SCHEDULER_FAILPOINTS=point, log_name="crashing.log")
    cluster.flag("f", enabled=False, rollout=0)
    rollouts.create("cr", "f", RAMP)
    crashing.wait_log("failpoint.stopped", timeout=30)
    crashing.kill()  # frozen right before (or after) creating the first step's schedule
    operator(log_name="second.log")
    status = rollouts.wait("cr", "Completed", timeout=90)
    schedules = rollouts.schedules("cr")
    assert sorted(schedules) == ["cr.1-canary", "cr.2-half", "cr.3-full"]
    assert all(s["status"]["phase"] == "Applied" for s in schedules.values())
    assert [s["attempt"] for s in status["steps"]] == [0, 0, 0]
    assert cluster.get_flag("f")["spec"] == {"enabled": True, "rolloutPercentage": 100}
    # Each step's change reached the flag once: three spec changes after the create, by these three schedules.
    flag = cluster.get_flag("f")
    assert flag["metadata"]["generation"] == 4
    # The last of them set both fields the ramp sets (the marker's per-field record).
    setters = json.loads(flag["metadata"]["annotations"]["flagscheduler.dev/field-setters"])
    assert {field: setter["name"] for field, setter in setters.items()} == {"enabled": "cr.1-canary",
                                                                           "rolloutPercentage": "cr.3-full"}
