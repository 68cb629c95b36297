"""The status a rollout gets for a verdict of ``plan``: fields people read, conditions tools read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flag_scheduler.models import Condition, rfc3339
from flag_scheduler.rollout.models import (
    FlagRollout, FlagRolloutStatus, FlagValues, RestoreStatus, RolloutPhase, StepStatus,
)

# Each condition type is True exactly in its phase (FlagDrifted: while paused for a drift).
CONDITION_PHASES = {
    "Progressing": RolloutPhase.PROGRESSING,
    "Paused": RolloutPhase.PAUSED,
    "AwaitingApproval": RolloutPhase.AWAITING_APPROVAL,
    "Completed": RolloutPhase.COMPLETED,
    "Aborted": RolloutPhase.ABORTED,
    "Failed": RolloutPhase.FAILED,
}


@dataclass(frozen=True)
class Verdict:
    """Where the rollout is and why: the phase, what it waits for, a reason and a message."""

    phase: RolloutPhase
    waiting_for: str
    reason: str
    message: str = ""
    drifted: bool = False


def final_verdict(status: FlagRolloutStatus) -> Verdict:
    """The verdict a final status was written with (the reason and message of its True condition)."""
    held = next((c for c in status.conditions if c.status == "True" and c.type != "FlagDrifted"), None)
    reason, message = (held.reason, held.message) if held is not None else (status.phase.value, "")
    return Verdict(status.phase, status.waiting_for or "", reason, message)


def _condition(old: list[Condition], type_: str, on: bool, reason: str, message: str, gen: int,
               now: datetime) -> dict[str, Any]:
    value = "True" if on else "False"
    prev = next((c for c in old if c.type == type_), None)
    since = prev.last_transition_time if prev is not None and prev.status == value else now
    return {"type": type_, "status": value, "reason": reason, "message": message[:32768],
            "lastTransitionTime": rfc3339(since), "observedGeneration": gen}


def conditions(r: FlagRollout, verdict: Verdict, now: datetime) -> list[dict[str, Any]]:
    """One condition per phase (True in it, with the verdict's reason) and FlagDrifted."""
    old, gen = r.status.conditions, r.ref.generation
    out = []
    for type_, phase in CONDITION_PHASES.items():
        on = verdict.phase is phase
        reason = verdict.reason if on else f"Not{type_}"
        out.append(_condition(old, type_, on, reason, verdict.message if on else "", gen, now))
    drift_reason = "FlagChangedOutsideRollout" if verdict.drifted else "FlagAsRolloutSetIt"
    out.append(_condition(old, "FlagDrifted", verdict.drifted, drift_reason, verdict.message if verdict.drifted else "",
                          gen, now))
    return out


def render_status(
    r: FlagRollout, verdict: Verdict, *, steps: list[StepStatus], applied: int, next_at: datetime | None,
    remaining: str | None, started_at: datetime | None, baseline: FlagValues | None,
    restore: RestoreStatus | None, last_error: str | None, now: datetime | None = None,
) -> dict[str, Any]:
    """The full status (every field, None to clear): merge-patch ready and comparable with the old one."""
    n = len(r.spec.steps)
    current = f"{applied}/{n}" + (f" {r.spec.steps[applied - 1].name}" if applied else "")
    stamp = now or started_at or datetime.fromtimestamp(0).astimezone()
    return {
        "phase": verdict.phase.value,
        "currentStep": current,
        "stepsApplied": applied,
        "nextStepAt": None if next_at is None else rfc3339(next_at),
        "remainingHold": remaining,
        "waitingFor": verdict.waiting_for or None,
        "lastError": last_error,
        "startedAt": None if started_at is None else rfc3339(started_at),
        "baseline": None if baseline is None else baseline.model_dump(by_alias=True, exclude_none=True),
        "steps": [_step(e) for e in steps],
        "restore": None if restore is None else restore.model_dump(by_alias=True, exclude_none=True),
        "observedGeneration": r.ref.generation,
        "conditions": conditions(r, verdict, stamp),
    }


def _step(entry: StepStatus) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.name, "schedule": entry.schedule, "attempt": entry.attempt}
    if entry.phase:
        out["phase"] = entry.phase
    if entry.scheduled_at:
        out["scheduledAt"] = rfc3339(entry.scheduled_at)
    if entry.applied_at:
        out["appliedAt"] = rfc3339(entry.applied_at)
    return out
