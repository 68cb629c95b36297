"""Carry out what timing decided for one schedule: apply, retry, fail, cancel, miss.

Every step is safe to re-run after a crash, and fenced against a deposed leader:

1. the leader *claims* the schedule (``status.claimedBy``, a status write with a resourceVersion
   precondition) before it touches the flag; the claim is usually made at first sight, so it
   costs nothing at the due time, and a new leader claims again before it acts;
2. right before the flag PATCH it checks that its Lease renewal is fresh (``Ctx.is_leader``);
3. the flag PATCH carries the schedule's uid in an annotation and the flag's resourceVersion as a
   precondition, so a change lands at most once: a second attempt either sees the marker (the
   change landed, only the status is missing) or fails with 409; after a 409 the schedule is read
   again and the attempt is abandoned if it is finished or claimed by another replica.
Status writes are preconditioned on the schedule's resourceVersion.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics, status
from flag_scheduler.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe, rfc3339
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES, FeatureFlag, FlagSchedule, Phase
from flag_scheduler.timing import next_retry_at, retries_exhausted

CONFLICT_ATTEMPTS = 5


class ApplyFailure(Exception):
    """The flag could not be changed this time; ``str()`` is what status.lastError shows."""


class StandDown(Exception):
    """Another replica owns this work now, or this one is no longer surely the leader: stop, write nothing."""


@dataclass
class Ctx:
    """What every step needs: the client, the book, settings, a clock and a jitter source."""

    kube: Kube
    book: Book
    settings: Settings
    clock: Callable[[], datetime]
    jitter: Callable[[], float] = random.random
    is_leader: Callable[[], bool] = lambda: True
    background: set[asyncio.Task] = field(default_factory=set)

    def event(self, obj: FeatureFlag | FlagSchedule, type_: str, reason: str, message: str) -> None:
        """Post an Event without holding up the schedule; a failed post is logged, never raised."""
        kind = "FlagSchedule" if isinstance(obj, FlagSchedule) else "FeatureFlag"
        task = asyncio.create_task(self.kube.post_event(obj.ref, kind, type_, reason, message, self.clock()))
        self.background.add(task)
        task.add_done_callback(self._event_done)

    def _event_done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            get_logger().warning("event.failed", error=describe(task.exception()))


async def write_status(
    ctx: Ctx, schedule: FlagSchedule, new_status: dict[str, Any], steal: bool = False
) -> FlagSchedule | None:
    """Write the schedule's status; on a conflict re-read and write again unless it became terminal.

    A conflict that shows another replica's claim stands down, except for a claim (``steal``).
    """
    for _ in range(CONFLICT_ATTEMPTS):
        try:
            body = await ctx.kube.patch_schedule_status(schedule.ref, new_status)
        except ApiException as err:
            if err.status == 404:
                ctx.book.drop_schedule(schedule.ref.namespace, schedule.ref.name)
                return None
            if err.status != 409:
                raise
            fresh = await ctx.kube.get(SCHEDULES, schedule.ref.namespace, schedule.ref.name)
            if fresh is None:
                ctx.book.drop_schedule(schedule.ref.namespace, schedule.ref.name)
                return None
            ctx.book.put_schedule(fresh)
            schedule = FlagSchedule.from_body(fresh)
            if schedule.status.phase.terminal:
                return schedule
            if not steal and schedule.status.claimed_by not in (None, ctx.settings.identity):
                raise StandDown(f"the schedule was claimed by {schedule.status.claimed_by}")
            continue
        ctx.book.put_schedule(body)
        return FlagSchedule.from_body(body)
    raise ApplyFailure(f"status of {schedule.ref.name} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


async def land_change(ctx: Ctx, schedule: FlagSchedule) -> FeatureFlag:
    """Make sure the schedule's change is on its flag, exactly once; return the flag as changed."""
    key = ctx.book.flag_key(schedule)
    flag = ctx.book.flag(key)
    for _ in range(CONFLICT_ATTEMPTS):
        if flag is None:
            body = await _read(ctx, FLAGS, key)
            if body is None:
                raise ApplyFailure(f"404 NotFound: FeatureFlag {key[1]!r} not found in namespace {key[0]!r}")
            ctx.book.put_flag(body)
            flag = FeatureFlag.from_body(body)
        if flag.applied_schedule_uid == schedule.ref.uid:
            return flag  # landed earlier: a crash came between the flag patch and the status write
        if not ctx.is_leader():
            raise StandDown("the leader Lease was not renewed in time")
        try:
            body = await ctx.kube.patch_flag_spec(flag.ref, schedule)
        except ApiException as err:
            if err.status == 409:
                # Someone changed the flag since we read it. If that was another leader finishing this
                # schedule (and maybe later ones), the marker alone could mislead: check the schedule.
                schedule = await _still_ours(ctx, schedule)
                flag = None
                continue
            if err.status == 404:
                ctx.book.drop_flag(*key)
            raise ApplyFailure(describe(err)) from err
        except TRANSPORT_ERRORS as err:
            raise ApplyFailure(describe(err)) from err
        ctx.book.put_flag(body)
        return FeatureFlag.from_body(body)
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


async def claim(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Hold the schedule for this replica (``status.claimedBy``) unless it already does."""
    if not ctx.is_leader():
        raise StandDown("the leader Lease was not renewed in time")
    if schedule.status.claimed_by == ctx.settings.identity:
        return schedule
    claimed = await write_status(ctx, schedule, {"claimedBy": ctx.settings.identity}, steal=True)
    if claimed is None or claimed.status.phase.terminal:
        raise StandDown("the schedule was deleted or finished meanwhile")
    return claimed


async def _still_ours(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Read the schedule again; stand down if it is gone, finished, or claimed by another replica."""
    body = await _read(ctx, SCHEDULES, (schedule.ref.namespace, schedule.ref.name))
    if body is None:
        ctx.book.drop_schedule(schedule.ref.namespace, schedule.ref.name)
        raise StandDown("the schedule was deleted")
    ctx.book.put_schedule(body)
    fresh = FlagSchedule.from_body(body)
    if fresh.status.phase.terminal or fresh.status.claimed_by != ctx.settings.identity:
        raise StandDown(f"the schedule is {fresh.status.phase.value}, claimed by {fresh.status.claimed_by}")
    return fresh


async def _read(ctx: Ctx, plural: str, key: tuple[str, str]) -> dict[str, Any] | None:
    try:
        return await ctx.kube.get(plural, *key)
    except ApiException as err:
        raise ApplyFailure(describe(err)) from err
    except TRANSPORT_ERRORS as err:
        raise ApplyFailure(describe(err)) from err


async def apply_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Apply a due schedule, recording Applied, or Retrying/Failed on failure."""
    due = schedule.status.next_retry_at if schedule.status.phase is Phase.RETRYING else schedule.spec.scheduled_at
    try:
        schedule = await claim(ctx, schedule)
        flag = await land_change(ctx, schedule)
    except ApplyFailure as failure:
        await record_failure(ctx, schedule, str(failure))
        return
    now = ctx.clock()
    metrics.LATENESS.observe(max(0.0, (now - due).total_seconds()))
    new = status.schedule_status(
        schedule, now, Phase.APPLIED, "Applied", f"FeatureFlag {flag.ref.name} updated",
        appliedAt=rfc3339(now), lastError=None,
    )
    # The flag's record first, so whoever sees the schedule Applied also finds it on the flag.
    body = await ctx.kube.patch_flag_status(flag.ref, status.flag_status(schedule, flag.ref.generation, now))
    ctx.book.put_flag(body)
    await write_status(ctx, schedule, new)
    metrics.APPLIED.inc()
    ctx.event(schedule, "Normal", "Applied", f"Applied to FeatureFlag {flag.ref.name}: {schedule.spec.updates.as_patch()}")
    get_logger(flag=flag.ref.name, schedule=schedule.ref.name, namespace=schedule.ref.namespace).info(
        "schedule.applied", attempt=schedule.status.retry_count + 1, lateness_s=round((now - due).total_seconds(), 3)
    )


async def record_failure(ctx: Ctx, schedule: FlagSchedule, error: str) -> None:
    """A failed attempt: schedule a retry with backoff, or give up after maxRetries."""
    now = ctx.clock()
    retry = schedule.spec.retry
    limits = ctx.settings.retry_limits(
        *(None, None, None) if retry is None else (retry.max_retries, retry.backoff_seconds, retry.max_backoff_seconds)
    )
    count = schedule.status.retry_count
    log = get_logger(
        flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name, namespace=schedule.ref.namespace,
        attempt=count + 1, error=error,
    )
    if retries_exhausted(count, limits):
        await write_status(ctx, schedule, status.schedule_status(
            schedule, now, Phase.FAILED, "RetriesExhausted", error, lastError=error,
        ))
        metrics.FAILED.inc()
        ctx.event(schedule, "Warning", "Failed", f"Giving up after {count} retries: {error}")
        log.error("schedule.failed", retry_count=count)
        return
    when = next_retry_at(now, count + 1, limits, ctx.jitter())
    await write_status(ctx, schedule, status.schedule_status(
        schedule, now, Phase.RETRYING, "Retrying", error,
        retryCount=count + 1, nextRetryAt=rfc3339(when), lastError=error,
    ))
    metrics.RETRIED.inc()
    ctx.event(schedule, "Warning", "Retrying", f"Attempt {count + 1} failed, retry {count + 1} at {rfc3339(when)}: {error}")
    log.warning("schedule.retrying", retry_count=count + 1, next_retry_at=rfc3339(when))


async def cancel_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """``spec.cancelled`` on a schedule that has not run: Cancelled, the flag untouched."""
    now = ctx.clock()
    await write_status(ctx, schedule, status.schedule_status(
        schedule, now, Phase.CANCELLED, "Cancelled", "spec.cancelled is true",
    ))
    metrics.CANCELLED.inc()
    ctx.event(schedule, "Normal", "Cancelled", "Cancelled before it ran; the flag was not changed")
    get_logger(flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name).info("schedule.cancelled")


async def miss_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Reached after ``scheduledAt + startingDeadlineSeconds``: Missed, the flag untouched."""
    now = ctx.clock()
    late = (now - schedule.spec.scheduled_at).total_seconds()
    message = (
        f"reached {late:.1f}s after scheduledAt, past startingDeadlineSeconds "
        f"({schedule.spec.starting_deadline_seconds}); the flag was not changed"
    )
    await write_status(ctx, schedule, status.schedule_status(schedule, now, Phase.MISSED, "DeadlineExceeded", message))
    metrics.MISSED.inc()
    ctx.event(schedule, "Warning", "Missed", message)
    get_logger(flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name).warning("schedule.missed", late_s=late)
