"""Pure rollout logic: from a rollout, its schedules, its flag and ``now``, the status it should have and
the one schedule to create or the schedules to cancel. No Kopf, no Kubernetes, no clock.

The rules, in the order they win:

1. A rollout not started yet starts (baseline captured, first step due at ``startAt`` or now)
   unless it is aborted, its flag is missing, or another rollout of the flag is active (Failed).
2. ``abort`` cancels the live step schedule; once nothing is in flight and a step has landed,
   ``RestoreBaseline`` creates one schedule that puts the baseline back. Phase Aborted.
3. Every step applied: Completed. A step schedule that Failed, was Missed or Superseded, or was
   cancelled by someone else: Failed.
4. A pause (``spec.paused``, or the flag changed outside the rollout: FlagDrifted) cancels the live
   step schedule and keeps the hold left in ``remainingHold``; lifting it makes the next step due
   at now + that hold, under a new schedule name (``attempt`` + 1).
5. A step that requires approval gets no schedule until it is in ``approvedSteps``.
6. Otherwise the next step's schedule is due at the previous step's ``appliedAt`` + its hold.

The controller writes the status first and then creates or cancels, so the status always names
every schedule that may exist; names are deterministic, so a retried create finds AlreadyExists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flag_scheduler.models import rfc3339
from flag_scheduler.rollout.durations import format_duration, parse_duration
from flag_scheduler.rollout.models import (
    FlagRollout, FlagValues, OnAbort, RestoreStatus, RolloutPhase, StepSchedule, StepStatus,
)
from flag_scheduler.rollout.render import Verdict, final_verdict, render_status

LIVE_BREAKING = frozenset({"Failed", "Missed", "Superseded"})


@dataclass(frozen=True)
class FlagView:
    """What a rollout needs of its flag: its values and the schedule that changed it last."""

    uid: str
    values: FlagValues
    marker: str | None = None  # the schedule that changed the flag last (its annotations)
    marker_applied_at: datetime | None = None


@dataclass(frozen=True)
class NewSchedule:
    """A FlagSchedule to create for a step (or the restore)."""

    name: str
    step: str
    at: datetime
    updates: dict[str, Any]


@dataclass
class Plan:
    """The status to write (merge-patch ready), then at most one schedule to create, and cancellations."""

    status: dict[str, Any]
    create: NewSchedule | None = None
    cancel: list[str] = field(default_factory=list)


def schedule_name(rollout: str, index: int, step: str, attempt: int) -> str:
    """``<rollout>.<n>-<step>`` (n from 1), then ``.r<attempt>`` after a resume: unique by construction."""
    base = f"{rollout}.{index + 1}-{step}"
    return base if attempt == 0 else f"{base}.r{attempt}"


def restore_name(rollout: str) -> str:
    return f"{rollout}.restore"


def managed_fields(r: FlagRollout) -> list[str]:
    """The flag fields any step sets, by API name: the ones the rollout owns and restores."""
    names: list[str] = []
    for step in r.spec.steps:
        names += [k for k in step.updates.as_patch() if k not in names]
    return names


def expected_values(r: FlagRollout, applied: int, baseline: FlagValues) -> dict[str, Any]:
    """The managed fields as the rollout left them after ``applied`` steps."""
    values = baseline.model_dump(by_alias=True)
    for step in r.spec.steps[:applied]:
        values.update(step.updates.as_patch())
    return {k: values.get(k) for k in managed_fields(r)}


@dataclass
class _Work:
    """The status under construction."""

    steps: list[StepStatus]
    next_at: datetime | None
    remaining: timedelta | None
    started_at: datetime | None
    baseline: FlagValues | None
    restore: RestoreStatus | None
    last_error: str | None = None

    def entry(self, index: int) -> StepStatus | None:
        return self.steps[index] if index < len(self.steps) else None


def plan(
    r: FlagRollout, schedules: dict[str, StepSchedule], flag: FlagView | None, now: datetime, rival: str | None = None
) -> Plan:
    """The status ``r`` should have now and what to create or cancel to get there."""
    st = r.status
    w = _Work(
        steps=[_mirror(e, schedules.get(e.schedule)) for e in st.steps], next_at=st.next_step_at,
        remaining=parse_duration(st.remaining_hold) if st.remaining_hold else None, started_at=st.started_at,
        baseline=st.baseline, restore=_mirror_restore(st.restore, schedules), last_error=st.last_error,
    )
    out = Plan(status={})
    if st.phase is RolloutPhase.COMPLETED or (st.phase is RolloutPhase.FAILED and not r.spec.abort):
        return _done(r, w, out, final_verdict(st), now)
    if w.started_at is None:
        blocked = _blocked_start(r, flag, rival)
        if blocked is not None:
            return _done(r, w, out, blocked, now)
        _start(r, w, flag, now)
    verdict = _decide(r, w, schedules, flag, now, out)
    return _done(r, w, out, verdict, now)


def _mirror(entry: StepStatus, schedule: StepSchedule | None) -> StepStatus:
    """The entry with its schedule's final phase; a live phase is not copied (it would cost a write per change)."""
    if schedule is None or not schedule.final:
        return entry
    applied = schedule.applied_at if schedule.phase == "Applied" else None
    return entry.model_copy(update={"phase": schedule.phase, "applied_at": applied or entry.applied_at})


def _mirror_restore(restore: RestoreStatus | None, schedules: dict[str, StepSchedule]) -> RestoreStatus | None:
    found = None if restore is None else schedules.get(restore.schedule)
    return restore if found is None or not found.final else restore.model_copy(update={"phase": found.phase})


def _blocked_start(r: FlagRollout, flag: FlagView | None, rival: str | None) -> Verdict | None:
    flag_name = r.spec.flag_ref.name
    if r.spec.abort:
        return Verdict(RolloutPhase.ABORTED, "", "AbortedBeforeStart", "aborted before its first step")
    if flag is None:
        return Verdict(RolloutPhase.PENDING, f"FeatureFlag {flag_name!r} to exist", "FlagNotFound")
    if rival is not None:
        return Verdict(
            RolloutPhase.FAILED, "", "AnotherRolloutActive",
            f"FlagRollout {rival!r} is already rolling out FeatureFlag {flag_name!r}: one active rollout per flag",
        )
    return None


def _start(r: FlagRollout, w: _Work, flag: FlagView, now: datetime) -> None:
    w.started_at = now
    current = flag.values.model_dump(by_alias=True)
    w.baseline = FlagValues.model_validate({k: current.get(k) for k in managed_fields(r)})
    w.next_at = r.spec.start_at or now


def _applied(w: _Work) -> int:
    return sum(1 for e in w.steps if e.phase == "Applied")


def _decide(
    r: FlagRollout, w: _Work, schedules: dict[str, StepSchedule], flag: FlagView | None, now: datetime, out: Plan
) -> Verdict:
    applied, n = _applied(w), len(r.spec.steps)
    if applied != r.status.steps_applied and applied > 0:  # a step landed: the next one's hold starts
        prev = w.steps[applied - 1]
        w.next_at, w.remaining = prev.applied_at + parse_duration(r.spec.steps[applied - 1].hold), None
    if r.spec.abort:
        return _abort(r, w, schedules, applied, now, out)
    if applied == n:
        w.next_at = w.remaining = None
        return Verdict(RolloutPhase.COMPLETED, "", "AllStepsApplied", f"all {n} steps applied")
    entry = w.entry(applied)
    live = None if entry is None else schedules.get(entry.schedule)
    broken = _broken(entry, live, w)
    if broken is not None:
        w.next_at = w.remaining = None
        w.last_error = broken.message
        return broken
    drifted = _drift(r, w, flag, applied, entry)
    if drifted is not None or r.spec.paused:
        return _pause(w, entry, live, now, out, drifted)
    return _progress(r, w, entry, live, applied, now, out)


def _broken(entry: StepStatus | None, live: StepSchedule | None, w: _Work) -> Verdict | None:
    """Failed when the step's schedule ended without applying, other than by the rollout's own cancel."""
    if entry is None or live is None or not live.final:
        return None
    if live.phase in LIVE_BREAKING:
        detail = f": {live.last_error}" if live.last_error else ""
        return Verdict(RolloutPhase.FAILED, "", f"Step{live.phase}",
                       f"step {entry.name!r}: FlagSchedule {live.name!r} is {live.phase}{detail}")
    if live.phase == "Cancelled" and w.remaining is None:
        return Verdict(RolloutPhase.FAILED, "", "StepCancelled",
                       f"step {entry.name!r}: FlagSchedule {live.name!r} was cancelled outside the rollout")
    return None


def _drift(r: FlagRollout, w: _Work, flag: FlagView | None, applied: int, entry: StepStatus | None) -> str | None:
    """A message naming the fields changed outside the rollout, or None."""
    if flag is None or w.baseline is None:
        return None
    last = w.steps[applied - 1].applied_at if applied else None
    if last is not None and (flag.marker_applied_at is None or flag.marker_applied_at < last):
        return None  # the flag as cached predates the step that landed: its newer version is on its way
    landing = entry is not None and flag.marker == entry.schedule  # the step landed; its status is on its way
    expected = expected_values(r, applied + (1 if landing else 0), w.baseline)
    actual = flag.values.model_dump(by_alias=True)
    changed = [f"{k}={actual.get(k)!r} (rollout set {v!r})" for k, v in expected.items() if actual.get(k) != v]
    if not changed:
        return None
    return f"FeatureFlag {r.spec.flag_ref.name!r} was changed outside the rollout: " + ", ".join(changed)


def _pause(
    w: _Work, entry: StepStatus | None, live: StepSchedule | None, now: datetime, out: Plan, drifted: str | None
) -> Verdict:
    pending = live is not None and not live.final and not live.cancelled
    if w.remaining is None:
        due = live.scheduled_at if pending and live.scheduled_at else (w.next_at or now)
        w.remaining = max(timedelta(0), due - now)
    w.next_at = None
    if pending:
        out.cancel.append(live.name)
    if drifted is not None:
        return Verdict(RolloutPhase.PAUSED, "the flag's fields to be back to what the rollout set (or spec.abort)",
                       "FlagDrifted", drifted, drifted=True)
    return Verdict(RolloutPhase.PAUSED, "spec.paused to be false", "PausedBySpec", "spec.paused is true")


def _progress(
    r: FlagRollout, w: _Work, entry: StepStatus | None, live: StepSchedule | None, applied: int, now: datetime,
    out: Plan,
) -> Verdict:
    step, n = r.spec.steps[applied], len(r.spec.steps)
    label = f"{applied + 1}/{n} {step.name}"
    if entry is not None and live is not None and not live.final and live.cancelled:
        # Paused a moment ago: the step's schedule must end Cancelled (or Applied) before a new one.
        return Verdict(RolloutPhase.PROGRESSING, f"FlagSchedule {live.name!r} to finish cancelling", "Resuming")
    if w.remaining is not None:  # resumed: the hold left when it was paused, from now
        w.next_at, w.remaining = now + w.remaining, None
    if entry is None and step.requires_approval and step.name not in r.spec.approved_steps:
        return Verdict(RolloutPhase.AWAITING_APPROVAL, f"approval of step {label}: add {step.name!r} to spec.approvedSteps",
                       "AwaitingApproval")
    at = w.next_at or now
    if step.requires_approval:
        at = max(at, now)
    if entry is None:
        entry = StepStatus(name=step.name, schedule=schedule_name(r.ref.name, applied, step.name, 0), scheduledAt=at)
        w.steps.append(entry)
    elif live is not None and live.phase == "Cancelled":  # cancelled by a pause: a new attempt
        attempt = entry.attempt + 1
        entry = StepStatus(name=step.name, schedule=schedule_name(r.ref.name, applied, step.name, attempt),
                           attempt=attempt, scheduledAt=at)
        w.steps[applied] = entry
    if live is None or live.name != entry.schedule:
        out.create = NewSchedule(entry.schedule, step.name, entry.scheduled_at or at, step.updates.as_patch())
    w.next_at = entry.scheduled_at
    return Verdict(RolloutPhase.PROGRESSING, f"step {label} due at {rfc3339(w.next_at)}", "StepScheduled")


def _abort(
    r: FlagRollout, w: _Work, schedules: dict[str, StepSchedule], applied: int, now: datetime, out: Plan
) -> Verdict:
    w.next_at = w.remaining = None
    in_flight = [s for e in w.steps if (s := schedules.get(e.schedule)) is not None and not s.final]
    out.cancel += [s.name for s in in_flight if not s.cancelled]
    if in_flight:
        return Verdict(RolloutPhase.ABORTED, f"FlagSchedule {in_flight[0].name!r} to be cancelled", "Aborting",
                       "spec.abort is true")
    restore_updates = (w.baseline or FlagValues()).model_dump(by_alias=True, exclude_none=True)
    if r.spec.on_abort is OnAbort.RESTORE_BASELINE and applied > 0 and restore_updates:
        if w.restore is None:
            w.restore = RestoreStatus(schedule=restore_name(r.ref.name))
        if w.restore.schedule not in schedules and w.restore.phase is None:
            out.create = NewSchedule(w.restore.schedule, "restore", now, restore_updates)
        return Verdict(RolloutPhase.ABORTED, "", "BaselineRestore",
                       f"spec.abort is true; FlagSchedule {w.restore.schedule!r} restores the baseline")
    return Verdict(RolloutPhase.ABORTED, "", "Aborted", "spec.abort is true; the flag keeps its current values")


def _done(r: FlagRollout, w: _Work, out: Plan, verdict: Verdict, now: datetime) -> Plan:
    out.status = render_status(
        r, verdict, steps=w.steps, applied=_applied(w), next_at=w.next_at,
        remaining=None if w.remaining is None else format_duration(w.remaining), started_at=w.started_at,
        baseline=w.baseline, restore=w.restore, last_error=w.last_error, now=now,
    )
    return out
