"""First sight of a schedule: own it by its flag, claim it, and say if the flag is missing.

A new schedule reads back as ``Pending`` through the CRD's status default. First sight costs two
writes: the ownerReference (so deleting the flag garbage-collects the schedule) and the leader's
claim (``status.claimedBy``, which also carries ``FlagFound=False`` when the flag is missing).
Claiming here, not at the due time, keeps the due-time path to the flag patch and the status write.

The owner is the flag's uid as read from the API server just before, not as the book remembers it:
a flag deleted and re-created a moment ago must not hand its new schedules to the garbage
collector through the old uid. A schedule still owned by a deleted namesake of its flag (same
name, another uid) is never adopted: it belonged to the old flag, the garbage collector deletes
it, and meanwhile it is Failed (``FlagRecreated``) so it neither changes nor holds up the new flag.
A schedule without a FeatureFlag owner, or owned by the flag it named before being re-pointed,
is owned by its flag now.
"""

from __future__ import annotations

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.scheduling import status
from flag_scheduler.scheduling.context import Ctx, write_status
from flag_scheduler.scheduling.settle import refuse_recreated_flag
from flag_scheduler.kube import describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, GROUP, SCHEDULES, VERSION, FeatureFlag, FlagSchedule
from flag_scheduler.scheduling.status import FLAG_FOUND


async def tidy_schedule(ctx: Ctx, schedule: FlagSchedule, flag: FeatureFlag | None) -> None:
    """Bring a schedule's ownerReference and FlagFound condition in line with its flag."""
    log = get_logger(flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name, namespace=schedule.ref.namespace)
    now = ctx.clock()
    claim = {} if schedule.status.claimed_by is not None else {"claimedBy": ctx.settings.identity}
    not_found_yet = next((c.status for c in schedule.status.conditions if c.type == FLAG_FOUND), None) != "False"
    if flag is None and not_found_yet:
        # The book may be behind: two watches, so a flag created just before its schedule can be
        # seen after it. A read (not a write) keeps a false FlagNotFound and its Event away.
        flag = await _current_flag(ctx, schedule)
    if flag is None:
        if not not_found_yet:
            await write_status(ctx, schedule, claim)
            return
        message = f"FeatureFlag {schedule.spec.flag_ref.name!r} does not exist in namespace {schedule.ref.namespace!r}"
        await write_status(ctx, schedule, lambda fresh: {**status.flag_found_status(fresh, False, message, now), **claim})
        ctx.event(schedule, "Warning", "FlagNotFound", message + "; the schedule fails at its due time unless it appears")
        log.warning("schedule.flag_not_found")
        return
    if not schedule.owned_by(flag.ref.uid):
        stale, flag = flag, await _current_flag(ctx, schedule)
        if flag is None:
            ctx.book.drop_flag((stale.ref.namespace, stale.ref.name), stale.ref.uid)
            return  # deleted meanwhile: planned again as a schedule without its flag
        if schedule.owned_by(flag.ref.uid):
            return  # the book was behind; planned again with the flag as it is
        if schedule.owner_deleted(flag.ref.uid) is not None:
            await refuse_recreated_flag(ctx, schedule)
            return
        owners = [
            *(o for o in schedule.owner_references if o.get("kind") != "FeatureFlag"),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FeatureFlag",
                "name": flag.ref.name,
                "uid": flag.ref.uid,
            },
        ]
        try:
            body = await ctx.kube.set_owner(schedule.ref, owners)
        except ApiException as err:
            if err.status in (404, 409):
                await _reread(ctx, schedule)  # deleted, re-created, or changed under us
                return
            log.warning("schedule.owner_failed", error=describe(err))
            raise
        schedule = ctx.book.put_schedule(body) or schedule
    if next((c.status for c in schedule.status.conditions if c.type == FLAG_FOUND), None) == "False":
        message = f"FeatureFlag {flag.ref.name!r} exists"
        await write_status(ctx, schedule, lambda fresh: {**status.flag_found_status(fresh, True, message, now), **claim})
    elif claim:
        await write_status(ctx, schedule, claim)


async def _current_flag(ctx: Ctx, schedule: FlagSchedule) -> FeatureFlag | None:
    """The schedule's flag as the API server has it now (recorded in the book)."""
    body = await ctx.kube.get(FLAGS, schedule.ref.namespace, schedule.spec.flag_ref.name)
    return None if body is None else ctx.book.put_flag(body)


async def _reread(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Bring the book up to date with one schedule: forget it if it is gone (a ghost after a relist)."""
    body = await ctx.kube.get(SCHEDULES, schedule.ref.namespace, schedule.ref.name)
    if body is None or body["metadata"].get("uid") != schedule.ref.uid:
        ctx.book.drop_schedule(schedule.ref.uid)
    else:
        ctx.book.put_schedule(body)
