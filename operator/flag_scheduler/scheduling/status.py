"""Builders of the status a schedule or flag gets after each outcome (plain dicts, merge-patch ready)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flag_scheduler.models import Condition, FlagSchedule, Phase, rfc3339

APPLIED = "Applied"
FLAG_FOUND = "FlagFound"
# True while the flag refuses every fencing write, so the outcome decided cannot be written yet.
FENCE_REFUSED = "FenceRefused"


def condition(
    previous: list[Condition], type_: str, status: bool, reason: str, message: str, generation: int, now: datetime
) -> dict[str, Any]:
    """A metav1.Condition; ``lastTransitionTime`` moves only when ``status`` flips."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(since),
        "observedGeneration": generation,
    }


def _with(previous: list[Condition], new: dict[str, Any]) -> list[dict[str, Any]]:
    """All conditions, with ``new`` replacing the one of its type."""
    kept = [c.model_dump(by_alias=True, mode="json", exclude_none=True) for c in previous if c.type != new["type"]]
    return [*kept, new]


def schedule_status(
    schedule: FlagSchedule,
    now: datetime,
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The schedule's status for ``phase``, the ``Applied`` condition saying why.

    ``generation`` is the spec's generation the outcome is about (by default the one read): an
    Applied status names the generation that landed, even if the spec changed since.
    """
    gen = schedule.ref.generation if generation is None else generation
    applied = condition(schedule.status.conditions, APPLIED, phase is Phase.APPLIED, reason, message, gen, now)
    status = {
        "phase": phase.value,
        "observedGeneration": gen,
        "retryCount": schedule.status.retry_count,
        "nextRetryAt": None,
        "conditions": _with(schedule.status.conditions, applied),
    }
    if phase.terminal:
        status["finishedAt"] = rfc3339(now)  # when ttlSecondsAfterFinished starts counting
    status.update(fields)
    return status


def with_condition(
    new: dict[str, Any], schedule: FlagSchedule, type_: str, value: bool, reason: str, message: str,
    generation: int, now: datetime,
) -> dict[str, Any]:
    """``new`` (a status built above) with one more condition of ``type_``."""
    cond = condition(schedule.status.conditions, type_, value, reason, message, generation, now)
    conditions = [c for c in new["conditions"] if c["type"] != type_]
    return {**new, "conditions": [*conditions, cond]}


def flag_found_status(schedule: FlagSchedule, found: bool, message: str, now: datetime) -> dict[str, Any]:
    """Only the ``FlagFound`` condition changes (nothing else is sent, so nothing else can go stale)."""
    return condition_status(schedule, FLAG_FOUND, found, "Found" if found else "NotFound", message, now)


def condition_status(
    schedule: FlagSchedule, type_: str, value: bool, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A status in which only the condition ``type_`` changes (phase, counts and times are not sent)."""
    cond = condition(schedule.status.conditions, type_, value, reason, message, schedule.ref.generation, now)
    return {"conditions": _with(schedule.status.conditions, cond)}


def held_by_fence(schedule: FlagSchedule, this_generation: bool = False) -> bool:
    """The schedule says (``FenceRefused=True``) that its outcome waits for a fence to land.

    ``this_generation``: said for the schedule's current generation (one said for an older
    generation is stale to Argo CD's health check, so it is said again).
    """
    return any(c.type == FENCE_REFUSED and c.status == "True"
               and (not this_generation or c.observed_generation == schedule.ref.generation)
               for c in schedule.status.conditions)


def fence_landed(new: dict[str, Any], schedule: FlagSchedule, outcome: str, now: datetime) -> dict[str, Any]:
    """``new`` with ``FenceRefused`` turned False if the schedule was held by it (the outcome is written now)."""
    if not held_by_fence(schedule):
        return new
    return with_condition(new, schedule, FENCE_REFUSED, False, "Fenced", f"a fence landed; {outcome} recorded",
                          schedule.ref.generation, now)
