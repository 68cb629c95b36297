"""Retries against real refusals (a ValidatingAdmissionPolicy): backoff, limits, order, deadlines.

Times come from the API server's audit log (when each flag PATCH and status write arrived) and the
schedule's own status history (a watch), never from the test's clock, so the assertions are
inequalities the operator must keep however loaded the machine is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from controlplane import ControlPlane
from operator_harness import Cluster, History, OperatorProcess, in_seconds, parse_time, wait_for

JITTER = 0.1  # README: "minus up to 10 % jitter (never above the cap)"
MS = timedelta(milliseconds=1)  # status times carry milliseconds, truncated


@pytest.fixture
def history(control_plane: ControlPlane, namespace: str) -> Any:
    watch = History(control_plane, namespace)
    yield watch
    watch.close()


def received(entry: dict[str, Any]) -> Any:
    return parse_time(entry["requestReceivedTimestamp"])


def test_refused_patch_retries_then_applies(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    op = start_operator(FLAG_SCHEDULER_MAX_RETRIES="20")
    cluster.flag("frozen", enabled=False)
    lift = deny_updates("frozen")
    cluster.schedule("thaw", "frozen", in_seconds(2), {"enabled": True})
    status = wait_for(lambda: (s := cluster.status("thaw")).get("retryCount", 0) >= 2 and s, timeout=30,
                      what="two retries")
    assert status["phase"] == "Retrying"
    assert status["lastError"].startswith("403 Forbidden") and "frozen by policy" in status["lastError"]
    cluster.wait_event("thaw", "Retrying", "Warning")
    retrying = [line for line in op.log_lines() if line.get("event") == "schedule.retrying"]
    assert {"flag", "schedule", "attempt", "retry_count", "next_retry_at", "error"} <= retrying[0].keys()
    assert cluster.get_flag("frozen")["spec"]["enabled"] is False

    lift()
    status = cluster.wait_phase("thaw", "Applied", timeout=30)
    assert status["retryCount"] >= 2
    assert cluster.get_flag("frozen")["spec"]["enabled"] is True
    succeeded = [p for p in cluster.audit("featureflags", "patch") if p["responseStatus"]["code"] == 200]
    assert len(succeeded) == 1


def test_backoff_doubles_to_the_cap_with_bounded_jitter_and_ignores_the_deadline_after_a_first_attempt(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable, history: History
) -> None:
    """spec.retry 1 s doubling, capped at 3 s, 4 retries: waits of 1, 2, 3, 3 s, each minus up to 10 %.

    The starting deadline (5 s) passes during the retries: it applies to the first attempt only, so
    the schedule ends Failed (retries exhausted), never Missed.
    """
    start_operator()
    cluster.flag("frozen", enabled=False)
    deny_updates("frozen")
    retry = {"maxRetries": 4, "backoffSeconds": 1, "maxBackoffSeconds": 3}
    created = cluster.schedule("stubborn", "frozen", in_seconds(2), {"enabled": True}, retry=retry,
                               startingDeadlineSeconds=5)
    status = cluster.wait_phase("stubborn", "Failed", timeout=60)
    assert status["retryCount"] == 4
    assert next(c for c in status["conditions"] if c["type"] == "Applied")["reason"] == "RetriesExhausted"
    cluster.wait_event("stubborn", "Failed", "Warning")

    # Five attempts, all refused; before writing Failed the operator fences the flag (refused too).
    patches = cluster.audit("featureflags", "patch")
    assert {e["responseStatus"]["code"] for e in patches} == {403} and len(patches) >= 5
    attempts = [received(e) for e in patches][:5]
    writes = [received(e) for e in cluster.audit("flagschedules/status", "patch")]
    next_retry = {}
    for version in history.versions("stubborn"):
        s = version.get("status") or {}
        if s.get("phase") == "Retrying":
            next_retry.setdefault(s["retryCount"], parse_time(s["nextRetryAt"]))
    assert sorted(next_retry) == [1, 2, 3, 4], next_retry
    for n, capped in zip(range(1, 5), (1, 2, 3, 3), strict=True):
        attempt = attempts[n - 1]
        written = next(w for w in writes if w > attempt)  # the status write that scheduled retry n
        # nextRetryAt = (a moment between the attempt and that write) + backoff, backoff in [0.9, 1] x capped.
        assert next_retry[n] - attempt >= timedelta(seconds=(1 - JITTER) * capped) - MS, (n, next_retry[n], attempt)
        assert next_retry[n] - written <= timedelta(seconds=capped), (n, next_retry[n], written)
        assert attempts[n] >= next_retry[n] - MS, f"retry {n} was attempted before its nextRetryAt"
    deadline = parse_time(created["spec"]["scheduledAt"]) + timedelta(seconds=5)
    assert attempts[-1] > deadline  # the last retry ran past the starting deadline, and was still tried


def test_a_later_schedule_never_overtakes_an_earlier_one_that_is_retrying(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    """Only the earlier schedule's change is refused: the later one would succeed if tried, and waits.

    Also: FLAG_SCHEDULER_MAX_RETRIES bounds the earlier one, and ``spec.retry.maxRetries: 0`` fails at once.
    """
    start_operator(FLAG_SCHEDULER_MAX_RETRIES="2")
    cluster.flag("ordered", enabled=False, rollout=0)
    deny_updates("ordered", when="object.spec.rolloutPercentage == 10", probe='{"spec":{"rolloutPercentage":10}}')
    cluster.flag("stuck", enabled=False)
    deny_updates("stuck")
    due = in_seconds(3)
    cluster.schedule("early", "ordered", due, {"rolloutPercentage": 10})
    cluster.schedule("later", "ordered", due + timedelta(milliseconds=500), {"rolloutPercentage": 50})
    cluster.schedule("no-retries", "stuck", due, {"enabled": True}, retry={"maxRetries": 0})

    early = cluster.wait_phase("early", "Failed", timeout=60)
    assert early["retryCount"] == 2 and "frozen by policy" in early["lastError"]
    assert cluster.wait_phase("no-retries", "Failed", timeout=30)["retryCount"] == 0
    cluster.wait_phase("later", "Applied", timeout=30)
    flag = cluster.get_flag("ordered")
    assert flag["spec"]["rolloutPercentage"] == 50
    assert flag["metadata"]["annotations"]["flagscheduler.dev/last-applied-schedule"] == "later"

    assert flag["metadata"]["generation"] == 2  # one spec change: the later schedule's
    patches = sorted((received(e), e["responseStatus"]["code"]) for e in cluster.audit("featureflags", "patch")
                     if e["objectRef"]["name"] == "ordered")
    refused = [t for t, code in patches if code == 403]
    accepted = [t for t, code in patches if code == 200]  # the fence before Failed, then the later change
    assert len(refused) == 3 and accepted and min(accepted) > max(refused), patches
    early_failed = [received(e) for e in cluster.audit("flagschedules/status", "patch")
                    if e["objectRef"]["name"] == "early"][-1]
    assert max(accepted) > early_failed, "the later schedule was tried while the earlier one was still retrying"


def test_deleting_the_retrying_head_lets_the_next_schedule_apply_at_once(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    start_operator()
    cluster.flag("blocked", enabled=False, rollout=0)
    deny_updates("blocked", when="object.spec.rolloutPercentage == 10", probe='{"spec":{"rolloutPercentage":10}}')
    due = in_seconds(2)
    hour = {"backoffSeconds": 3600, "maxBackoffSeconds": 3600}
    cluster.schedule("head", "blocked", due, {"rolloutPercentage": 10}, retry=hour)
    cluster.schedule("next", "blocked", due + timedelta(milliseconds=500), {"rolloutPercentage": 50})
    cluster.wait_phase("head", "Retrying", timeout=30)  # its next attempt is an hour away
    assert cluster.status("next")["phase"] == "Pending"
    cluster.custom.delete_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "flagschedules", "head")
    cluster.wait_phase("next", "Applied", timeout=30)
    assert cluster.get_flag("blocked")["spec"]["rolloutPercentage"] == 50
