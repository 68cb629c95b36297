"""A flag's end state never depends on the order things happen in.

Per-field forward only whatever order schedules arrive in; a change lands on one flag, once, for
one generation, whatever the user edits after it landed and however many changes land after it;
a moved retrying schedule runs at its new time; a deleted flag's schedule is never adopted by a
namesake. Each test builds its case on the real control plane with the operator as a process
(failpoints freeze it between the flag PATCH and the status write) and checks what a user sees.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import timedelta

import pytest

from conftest import Kubectl
from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, parse_time, wait_for

LAST_SCHEDULE = "flagscheduler.dev/last-applied-schedule"
TERMINAL = {"Applied", "Failed", "Cancelled", "Missed", "Superseded"}


def flag_writes(cluster: Cluster, flag: str) -> int:
    """Successful writes of the flag (changes and fencing tokens alike), from the audit log."""
    return len([p for p in cluster.audit("featureflags", "patch") if p["responseStatus"]["code"] == 200
                and p["objectRef"]["name"] == flag])


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def finished(cluster: Cluster, name: str, timeout: float = 20) -> dict:
    """The schedule's status once it is terminal, whatever the phase."""
    return wait_for(lambda: (s := cluster.status(name)).get("phase") in TERMINAL and s, timeout,
                    what=f"{name} to finish")


# A killed operator keeps its Lease until the Lease expires: with short Leases the next operator
# takes over about 3 s after the kill instead of 15 (the default). Both sides need them: the
# successor judges expiry by its own setting.
TAKEOVER = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}


def crash_after_the_patch(cluster: Cluster, start_operator: Callable[..., OperatorProcess], flag: str,
                          schedule: str, updates: dict) -> None:
    """The change lands on ``flag``; the operator dies before the schedule's status says so."""
    crashing = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.after-flag-patch", log_name="crashing.log",
                              **TAKEOVER)
    cluster.schedule(schedule, flag, in_seconds(2), updates)
    crashing.wait_log("failpoint.stopped", timeout=20)
    crashing.kill()
    assert cluster.status(schedule).get("phase") == "Pending"


def assert_ten_left_rollout_percentage_to_ten_o_one(cluster: Cluster, status: dict) -> None:
    """"ten" set enabled, and its condition and Event say rolloutPercentage was "ten-o-one"'s to set."""
    skipped = condition(status, "FieldsSuperseded")
    assert skipped is not None and skipped["status"] == "True", status
    assert "rolloutPercentage" in skipped["message"] and "ten-o-one" in skipped["message"]
    assert "enabled" not in skipped["message"]
    event = cluster.wait_event("ten", "Applied", "Normal")["message"]
    assert "not set" in event and "rolloutPercentage" in event


# Behaviour 1: per-field forward only, whatever the arrival order.


@pytest.mark.parametrize("arrival", ["newest first", "both at a cold start"])
def test_two_past_due_schedules_of_one_flag_end_the_same_whatever_order_they_arrive_in(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], arrival: str
) -> None:
    cluster.flag("duo", enabled=False, rollout=0)
    ten = in_seconds(-3600)
    older = ("ten", "duo", ten, {"enabled": True, "rolloutPercentage": 10})
    newer = ("ten-o-one", "duo", ten + timedelta(minutes=1), {"rolloutPercentage": 50})
    if arrival == "newest first":  # two watch events, as an Argo CD sync or a restore may send them
        start_operator()
        cluster.schedule(*newer)
        cluster.wait_phase("ten-o-one", "Applied", timeout=20)
        cluster.schedule(*older)
    else:
        cluster.schedule(*newer)
        cluster.schedule(*older)
        start_operator()
    status = finished(cluster, "ten")
    cluster.wait_phase("ten-o-one", "Applied", timeout=20)
    assert status["phase"] == "Applied"
    assert cluster.get_flag("duo")["spec"] == {"enabled": True, "rolloutPercentage": 50}
    if arrival == "newest first":  # "ten" set enabled, and says rolloutPercentage was not its to set
        assert_ten_left_rollout_percentage_to_ten_o_one(cluster, status)


def test_a_partly_superseded_change_recovered_after_a_crash_still_says_which_fields_it_did_not_set(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """The fields a change left to a later schedule are known after a crash too (the marker keeps them)."""
    cluster.flag("duo", enabled=False, rollout=0)
    ten = in_seconds(-3600)
    first = start_operator(log_name="first.log")
    cluster.schedule("ten-o-one", "duo", ten + timedelta(minutes=1), {"rolloutPercentage": 50})
    cluster.wait_phase("ten-o-one", "Applied", timeout=20)
    first.stop()
    crashing = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.after-flag-patch", log_name="crashing.log",
                              **TAKEOVER)
    cluster.schedule("ten", "duo", ten, {"enabled": True, "rolloutPercentage": 10})
    crashing.wait_log("failpoint.stopped", timeout=20)
    crashing.kill()
    assert cluster.status("ten").get("phase") == "Pending"
    start_operator(**TAKEOVER)
    status = finished(cluster, "ten")
    assert status["phase"] == "Applied"
    assert cluster.get_flag("duo")["spec"] == {"enabled": True, "rolloutPercentage": 50}
    assert_ten_left_rollout_percentage_to_ten_o_one(cluster, status)


# Behaviour 2: a change lands on one flag, once, for one generation.


def test_a_schedule_pointed_at_another_flag_after_its_change_landed_never_changes_that_flag(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("first", enabled=False)
    cluster.flag("second", enabled=False)
    crash_after_the_patch(cluster, start_operator, "first", "moved", {"enabled": True})
    cluster.patch_schedule("moved", {"flagRef": {"name": "second"}})  # generation 2
    start_operator(**TAKEOVER)
    status = finished(cluster, "moved")
    assert cluster.get_flag("second")["spec"]["enabled"] is False
    assert flag_writes(cluster, "second") == 0
    assert cluster.get_flag("first")["spec"]["enabled"] is True
    assert flag_writes(cluster, "first") == 1
    assert (status["phase"], status["observedGeneration"]) == ("Applied", 1)
    changed = condition(status, "SpecChangedAfterApply")
    assert changed is not None and changed["status"] == "True" and "first" in changed["message"]
    assert "generation 1" in cluster.wait_event("moved", "SpecChangedAfterApply", "Warning")["message"]


def test_an_edit_between_the_patch_and_the_status_write_is_reported_as_not_applied(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """No crash: the status write meets a conflict and must not claim the edited spec landed."""
    op = start_operator(FLAG_SCHEDULER_FAILPOINTS="apply.after-flag-patch")
    cluster.flag("edited", enabled=False, rollout=0)
    cluster.schedule("turn-on", "edited", in_seconds(2), {"enabled": True})
    op.wait_log("failpoint.stopped", timeout=20)
    cluster.patch_schedule("turn-on", {"updates": {"enabled": True, "rolloutPercentage": 80}})
    op.send(signal.SIGCONT)
    status = finished(cluster, "turn-on")
    assert (status["phase"], status["observedGeneration"]) == ("Applied", 1)
    assert condition(status, "Applied")["observedGeneration"] == 1
    assert condition(status, "SpecChangedAfterApply")["status"] == "True"
    assert cluster.get_flag("edited")["spec"] == {"enabled": True, "rolloutPercentage": 0}
    assert flag_writes(cluster, "edited") == 1


def test_an_outcome_decided_for_the_old_spec_is_not_written_onto_a_moved_schedule(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Missed was decided for generation 1; the user moves the schedule ahead before the status write."""
    op = start_operator(FLAG_SCHEDULER_FAILPOINTS="settle.before-status")
    cluster.flag("rescued", enabled=False)
    cluster.schedule("too-late", "rescued", in_seconds(-60), {"enabled": True}, startingDeadlineSeconds=1)
    op.wait_log("failpoint.stopped", timeout=20)
    moved = cluster.patch_schedule("too-late", {"scheduledAt": in_seconds(3).isoformat().replace("+00:00", "Z")})
    op.send(signal.SIGCONT)
    status = finished(cluster, "too-late")
    assert (status["phase"], status["observedGeneration"]) == ("Applied", 2)
    assert parse_time(status["appliedAt"]) >= parse_time(moved["spec"]["scheduledAt"])
    assert cluster.get_flag("rescued")["spec"]["enabled"] is True


def test_a_landed_change_is_known_however_many_other_changes_land_after_it(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """No fixed-size window: 20 changes land between the lost status and the schedule's next turn."""
    cluster.flag("busy", enabled=False, rollout=0)
    crash_after_the_patch(cluster, start_operator, "busy", "early", {"enabled": True})
    cluster.patch_schedule("early", {"scheduledAt": in_seconds(3600).isoformat().replace("+00:00", "Z")})
    start_operator(**TAKEOVER)
    for n in range(20):
        cluster.schedule(f"step-{n:02d}", "busy", in_seconds(1 + n * 0.01), {"rolloutPercentage": n})
    wait_for(lambda: cluster.get_flag("busy")["metadata"]["annotations"][LAST_SCHEDULE] == "step-19",
             timeout=30, what="the 20 changes to land")
    cluster.patch_schedule("early", {"scheduledAt": in_seconds(1).isoformat().replace("+00:00", "Z")})
    status = finished(cluster, "early")
    assert (status["phase"], status["observedGeneration"]) == ("Applied", 1)
    assert cluster.get_flag("busy")["metadata"]["annotations"][LAST_SCHEDULE] == "step-19"
    assert flag_writes(cluster, "busy") == 21


def test_a_schedule_cancelled_while_a_new_leader_claims_it_is_never_applied(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """The new leader's claim meets the cancel (a 409): it must not claim, and apply, the cancelled spec."""
    cluster.flag("claimed", enabled=False)
    first = start_operator(log_name="first.log", FLAG_SCHEDULER_IDENTITY="first", **TAKEOVER)
    cluster.schedule("cancel-me", "claimed", in_seconds(3600), {"enabled": True})
    wait_for(lambda: cluster.status("cancel-me").get("claimedBy") == "first", timeout=20, what="the first claim")
    first.kill()
    cluster.patch_schedule("cancel-me", {"scheduledAt": in_seconds(-1).isoformat().replace("+00:00", "Z")})
    # A renew deadline long enough that the pause below cannot cost the second replica its lead.
    second = start_operator(log_name="second.log", FLAG_SCHEDULER_IDENTITY="second",
                            FLAG_SCHEDULER_FAILPOINTS="apply.start", FLAG_SCHEDULER_LEASE_DURATION_SECONDS="6",
                            FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS="5", FLAG_SCHEDULER_RETRY_PERIOD_SECONDS="1")
    second.wait_log("failpoint.stopped", timeout=30)  # generation 2 in hand, still claimed by "first"
    cluster.patch_schedule("cancel-me", {"cancelled": True})  # generation 3
    second.send(signal.SIGCONT)
    status = finished(cluster, "cancel-me")
    assert (status["phase"], status["observedGeneration"]) == ("Cancelled", 3)
    assert cluster.get_flag("claimed")["spec"]["enabled"] is False
    assert flag_writes(cluster, "claimed") <= 1  # the new leader's fence of a flag "first" held, no change
    assert any("spec changed" in line.get("reason", "") for line in second.log_lines()
               if line.get("event") == "flag.stand_down"), "the claim did not meet the cancel"


# Behaviour 3: moving a retrying schedule moves its next attempt.


def test_moving_a_retrying_schedule_applies_it_at_its_new_time(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.schedule("patient", "not-yet", in_seconds(1), {"enabled": True},
                     retry={"backoffSeconds": 86400, "maxBackoffSeconds": 86400})
    retrying = cluster.wait_phase("patient", "Retrying", timeout=20)
    assert retrying["retryCount"] == 1
    cluster.flag("not-yet", enabled=False)
    cluster.patch_schedule("patient", {"scheduledAt": in_seconds(2).isoformat().replace("+00:00", "Z")})
    status = cluster.wait_phase("patient", "Applied", timeout=20)  # not a day later
    assert status["retryCount"] == 1  # the retry budget is the schedule's: it carries on
    assert cluster.get_flag("not-yet")["spec"]["enabled"] is True


# Behaviour 4: no adoption.


def test_a_schedule_of_a_deleted_flag_is_never_applied_to_a_namesake(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    """The garbage collector is held back by a finalizer, so the operator sees the old schedule first."""
    start_operator()
    old_uid = cluster.flag("phoenix", enabled=False)["metadata"]["uid"]
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule",
        "metadata": {"name": "old", "finalizers": ["test.flagscheduler.dev/hold"]},
        "spec": {"flagRef": {"name": "phoenix"}, "scheduledAt": in_seconds(3600).isoformat().replace("+00:00", "Z"),
                 "updates": {"enabled": True}},
    })
    wait_for(lambda: [o["uid"] for o in cluster.get_schedule("old")["metadata"].get("ownerReferences") or []]
             == [old_uid], timeout=10, what="the old flag to own the schedule")
    kubectl("delete", "featureflag", "phoenix", "-n", cluster.ns, "--wait=false")
    wait_for(lambda: cluster.get_schedule("old")["metadata"].get("deletionTimestamp"), timeout=30,
             what="the garbage collector to delete the old flag's schedule")
    new_uid = cluster.flag("phoenix", enabled=False)["metadata"]["uid"]
    # Due only now that the namesake exists, however long the garbage collector took above (it took
    # longer than a due time fixed at creation plus the retries, once, on a busy machine).
    cluster.patch_schedule("old", {"scheduledAt": in_seconds(2).isoformat().replace("+00:00", "Z")})
    cluster.schedule("new", "phoenix", in_seconds(4), {"rolloutPercentage": 30})
    status = finished(cluster, "old")
    assert (status["phase"], condition(status, "Applied")["reason"]) == ("Failed", "FlagRecreated")
    assert old_uid in status["lastError"]
    cluster.wait_phase("new", "Applied", timeout=20)
    assert cluster.get_flag("phoenix")["spec"] == {"enabled": False, "rolloutPercentage": 30}
    assert [o["uid"] for o in cluster.get_schedule("old")["metadata"]["ownerReferences"]] == [old_uid]
    assert [o["uid"] for o in cluster.get_schedule("new")["metadata"]["ownerReferences"]] == [new_uid]
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules", "old",
                                                  {"metadata": {"finalizers": None}})
