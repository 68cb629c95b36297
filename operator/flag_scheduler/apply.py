"""Carry out what timing decided for one schedule: apply, retry, fail, cancel, miss, supersede.

Every step is safe to re-run after a crash, and fenced against a deposed leader:

1. the leader *claims* the schedule (``status.claimedBy``, a status write) before it touches the
   flag; the claim is usually made at first sight, so it costs nothing at the due time, and a new
   leader claims again before it acts;
2. right before the flag PATCH it reads the schedule (a read, not a write) to confirm it still
   exists with the same uid and generation, is unfinished and still claimed by this replica, and
   checks that its Lease renewal is fresh (``Ctx.is_leader``);
3. the flag PATCH carries the flag's uid and resourceVersion as preconditions and the *marker* as
   annotations: the schedule's name, uid and ``scheduledAt``, when it landed, and this leader's
   *fencing token* (a random token per leadership term). A second attempt sees the marker (the
   change landed, only the status is missing); a schedule ordered at or before the marker's is
   ``Superseded`` (forward only); a flag changed meanwhile fails the PATCH with 409;
4. a phase that leaves the flag untouched (Cancelled, Missed, Failed, Superseded) is written only
   after a fresh read of the flag: if the marker names this schedule the change landed and the
   phase is Applied. If the flag's fencing token is not this term's, the leader first writes its
   token to the flag, preconditioned on the version it just read. That write is the fence: a
   deposed leader frozen between its checks and its PATCH holds an older resourceVersion, so its
   PATCH fails with 409 instead of landing after the schedule was reported untouched.
Status writes carry the schedule's uid and resourceVersion as preconditions.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import failpoints, metrics, status
from flag_scheduler.book import Book, flag_key
from flag_scheduler.config import Settings
from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES, FeatureFlag, FlagSchedule, ObjectRef, Phase, rfc3339
from flag_scheduler.timing import Verdict, against_marker, due_at, next_retry_at, retries_exhausted

CONFLICT_ATTEMPTS = 5
# Events are posted in the background, a few at a time, and dropped (counted) past a backlog, so a
# burst of outcomes never holds up schedules or piles up memory.
EVENT_POSTS = 8
EVENT_BACKLOG = 1000


class ApplyFailure(Exception):
    """The flag could not be changed this time; ``str()`` is what status.lastError shows."""


class StatusWriteFailed(Exception):
    """The API server refused (or did not answer) a status write; the flag's work is retried with backoff."""

    def __init__(self, schedule: FlagSchedule, error: str) -> None:
        super().__init__(error)
        self.schedule = schedule


class StandDown(Exception):
    """Another replica owns this work now, or this one is no longer surely the leader: stop, write nothing."""


@dataclass
class Ctx:
    """What every step needs: the client, the book, settings, a clock, a jitter source, the leader term."""

    kube: Kube
    book: Book
    settings: Settings
    clock: Callable[[], datetime]
    jitter: Callable[[], float] = random.random
    is_leader: Callable[[], bool] = lambda: True
    fencing_token: Callable[[], str] = lambda: "standalone"
    background: set[asyncio.Task] = field(default_factory=set)
    _event_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(EVENT_POSTS))

    def event(self, obj: FeatureFlag | FlagSchedule, type_: str, reason: str, message: str) -> None:
        """Post an Event without holding up the schedule; a failed post is logged, never raised."""
        kind = "FlagSchedule" if isinstance(obj, FlagSchedule) else "FeatureFlag"
        self.event_about(obj.ref, kind, type_, reason, message)

    def event_about(self, ref: ObjectRef, kind: str, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: at most ``EVENT_POSTS`` at once, ``EVENT_BACKLOG`` queued."""
        if len(self.background) >= EVENT_BACKLOG:
            metrics.EVENTS_DROPPED.inc()
            return
        task = asyncio.create_task(self._post(ref, kind, type_, reason, message, self.clock()))
        self.background.add(task)
        task.add_done_callback(self._event_done)

    async def _post(self, *args: Any) -> None:
        async with self._event_slots:
            await self.kube.post_event(*args)

    def _event_done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            get_logger().warning("event.failed", error=describe(task.exception()))


def _log(schedule: FlagSchedule, **keys: Any) -> Any:
    return get_logger(flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name,
                      namespace=schedule.ref.namespace, **keys)


StatusBuilder = Callable[[FlagSchedule], dict[str, Any]]


async def write_status(
    ctx: Ctx, schedule: FlagSchedule, new_status: dict[str, Any] | StatusBuilder, steal: bool = False
) -> FlagSchedule | None:
    """Write the schedule's status; on a conflict read it again and write again unless it became terminal.

    ``new_status`` is a dict, or a function of the schedule that builds it, called again on the
    fresh copy after a conflict so that nothing it carries over (conditions, counts) is stale.
    Returns the schedule as written, or None if nothing was written: it is gone (deleted, or
    re-created: another uid is another schedule) or already terminal. A conflict that shows another
    replica's claim stands down, except for a claim (``steal``).
    """
    build = new_status if callable(new_status) else (lambda _: new_status)
    for _ in range(CONFLICT_ATTEMPTS):
        try:
            body = await ctx.kube.patch_schedule_status(schedule.ref, build(schedule))
        except TRANSPORT_ERRORS as err:
            raise StatusWriteFailed(schedule, describe(err)) from err
        except ApiException as err:
            if err.status not in (404, 409):
                raise StatusWriteFailed(schedule, describe(err)) from err
            fresh = await _read(ctx, SCHEDULES, (schedule.ref.namespace, schedule.ref.name))
            if fresh is None or fresh["metadata"].get("uid") != schedule.ref.uid:
                ctx.book.drop_schedule(schedule.ref.uid)
                return None
            schedule = ctx.book.put_schedule(fresh) or schedule
            if schedule.status.phase.terminal:
                return None
            if not steal and schedule.status.claimed_by not in (None, ctx.settings.identity):
                raise StandDown(f"the schedule was claimed by {schedule.status.claimed_by}")
            continue
        return ctx.book.put_schedule(body)
    raise ApplyFailure(f"status of {schedule.ref.name} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


async def claim(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Hold the schedule for this replica (``status.claimedBy``) unless it already does."""
    if not ctx.is_leader():
        raise StandDown("the leader Lease was not renewed in time")
    if schedule.status.claimed_by == ctx.settings.identity:
        return schedule
    claimed = await write_status(ctx, schedule, {"claimedBy": ctx.settings.identity}, steal=True)
    if claimed is None:
        raise StandDown("the schedule was deleted or finished meanwhile")
    return claimed


async def confirm(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Read the schedule again: stand down unless it is the same object, same spec, unfinished and ours."""
    body = await _read(ctx, SCHEDULES, (schedule.ref.namespace, schedule.ref.name))
    if body is None or body["metadata"].get("uid") != schedule.ref.uid:
        ctx.book.drop_schedule(schedule.ref.uid)
        raise StandDown("the schedule was deleted (or re-created under its name)")
    fresh = ctx.book.put_schedule(body)
    if fresh is None:
        raise StandDown("the schedule can no longer be read")
    if fresh.ref.generation != schedule.ref.generation:
        raise StandDown("the schedule's spec changed; it is planned again")
    if fresh.status.phase.terminal or fresh.status.claimed_by != ctx.settings.identity:
        raise StandDown(f"the schedule is {fresh.status.phase.value}, claimed by {fresh.status.claimed_by}")
    return fresh


@dataclass(frozen=True)
class Landing:
    """How a change reached (or did not reach) its flag."""

    flag: FeatureFlag
    verdict: Verdict  # LANDED: it was there already; GO: this attempt landed it; SUPERSEDED: not applied


async def land_change(ctx: Ctx, schedule: FlagSchedule) -> Landing:
    """Make sure the schedule's change is on its flag, exactly once and forward only."""
    key = flag_key(schedule)
    flag = ctx.book.flag(key)
    for _ in range(CONFLICT_ATTEMPTS):
        if flag is None:
            flag = await _read_flag(ctx, key)
            if flag is None:
                raise ApplyFailure(f"404 NotFound: FeatureFlag {key[1]!r} not found in namespace {key[0]!r}")
        verdict = against_marker(schedule, flag.marker)
        if verdict is not Verdict.GO:
            return Landing(flag, verdict)
        schedule = await confirm(ctx, schedule)
        if not ctx.is_leader():
            raise StandDown("the leader Lease was not renewed in time")
        failpoints.reach("apply.before-flag-patch")
        try:
            body = await ctx.kube.patch_flag_spec(
                flag.ref, schedule, ctx.fencing_token(), ctx.clock(), flag.marker.after(schedule.ref.uid)
            )
        except ApiException as err:
            if err.status == 409:
                flag = None  # changed since read (maybe by another leader): read it and decide again
                continue
            raise ApplyFailure(describe(err)) from err
        except TRANSPORT_ERRORS as err:
            raise ApplyFailure(describe(err)) from err
        failpoints.reach("apply.after-flag-patch")
        return Landing(ctx.book.put_flag(body) or flag, Verdict.GO)
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


async def _read(ctx: Ctx, plural: str, key: tuple[str, str]) -> dict[str, Any] | None:
    try:
        return await ctx.kube.get(plural, *key)
    except ApiException as err:
        raise ApplyFailure(describe(err)) from err
    except TRANSPORT_ERRORS as err:
        raise ApplyFailure(describe(err)) from err


async def _read_flag(ctx: Ctx, key: tuple[str, str]) -> FeatureFlag | None:
    """The flag as the API server has it now, recorded in the book (a flag found gone leaves the book too)."""
    body = await _read(ctx, FLAGS, key)
    if body is None:
        held = ctx.book.flag(key)
        if held is not None:
            ctx.book.drop_flag(key, held.ref.uid)
        return None
    return ctx.book.put_flag(body)


async def apply_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Apply a due schedule, recording Applied or Superseded, or Retrying/Failed on failure."""
    due = due_at(schedule)
    failpoints.reach("apply.start")
    try:
        schedule = await claim(ctx, schedule)
        landing = await land_change(ctx, schedule)
    except ApplyFailure as failure:
        await record_failure(ctx, schedule, str(failure))
        return
    if landing.verdict is Verdict.SUPERSEDED:
        await supersede_schedule(ctx, schedule)
        return
    await record_applied(ctx, schedule, landing.flag, due)


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
    _log(schedule).info("schedule.applied", attempt=schedule.status.retry_count + 1, lateness_s=lateness)


async def fence(ctx: Ctx, key: tuple[str, str], landed_uid: str = "") -> FeatureFlag | None:
    """Read the flag fresh and make sure it carries this term's fencing token (see the module docstring).

    No write if the flag is gone, already carries the token, or shows that ``landed_uid`` landed.
    """
    for _ in range(CONFLICT_ATTEMPTS):
        flag = await _read_flag(ctx, key)
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
        _log(schedule).warning("schedule.landed_before", instead_of=phase.value)
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
    log = _log(schedule, attempt=count + 1, error=error)
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
        _log(schedule).warning("schedule.superseded", newer=newer)


async def cancel_schedule(ctx: Ctx, schedule: FlagSchedule) -> None:
    """``spec.cancelled`` on a schedule that has not run: Cancelled, the flag untouched."""
    if await settle_untouched(ctx, schedule, Phase.CANCELLED, "Cancelled", "spec.cancelled is true"):
        metrics.CANCELLED.inc()
        ctx.event(schedule, "Normal", "Cancelled", "Cancelled before it ran; the flag was not changed")
        _log(schedule).info("schedule.cancelled")


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
        _log(schedule).warning("schedule.missed", late_s=late)
