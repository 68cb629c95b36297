"""The operator against the real control plane: on time, cancel, order, catch-up, garbage collection, metrics.

Each test runs its own operator process watching only the test's namespace, so tests never share
state. Schedules are set a few seconds ahead and waited for with generous deadlines, never fixed
sleeps; no test asserts how fast something happened (``make bench`` measures that). Retries,
backoff and order under failure are in ``test_retries.py``; isolation under stalled writes in
``test_isolation.py``.
"""

from __future__ import annotations

import json

import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Kubectl
from controlplane import ControlPlane, free_port
from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, rfc3339, scrape_metrics, wait_for

UID_ANNOTATION = "flagscheduler.dev/last-applied-schedule-uid"


def first_sight(cluster: Cluster, name: str) -> dict:
    """Wait for what only the operator writes on first sight: the claim and the ownerReference."""
    return wait_for(
        lambda: (s := cluster.get_schedule(name)).get("status", {}).get("claimedBy")
        and s["metadata"].get("ownerReferences") and s,
        30, what=f"the operator's claim and ownerReference on {name}",
    )


def test_schedule_applied_on_time(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator()
    cluster.flag("checkout-v2", enabled=False, rollout=0)
    due = in_seconds(3)
    created = cluster.schedule("go-live", "checkout-v2", due, {"enabled": True, "rolloutPercentage": 25})
    seen = first_sight(cluster, "go-live")
    owner = seen["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("FeatureFlag", "checkout-v2")  # deleting the flag removes it

    status = cluster.wait_phase("go-live", "Applied", timeout=30)
    flag = cluster.get_flag("checkout-v2")
    assert flag["spec"] == {"enabled": True, "rolloutPercentage": 25}
    annotations = flag["metadata"]["annotations"]
    assert annotations["flagscheduler.dev/last-applied-schedule"] == "go-live"
    assert annotations[UID_ANNOTATION] == created["metadata"]["uid"]
    assert annotations["flagscheduler.dev/last-applied-at"] == status["appliedAt"]
    # Never early: appliedAt (milliseconds) against scheduledAt as stored (milliseconds), not the
    # microsecond ``due`` it was made from.
    assert parse_time(status["appliedAt"]) >= parse_time(created["spec"]["scheduledAt"])
    applied = next(c for c in status["conditions"] if c["type"] == "Applied")
    assert (applied["status"], applied["reason"], applied["observedGeneration"]) == ("True", "Applied", 1)
    assert status["observedGeneration"] == 1
    # The flag PATCH is made by our field manager (Argo CD ignores exactly these fields).
    managers = {m["manager"] for m in flag["metadata"]["managedFields"]}
    assert "flag-scheduler" in managers
    cluster.wait_event("go-live", "Applied", "Normal")
    # The operator's writes, from the API server's audit log: one flag PATCH for the schedule; on
    # the schedule, the ownerReference, the claim and the Applied status; no flag status; one Event.
    assert [e["responseStatus"]["code"] for e in cluster.audit("featureflags", "patch")] == [200]
    assert len(cluster.audit("flagschedules", "patch")) == 1
    # Writes that landed: a status write refused with 409 (a conflict, retried) changes nothing.
    landed = [e for e in cluster.audit("flagschedules/status", "patch") if e["responseStatus"]["code"] == 200]
    assert len(landed) == 2
    assert len(cluster.audit("featureflags/status", "patch")) == 0
    assert len(cluster.audit("events", "create")) == 1


def test_cancel_before_due(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator()
    cluster.flag("beta", enabled=False)
    cluster.schedule("later", "beta", in_seconds(4), {"enabled": True})
    cluster.patch_schedule("later", {"cancelled": True})
    status = cluster.wait_phase("later", "Cancelled", timeout=30)
    assert next(c for c in status["conditions"] if c["type"] == "Applied")["reason"] == "Cancelled"
    cluster.wait_event("later", "Cancelled", "Normal")
    # Past the due time, the flag is still untouched.
    wait_for(lambda: parse_time(cluster.get_schedule("later")["spec"]["scheduledAt"]) < in_seconds(-1), timeout=10)
    assert cluster.get_flag("beta")["spec"]["enabled"] is False
    assert cluster.status("later")["phase"] == "Cancelled"
    assert cluster.get_flag("beta")["metadata"]["generation"] == 1  # its spec never changed


def test_two_schedules_of_one_flag_apply_in_order(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.flag("ordered", enabled=False, rollout=0)
    at = in_seconds(3)
    # Same due time: ties go by name, so "a-first" then "b-second"; the flag ends with b's value.
    cluster.schedule("b-second", "ordered", at, {"rolloutPercentage": 50})
    cluster.schedule("a-first", "ordered", at, {"rolloutPercentage": 10, "enabled": True})
    first = cluster.wait_phase("a-first", "Applied", timeout=30)
    second = cluster.wait_phase("b-second", "Applied", timeout=30)
    assert parse_time(first["appliedAt"]) <= parse_time(second["appliedAt"])
    assert cluster.get_flag("ordered")["spec"] == {"enabled": True, "rolloutPercentage": 50}
    patches = cluster.audit("featureflags", "patch")
    assert [p["responseStatus"]["code"] for p in patches] == [200, 200]


def test_moving_a_pending_schedule_replans_it_at_once(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.flag("moved", enabled=False)
    cluster.schedule("next-hour", "moved", in_seconds(3600), {"enabled": True})
    first_sight(cluster, "next-hour")
    due = in_seconds(2)
    moved = cluster.patch_schedule("next-hour", {"scheduledAt": rfc3339(due),
                                                 "updates": {"enabled": True, "rolloutPercentage": 40}})
    # Applied long before the hour it was first planned for, and it is the moved spec that landed:
    # its values on the flag, its generation in the flag's record and in the status.
    status = cluster.wait_phase("next-hour", "Applied", timeout=30)
    flag = cluster.get_flag("moved")
    assert flag["spec"] == {"enabled": True, "rolloutPercentage": 40}
    landed = json.loads(flag["metadata"]["annotations"]["flagscheduler.dev/landed-awaiting-status"])
    assert landed[moved["metadata"]["uid"]]["generation"] == 2
    assert status["observedGeneration"] == 2
    assert next(c for c in status["conditions"] if c["type"] == "Applied")["observedGeneration"] == 2
    assert parse_time(status["appliedAt"]) >= parse_time(moved["spec"]["scheduledAt"])


def test_missing_flag_reports_then_fails(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator(FLAG_SCHEDULER_MAX_RETRIES="1")
    cluster.schedule("orphan", "no-such-flag", in_seconds(3600), {"enabled": True})
    status = wait_for(
        lambda: any(c["type"] == "FlagFound" and c["status"] == "False" for c in cluster.status("orphan").get(
            "conditions", [])) and cluster.status("orphan"),
        timeout=30, what="FlagFound=False",
    )
    assert status["phase"] == "Pending"  # an hour ahead: not yet attempted
    cluster.wait_event("orphan", "FlagNotFound", "Warning")
    cluster.patch_schedule("orphan", {"scheduledAt": rfc3339(in_seconds(0))})
    status = cluster.wait_phase("orphan", "Failed", timeout=30)
    assert "404" in status["lastError"] and "no-such-flag" in status["lastError"]
    assert status["retryCount"] == 1


def test_catch_up_after_downtime_and_missed_deadline(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("late", enabled=False, rollout=0)
    cluster.flag("strict", enabled=False)
    # The operator is down while these fall due.
    cluster.schedule("old-2", "late", in_seconds(-20), {"rolloutPercentage": 20})
    cluster.schedule("old-1", "late", in_seconds(-30), {"rolloutPercentage": 10, "enabled": True})
    cluster.schedule("too-late", "strict", in_seconds(-60), {"enabled": True}, startingDeadlineSeconds=10)
    start_operator()
    first = cluster.wait_phase("old-1", "Applied", timeout=30)
    second = cluster.wait_phase("old-2", "Applied", timeout=30)
    assert parse_time(first["appliedAt"]) <= parse_time(second["appliedAt"])
    assert cluster.get_flag("late")["spec"] == {"enabled": True, "rolloutPercentage": 20}
    missed = cluster.wait_phase("too-late", "Missed", timeout=30)
    assert "startingDeadlineSeconds" in next(c for c in missed["conditions"] if c["type"] == "Applied")["message"]
    cluster.wait_event("too-late", "Missed", "Warning")
    assert cluster.get_flag("strict")["spec"]["enabled"] is False


def test_deleting_flag_garbage_collects_schedules(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("doomed", enabled=False)
    cluster.schedule("far-future", "doomed", in_seconds(3600), {"enabled": True})
    first_sight(cluster, "far-future")
    kubectl("delete", "featureflag", "doomed", "-n", cluster.ns, "--timeout=20s")
    wait_for(
        lambda: cluster.schedule_gone("far-future"),
        timeout=30, what="the schedule to be garbage-collected",
    )


def test_kubectl_wait_for_applied(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("waited", enabled=False)
    cluster.schedule("soon", "waited", in_seconds(2), {"enabled": True})
    kubectl("wait", "--for=condition=Applied", "flagschedule/soon", "-n", cluster.ns, "--timeout=60s")
    out = kubectl("get", "fs", "-n", cluster.ns).stdout
    assert "Applied" in out and "waited" in out


def test_invalid_configuration_stops_with_the_variable_named(control_plane: ControlPlane, tmp_path: Path) -> None:
    op = OperatorProcess(control_plane.kubeconfig(), ["default"], tmp_path / "bad.log",
                         FLAG_SCHEDULER_MAX_RETRIES="lots")
    with pytest.raises(AssertionError, match="operator exited"):
        op.start(timeout=30)
    assert "FLAG_SCHEDULER_MAX_RETRIES" in (tmp_path / "bad.log").read_text()


def test_metrics_health_and_console_logs(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    metrics_port, health_port = free_port(), free_port()
    op = start_operator(
        FLAG_SCHEDULER_METRICS_PORT=str(metrics_port), FLAG_SCHEDULER_HEALTH_PORT=str(health_port),
        FLAG_SCHEDULER_LOG_FORMAT="console",
    )
    cluster.flag("observed", enabled=False)
    cluster.flag("strict", enabled=False)
    cluster.schedule("watched", "observed", in_seconds(2), {"enabled": True})
    cluster.schedule("later", "observed", in_seconds(3600), {"rolloutPercentage": 50})
    cluster.schedule("dropped", "strict", in_seconds(3600), {"enabled": True}, cancelled=True)
    cluster.schedule("too-late", "strict", in_seconds(-60), {"enabled": True}, startingDeadlineSeconds=10)
    cluster.schedule("orphan", "no-such-flag", in_seconds(1), {"enabled": True},
                     retry={"maxRetries": 1, "backoffSeconds": 1})
    for name, phase in (("watched", "Applied"), ("dropped", "Cancelled"), ("too-late", "Missed"),
                        ("orphan", "Failed")):
        cluster.wait_phase(name, phase, timeout=30)

    wanted = {
        "flag_scheduler_schedules_applied_total": 1, "flag_scheduler_schedules_retried_total": 1,
        "flag_scheduler_schedules_failed_total": 1, "flag_scheduler_schedules_missed_total": 1,
        "flag_scheduler_schedules_cancelled_total": 1, "flag_scheduler_pending_schedules": 1,
        "flag_scheduler_lateness_seconds_count": 1, 'flag_scheduler_lateness_seconds_bucket{le="+Inf"}': 1,
        "flag_scheduler_is_leader": 1,
    }
    metrics = wait_for(lambda: (m := scrape_metrics(metrics_port)).get("flag_scheduler_pending_schedules") == 1
                       and m, 30, what="the pending gauge to count the one schedule left")
    assert {k: metrics.get(k) for k in wanted} == wanted
    assert urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5).status == 200
    # A person at a terminal reads key=value lines, not JSON.
    applied = [line for line in op.log_path.read_text().splitlines() if "schedule.applied" in line]
    assert applied and not applied[0].startswith("{") and "schedule=watched" in applied[0]
