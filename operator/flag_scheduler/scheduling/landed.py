"""A change that reached its flag: finding it (on this flag or the one the schedule named before), fencing, Applied.

A schedule's status can lag the flag: the change landed and the process died, or the status write
met a conflict. The flag's marker keeps the schedule's uid, with the generation that landed, until
the schedule is seen finished (``Marker.awaiting``), so:

- a schedule found awaiting on any flag of its namespace (the book indexes them) is Applied for
  the generation that landed, whatever its spec says now: it never lands on a second flag or twice;
- ``observedGeneration`` is that generation, and if the spec moved on since, the condition
  ``SpecChangedAfterApply`` and a Warning Event say so (what the spec says now never landed).

``fence`` is the read before a phase that leaves the flag untouched: see ``apply.py``, step 4.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import failpoints, metrics
from flag_scheduler.forward import Decision, Verdict, describe_skipped
from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FeatureFlag, FlagSchedule, Phase, rfc3339
from flag_scheduler.scheduling import status
from flag_scheduler.scheduling.book import Key, flag_key
from flag_scheduler.scheduling.context import (
    CONFLICT_ATTEMPTS,
    ApplyFailure,
    Ctx,
    StandDown,
    log_for,
    read_flag,
    write_status,
)

SPEC_CHANGED = "SpecChangedAfterApply"
FIELDS_SUPERSEDED = "FieldsSuperseded"


@dataclass(frozen=True)
class Landing:
    """How a change reached (or did not reach) its flag, and the flag as it was then."""

    flag: FeatureFlag
    decision: Decision  # GO: this attempt landed it; LANDED: it was there already; SUPERSEDED: not applied


class FenceRefused(ApplyFailure):
    """The flag refused both fencing writes (its token annotation and ``status.fencingToken``) with a 4xx.

    No outcome that leaves the flag untouched may be written then: a deposed leader's PATCH
    prepared earlier could still land. The work is tried again with backoff.
    """


_fence_writes = itertools.count(1)


def term_of(token: str | None) -> str | None:
    """The leader term a fencing token names (``term``, or ``term.N`` from a fence that had to change it)."""
    return token.split(".", 1)[0] if token else None


def written_in_term(flag: FeatureFlag, term: str) -> bool:
    """The flag was written in this leader term (its token annotation or its status token says so)."""
    return term in (term_of(flag.marker.fencing_token), term_of(flag.status.fencing_token))


async def fence(ctx: Ctx, key: Key, landed_uid: str = "") -> FeatureFlag | None:
    """Read the flag fresh and make sure no PATCH prepared before this read can land (see ``apply.py``).

    What fences is the write's new resourceVersion: a PATCH carries the version it was prepared
    against as a precondition. The token says which term wrote the flag last: a deposed leader
    passed its last Lease check before this term began, so any write of this term fences it, and
    a flag already written in this term is not written again, unless one of this term's own
    PATCHes on it ended without an answer (``Ctx.unanswered``): that one may still commit.
    No write if the flag is gone or shows that ``landed_uid`` landed.
    """
    for _ in range(CONFLICT_ATTEMPTS):
        flag = await read_flag(ctx, key)
        if flag is None:
            ctx.unanswered.discard(key)
            return None  # nothing to land on; a PATCH prepared for an older flag fails its uid precondition
        term = ctx.fencing_token()
        if flag.marker.landed(landed_uid):
            return flag
        if written_in_term(flag, term) and key not in ctx.unanswered:
            return flag
        if not ctx.is_leader():
            raise StandDown("the leader Lease was not renewed in time")
        try:
            body = await _write_token(ctx, flag, term)
        except ApiException as err:
            if err.status in (404, 409):
                continue
            raise ApplyFailure(describe(err)) from err
        except TRANSPORT_ERRORS as err:
            raise ApplyFailure(describe(err)) from err
        ctx.unanswered.discard(key)
        get_logger(namespace=key[0], flag=key[1]).info("flag.fenced", resource_version=body["metadata"]["resourceVersion"])
        return ctx.book.put_flag(body) or flag
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


def _refused(err: ApiException) -> bool:
    """A 4xx that refuses the write itself (a policy, a webhook, validation), not a conflict or throttling."""
    return 400 <= err.status < 500 and err.status not in (404, 408, 409, 429)


def _changed(current: str | None, term: str) -> str:
    """The token to write where ``current`` is: the term, or ``term.N`` if that is there already.

    The API server skips a write that changes nothing, and then the resourceVersion would not move.
    """
    return term if current != term else f"{term}.{next(_fence_writes)}"


def _unchanged(body: dict, flag: FeatureFlag) -> bool:
    """The write was answered but stored nothing: the resourceVersion did not move, so it fences nothing."""
    return (body.get("metadata") or {}).get("resourceVersion") == flag.ref.resource_version


async def _write_token(ctx: Ctx, flag: FeatureFlag, term: str) -> dict:
    """Write the term's token to the flag's annotation or, if the flag refuses that write, to its status.

    A policy or webhook that refuses some contents of the flag may refuse the token's write yet
    admit a deposed leader's PATCH; the status subresource is another resource to admission, and
    its write moves the same resourceVersion. Raises ``FenceRefused`` if both are refused.
    """
    log = get_logger(namespace=flag.ref.namespace, flag=flag.ref.name)
    try:
        token = _changed(flag.marker.fencing_token, term)
        body = await failpoints.deliver("fence.write-unanswered", lambda: ctx.kube.fence_flag(flag.ref, token))
    except ApiException as err:
        if not _refused(err):
            raise
        refused = describe(err)
    else:
        if not _unchanged(body, flag):
            return body
        refused = "the write changed nothing"  # e.g. a mutating webhook removed the token again
    log.warning("flag.fence_refused", via="annotation", error=refused)
    try:
        body = await ctx.kube.fence_flag_status(flag.ref, _changed(flag.status.fencing_token, term))
    except ApiException as err:
        if not _refused(err):
            raise
        log.warning("flag.fence_refused", via="status", error=describe(err))
        raise FenceRefused(f"FeatureFlag {flag.ref.name} refused the fencing write of its annotation ({refused}) "
                           f"and of its status ({describe(err)})") from err
    if _unchanged(body, flag):
        # Stored nothing (a CRD older than the operator prunes status.fencingToken): no fence.
        log.warning("flag.fence_refused", via="status", error="the write changed nothing")
        raise FenceRefused(f"FeatureFlag {flag.ref.name} refused the fencing write of its annotation ({refused}) "
                           "and its status write changed nothing (is the FeatureFlag CRD older than the "
                           "operator, without status.fencingToken?)")
    return body


async def landed_elsewhere(ctx: Ctx, schedule: FlagSchedule) -> Landing | None:
    """The landing of this schedule on another flag than the one it names now (it was pointed elsewhere).

    That flag is read fresh and fenced: a PATCH a deposed leader prepared for it fails.
    """
    other = ctx.book.landed_on(schedule.ref.uid)
    if other is None or other == flag_key(schedule):
        return None
    flag = await fence(ctx, other, schedule.ref.uid)
    landing = None if flag is None else flag.marker.landing(schedule.ref.uid)
    if flag is None or landing is None:
        return None
    return Landing(flag, Decision(Verdict.LANDED, landing=landing))


async def record_applied(ctx: Ctx, schedule: FlagSchedule, landing: Landing, due: datetime | None) -> None:
    """The change is on the flag: Applied for the generation that landed, when it landed (from the marker)."""
    now, flag = ctx.clock(), landing.flag
    landed = flag.marker.landing(schedule.ref.uid)
    skipped = landing.decision.skipped or (landed.skipped if landed else {})  # after a crash: from the marker
    generation = (landed.generation if landed else None) or schedule.ref.generation
    at = (landed.applied_at if landed else None) or now
    where = f"FeatureFlag {flag.ref.name}"
    message = f"{where} updated" + (f"; not set, a later schedule set them: {describe_skipped(skipped)}" if skipped else "")

    def build(fresh: FlagSchedule) -> dict:
        new = status.schedule_status(fresh, now, Phase.APPLIED, "Applied", message, generation=generation,
                                     appliedAt=rfc3339(at), lastError=None)
        if skipped:
            new = status.with_condition(new, fresh, FIELDS_SUPERSEDED, True, "SetByLaterSchedule",
                                        describe_skipped(skipped), generation, now)
        if fresh.ref.generation != generation:
            new = status.with_condition(new, fresh, SPEC_CHANGED, True, SPEC_CHANGED, changed(flag, generation),
                                        generation, now)
        return status.fence_landed(new, fresh, "Applied", now)

    written = await write_status(ctx, schedule, build)
    if written is None:
        return
    metrics.APPLIED.inc()
    applied = landing.decision.fields or schedule.spec.updates.as_patch()
    ctx.event(schedule, "Normal", "Applied", f"Applied to {where}: {applied}"
              + (f"; not set, a later schedule set them: {describe_skipped(skipped)}" if skipped else ""))
    if written.ref.generation != generation:
        ctx.event(schedule, "Warning", SPEC_CHANGED, changed(flag, generation))
    lateness = None if due is None else round((at - due).total_seconds(), 3)
    if lateness is not None:
        metrics.LATENESS.observe(max(0.0, lateness))
    log_for(schedule).info("schedule.applied", attempt=schedule.status.retry_count + 1, lateness_s=lateness,
                           generation=generation, flag_changed=flag.ref.name)


def changed(flag: FeatureFlag, generation: int) -> str:
    return (f"generation {generation} landed on FeatureFlag {flag.ref.name}; the spec changed after that "
            "and the change it describes now was not applied (a finished schedule is never applied again)")
