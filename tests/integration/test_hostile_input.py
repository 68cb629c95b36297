"""No tenant can stop the scheduler: hostile values, unreadable objects, refused status writes, history.

Every test runs the operator as a process against the real control plane. Values the time logic
cannot handle are refused by the API server, naming the field; objects stored before the CRD
refused them (an upgrade) become ``Failed`` with the reason ``InvalidSpec`` and harm no other flag.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from conftest import REPO, Kubectl
from integration.conftest import DENY_POLICY
from controlplane import free_port
from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, parse_time, rfc3339, wait_for

SPEC_PATH = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties"


def schedule_doc(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule", "metadata": {"name": name},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": "2027-01-01T09:00:00Z", "updates": {"enabled": True},
                 **spec},
    }
    return json.dumps(body)


REFUSED = [
    ("year-zero", {"scheduledAt": "0000-01-01T00:00:00Z"}, "spec.scheduledAt"),
    ("offset-99h", {"scheduledAt": "2026-01-01T00:00:00+99:00"}, "spec.scheduledAt"),
    ("after-2200", {"scheduledAt": "2300-01-01T00:00:00Z"}, "spec.scheduledAt"),
    ("before-2000", {"scheduledAt": "1999-12-31T23:59:59Z"}, "spec.scheduledAt"),
    ("too-long", {"scheduledAt": "2026-01-01T00:00:00." + "1" * 60 + "Z"}, "spec.scheduledAt"),
    ("deadline-overflow", {"startingDeadlineSeconds": 1_000_000_000_000}, "spec.startingDeadlineSeconds"),
    ("ttl-negative", {"ttlSecondsAfterFinished": -1}, "spec.ttlSecondsAfterFinished"),
    ("ttl-over-int32", {"ttlSecondsAfterFinished": 2**31}, "spec.ttlSecondsAfterFinished"),
]


@pytest.mark.parametrize(("spec", "field"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_values_the_operator_cannot_handle_are_refused_naming_the_field(
    kubectl: Kubectl, crds: None, namespace: str, spec: dict[str, Any], field: str
) -> None:
    result = kubectl("apply", "-n", namespace, "-f", "-", input=schedule_doc("hostile", **spec), check=False)
    assert result.returncode != 0, f"accepted: {spec}"
    assert field in result.stderr, result.stderr


def test_the_edges_of_what_is_admitted_are_accepted(kubectl: Kubectl, crds: None, namespace: str) -> None:
    for name, spec in [("edge-offset", {"scheduledAt": "2026-01-01T00:00:00+23:59"}),
                       ("edge-nanos", {"scheduledAt": "2199-12-31T23:59:59.999999999Z"}),
                       ("edge-deadline", {"startingDeadlineSeconds": 31_536_000, "ttlSecondsAfterFinished": 0})]:
        kubectl("apply", "-n", namespace, "-f", "-", input=schedule_doc(name, **spec))


@pytest.fixture
def legacy_crd(kubectl: Kubectl) -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
    """A window in which the FlagSchedule CRD lacks today's bounds, as before an upgrade.

    Objects created in the window stay stored after the bounds come back: what a cluster upgraded
    from an older CRD holds.
    """
    crd = "crd/flagschedules.flagscheduler.dev"

    @contextlib.contextmanager
    def window() -> Iterator[None]:
        patch = [{"op": "remove", "path": f"{SPEC_PATH}/scheduledAt/x-kubernetes-validations"},
                 {"op": "remove", "path": f"{SPEC_PATH}/scheduledAt/pattern"},
                 {"op": "remove", "path": f"{SPEC_PATH}/startingDeadlineSeconds/maximum"}]
        kubectl("patch", crd, "--type=json", "-p", json.dumps(patch))
        probe = schedule_doc("probe", scheduledAt="0000-01-01T00:00:00Z")
        try:
            wait_for(lambda: kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", input=probe,
                                     check=False).returncode == 0, timeout=30, what="the old CRD to be served")
            yield
        finally:
            kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
            wait_for(lambda: kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-", input=probe,
                                     check=False).returncode != 0, timeout=30, what="today's CRD to be served")

    yield window


def applied_reason(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Applied")


@pytest.mark.exclusive  # lifts the CRD's bounds for a moment: every other test would see them gone
def test_stored_schedules_the_operator_cannot_read_fail_as_invalid_spec_and_harm_no_other_flag(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl, legacy_crd: Callable
) -> None:
    cluster.flag("victim", enabled=False)
    cluster.flag("bystander", enabled=False)
    with legacy_crd():
        kubectl("apply", "-n", cluster.ns, "-f", "-", input=json.dumps({
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule", "metadata": {"name": "ancient"},
            "spec": {"flagRef": {"name": "victim"}, "scheduledAt": "0000-01-01T00:00:00Z",
                     "updates": {"enabled": True}}}))
        cluster.schedule("overflow", "victim", in_seconds(-60), {"enabled": True},
                         startingDeadlineSeconds=1_000_000_000_000)
    op = start_operator()
    for name, field in (("ancient", "scheduledAt"), ("overflow", "startingDeadlineSeconds")):
        status = cluster.wait_phase(name, "Failed", timeout=20)
        cond = applied_reason(status)
        assert cond["reason"] == "InvalidSpec" and field in cond["message"], cond
        assert field in cluster.wait_event(name, "InvalidSpec", "Warning")["message"]
    assert cluster.get_flag("victim")["spec"]["enabled"] is False
    cluster.schedule("fine", "bystander", in_seconds(2), {"enabled": True})
    cluster.schedule("after", "victim", in_seconds(2), {"rolloutPercentage": 30})
    cluster.wait_phase("fine", "Applied", timeout=20)
    cluster.wait_phase("after", "Applied", timeout=20)
    # And after a restart (a new leader reading them from a LIST) they stay harmless.
    op.stop()
    start_operator()
    cluster.schedule("later", "victim", in_seconds(2), {"rolloutPercentage": 60})
    cluster.wait_phase("later", "Applied", timeout=20)
    assert cluster.get_flag("victim")["spec"] == {"enabled": False, "rolloutPercentage": 60}




def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_refused_status_write_backs_off_and_is_visible(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    policy = f"deny-status-{cluster.ns}"
    kubectl("apply", "-f", "-", input=DENY_POLICY.format(
        name=policy, ns=cluster.ns, resources='["flagschedules/status"]', flag="blocked", when="true",
        message="status writes of blocked are refused by policy"))
    try:
        cluster.flag("stuck", enabled=False)
        cluster.flag("free", enabled=False)
        cluster.schedule("blocked", "stuck", in_seconds(3600), {"enabled": True})
        # The policy takes effect asynchronously: probe with a dry run until it refuses.
        wait_for(lambda: "refused by policy" in kubectl(
            "patch", "fs", "blocked", "-n", cluster.ns, "--subresource=status", "--type=merge", "--dry-run=server",
            "-p", '{"status":{"claimedBy":"probe"}}', check=False).stderr, timeout=30, what="the policy")
        port = free_port()
        op = start_operator(FLAG_SCHEDULER_METRICS_PORT=str(port))
        event = cluster.wait_event("blocked", "StatusWriteFailed", "Warning", timeout=30)
        assert "refused by policy" in event["message"]
        failures = wait_for(lambda: (f := [l for l in op.log_lines() if l.get("event") == "schedule.status_failed"])
                            and len(f) >= 3 and f, timeout=60, what="three failed status writes")
        delays = [(parse_time(l["next_attempt_at"]) - parse_time(l["timestamp"].replace("+00:00", "Z")))
                  .total_seconds() for l in failures[:3]]
        assert delays[1] > 1.5 * delays[0] and delays[2] > 1.5 * delays[1], delays  # exponential, not a loop
        assert metric(port, 'flag_scheduler_errors_total{stage="status"}') >= 3
        cluster.schedule("other", "free", in_seconds(1), {"enabled": True})
        cluster.wait_phase("other", "Applied", timeout=20)  # the others go on meanwhile
    finally:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy, "--ignore-not-found")
    wait_for(lambda: cluster.status("blocked").get("claimedBy"), timeout=60, what="the claim once writes pass")


def test_ttl_deletes_finished_schedules_and_the_default_keeps_the_rest(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    op = start_operator(FLAG_SCHEDULER_FINISHED_TTL_SECONDS="3600")
    cluster.flag("ttl", enabled=False)
    cluster.schedule("short-lived", "ttl", in_seconds(1), {"enabled": True}, ttlSecondsAfterFinished=2)
    cluster.schedule("kept", "ttl", in_seconds(2), {"rolloutPercentage": 10})
    finished = parse_time(cluster.wait_phase("short-lived", "Applied", timeout=20)["finishedAt"])
    wait_for(lambda: cluster.schedule_gone("short-lived"),
             timeout=30, what="short-lived deleted after its TTL")
    deleted = op.wait_log("schedule.deleted_after_ttl")  # logged once the DELETE has returned
    assert parse_time(deleted["timestamp"].replace("+00:00", "Z")) >= finished + timedelta(seconds=2)
    assert cluster.wait_phase("kept", "Applied", timeout=20)["phase"] == "Applied"
    # A restarted operator finds finished schedules in its LISTs (the whole one after leading) and
    # deletes them on time too.
    op.stop()
    cluster.schedule("expired-while-down", "ttl", in_seconds(-30), {"enabled": True}, ttlSecondsAfterFinished=1)
    start_operator()
    cluster.wait_phase("expired-while-down", "Superseded", timeout=20)  # older than "kept"
    wait_for(lambda: cluster.schedule_gone("expired-while-down"),
             timeout=30, what="expired-while-down deleted")
    assert cluster.get_schedule("kept")["status"]["phase"] == "Applied"


def test_an_operator_restarted_with_a_long_history_leads_after_its_unfinished_schedules(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    # The start-up LIST asks the API server for the unfinished schedules only (the CRD's
    # selectableFields has status.phase); the finished ones are listed after, then the watch.
    history, pending = 600, 3
    now = rfc3339(in_seconds(-3600))

    def finished(i: int) -> None:
        name = f"old-{i:04d}"
        cluster.schedule(name, f"flag-{i % 20}", in_seconds(-7200 + i), {"enabled": True})
        cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.ns, "flagschedules", name, {
            "status": {"phase": "Applied", "appliedAt": now, "finishedAt": now, "retryCount": 0, "conditions": [
                {"type": "Applied", "status": "True", "reason": "Applied", "lastTransitionTime": now}]}})

    with ThreadPoolExecutor(4) as pool:  # 1,200 requests: a few at once
        list(pool.map(finished, range(history)))
    for i in range(pending):
        cluster.schedule(f"later-{i}", "flag-1", in_seconds(3600 + i), {"rolloutPercentage": i})
    cluster.flag("flag-0", enabled=False)
    op = start_operator()
    first = next(line for line in op.log_lines() if line.get("event") == "informer.listed"
                 and line.get("kind") == "flagschedules")
    assert first["objects"] == pending and first["selector"].startswith("status.phase!=")
    complete = op.wait_log("book.complete")
    assert complete["finished_schedules"] == history and complete["live_schedules"] >= pending
    cluster.schedule("new", "flag-0", in_seconds(2), {"enabled": True})
    cluster.wait_phase("new", "Applied", timeout=20)
