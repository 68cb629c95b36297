"""The FlagCronSchedule controller in the scheduler process: watch events in, reconciles out, only while leading.

It keeps the FlagCronSchedules and the edge schedules they own (found by the label
``flagscheduler.dev/cron-schedule-uid``) as the watches report them, and reconciles a window when it
changes, when one of its edge schedules changes (an edge applied: make the next one), when its flag
appears, and when this replica becomes leader. Nothing wakes it on a timer: the next edge already
exists as a FlagSchedule, and the scheduler applies it on time.

Applies first: a window looks again after an event of one of its edge schedules (an edge applied:
make the next one) only once the dispatcher has no due schedule left to apply (``applies_first``,
at most ``APPLIES_FIRST_LIMIT``). When 1,000 edges fall at one instant, each one applied makes its
window create the next edge and write its status; done at once, those writes compete with the
edges still to apply for the API server and the event loop. The next edge of a cron is a minute
away at least, so it can wait for the burst to end. The wait holds no worker: changes of a window
itself, a new flag and taking the lead are reconciled at once (converging after downtime creates
edges that are due now).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from flag_scheduler.cronschedule.model import LABEL_CRON_UID, FlagCronSchedule
from flag_scheduler.cronschedule.reconcile import reconcile
from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FlagSchedule
from flag_scheduler.scheduling.context import Ctx

from kubernetes.aio.client.exceptions import ApiException

log = get_logger()
Key = tuple[str, str]
WORKERS = 8
RETRY_SECONDS = 5.0
STALE_LEASE_RETRY_SECONDS = 1.0
# The longest a reconcile waits for due schedules to be applied first: well under a cron's minute.
APPLIES_FIRST_LIMIT = 20.0


async def _no_wait(limit: float) -> None:
    return None


class CronController:
    """Reconciles FlagCronSchedules one at a time each, several in parallel, while this replica leads."""

    def __init__(self, ctx: Ctx, applies_first: Callable[[float], Awaitable[None]] = _no_wait) -> None:
        self.ctx = ctx
        self.applies_first = applies_first
        self.crons: dict[Key, dict[str, Any]] = {}
        self.edges: dict[str, dict[str, dict[str, Any]]] = {}  # cron uid -> edge schedule name -> body
        self._keys_by_uid: dict[str, Key] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()  # one reconcile per window at a time
        self._again: set[Key] = set()  # changed while its reconcile ran: once more afterwards
        self._workers: list[asyncio.Task] = []
        self._deferred: set[Key] = set()  # edge events seen while due schedules are being applied
        self._deferring: asyncio.Task | None = None

    def observe_cron(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a FlagCronSchedule."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            if self.crons.get(key, {}).get("metadata", {}).get("uid") == meta.get("uid"):
                self.crons.pop(key, None)
                self.edges.pop(meta.get("uid", ""), None)
                self._keys_by_uid.pop(meta.get("uid", ""), None)
            return
        if _older(body, self.crons.get(key)):
            return  # our own write's answer is already here
        self.crons[key] = body
        self._keys_by_uid[meta.get("uid", "")] = key
        self._enqueue(key)

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for any FlagSchedule: only edge schedules matter here."""
        meta = body["metadata"]
        uid = (meta.get("labels") or {}).get(LABEL_CRON_UID)
        if uid is None:
            return
        if event_type == "DELETED":
            self.edges.get(uid, {}).pop(meta["name"], None)
        else:
            self.edges.setdefault(uid, {})[meta["name"]] = body
        if uid in self._keys_by_uid:
            self._after_applies(self._keys_by_uid[uid])

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A flag appeared: reconcile the windows that were waiting for it."""
        if event_type != "ADDED":
            return
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        for key, cron in self.crons.items():
            if key[0] == namespace and (cron.get("spec") or {}).get("flagRef", {}).get("name") == name:
                self._enqueue(key)

    def lead(self) -> None:
        """Became leader: start the workers and reconcile every window (converge after downtime)."""
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(), name=f"cron-{i}") for i in range(WORKERS)]
        for key in list(self.crons):
            self._enqueue(key)

    async def follow(self) -> None:
        """Lost the Lease (or shutting down): stop reconciling at once."""
        workers, self._workers = self._workers, []
        if self._deferring is not None:
            workers.append(self._deferring)
            self._deferring = None
        self._deferred.clear()
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._queued.clear()
        self._running.clear()
        self._again.clear()
        self._queue = asyncio.Queue()

    def _after_applies(self, key: Key) -> None:
        """Reconcile ``key`` once the dispatcher's due schedules are applied (at once if not leading)."""
        if not self._workers:
            self._enqueue(key)  # a follower only queues: lead() reconciles every window anyway
            return
        self._deferred.add(key)
        if self._deferring is None or self._deferring.done():
            self._deferring = asyncio.create_task(self._release_deferred(), name="cron-applies-first")

    async def _release_deferred(self) -> None:
        await self.applies_first(APPLIES_FIRST_LIMIT)
        keys, self._deferred = self._deferred, set()
        for key in keys:
            self._enqueue(key)

    def _enqueue(self, key: Key) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if not self.ctx.is_leader():
                # A leader whose last renewal is too old writes nothing, but keeps the work: if the
                # next renewal succeeds, this term goes on; if the Lease is lost, follow() drops it.
                asyncio.get_running_loop().call_later(STALE_LEASE_RETRY_SECONDS, self._enqueue, key)
                continue
            self._running.add(key)
            try:
                await self._reconcile(key)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self._enqueue(key)

    async def _reconcile(self, key: Key) -> None:
        body = self.crons.get(key)
        if body is None:
            return
        try:
            cron = FlagCronSchedule.from_body(body)
        except ValidationError as err:  # the schema admits nothing the model refuses; log it if it happens
            log.error("cron.unreadable", namespace=key[0], cron_schedule=key[1], error=str(err)[:500])
            return
        edges = []
        for edge in list(self.edges.get(cron.ref.uid, {}).values()):
            with contextlib.suppress(ValidationError, KeyError):
                edges.append(FlagSchedule.from_body(edge))
        try:
            written = await reconcile(self.ctx, cron, edges)
            if written is not None and not _older(written, self.crons.get(key)):
                self.crons[key] = written
        except (ApiException, *TRANSPORT_ERRORS) as err:
            log.warning("cron.reconcile_failed", namespace=key[0], cron_schedule=key[1], error=describe(err))
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._enqueue, key)
        except Exception as err:  # noqa: BLE001 - a bug on one window must not stop a worker for all
            log.error("cron.reconcile_crashed", namespace=key[0], cron_schedule=key[1], error=describe(err),
                      exc_info=True)
            asyncio.get_running_loop().call_later(RETRY_SECONDS * 12, self._enqueue, key)


def _older(body: dict[str, Any], known: dict[str, Any] | None) -> bool:
    """True if ``body`` is an older version of the same object than ``known`` (etcd revisions)."""
    if known is None or known["metadata"].get("uid") != body["metadata"].get("uid"):
        return False
    try:
        return int(body["metadata"]["resourceVersion"]) < int(known["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return False
