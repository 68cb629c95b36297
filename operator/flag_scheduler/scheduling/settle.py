"""The outcomes of a schedule's work: Applied, Retrying, and the final phases that leave the flag untouched.

A phase that leaves the flag untouched (Cancelled, Missed, Failed, Superseded) is written only
after ``fence``: a fresh read of the flag (if its marker shows the change landed, the schedule is
Applied instead) and, if the flag does not carry this leader term's fencing token yet, a write of
the token preconditioned on the version just read, so a deposed leader's PATCH prepared earlier
fails (see ``apply.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics
from flag_scheduler.scheduling import status
from flag_scheduler.scheduling.book import flag_key
from flag_scheduler.scheduling.context import (
    CONFLICT_ATTEMPTS,
    ApplyFailure,
    Ctx,
    StandDown,
    log_for,
    read_flag,
    write_status,
)
from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FeatureFlag, FlagSchedule, Phase, rfc3339
from flag_scheduler.timing import Verdict, against_marker, next_retry_at, retries_exhausted

async def record_applied(ctx: Ctx, schedule: FlagSchedule, flag: FeatureFlag, due: datetime | None) -> None:
    """The change is on the flag: Applied, with the time it landed (from the marker)."""
    now = ctx.clock()
    landed = (flag.marker.applied_at if flag.marker.uid == schedule.ref.uid else None) or now
    new = lambda fresh: status.schedule_status(  # noqa: E731
        fresh, now, Phase.APPLIED, "Applied", f"FeatureFlag {flag.ref.name} updated",
        appliedAt=rfc3339(landed), lastError=None,
    )
    if await write_status(ctx, schedule, new) is None:
        return
    metrics.APPLIED.inc()
    ctx.event(schedule, "Normal", "Applied", f"Applied to FeatureFlag {flag.ref.name}: {schedule.spec.updates.as_patch()}")
    lateness = None if due is None else round((landed - due).total_seconds(), 3)
    if lateness is not None:
        metrics.LATENESS.observe(max(0.0, lateness))
    log_for(schedule).info("schedule.applied", attempt=schedule.status.retry_count + 1, lateness_s=lateness)


async def fence(ctx: Ctx, key: tuple[str, str], landed_uid: str = "") -> FeatureFlag | None:
    """Read the flag fresh and make sure it carries this term's fencing token (see the module docstring).

    No write if the flag is gone, already carries the token, or shows that ``landed_uid`` landed.
    """
    for _ in range(CONFLICT_ATTEMPTS):
        flag = await read_flag(ctx, key)
        if flag is None:
            return None  # nothing to land on; a PATCH prepared for an older flag fails its uid precondition
        token = ctx.fencing_token()
        if flag.marker.landed(landed_uid) or flag.marker.fencing_token == token:
            return flag
        if not ctx.is_leader():
            raise StandDown("the leader Lease was not renewed in time")
        try:
            body = await ctx.kube.fence_flag(flag.ref, token)
        except ApiException as err:
            if err.status in (404, 409):
                continue
            if 400 <= err.status < 500 and err.status not in (408, 429):
                # The flag refuses writes (a policy freezing it is the usual reason a schedule
                # Failed): a deposed leader's PATCH is refused the same way, so settle unfenced.
                get_logger(namespace=key[0], flag=key[1]).warning("flag.fence_refused", error=describe(err))
                return flag
            raise ApplyFailure(describe(err)) from err
        except TRANSPORT_ERRORS as err:
            raise ApplyFailure(describe(err)) from err
        return ctx.book.put_flag(body) or flag
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


async def settle_untouched(
    ctx: Ctx, schedule: FlagSchedule, phase: Phase, reason: str = "", message: str = "", **fields: Any
) -> bool:
    """Write a terminal phase that leaves the flag untouched, unless the change in fact landed.

    Returns True if ``phase`` was written; False if the schedule turned out Applied, gone, or (for
    Superseded) no longer superseded, in which case it is planned again.
    """
    flag = await fence(ctx, flag_key(schedule), schedule.ref.uid)
    if flag is not None and flag.marker.landed(schedule.ref.uid):
        log_for(schedule).warning("schedule.landed_before", instead_of=phase.value)
        await record_applied(ctx, schedule, flag, None)
        return False
    if phase is Phase.SUPERSEDED:
        if flag is None:
            raise ApplyFailure(f"404 NotFound: FeatureFlag {schedule.spec.flag_ref.name!r} no longer exists")
        if against_marker(schedule, flag.marker) is not Verdict.SUPERSEDED:
            raise StandDown("the flag changed; the schedule is planned again")
        reason = "Superseded"
        message = (
            f"FeatureFlag {flag.ref.name} was last changed by {flag.marker.name} (uid {flag.marker.uid}, "
            f"scheduledAt {rfc3339(flag.marker.scheduled_at)}), which is not older than this schedule; "
            "applying it would move the flag backwards, so the flag was not changed"
        )
    now = ctx.clock()
    written = await write_status(ctx, schedule, lambda fresh: status.schedule_status(
        fresh, now, phase, reason, message, **fields,
    ))
    return written is not None


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
    await write_status(ctx, schedule, lambda fresh: status.schedule_status(
        fresh, now, Phase.RETRYING, "Retrying", error,
        retryCount=count + 1, nextRetryAt=rfc3339(when), lastError=error,
    ))
    metrics.RETRIED.inc()
    ctx.event(schedule, "Warning", "Retrying", f"Attempt {count + 1} failed, retry {count + 1} at {rfc3339(when)}: {error}")
    log.warning("schedule.retrying", retry_count=count + 1, next_retry_at=rfc3339(when))


async def supersede_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Record Superseded (see ``settle_untouched``), with a Warning Event naming the newer schedule."""
    if await settle_untouched(ctx, schedule, Phase.SUPERSEDED):
        written = ctx.book.flag(flag_key(schedule))
        newer = written.marker.name if written is not None else "a newer schedule"
        metrics.SUPERSEDED.inc()
        ctx.event(schedule, "Warning", "Superseded",
                  f"Not applied: FeatureFlag {schedule.spec.flag_ref.name} was already changed by {newer}, "
                  "which is due at or after this schedule")
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
