"""What every step of the operator's work shares: the context, the outcomes as exceptions, status writes, fresh reads.

``write_status`` is the one way a schedule's status is written: preconditioned on uid and
resourceVersion, rebuilt from the fresh copy after a conflict, and standing down when another
replica holds the claim. ``read_flag`` is the one way a flag is read fresh (and a flag found gone
leaves the book).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics
from flag_scheduler.scheduling.book import Book
from flag_scheduler.scheduling.fair_slots import FairSlots, within_share
from flag_scheduler.config import Settings
from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES, FeatureFlag, FlagSchedule, ObjectRef

CONFLICT_ATTEMPTS = 5
# Events are posted in the background, a few at a time, and dropped (counted) past a backlog, so a
# burst of outcomes never holds up schedules or piles up memory. Namespaces take turns to post and
# share the backlog equally: one namespace's burst neither delays nor crowds out another's Events.
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
    # Why due schedules must not be applied now (the admission policies are not in force), or None.
    holding: Callable[[], str | None] = lambda: None
    background: set[asyncio.Task] = field(default_factory=set)
    # Flags whose PATCH by this replica got no answer (a timeout): it may still commit, so the next
    # fence of the flag writes even if the flag already carries this term's token.
    unanswered: set[tuple[str, str]] = field(default_factory=set)
    _event_slots: FairSlots = field(default_factory=lambda: FairSlots(EVENT_POSTS))
    _events_queued: Counter[str] = field(default_factory=Counter)  # by namespace, posting or waiting to

    def event(self, obj: FeatureFlag | FlagSchedule, type_: str, reason: str, message: str) -> None:
        """Post an Event without holding up the schedule; a failed post is logged, never raised."""
        kind = "FlagSchedule" if isinstance(obj, FlagSchedule) else "FeatureFlag"
        self.event_about(obj.ref, kind, type_, reason, message)

    def event_about(self, ref: ObjectRef, kind: str, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: ``EVENT_POSTS`` at once, namespaces in turn, each its share of the backlog."""
        namespace = ref.namespace
        if not within_share(self._events_queued, namespace, EVENT_BACKLOG):
            metrics.EVENTS_DROPPED.inc()
            return
        self._events_queued[namespace] += 1
        task = asyncio.create_task(self._post(ref, kind, type_, reason, message, self.clock()))
        self.background.add(task)
        task.add_done_callback(lambda done: self._event_done(done, namespace))

    async def _post(self, ref: ObjectRef, *args: Any) -> None:
        async with self._event_slots.slot(ref.namespace):
            await self.kube.post_event(ref, *args)

    def _event_done(self, task: asyncio.Task, namespace: str) -> None:
        self.background.discard(task)
        self._events_queued[namespace] -= 1
        if self._events_queued[namespace] <= 0:
            del self._events_queued[namespace]
        if not task.cancelled() and task.exception() is not None:
            get_logger().warning("event.failed", error=describe(task.exception()))


def log_for(schedule: FlagSchedule, **keys: Any) -> Any:
    return get_logger(flag=schedule.spec.flag_ref.name, schedule=schedule.ref.name,
                      namespace=schedule.ref.namespace, **keys)


StatusBuilder = Callable[[FlagSchedule], dict[str, Any]]


async def write_status(
    ctx: Ctx, schedule: FlagSchedule, new_status: dict[str, Any] | StatusBuilder, steal: bool = False,
    same_spec: bool = False,
) -> FlagSchedule | None:
    """Write the schedule's status; on a conflict read it again and write again unless it became terminal.

    ``new_status`` is a dict, or a function of the schedule that builds it, called again on the
    fresh copy after a conflict so that nothing it carries over (conditions, counts) is stale.
    Returns the schedule as written, or None if nothing was written: it is gone (deleted, or
    re-created: another uid is another schedule) or already terminal. A conflict that shows another
    replica's claim stands down, except for a claim (``steal``). ``same_spec``: the status is an
    outcome decided for the spec as read (Retrying, Cancelled, Missed, Failed, Superseded, or the
    claim before an apply); if the fresh copy has another generation (the user moved, cancelled or
    re-pointed it meanwhile), stand down instead of writing that outcome onto a spec it was not
    decided for.
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
            fresh = await read(ctx, SCHEDULES, (schedule.ref.namespace, schedule.ref.name))
            if fresh is None or fresh["metadata"].get("uid") != schedule.ref.uid:
                ctx.book.drop_schedule(schedule.ref.uid)
                return None
            generation = schedule.ref.generation
            schedule = ctx.book.put_schedule(fresh) or schedule
            if schedule.status.phase.terminal:
                return None
            if same_spec and schedule.ref.generation != generation:
                raise StandDown("the schedule's spec changed; it is planned again")
            if not steal and schedule.status.claimed_by not in (None, ctx.settings.identity):
                raise StandDown(f"the schedule was claimed by {schedule.status.claimed_by}")
            continue
        return ctx.book.put_schedule(body)
    raise ApplyFailure(f"status of {schedule.ref.name} kept changing ({CONFLICT_ATTEMPTS} conflicts)")



async def read(ctx: Ctx, plural: str, key: tuple[str, str]) -> dict[str, Any] | None:
    try:
        return await ctx.kube.get(plural, *key)
    except ApiException as err:
        raise ApplyFailure(describe(err)) from err
    except TRANSPORT_ERRORS as err:
        raise ApplyFailure(describe(err)) from err


async def read_flag(ctx: Ctx, key: tuple[str, str]) -> FeatureFlag | None:
    """The flag as the API server has it now, recorded in the book (a flag found gone leaves the book too)."""
    body = await read(ctx, FLAGS, key)
    if body is None:
        held = ctx.book.flag(key)
        if held is not None:
            ctx.book.drop_flag(key, held.ref.uid)
        return None
    return ctx.book.put_flag(body)
