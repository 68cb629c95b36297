"""The pure rollout logic (``flag_scheduler.rollout.plan``): steps, holds, pause, approval, abort, drift.

Each test drives ``plan`` the way the controller does: apply the status it returns, then tell it
what became of the schedules it asked for, with an injected ``now``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flag_scheduler.rollout.durations import format_duration, parse_duration
from flag_scheduler.rollout.models import FlagRollout, FlagValues, StepSchedule
from flag_scheduler.rollout.plan import FlagView, Plan, plan, schedule_name

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
STEPS = [
    {"name": "canary", "updates": {"enabled": True, "rolloutPercentage": 10}, "hold": "2h"},
    {"name": "half", "updates": {"rolloutPercentage": 50}, "hold": "24h"},
    {"name": "full", "updates": {"rolloutPercentage": 100}},
]


class Sim:
    """A rollout, its schedules and its flag, advanced by ``plan`` as the controller would."""

    def __init__(self, steps: list[dict[str, Any]] | None = None, **spec: Any) -> None:
        self.spec = {"flagRef": {"name": "checkout"}, "steps": steps or STEPS, **spec}
        self.status: dict[str, Any] = {}
        self.generation = 1
        self.schedules: dict[str, StepSchedule] = {}
        self.flag = {"enabled": False, "rolloutPercentage": 0}
        self.marker: str | None = None
        self.marker_at: datetime | None = None
        self.created: list[str] = []
        self.cancelled: list[str] = []

    def rollout(self) -> FlagRollout:
        body = {"metadata": {"namespace": "ns", "name": "ro", "uid": "u1", "generation": self.generation},
                "spec": self.spec, "status": {k: v for k, v in self.status.items() if v is not None}}
        return FlagRollout.from_body(body)

    def step(self, now: datetime, rival: str | None = None) -> Plan:
        view = FlagView("f1", FlagValues.model_validate(self.flag), self.marker, self.marker_at)
        out = plan(self.rollout(), dict(self.schedules), view, now, rival)
        self.status = out.status
        for name in out.cancel:
            self.schedules[name] = self.schedules[name].model_copy(update={"cancelled": True})
            self.cancelled.append(name)
        if out.create is not None and out.create.name not in self.schedules:
            self.schedules[out.create.name] = StepSchedule(name=out.create.name, scheduled_at=out.create.at)
            self.created.append(out.create.name)
            self._updates = getattr(self, "_updates", {}) | {out.create.name: out.create.updates}
        return out

    def land(self, name: str, at: datetime) -> None:
        """The scheduler applied the schedule at ``at``."""
        self.flag.update(self._updates[name])
        self.marker, self.marker_at = name, at
        self.schedules[name] = self.schedules[name].model_copy(update={"phase": "Applied", "applied_at": at})

    def finish_cancel(self, name: str) -> None:
        self.schedules[name] = self.schedules[name].model_copy(update={"phase": "Cancelled"})

    def edit(self, **spec: Any) -> None:
        self.spec = {**self.spec, **spec}
        self.generation += 1


def test_three_steps_each_due_its_hold_after_the_previous_one_was_applied() -> None:
    sim = Sim()
    out = sim.step(T0)
    assert out.create.name == "ro.1-canary" and out.create.at == T0
    assert sim.status["baseline"] == {"enabled": False, "rolloutPercentage": 0}
    assert sim.status["phase"] == "Progressing" and sim.status["currentStep"] == "0/3"
    landed = T0 + timedelta(seconds=3)  # late: the hold counts from appliedAt, not from scheduledAt
    sim.land("ro.1-canary", landed)
    out = sim.step(landed)
    assert out.create.name == "ro.2-half" and out.create.at == landed + timedelta(hours=2)
    assert sim.status["currentStep"] == "1/3 canary"
    assert sim.status["nextStepAt"] == "2027-03-01T11:00:03.000Z"
    sim.land("ro.2-half", out.create.at)
    out = sim.step(out.create.at)
    assert out.create.at == landed + timedelta(hours=26)
    sim.land("ro.3-full", out.create.at)
    out = sim.step(out.create.at)
    assert out.create is None and sim.status["phase"] == "Completed" and sim.status["currentStep"] == "3/3 full"
    assert sim.created == ["ro.1-canary", "ro.2-half", "ro.3-full"]
    assert [s["appliedAt"] is not None for s in sim.status["steps"]] == [True, True, True]


def test_plan_again_changes_nothing_and_creates_the_same_name() -> None:
    sim = Sim()
    first = sim.step(T0)
    del sim.schedules[first.create.name]  # the create never happened (killed right after the status write)
    again = sim.step(T0 + timedelta(minutes=5))
    assert again.create.name == first.create.name and again.create.at == first.create.at
    sim.step(T0 + timedelta(minutes=6))  # sees its schedule Pending
    status = dict(sim.status)
    assert sim.step(T0 + timedelta(minutes=7)).create is None
    assert sim.status == status  # a fixed point: nothing to write


def test_start_at_delays_the_first_step() -> None:
    sim = Sim(startAt="2027-03-02T10:00:00+01:00")
    assert sim.step(T0).create.at == datetime(2027, 3, 2, 9, tzinfo=UTC)


def test_pause_keeps_the_remaining_hold_and_resume_counts_it_from_then() -> None:
    sim = Sim()
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    sim.step(T0)  # ro.2-half due at T0 + 2h
    sim.edit(paused=True)
    out = sim.step(T0 + timedelta(minutes=30))
    assert out.cancel == ["ro.2-half"] and sim.status["phase"] == "Paused"
    assert sim.status["remainingHold"] == "1h30m" and sim.status["nextStepAt"] is None
    sim.finish_cancel("ro.2-half")
    sim.step(T0 + timedelta(hours=5))
    assert sim.status["remainingHold"] == "1h30m"  # a pause does not eat the hold
    sim.edit(paused=False)
    out = sim.step(T0 + timedelta(hours=10))
    assert out.create.name == "ro.2-half.r1" and out.create.at == T0 + timedelta(hours=11, minutes=30)
    assert sim.status["steps"][1]["attempt"] == 1 and sim.status["remainingHold"] is None


def test_resume_before_the_cancel_finished_waits_for_it_and_never_doubles_the_step() -> None:
    sim = Sim()
    sim.step(T0)
    sim.edit(paused=True)
    sim.step(T0)
    sim.edit(paused=False)
    out = sim.step(T0)
    assert out.create is None and "finish cancelling" in sim.status["waitingFor"]
    sim.finish_cancel("ro.1-canary")
    assert sim.step(T0).create.name == "ro.1-canary.r1"


def test_a_step_that_lands_while_its_cancel_is_in_flight_counts_once() -> None:
    sim = Sim()
    sim.step(T0)
    sim.edit(paused=True)
    sim.step(T0)
    sim.land("ro.1-canary", T0)  # the scheduler got there before the cancel
    sim.step(T0 + timedelta(minutes=30))
    assert sim.status["stepsApplied"] == 1 and sim.status["remainingHold"] == "1h30m"
    sim.edit(paused=False)
    out = sim.step(T0 + timedelta(hours=1))
    assert out.create.name == "ro.2-half" and "ro.1-canary.r1" not in sim.created


def test_approval_gate_creates_nothing_until_approved_then_respects_the_hold() -> None:
    steps = [STEPS[0], {**STEPS[1], "requiresApproval": True}]
    sim = Sim(steps)
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    out = sim.step(T0)
    assert out.create is None and sim.status["phase"] == "AwaitingApproval"
    assert "spec.approvedSteps" in sim.status["waitingFor"]
    sim.edit(approvedSteps=["half"])
    assert sim.step(T0 + timedelta(minutes=1)).create.at == T0 + timedelta(hours=2)  # hold not over yet
    sim2 = Sim(steps)
    sim2.step(T0)
    sim2.land("ro.1-canary", T0)
    sim2.step(T0)
    sim2.edit(approvedSteps=["half"])
    late = T0 + timedelta(hours=3)
    assert sim2.step(late).create.at == late  # approved after the hold: due at once


def test_abort_cancels_the_pending_step_then_restores_the_baseline() -> None:
    sim = Sim()
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    sim.step(T0)
    sim.edit(abort=True)
    out = sim.step(T0 + timedelta(minutes=1))
    assert out.cancel == ["ro.2-half"] and out.create is None and sim.status["phase"] == "Aborted"
    sim.finish_cancel("ro.2-half")
    out = sim.step(T0 + timedelta(minutes=2))
    assert out.create.name == "ro.restore" and out.create.updates == {"enabled": False, "rolloutPercentage": 0}
    assert sim.status["restore"] == {"schedule": "ro.restore"}
    sim.step(T0 + timedelta(minutes=3))
    assert sim.created.count("ro.restore") == 1


def test_abort_with_hold_leaves_the_flag_alone() -> None:
    sim = Sim(onAbort="Hold")
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    sim.step(T0)
    sim.edit(abort=True)
    sim.step(T0)
    sim.finish_cancel("ro.2-half")
    assert sim.step(T0).create is None and sim.status["phase"] == "Aborted"


def test_a_second_active_rollout_of_the_flag_fails_without_touching_it() -> None:
    sim = Sim()
    out = sim.step(T0, rival="other")
    assert out.create is None and sim.status["phase"] == "Failed"
    assert "'other'" in sim.status["conditions"][5]["message"]
    assert sim.step(T0).create is None  # final


def test_an_out_of_band_change_pauses_with_flag_drifted_and_reverting_it_resumes() -> None:
    sim = Sim()
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    sim.step(T0)
    sim.flag["rolloutPercentage"] = 77  # kubectl edit: the marker still names the step
    out = sim.step(T0 + timedelta(minutes=10))
    drifted = next(c for c in sim.status["conditions"] if c["type"] == "FlagDrifted")
    assert sim.status["phase"] == "Paused" and drifted["status"] == "True" and "rolloutPercentage=77" in drifted["message"]
    assert out.cancel == ["ro.2-half"]
    sim.finish_cancel("ro.2-half")
    sim.flag["rolloutPercentage"] = 10
    out = sim.step(T0 + timedelta(hours=1))
    assert out.create.name == "ro.2-half.r1" and out.create.at == T0 + timedelta(hours=2, minutes=50)


def test_a_flag_cached_before_the_step_landed_is_not_drift() -> None:
    sim = Sim()
    sim.step(T0)
    sim.schedules["ro.1-canary"] = sim.schedules["ro.1-canary"].model_copy(update={"phase": "Applied", "applied_at": T0})
    out = sim.step(T0)  # the flag's own watch event has not arrived yet
    assert sim.status["phase"] == "Progressing" and out.create.name == "ro.2-half"


def test_a_failed_step_fails_the_rollout_naming_the_schedule() -> None:
    sim = Sim()
    sim.step(T0)
    sim.schedules["ro.1-canary"] = sim.schedules["ro.1-canary"].model_copy(
        update={"phase": "Failed", "last_error": "403 Forbidden"})
    sim.step(T0)
    assert sim.status["phase"] == "Failed" and "ro.1-canary" in sim.status["lastError"]
    assert "403 Forbidden" in sim.status["lastError"]


def test_schedule_names_are_unique_per_step_and_attempt() -> None:
    names = {schedule_name("ro", i, s, a) for i, s in enumerate(["a", "b", "r1"]) for a in range(3)}
    assert len(names) == 9 and "ro.restore" not in names


@given(st.integers(min_value=0, max_value=720 * 3_600_000))
def test_durations_round_trip(ms: int) -> None:
    span = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(span)) == span


@given(st.integers(min_value=1, max_value=3600 * 24), st.integers(min_value=0, max_value=3600 * 24))
def test_a_pause_anywhere_in_a_hold_resumes_with_the_rest_of_it(hold_s: int, paused_after_s: int) -> None:
    steps = [{"name": "a", "updates": {"enabled": True}, "hold": f"{hold_s}s"}, {"name": "b", "updates": {"rolloutPercentage": 5}}]
    sim = Sim(steps)
    sim.step(T0)
    sim.land("ro.1-a", T0)
    sim.step(T0)
    sim.edit(paused=True)
    sim.step(T0 + timedelta(seconds=paused_after_s))
    sim.finish_cancel("ro.2-b")
    resumed = T0 + timedelta(days=3)
    sim.edit(paused=False)
    out = sim.step(resumed)
    assert out.create.at == resumed + timedelta(seconds=max(0, hold_s - paused_after_s))


def test_bad_durations_are_refused_naming_the_text() -> None:
    for text in ("", "1d", "h", "1.5h", "-1s"):
        try:
            parse_duration(text)
        except ValueError as err:
            assert repr(text) in str(err)
        else:
            raise AssertionError(text)


def test_aborting_a_failed_rollout_still_restores_the_baseline() -> None:
    sim = Sim()
    sim.step(T0)
    sim.land("ro.1-canary", T0)
    sim.step(T0)
    sim.schedules["ro.2-half"] = sim.schedules["ro.2-half"].model_copy(update={"phase": "Failed"})
    sim.step(T0)
    assert sim.status["phase"] == "Failed" and sim.step(T0).create is None  # final until aborted
    sim.edit(abort=True)
    out = sim.step(T0 + timedelta(minutes=1))
    assert out.create.name == "ro.restore" and sim.status["phase"] == "Aborted"
