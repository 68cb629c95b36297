"""The fence holds in every path, on the real API server.

What fences is the resourceVersion precondition every flag PATCH carries: a leader writes the flag
before it records an outcome that leaves the flag untouched, so a PATCH prepared earlier (by a
deposed leader frozen before it, or by this replica when its client gave up waiting) fails with 409.
Each test builds one path with failpoints (``flag_scheduler.failpoints``: a frozen process, or a
request held back and delivered late on ``SIGUSR1``) and checks what a user sees: the flag's spec,
the schedule's phase and conditions, Events, and how the API server answered the late request.
Operators run as the shipped ServiceAccount, so its RBAC is part of what is tested.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, wait_for

TOKEN = "flagscheduler.dev/fencing-token"
LAST_SCHEDULE = "flagscheduler.dev/last-applied-schedule"
# Short, in the relations client-go requires: a frozen leader is replaced after about 3-4 s.
FAST_ELECTION = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}
# A policy that refuses some contents of the flag: any write that leaves it off. The fencing
# token's write leaves it off and is refused; the deposed leader's PATCH turns it on and is admitted.
OFF_REFUSED = {"when": "object.spec.enabled == false"}


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def version_of(cluster: Cluster, flag: str) -> str:
    return cluster.get_flag(flag)["metadata"]["resourceVersion"]


class FrozenLeader:
    """A leader frozen between its last check and its flag PATCH, and the replica that takes over."""

    def __init__(self, cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubeconfig: Path,
                 **successor_env: str) -> None:
        self.cluster = cluster
        lease = {"FLAG_SCHEDULER_LEASE_NAMESPACE": "flag-scheduler-system",
                 "FLAG_SCHEDULER_LEASE_NAME": f"fence-{cluster.ns}", **FAST_ELECTION}
        self.first = start_operator(kubeconfig, "first.log", FLAG_SCHEDULER_IDENTITY="first",
                                    FLAG_SCHEDULER_FAILPOINTS="apply.before-flag-patch", **lease)
        self.first.wait_log("leader.acquired", timeout=20)
        self._start_second = lambda: start_operator(kubeconfig, "second.log", FLAG_SCHEDULER_IDENTITY="second",
                                                    **lease, **successor_env)
        self.second: OperatorProcess | None = None
        cluster.flag("fenced", enabled=False)
        cluster.schedule("risky", "fenced", in_seconds(2), {"enabled": True})
        self.first.wait_log("failpoint.stopped", timeout=20)

    def cancel_and_take_over(self) -> OperatorProcess:
        """The user cancels the schedule; a replica that never saw it claimed takes the Lease over."""
        self.cluster.patch_schedule("risky", {"cancelled": True})
        self.second = self._start_second()
        self.second.wait_log("leader.acquired", timeout=20)
        return self.second

    def resume_and_check_untouched(self) -> None:
        """The deposed leader wakes up and sends its PATCH: it must fail, the flag stays off."""
        resumed_at = len(self.first.log_lines())
        self.first.send(signal.SIGCONT)
        ended = ("flag.stand_down", "schedule.applied", "flag.error")
        wait_for(lambda: self.cluster.get_flag("fenced")["spec"]["enabled"]
                 or any(line.get("event") in ended for line in self.first.log_lines()[resumed_at:]),
                 timeout=20, what="the deposed leader to stand down (or its PATCH to land)")
        flag = self.cluster.get_flag("fenced")
        assert flag["spec"]["enabled"] is False, "Cancelled, yet the deposed leader's PATCH landed"
        assert LAST_SCHEDULE not in (flag["metadata"].get("annotations") or {})
        assert self.cluster.status("risky")["phase"] == "Cancelled"


def test_a_flag_that_refuses_the_token_write_is_fenced_through_its_status(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path,
    deny_updates: Callable,
) -> None:
    """Case 6a: the policy refuses the token's annotation but would admit the deposed leader's PATCH."""
    frozen = FrozenLeader(cluster, start_operator, operator_kubeconfig)
    deny_updates("fenced", **OFF_REFUSED)
    second = frozen.cancel_and_take_over()
    cluster.wait_phase("risky", "Cancelled", timeout=20)
    frozen.resume_and_check_untouched()
    flag = cluster.get_flag("fenced")
    assert TOKEN not in (flag["metadata"].get("annotations") or {})  # refused: the status carries the token
    assert (flag.get("status") or {}).get("fencingToken"), flag.get("status")
    assert second.wait_log("flag.fence_refused", timeout=5)["via"] == "annotation"


def test_a_flag_that_refuses_every_fencing_write_gets_no_untouched_phase_until_a_fence_lands(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path,
    deny_updates: Callable,
) -> None:
    """The policy guards the status subresource too: no fence can land, so Cancelled is not written;
    the schedule says why (condition and Event) and is tried again until the policy is lifted."""
    frozen = FrozenLeader(cluster, start_operator, operator_kubeconfig)
    lift = deny_updates("fenced", **OFF_REFUSED, resources=("featureflags", "featureflags/status"))
    frozen.cancel_and_take_over()
    event = cluster.wait_event("risky", "FenceRefused", "Warning", timeout=20)
    assert "Cancelled is not recorded yet" in event["message"] and "fenced" in event["message"]
    status = cluster.status("risky")
    assert status["phase"] == "Pending", status
    held = condition(status, "FenceRefused")
    assert held is not None and held["status"] == "True" and held["reason"] == "FlagRefusedFence"
    lift()
    status = cluster.wait_phase("risky", "Cancelled", timeout=60)
    assert condition(status, "FenceRefused")["status"] == "False"
    frozen.resume_and_check_untouched()


def test_a_failed_fence_is_tried_again_until_it_lands_before_cancelled_is_written(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path,
) -> None:
    """The successor's first fencing write gets no answer (held back): it writes nothing untouched,
    tries again, and records Cancelled only after a fence landed."""
    frozen = FrozenLeader(cluster, start_operator, operator_kubeconfig,
                          FLAG_SCHEDULER_FAILPOINTS="fence.write-unanswered")
    second = frozen.cancel_and_take_over()
    second.wait_log("failpoint.held", timeout=20)
    cluster.wait_phase("risky", "Cancelled", timeout=30)
    frozen.resume_and_check_untouched()
    assert (cluster.get_flag("fenced")["metadata"].get("annotations") or {}).get(TOKEN)  # the second try landed


def _held_patch(cluster: Cluster, start_operator: Callable[..., OperatorProcess], retry: dict) -> OperatorProcess:
    """One operator; the flag already carries its term's token; a schedule's PATCH gets no answer."""
    op = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.flag-patch-unanswered")
    cluster.flag("late", enabled=False)
    # A cancelled schedule makes the operator write its term's token to the flag first.
    cluster.schedule("warm", "late", in_seconds(1), {"rolloutPercentage": 5}, cancelled=True)
    cluster.wait_phase("warm", "Cancelled", timeout=20)
    assert (cluster.get_flag("late")["metadata"].get("annotations") or {}).get(TOKEN)
    cluster.schedule("slow", "late", in_seconds(2), {"enabled": True}, retry=retry)
    op.wait_log("failpoint.held", timeout=20)
    return op


def _deliver_late(op: OperatorProcess) -> dict:
    """The request without an answer reaches the API server now: how it was answered."""
    op.send(signal.SIGUSR1)
    return op.wait_log("failpoint.released", timeout=20)


def test_a_patch_whose_client_timed_out_cannot_commit_after_the_schedule_is_failed(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    op = _held_patch(cluster, start_operator, {"maxRetries": 0})
    status = cluster.wait_phase("slow", "Failed", timeout=20)
    assert "Timeout" in status["lastError"]
    released = _deliver_late(op)
    flag = cluster.get_flag("late")
    assert flag["spec"]["enabled"] is False, "Failed, yet the PATCH without an answer committed afterwards"
    assert released["code"] == 409, released


def test_a_deleted_schedule_this_replica_claimed_cannot_land_through_a_patch_that_got_no_answer(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """This replica's own suspect: the retrying schedule is deleted; nothing is settled for it, so only
    the fence of the suspect flag keeps the PATCH without an answer from landing later."""
    op = _held_patch(cluster, start_operator, {"maxRetries": 3, "backoffSeconds": 3600, "maxBackoffSeconds": 3600})
    cluster.wait_phase("slow", "Retrying", timeout=20)
    before = version_of(cluster, "late")
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules", "slow")
    wait_for(lambda: version_of(cluster, "late") != before, timeout=20, what="the operator to fence the flag")
    released = _deliver_late(op)
    assert cluster.get_flag("late")["spec"]["enabled"] is False, "a deleted schedule's change landed"
    assert released["code"] == 409, released


def test_a_claimed_schedule_edited_into_one_the_operator_cannot_read_is_failed_only_after_a_fence(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path,
) -> None:
    """The frozen leader claimed the schedule; the user edits it into a rule the CRD admits but the
    operator refuses (``updates.targeting`` is checked by the operator). The successor writes Failed
    (InvalidSpec), which says the flag was not changed: the frozen leader's PATCH must fail."""
    frozen = FrozenLeader(cluster, start_operator, operator_kubeconfig)
    cluster.patch_schedule("risky", {"updates": {"enabled": True, "targeting": {"fractional": "oops"}}})
    frozen.second = frozen._start_second()
    frozen.second.wait_log("leader.acquired", timeout=20)
    status = cluster.wait_phase("risky", "Failed", timeout=20)
    assert condition(status, "Applied")["reason"] == "InvalidSpec", status
    resumed_at = len(frozen.first.log_lines())
    frozen.first.send(signal.SIGCONT)
    ended = ("flag.stand_down", "schedule.applied", "flag.error", "schedule.retrying", "schedule.failed")
    wait_for(lambda: cluster.get_flag("fenced")["spec"]["enabled"]
             or any(line.get("event") in ended for line in frozen.first.log_lines()[resumed_at:]),
             timeout=20, what="the deposed leader to stand down (or its PATCH to land)")
    flag = cluster.get_flag("fenced")
    assert flag["spec"]["enabled"] is False, "Failed (InvalidSpec), yet the deposed leader's PATCH landed"
    assert LAST_SCHEDULE not in (flag["metadata"].get("annotations") or {})


def test_a_cancellation_held_by_a_refused_fence_does_not_hold_up_the_flags_due_schedule(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], operator_kubeconfig: Path,
    deny_updates: Callable,
) -> None:
    """The policy refuses every write that leaves the flag off, the status too: no fence lands for the
    cancelled schedule. The due schedule turns the flag on (admitted) and must land; its PATCH is a
    write of this term, so the cancellation is recorded afterwards."""
    cluster.flag("held", enabled=False)
    deny_updates("held", **OFF_REFUSED, resources=("featureflags", "featureflags/status"))
    cluster.schedule("withdrawn", "held", in_seconds(3600), {"rolloutPercentage": 5}, cancelled=True)
    cluster.schedule("due", "held", in_seconds(2), {"enabled": True})
    start_operator(operator_kubeconfig, FLAG_SCHEDULER_LEASE_NAMESPACE="flag-scheduler-system",
                   FLAG_SCHEDULER_LEASE_NAME=f"fence-{cluster.ns}")
    cluster.wait_event("withdrawn", "FenceRefused", "Warning", timeout=20)
    cluster.wait_phase("due", "Applied", timeout=30)
    assert cluster.get_flag("held")["spec"]["enabled"] is True
    status = cluster.wait_phase("withdrawn", "Cancelled", timeout=30)
    assert condition(status, "FenceRefused")["status"] == "False"
