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

from dataclasses import dataclass
from datetime import datetime

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics
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
        token = ctx.fencing_token()
        if flag.marker.landed(landed_uid):
            return flag
        if flag.marker.fencing_token == token and key not in ctx.unanswered:
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
        ctx.unanswered.discard(key)
        return ctx.book.put_flag(body) or flag
    raise ApplyFailure(f"409 Conflict: flag {key[1]!r} kept changing ({CONFLICT_ATTEMPTS} conflicts)")


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
        return new

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
