"""Carry out what timing decided for one schedule: apply, retry, fail, cancel, miss, supersede.

Every step is safe to re-run after a crash, and fenced against a deposed leader:

1. the leader *claims* the schedule (``status.claimedBy``, a status write) before it touches the
   flag; the claim is usually made at first sight, so it costs nothing at the due time, and a new
   leader claims again before it acts;
2. right before the flag PATCH it reads the schedule (a read, not a write) to confirm it still
   exists with the same uid and generation, is unfinished and still claimed by this replica, and
   checks that its Lease renewal is fresh (``Ctx.is_leader``);
3. the flag PATCH carries the flag's uid and resourceVersion as preconditions and the *marker* as
   annotations: who set each field (``forward``), the schedules whose change landed while their
   status does not say so yet (uid -> generation), and this leader's *fencing token* (a random
   token per leadership term). A second attempt sees its uid awaiting status (the change landed,
   only the status is missing), on this flag or on the flag it pointed at before an edit; fields
   set by a schedule ordered at or after this one are left alone, and a schedule with no field
   left is ``Superseded`` (forward only); a flag changed meanwhile fails the PATCH with 409;
4. a phase that leaves the flag untouched (Cancelled, Missed, Failed, Superseded) is written only
   after a fresh read of the flag: if the marker names this schedule the change landed and the
   phase is Applied. If the flag's fencing token is not this term's, the leader first writes its
   token to the flag, preconditioned on the version it just read. That write is the fence: a
   deposed leader frozen between its checks and its PATCH holds an older resourceVersion, so its
   PATCH fails with 409 instead of landing after the schedule was reported untouched. A flag that
   refuses the token's annotation is fenced through its status subresource (``status.fencingToken``);
   one that refuses both gets no untouched phase at all (``FenceRefused``, tried again with backoff).
   A PATCH of this replica's that got no answer (timed out, or cut short when the lead was lost)
   may still commit: its flag is fenced again before anything untouched is settled on it, and
   when a schedule of it this replica claimed is deleted or edited (``Ctx.unanswered``).
Status writes carry the schedule's uid and resourceVersion as preconditions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import failpoints
from flag_scheduler.scheduling.book import flag_key
from flag_scheduler.scheduling.context import (
    CONFLICT_ATTEMPTS,
    ApplyFailure,
    Ctx,
    StandDown,
    read,
    read_flag,
    write_status,
)
from flag_scheduler.forward import Verdict, after_landing, decide, setter_of
from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.models import SCHEDULES, FeatureFlagSpec, FlagSchedule
from flag_scheduler.scheduling.landed import Landing, landed_elsewhere, record_applied
from flag_scheduler.scheduling.settle import record_failure, refuse_recreated_flag, supersede_schedule
from flag_scheduler.timing import due_at
from flag_scheduler.variants import replacing


class RecreatedFlag(Exception):
    """The schedule is owned by a deleted namesake of its flag: never adopted, never applied."""

async def claim(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Hold the schedule for this replica (``status.claimedBy``) unless it already does.

    The claim is for the spec the caller decided on: a conflict that shows another generation (the
    user cancelled, moved or re-pointed it meanwhile) stands down, and the schedule is planned again.
    """
    if not ctx.is_leader():
        raise StandDown("the leader Lease was not renewed in time")
    if schedule.status.claimed_by == ctx.settings.identity:
        return schedule
    claimed = await write_status(ctx, schedule, {"claimedBy": ctx.settings.identity}, steal=True,
                                 same_spec=True)
    if claimed is None:
        raise StandDown("the schedule was deleted or finished meanwhile")
    return claimed


async def confirm(ctx: Ctx, schedule: FlagSchedule) -> FlagSchedule:
    """Read the schedule again: stand down unless it is the same object, same spec, unfinished and ours."""
    body = await read(ctx, SCHEDULES, (schedule.ref.namespace, schedule.ref.name))
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


async def land_change(ctx: Ctx, schedule: FlagSchedule) -> Landing:
    """Make sure the schedule's change is on its flag, exactly once and forward only, field by field."""
    elsewhere = await landed_elsewhere(ctx, schedule)
    if elsewhere is not None:
        return elsewhere
    key = flag_key(schedule)
    flag, fresh = ctx.book.flag(key), False
    for _ in range(CONFLICT_ATTEMPTS):
        if flag is None:
            flag, fresh = await read_flag(ctx, key), True
            if flag is None:
                raise ApplyFailure(f"404 NotFound: FeatureFlag {key[1]!r} not found in namespace {key[0]!r}")
        if schedule.owner_deleted(flag.ref.uid) is not None:
            if fresh:
                raise RecreatedFlag()
            flag = None  # the book may be behind a re-creation: decide on the flag as it is now
            continue
        decision = decide(schedule, flag.marker)
        if decision.verdict is not Verdict.GO:
            return Landing(flag, decision)
        schedule = await confirm(ctx, schedule)
        if not ctx.is_leader():
            raise StandDown("the leader Lease was not renewed in time")
        failpoints.reach("apply.before-flag-patch")
        marker = after_landing(flag.marker, setter_of(schedule), schedule.ref.generation, decision.fields,
                               ctx.clock(), ctx.book.awaits_status, decision.skipped)
        fields, prepared = replacing_rule(decision.fields, flag.spec), flag.ref
        try:
            body = await failpoints.deliver("apply.flag-patch-unanswered", lambda: ctx.kube.patch_flag_spec(
                prepared, fields, marker, ctx.fencing_token()))
        except ApiException as err:
            if err.status == 409:
                flag = None  # changed since read (maybe by another leader): read it and decide again
                continue
            raise ApplyFailure(describe(err)) from err
        except TRANSPORT_ERRORS as err:
            ctx.unanswered.add(key)  # it may still commit: fence before settling untouched
            raise ApplyFailure(describe(err)) from err
        except asyncio.CancelledError:
            ctx.unanswered.add(key)  # cut short (the lead was lost): a request already sent may still commit
            raise
        ctx.unanswered.discard(key)  # a request of ours without an answer holds an older version: it fails now
        failpoints.reach("apply.after-flag-patch")
        return Landing(ctx.book.put_flag(body) or flag, decision)
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


def replacing_rule(fields: dict[str, Any], current: FeatureFlagSpec) -> dict[str, Any]:
    """The fields to merge-patch: a new targeting rule replaces the flag's rule whole.

    A merge patch would merge the two rules' objects key by key, so the keys of the current rule
    that the new one lacks are sent as null (the flag's spec is held to its resourceVersion).
    """
    if "targeting" not in fields or current.targeting is None:
        return fields
    return {**fields, "targeting": replacing(current.targeting, fields["targeting"])}


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
    except RecreatedFlag:
        await refuse_recreated_flag(ctx, schedule)
        return
    if landing.decision.verdict is Verdict.SUPERSEDED:
        await supersede_schedule(ctx, schedule)
        return
    await record_applied(ctx, schedule, landing, due)
