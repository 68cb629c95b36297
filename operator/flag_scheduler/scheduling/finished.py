"""The end of a schedule's life: deleting it when its TTL runs out, and failing one that cannot be read.

``ttlSecondsAfterFinished`` (or the operator's ``FINISHED_TTL_SECONDS``) counts from
``status.finishedAt``; the delete carries the schedule's uid and resourceVersion as preconditions,
so a schedule re-created under the name, or changed since, is never deleted by mistake.

A schedule the API server admitted but the operator cannot interpret (the schema and the models
disagree on some corner of a value) becomes ``Failed`` with the reason ``InvalidSpec`` and a
Warning Event naming the field, instead of staying ``Pending`` in silence. It cannot have changed
its flag (the operator never read it), so no marker check is needed; but if it replaced a readable
version that some replica claimed, that replica may still have a PATCH in flight on that version's
flag, so the flag is fenced first (``landed.fence``), as before any phase that leaves a flag untouched.
"""

from __future__ import annotations

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics
from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.book import Expiry, Unreadable
from flag_scheduler.scheduling.landed import fence
from flag_scheduler.kube import describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import rfc3339


async def delete_expired(ctx: Ctx, expiry: Expiry) -> None:
    """Delete a finished schedule whose TTL ran out (404 and 409: gone or changed, nothing to do)."""
    ref = expiry.ref
    try:
        await ctx.kube.delete_schedule(ref)
    except ApiException as err:
        if err.status in (404, 409):
            return
        raise
    metrics.DELETED.inc()
    get_logger(schedule=ref.name, namespace=ref.namespace).info("schedule.deleted_after_ttl",
                                                                 expired_at=rfc3339(expiry.at))


async def reject_unreadable(ctx: Ctx, item: Unreadable) -> None:
    """Mark an uninterpretable schedule Failed (InvalidSpec), with a Warning Event naming the field."""
    if item.fence is not None:
        await fence(ctx, item.fence)  # raises if no fence landed: tried again later, nothing written
    now = rfc3339(ctx.clock())
    message = f"the operator cannot interpret this schedule: {item.error}"
    status = {
        "phase": "Failed",
        "observedGeneration": item.ref.generation,
        "finishedAt": now,
        "lastError": message[:4096],
        "nextRetryAt": None,  # the CRD allows it only while Retrying
        "conditions": [{
            "type": "Applied", "status": "False", "reason": "InvalidSpec", "message": message,
            "lastTransitionTime": now, "observedGeneration": item.ref.generation,
        }],
    }
    try:
        body = await ctx.kube.patch_schedule_status(item.ref, status)
    except ApiException as err:
        if err.status in (404, 409):
            # Deleted, re-created or changed: forget this version; a newer one comes back by the watch.
            if ctx.book.unreadable.get(item.ref.uid) == item:
                del ctx.book.unreadable[item.ref.uid]
            return
        get_logger(schedule=item.ref.name, namespace=item.ref.namespace).warning(
            "schedule.invalid_status_failed", error=describe(err))
        raise
    ctx.book.observe_schedule("MODIFIED", body)
    ctx.book.unreadable.pop(item.ref.uid, None)
    metrics.FAILED.inc()
    ctx.event_about(item.ref, "FlagSchedule", "Warning", "InvalidSpec", message)
    get_logger(schedule=item.ref.name, namespace=item.ref.namespace).warning("schedule.invalid", error=item.error)
