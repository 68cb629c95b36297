"""Exactly once and forward only, whatever happens to the objects around the operator.

Deletes, re-creates, late arrivals, crashes between two writes and a deposed leader that wakes up
late: each test builds one of these on the real control plane, with the operator as a process
(failpoints freeze it at a named point, see ``flag_scheduler.failpoints``), and checks what a user
sees: the flag's spec and annotations, the schedule's phase and conditions, Events, and the API
server's audit log of flag writes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import Kubectl
from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, parse_time, wait_for

LAST_SCHEDULE = "flagscheduler.dev/last-applied-schedule"
TOKEN = "flagscheduler.dev/fencing-token"
# Short, in the relations client-go requires: a frozen leader is replaced after about 3-4 s.
FAST_ELECTION = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}


def changes(cluster: Cluster, flag: str) -> list[dict]:
    """Successful writes of the flag's spec that carried a schedule's change (from the audit log).

    The audit log records metadata only, so a change is told apart from a fencing write by the
    flag's generation: each change bumps it by one.
    """
    return [p for p in cluster.audit("featureflags", "patch") if p["responseStatus"]["code"] == 200
            and p["objectRef"]["name"] == flag]


def applied_condition(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Applied")


def patch_flag(cluster: Cluster, name: str, spec: dict) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, "featureflags", name, {"spec": spec})


def delete_schedule(cluster: Cluster, name: str) -> None:
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules", name)
    wait_for(lambda: name not in {s["metadata"]["name"] for s in cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, "flagschedules")["items"]}, timeout=10, what=f"{name} deleted")


# 1. A flag never moves backwards.


def test_an_older_schedule_is_superseded_and_the_flag_untouched(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.flag("fwd", enabled=False, rollout=0)
    due = in_seconds(2)
    cluster.schedule("nine", "fwd", due, {"enabled": True, "rolloutPercentage": 50})
    cluster.wait_phase("nine", "Applied", timeout=20)
    # Created after "nine" landed, but for an hour earlier: applying it would move the flag back.
    cluster.schedule("eight", "fwd", due - timedelta(hours=1), {"rolloutPercentage": 10})
    status = cluster.wait_phase("eight", "Superseded", timeout=20)
    cond = applied_condition(status)
    assert cond["status"] == "False" and cond["reason"] == "Superseded" and "nine" in cond["message"]
    assert "nine" in cluster.wait_event("eight", "Superseded", "Warning")["message"]
    flag = cluster.get_flag("fwd")
    assert flag["spec"] == {"enabled": True, "rolloutPercentage": 50}
    assert flag["metadata"]["annotations"][LAST_SCHEDULE] == "nine"
    assert len(changes(cluster, "fwd")) == 1


def test_a_recreated_schedule_that_already_landed_does_not_land_again(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.flag("gitops", enabled=False, rollout=0)
    due = in_seconds(2)
    cluster.schedule("go-live", "gitops", due, {"enabled": True, "rolloutPercentage": 25})
    cluster.wait_phase("go-live", "Applied", timeout=20)
    patch_flag(cluster, "gitops", {"rolloutPercentage": 70})  # a person turns it up by hand later
    # Argo CD re-creates the schedule it finds missing: same name, same spec, a new uid.
    delete_schedule(cluster, "go-live")
    cluster.schedule("go-live", "gitops", due, {"enabled": True, "rolloutPercentage": 25})
    status = cluster.wait_phase("go-live", "Superseded", timeout=20)
    assert "go-live" in applied_condition(status)["message"]
    assert cluster.get_flag("gitops")["spec"] == {"enabled": True, "rolloutPercentage": 70}
    assert len(changes(cluster, "gitops")) == 2  # the schedule's change and the person's, nothing more


# 2. Terminal phases tell the truth.


@pytest.mark.long
@pytest.mark.parametrize("late_outcome", ["Cancelled", "Missed"])
def test_a_change_that_landed_is_reported_applied_never_cancelled_or_missed(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], late_outcome: str
) -> None:
    crashing = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.after-flag-patch", log_name="crashing.log",
                              FLAG_SCHEDULER_IDENTITY="crashing", **FAST_ELECTION)  # the next one takes over in ~3 s
    cluster.flag("truth", enabled=False)
    due = in_seconds(2)
    deadline = {"startingDeadlineSeconds": 1} if late_outcome == "Missed" else {}
    cluster.schedule("landed", "truth", due, {"enabled": True}, **deadline)
    crashing.wait_log("failpoint.stopped", timeout=20)
    crashing.kill()  # the change is on the flag; the schedule's status was never written
    assert cluster.get_flag("truth")["spec"]["enabled"] is True
    pending = cluster.status("landed")  # the operator's claim, and no outcome written
    assert (pending["phase"], pending.get("claimedBy"), pending.get("appliedAt")) == ("Pending", "crashing", None)
    if late_outcome == "Cancelled":
        cluster.patch_schedule("landed", {"cancelled": True})
    else:
        wait_for(lambda: datetime.now(UTC) > due + timedelta(seconds=2), timeout=10, what="the deadline to pass")
    start_operator(**FAST_ELECTION)
    status = cluster.wait_phase("landed", "Applied", timeout=20)
    assert applied_condition(status)["status"] == "True"
    assert len(changes(cluster, "truth")) == 1


# 3. A deposed leader's in-flight PATCH cannot land late.


@pytest.mark.parametrize("meanwhile", ["cancelled, the next leader started after", "deleted, seen by a warm follower"])
def test_a_leader_frozen_before_its_patch_cannot_land_it_after_losing_the_lease(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path, meanwhile: str
) -> None:
    """Each case rests on one fence path alone: the fence before an untouched phase (a replica that
    starts after the cancel knows of no suspect), or the fence of a suspect flag on takeover (a
    deleted schedule is never settled)."""
    lease = {"FLAG_SCHEDULER_LEASE_NAMESPACE": "flag-scheduler-system",
             "FLAG_SCHEDULER_LEASE_NAME": f"fence-{cluster.ns}", **FAST_ELECTION}
    first = start_operator(operator_kubeconfig, "first.log", FLAG_SCHEDULER_IDENTITY="first",
                           FLAG_SCHEDULER_FAILPOINTS="apply.before-flag-patch", **lease)
    first.wait_log("leader.acquired", timeout=20)
    start_second = lambda: start_operator(operator_kubeconfig, "second.log",  # noqa: E731
                                          FLAG_SCHEDULER_IDENTITY="second", **lease)
    second = None if meanwhile.startswith("cancelled") else start_second()
    cluster.flag("fenced", enabled=False)
    cluster.schedule("risky", "fenced", in_seconds(2), {"enabled": True})
    stopped = first.wait_log("failpoint.stopped", timeout=20)
    # While the first leader is frozen between its last check and its PATCH, the schedule is
    # cancelled (or deleted) and the second replica takes the Lease over.
    if second is None:
        cluster.patch_schedule("risky", {"cancelled": True})
        second = start_second()
        second.wait_log("leader.acquired", timeout=20)
        cluster.wait_phase("risky", "Cancelled", timeout=20)
    else:
        delete_schedule(cluster, "risky")
        second.wait_log("leader.acquired", timeout=20)
        wait_for(lambda: (cluster.get_flag("fenced")["metadata"].get("annotations") or {}).get(TOKEN),
                 timeout=20, what="the new leader to fence the flag")
    resumed_at = len(first.log_lines())
    first.send(signal.SIGCONT)
    ended = ("flag.stand_down", "schedule.applied", "flag.error")
    wait_for(lambda: cluster.get_flag("fenced")["spec"]["enabled"]
             or any(line.get("event") in ended for line in first.log_lines()[resumed_at:]),
             timeout=20, what="the deposed leader to stand down (or its PATCH to land)")
    flag = cluster.get_flag("fenced")
    assert flag["spec"]["enabled"] is False, f"the deposed leader's PATCH landed late (froze at {stopped})"
    assert LAST_SCHEDULE not in (flag["metadata"].get("annotations") or {})
    if meanwhile.startswith("cancelled"):
        assert cluster.status("risky")["phase"] == "Cancelled"


# 4. Identity is the uid. 5. A deleted schedule is never applied.


def test_a_schedule_deleted_while_its_apply_is_under_way_is_never_applied(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    op = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.start")
    cluster.flag("ghost", enabled=False, rollout=0)
    cluster.schedule("doomed", "ghost", in_seconds(2), {"enabled": True})
    op.wait_log("failpoint.stopped", timeout=20)
    delete_schedule(cluster, "doomed")  # while the operator is frozen with the schedule in hand
    op.send(signal.SIGCONT)
    # A later schedule of the same flag runs after the frozen work has finished (one task per flag).
    cluster.schedule("after", "ghost", in_seconds(1), {"rolloutPercentage": 40})
    cluster.wait_phase("after", "Applied", timeout=20)
    assert cluster.get_flag("ghost")["spec"] == {"enabled": False, "rolloutPercentage": 40}
    assert len(changes(cluster, "ghost")) == 1


def test_a_schedule_recreated_under_the_same_name_is_its_own_schedule(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    op = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.start")
    cluster.flag("renamed", enabled=False, rollout=0)
    cluster.schedule("same-name", "renamed", in_seconds(2), {"enabled": True})
    op.wait_log("failpoint.stopped", timeout=20)
    delete_schedule(cluster, "same-name")
    later = in_seconds(4)
    recreated = cluster.schedule("same-name", "renamed", later, {"rolloutPercentage": 60})
    op.send(signal.SIGCONT)
    status = cluster.wait_phase("same-name", "Applied", timeout=20)
    # The new object's change, at its own time; the old object's change never.
    assert cluster.get_flag("renamed")["spec"] == {"enabled": False, "rolloutPercentage": 60}
    assert parse_time(status["appliedAt"]) >= parse_time(recreated["spec"]["scheduledAt"])
    assert len(changes(cluster, "renamed")) == 1


def test_a_recreated_flag_keeps_its_new_schedules(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("phoenix", enabled=False)
    cluster.schedule("old", "phoenix", in_seconds(3600), {"enabled": True})
    wait_for(lambda: cluster.get_schedule("old")["metadata"].get("ownerReferences"), timeout=10, what="owner")
    kubectl("delete", "featureflag", "phoenix", "-n", cluster.ns, "--wait=false")
    new_uid = cluster.flag("phoenix", enabled=False)["metadata"]["uid"]
    cluster.schedule("new", "phoenix", in_seconds(3), {"enabled": True})
    cluster.wait_phase("new", "Applied", timeout=20)
    owners = cluster.get_schedule("new")["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [new_uid]
    wait_for(lambda: cluster.schedule_gone("old"),
             timeout=30, what="the old flag's schedule to be garbage-collected")
    assert cluster.get_schedule("new")["status"]["phase"] == "Applied"  # still there


# 6. Three writes at the due time.


def test_an_applied_schedule_costs_three_writes_at_its_due_time(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("cheap", enabled=False)
    due = in_seconds(3)
    cluster.schedule("frugal", "cheap", due, {"enabled": True})
    status = cluster.wait_phase("frugal", "Applied", timeout=20)
    cluster.wait_event("frugal", "Applied", "Normal")
    at_due = [e for kind in ("featureflags", "featureflags/status", "flagschedules", "flagschedules/status")
              for e in cluster.audit(kind) if parse_time(e["requestReceivedTimestamp"]) >= due]
    written = sorted(e["objectRef"]["resource"] + ("/status" if e["objectRef"].get("subresource") else "")
                     for e in at_due)
    assert written == ["featureflags", "flagschedules/status"]  # plus the one Normal Event
    assert len([e for e in cluster.events("frugal") if e["reason"] == "Applied"]) == 1
    flag = cluster.get_flag("cheap")
    notes = flag["metadata"]["annotations"]
    assert notes[LAST_SCHEDULE] == "frugal"
    assert notes["flagscheduler.dev/last-applied-at"] == status["appliedAt"]
    scheduled_at = cluster.get_schedule("frugal")["spec"]["scheduledAt"]
    assert parse_time(notes["flagscheduler.dev/last-applied-scheduled-at"]) == parse_time(scheduled_at)
    row = kubectl("get", "ff", "cheap", "-n", cluster.ns).stdout.splitlines()[1].split()
    assert row[3] == "frugal"  # the LAST-SCHEDULE column
