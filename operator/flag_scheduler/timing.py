"""Pure time logic: what a schedule should do now, when it is due, backoff, deadlines, order.

No Kopf, no Kubernetes, no clock: ``now`` is always a parameter and randomness (jitter) is an
argument, so every rule here is tested table-driven and with hypothesis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from flag_scheduler.models import FlagSchedule, Phase

# Subtractive jitter: a retry waits between (1 - JITTER) and 1 times its backoff, never above the cap.
JITTER = 0.1


class Action(StrEnum):
    """What to do with a schedule at a given instant."""

    NOTHING = "nothing"  # terminal: nothing left to do
    WAIT = "wait"  # not due yet
    APPLY = "apply"  # due: change the flag
    CANCEL = "cancel"  # spec.cancelled on a schedule that has not run
    MISS = "miss"  # reached after scheduledAt + startingDeadlineSeconds


@dataclass(frozen=True)
class RetryLimits:
    """The retry settings that apply to one schedule (operator defaults merged with spec.retry)."""

    max_retries: int
    backoff_seconds: float
    max_backoff_seconds: float


def due_at(schedule: FlagSchedule) -> datetime:
    """When the schedule's next attempt is due: ``nextRetryAt`` while retrying, else ``scheduledAt``.

    A retry belongs to the spec it was planned for: once the spec changed (a schedule moved while
    retrying), the status's ``observedGeneration`` lags and the attempt is due at the new
    ``scheduledAt``. ``retryCount`` carries on: the retry budget is the schedule's, not its spec's.
    """
    status = schedule.status
    if (status.phase is Phase.RETRYING and status.next_retry_at is not None
            and status.observed_generation == schedule.ref.generation):
        return status.next_retry_at
    return schedule.spec.scheduled_at


def deadline_missed(schedule: FlagSchedule, now: datetime) -> bool:
    """True if the first attempt comes later than ``scheduledAt + startingDeadlineSeconds``.

    Like CronJob's startingDeadlineSeconds the deadline is about *starting*: once a schedule has
    been attempted and is retrying, its retries run to completion.
    """
    deadline = schedule.spec.starting_deadline_seconds
    if deadline is None or schedule.status.retry_count > 0:
        return False
    return now > schedule.spec.scheduled_at + timedelta(seconds=deadline)


def action(schedule: FlagSchedule, now: datetime) -> Action:
    """Decide what the schedule needs at ``now``."""
    if schedule.status.phase.terminal:
        return Action.NOTHING
    if schedule.spec.cancelled:
        return Action.CANCEL
    if due_at(schedule) > now:
        return Action.WAIT
    if deadline_missed(schedule, now):
        return Action.MISS
    return Action.APPLY


def backoff_seconds(retry_count: int, limits: RetryLimits, jitter_draw: float) -> float:
    """Delay before retry number ``retry_count`` (1-based): ``min(max, base * 2^(n-1))`` minus jitter.

    ``jitter_draw`` is a number in [0, 1) (``random.random()`` in production); the result lies in
    ``[(1 - JITTER) * capped, capped]`` so it never exceeds ``max_backoff_seconds``.
    """
    if retry_count < 1:
        raise ValueError(f"retry_count must be >= 1, got {retry_count}")
    exponent = min(retry_count - 1, 64)  # 2**64 * any backoff is far past any cap
    capped = min(limits.max_backoff_seconds, limits.backoff_seconds * 2**exponent)
    return capped * (1 - JITTER * jitter_draw)


def next_retry_at(now: datetime, retry_count: int, limits: RetryLimits, jitter_draw: float) -> datetime:
    """When retry number ``retry_count`` is due."""
    return now + timedelta(seconds=backoff_seconds(retry_count, limits, jitter_draw))


def retries_exhausted(retry_count: int, limits: RetryLimits) -> bool:
    """True if a failure after ``retry_count`` retries leaves no retry: the schedule is Failed."""
    return retry_count >= limits.max_retries


def order_key(schedule: FlagSchedule) -> tuple[datetime, str]:
    """Schedules of one flag apply in ``scheduledAt`` order, ties broken by name."""
    return (schedule.spec.scheduled_at, schedule.ref.name)


def head_of_line(schedules: Iterable[FlagSchedule]) -> FlagSchedule | None:
    """The flag's schedule that goes next: the earliest one not yet terminal and not cancelled.

    A retrying schedule stays at the head, so later schedules of the same flag wait for it.
    Cancelled schedules never block: they are cancelled at once, out of order.
    """
    live = [s for s in schedules if not s.status.phase.terminal and not s.spec.cancelled]
    return min(live, key=order_key, default=None)
