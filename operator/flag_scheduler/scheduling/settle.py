"""The outcomes of a schedule's work: Retrying, and the final phases that leave the flag untouched.

A phase that leaves the flag untouched (Cancelled, Missed, Failed, Superseded) is written only
after ``fence``: a fresh read of the flag (if its marker shows the change landed, here or on the
flag the schedule named before, the schedule is Applied instead) and, if the flag does not carry
this leader term's fencing token yet, a write of the token preconditioned on the version just
read, so a deposed leader's PATCH prepared earlier fails (see ``apply.py``). If the flag refuses
every fencing write, none of these phases is written: the condition ``FenceRefused`` and a
Warning Event say why, and the work is tried again with backoff until a fence lands. These phases, and
Retrying, are decided for one generation of the spec: if the spec changed meanwhile nothing is
written and the schedule is planned again (``write_status(same_spec=True)``).
"""

from __future__ import annotations

from typing import Any

from flag_scheduler import failpoints, metrics
from flag_scheduler.forward import Decision, Verdict, decide, describe_skipped
from flag_scheduler.models import FlagSchedule, Phase, rfc3339
from flag_scheduler.scheduling import status
from flag_scheduler.scheduling.book import flag_key
from flag_scheduler.scheduling.context import ApplyFailure, Ctx, StandDown, log_for, write_status
from flag_scheduler.scheduling.landed import FenceRefused, Landing, fence, landed_elsewhere, record_applied
from flag_scheduler.timing import next_retry_at, retries_exhausted

async def settle_untouched(
    ctx: Ctx, schedule: FlagSchedule, phase: Phase, reason: str = "", message: str = "", **fields: Any
) -> bool:
    """Write a terminal phase that leaves the flag untouched, unless the change in fact landed.

    Returns True if ``phase`` was written; False if the schedule turned out Applied, gone, or (for
    Superseded) no longer superseded, in which case it is planned again.
    """
    try:
        landing = await landed_elsewhere(ctx, schedule)
        flag = await fence(ctx, flag_key(schedule), schedule.ref.uid)
    except FenceRefused as refused:
        await hold_unfenced(ctx, schedule, phase, str(refused))
        raise
    if landing is None and flag is not None and flag.marker.landed(schedule.ref.uid):
        landing = Landing(flag, Decision(Verdict.LANDED, landing=flag.marker.landing(schedule.ref.uid)))
    if landing is not None:
        log_for(schedule).warning("schedule.landed_before", instead_of=phase.value, flag_changed=landing.flag.ref.name)
        await record_applied(ctx, schedule, landing, None)
        return False
    if phase is Phase.SUPERSEDED:
        if flag is None:
            raise ApplyFailure(f"404 NotFound: FeatureFlag {schedule.spec.flag_ref.name!r} no longer exists")
        decision = decide(schedule, flag.marker)
        if decision.verdict is not Verdict.SUPERSEDED:
            raise StandDown("the flag changed; the schedule is planned again")
        reason = "Superseded"
        message = (
            f"every field it sets was set on FeatureFlag {flag.ref.name} by a schedule due at or after it: "
            f"{describe_skipped(decision.skipped)}; applying it would move the flag backwards, so the flag "
            "was not changed"
        )
    failpoints.reach("settle.before-status")
    now = ctx.clock()

    written = await write_status(ctx, schedule, lambda fresh: status.fence_landed(status.schedule_status(
        fresh, now, phase, reason, message, **fields,
    ), fresh, phase.value, now), same_spec=True)
    return written is not None


async def hold_unfenced(ctx: Ctx, schedule: FlagSchedule, phase: Phase, error: str) -> None:
    """The flag cannot be fenced: write no outcome, say so (condition ``FenceRefused``, a Warning Event).

    The phase stays what it was (Pending or Retrying); the caller raises, and the flag's work is
    tried again with backoff until the fence lands and ``phase`` can be written.
    """
    message = (f"{phase.value} is not recorded yet: {error}; until a fencing write lands, a PATCH a replica "
               "that lost the lead prepared earlier could still change the flag. Tried again with backoff.")
    if status.held_by_fence(schedule, this_generation=True):
        return  # said already for this generation: no status write or Event per retry
    now = ctx.clock()
    written = await write_status(ctx, schedule, lambda fresh: status.condition_status(
        fresh, status.FENCE_REFUSED, True, "FlagRefusedFence", message, now), same_spec=True)
    if written is not None:
        ctx.event(schedule, "Warning", status.FENCE_REFUSED, message)
        log_for(schedule).warning("schedule.fence_refused", instead_of=phase.value, error=error)


async def record_failure(ctx: Ctx, schedule: FlagSchedule, error: str) -> None:
    """A failed attempt: schedule a retry with backoff, or give up after maxRetries."""
    now = ctx.clock()
    limits = ctx.settings.retry_limits(schedule.spec.retry)
    count = schedule.status.retry_count
    log = log_for(schedule, attempt=count + 1, error=error)
    if retries_exhausted(count, limits):
        if await settle_untouched(ctx, schedule, Phase.FAILED, "RetriesExhausted", error, lastError=error):
            metrics.FAILED.inc()
            ctx.event(schedule, "Warning", "Failed", f"Giving up after {count} retries: {error}")
            log.error("schedule.failed", retry_count=count)
        return
    when = next_retry_at(now, count + 1, limits, ctx.jitter())
    written = await write_status(ctx, schedule, lambda fresh: status.schedule_status(
        fresh, now, Phase.RETRYING, "Retrying", error,
        retryCount=count + 1, nextRetryAt=rfc3339(when), lastError=error,
    ), same_spec=True)
    if written is None:
        return
    metrics.RETRIED.inc()
    ctx.event(schedule, "Warning", "Retrying", f"Attempt {count + 1} failed, retry {count + 1} at {rfc3339(when)}: {error}")
    log.warning("schedule.retrying", retry_count=count + 1, next_retry_at=rfc3339(when))


async def supersede_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Record Superseded (see ``settle_untouched``), with a Warning Event naming the newer schedule."""
    if await settle_untouched(ctx, schedule, Phase.SUPERSEDED):
        flag = ctx.book.flag(flag_key(schedule))
        newer = describe_skipped(decide(schedule, flag.marker).skipped) if flag is not None else "a newer schedule"
        metrics.SUPERSEDED.inc()
        ctx.event(schedule, "Warning", "Superseded",
                  f"Not applied: every field it sets on FeatureFlag {schedule.spec.flag_ref.name} was already "
                  f"set by a schedule due at or after it: {newer}")
        log_for(schedule).warning("schedule.superseded", newer=newer)


async def cancel_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """``spec.cancelled`` on a schedule that has not run: Cancelled, the flag untouched."""
    if await settle_untouched(ctx, schedule, Phase.CANCELLED, "Cancelled", "spec.cancelled is true"):
        metrics.CANCELLED.inc()
        ctx.event(schedule, "Normal", "Cancelled", "Cancelled before it ran; the flag was not changed")
        log_for(schedule).info("schedule.cancelled")


async def miss_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Reached after ``scheduledAt + startingDeadlineSeconds``: Missed, the flag untouched."""
    late = (ctx.clock() - schedule.spec.scheduled_at).total_seconds()
    message = (
        f"reached {late:.1f}s after scheduledAt, past startingDeadlineSeconds "
        f"({schedule.spec.starting_deadline_seconds}); the flag was not changed"
    )
    if await settle_untouched(ctx, schedule, Phase.MISSED, "DeadlineExceeded", message):
        metrics.MISSED.inc()
        ctx.event(schedule, "Warning", "Missed", message)
        log_for(schedule).warning("schedule.missed", late_s=late)


async def refuse_recreated_flag(ctx: Ctx, schedule: FlagSchedule) -> None:
    """A schedule owned by a deleted namesake of its flag: Failed, never applied to the re-created flag.

    The garbage collector deletes it (its owner is gone); until then it must neither change the new
    flag nor hold up the new flag's own schedules, hence a terminal phase rather than waiting.
    """
    flag = ctx.book.flag(flag_key(schedule))
    old = schedule.owner_deleted(flag.ref.uid if flag is not None else "")
    message = (f"owned by FeatureFlag {schedule.spec.flag_ref.name} uid {old}, which was deleted; the flag of "
               "that name now is another object, so this schedule is not applied to it (the garbage collector "
               "deletes it)")
    if await settle_untouched(ctx, schedule, Phase.FAILED, "FlagRecreated", message, lastError=message):
        metrics.FAILED.inc()
        ctx.event(schedule, "Warning", "FlagRecreated", message)
        log_for(schedule).warning("schedule.flag_recreated", old_uid=old)
