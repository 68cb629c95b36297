"""The scheduler's runtime, built at Kopf startup: client, book, dispatcher, controllers, leadership.

It serves no flags (that is the flag server, ``flag-scheduler serve``) and listens on no port an
application reaches: only ``/healthz`` (liveness), ``/readyz`` (readiness, its own port) and
``/metrics``, all served from before the initial LIST (Kopf's own liveness endpoint would only open
after the startup handler, i.e. after that LIST).

Start-up, in order: the endpoints; one LIST of each kind (``informer.py``: flags, the unfinished
schedules, windows, rollouts); the watches; and only then the campaign for the Lease. So "leading"
means the Lease is held *and* the book holds every flag and every unfinished schedule as of the
LISTs: the first due schedule is applied knowing every other schedule of its flag that can still
change it (a finished one orders nothing: the flag's marker does that).

The finished schedules (most of a long history: 100,000 of 110,000 in the scale bench) are read
after that, by a LIST of the whole kind beside the schedule watch, which runs from the first LIST
(``informer.py``). Until that LIST is in (``book.complete`` in the log), two things wait: TTL
deletions of schedules finished before (they need them), and the cron and rollout controllers (they
read their schedules' history, so they lead only once it is complete); and the book keeps every
schedule it has not seen in its flags' markers (``Book.awaits_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flag_scheduler import failpoints
from flag_scheduler.config import Settings
from flag_scheduler.cronschedule.controller import CronController
from flag_scheduler.cronschedule.edges import TZDATA_VERSION
from flag_scheduler.cronschedule.model import CRON_SCHEDULES
from flag_scheduler.http_server import Listener, endpoints_app, serve_endpoints
from flag_scheduler.kube import Kube, api_client
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES
from flag_scheduler.rollout.controller import RolloutController
from flag_scheduler.rollout.models import ROLLOUTS
from flag_scheduler.scheduling.admission_gate import AdmissionGate
from flag_scheduler.scheduling.book import UNFINISHED, Book
from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.scheduling.flag_validity import FlagValidity
from flag_scheduler.scheduling.informer import Informer
from flag_scheduler.scheduling.leader import Leadership, check_lease_namespace
from flag_scheduler.scheduling.namespace_access import NamespaceAccess

log = get_logger()
# The collector stays paused while the finished schedules are listed, for this long at most (a LIST
# that keeps failing must not leave it off).
COMPLETE_PAUSE_SECONDS = 120.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _watch_ended(task: asyncio.Task) -> None:
    """A watch never ends by itself: say why it did (``/healthz`` then fails, and Kubernetes restarts us)."""
    if not task.cancelled():
        log.critical("watch.ended", task=task.get_name(), error=repr(task.exception()), exc_info=task.exception())


def clock(offset_seconds: float) -> Callable[[], datetime]:
    """The operator's clock: the host's, shifted by FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS (tests only)."""
    if not offset_seconds:
        return utcnow
    offset = timedelta(seconds=offset_seconds)
    return lambda: datetime.now(UTC) + offset


class Runtime:
    """Everything the handlers need, created once per process."""

    def __init__(self, settings: Settings, kube: Kube, watch_kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.book = Book(default_ttl=settings.finished_ttl_seconds)
        self.book.complete = False  # until the finished schedules are listed (``_complete_book``)
        self.endpoints: list[Listener] = []
        now = clock(settings.clock_offset_seconds)
        self.ctx = Ctx(kube=kube, book=self.book, settings=settings, clock=now)
        self.dispatcher = Dispatcher(self.ctx)
        self.validity = FlagValidity(self.ctx)
        # FlagCronSchedules: creates edge FlagSchedules, after the due ones are applied.
        self.crons = CronController(self.ctx, self.dispatcher.applied_due)
        # The Lease has its own client, connections and event loop (a thread): renewals never queue
        # behind flag work, Events or a busy loop.
        self.leadership = Leadership(settings, lambda: api_client(pool_size=2), self._lead, self._follow)
        self.ctx.is_leader = self.leadership.fresh
        self.ctx.fencing_token = lambda: self.leadership.term
        self.admission = AdmissionGate(settings, kube, on_open=self.dispatcher.release_held)
        self.ctx.holding = self.admission.holding
        self.access = NamespaceAccess(kube, settings.namespaces, settings.lease_namespace, settings.lease_name, now)
        # FlagRollouts: a controller of its own that creates FlagSchedules, acting only while leading.
        self.rollouts = RolloutController(kube, now, self.book.flag, self.leadership.fresh,
                                          lambda ref, *event: self.ctx.event_about(ref, "FlagRollout", *event))
        # The watches hold their connections for minutes: a client of their own, so they never take
        # the connections the flag and status writes need (MAX_CONCURRENCY * 2).
        self.watch_kube = watch_kube or kube
        self.schedules = Informer(self.watch_kube, self.access, SCHEDULES, self.observe_schedule, UNFINISHED)
        self.informers = [Informer(self.watch_kube, self.access, FLAGS, self.observe_flag), self.schedules,
                          Informer(self.watch_kube, self.access, CRON_SCHEDULES, self.observe_cron),
                          Informer(self.watch_kube, self.access, ROLLOUTS, self.observe_rollout)]
        self._watches: list[asyncio.Task] = []
        self._completing: asyncio.Task | None = None
        self._rollouts_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._admission_task: asyncio.Task | None = None
        self._election: asyncio.Task | None = None
        self._closing = False

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Connect, load every flag and schedule (so catch-up sees all of them), start dispatching."""
        kube = await Kube.connect(settings.identity, pool_size=settings.max_concurrency * 2)
        # One connection per watch (four kinds per watched namespace), one spare.
        watch_kube = await Kube.connect(settings.identity, pool_size=4 * max(1, len(settings.namespaces)) + 1)
        runtime = cls(settings, kube, watch_kube)
        try:
            await runtime._serve_endpoints()
            await check_lease_namespace(settings, kube.api)
        except BaseException:
            await runtime._close_clients()
            raise
        await runtime._load_book()
        failpoints.reach("start.after-list")
        runtime._watches = [asyncio.create_task(i.run(), name=f"watch-{i.plural}") for i in runtime.informers]
        for task in runtime._watches:
            task.add_done_callback(_watch_ended)
        runtime._completing = asyncio.create_task(runtime._complete_book(), name="complete-book")
        await runtime.admission.check()
        if not runtime.admission.external:
            runtime._admission_task = asyncio.create_task(runtime.admission.run(), name="admission-check")
        runtime._task = asyncio.create_task(runtime.dispatcher.run(), name="dispatcher")
        runtime._rollouts_task = asyncio.create_task(runtime.rollouts.run(), name="rollouts")
        runtime._election = asyncio.create_task(runtime.leadership.run(), name="leader-election")
        log.info("operator.started", identity=settings.identity, live_schedules=runtime.book.pending_count(),
                 finished_schedules=runtime.book.finished_count(), cron_schedules=len(runtime.crons.crons),
                 rollouts=len(runtime.rollouts.rollouts),
                 tzdata=TZDATA_VERSION, clock_offset_seconds=settings.clock_offset_seconds)
        return runtime

    async def _load_book(self) -> None:
        """The first LIST of each kind, with the cyclic garbage collector paused; then freeze what it built.

        Every LIST page decodes into thousands of short-lived dicts, and each full collection that
        triggered scanned the whole growing heap: at 110,000 schedules 43 of them took 4.9 of the 9.5
        CPU-s of taking the LIST in. Decoded JSON and the book make no reference cycles. What start-up
        built (imports, clients, the loaded book) lives as long as the process: it is then frozen out
        of the collector, so a full collection scans only newer objects and no longer stalls the loop
        for a tenth of a second or more (schedules due in that stall were applied late).
        """
        gc.disable()
        try:
            for informer in self.informers:  # in this order: schedules find their flags already known
                await informer.load()
        finally:
            gc.enable()
        gc.freeze()

    async def _complete_book(self) -> None:
        """Wait for the schedules' history LIST (the finished ones), the collector paused as in
        ``_load_book`` (for ``COMPLETE_PAUSE_SECONDS`` at most); then let the controllers lead."""
        gc.disable()
        try:
            await asyncio.wait_for(self.schedules.complete.wait(), COMPLETE_PAUSE_SECONDS)
        except TimeoutError:
            log.warning("book.incomplete", seconds=COMPLETE_PAUSE_SECONDS,
                        waiting="TTL deletions of earlier finished schedules, the cron and rollout controllers")
        finally:
            gc.enable()
        await self.schedules.complete.wait()
        gc.collect()  # what the leader's work left in reference cycles meanwhile, before freezing the rest
        gc.freeze()
        self.book.complete = True
        log.info("book.complete", live_schedules=self.book.pending_count(),
                 finished_schedules=self.book.finished_count())
        self._lead_controllers()

    def _lead_controllers(self) -> None:
        """The cron and rollout controllers lead once this replica leads *and* the book is complete."""
        if self.dispatcher.leading.is_set() and self.schedules.complete.is_set():
            self.crons.lead()
            self.rollouts.lead()

    async def _serve_endpoints(self) -> None:
        """``/healthz``, ``/readyz`` and ``/metrics``, before the LIST: a long LIST is not a dead process."""
        s = self.settings
        for port, setting, app in ((s.health_port, "FLAG_SCHEDULER_HEALTH_PORT", endpoints_app(health=self.healthy)),
                                   (s.ready_port, "FLAG_SCHEDULER_READY_PORT", endpoints_app(ready=self.not_ready)),
                                   (s.metrics_port, "FLAG_SCHEDULER_METRICS_PORT", endpoints_app())):
            if port:
                self.endpoints.append(await serve_endpoints(app, "0.0.0.0", port, setting,
                                                            s.http_keepalive_timeout_seconds))

    async def _close_clients(self) -> None:
        for listener in self.endpoints:
            await listener.close()
        await self.kube.close()
        if self.watch_kube is not self.kube:
            await self.watch_kube.close()
        await self.leadership.close()

    async def _lead(self) -> None:
        """Became leader: plan every flag from the (warm) book and start applying."""
        self.dispatcher.leading.set()
        self.dispatcher.replan_all()
        self.validity.write_all()
        self._lead_controllers()

    async def _follow(self) -> None:
        """Lost the Lease: stop applying at once; watches keep the book warm for the next term."""
        self.dispatcher.leading.clear()
        await self.crons.follow()
        self.rollouts.follow()
        await self.dispatcher.stop()
        await self.rollouts.close()

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a schedule: update the book and re-plan the flags it touched."""
        for flag in self.book.observe_schedule(event_type, body):
            self.dispatcher.plan(flag)
        self.crons.observe_schedule(event_type, body)
        self.rollouts.observe_schedule(event_type, body)

    def observe_cron(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a FlagCronSchedule: reconcile it (while leading)."""
        self.crons.observe_cron(event_type, body)

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a flag: update the book and re-plan its schedules."""
        self.validity.observe(event_type, body, leading=self.dispatcher.leading.is_set())
        self.crons.observe_flag(event_type, body)
        key = self.book.observe_flag(event_type, body)
        if key is not None:
            self.dispatcher.plan(key)
        meta = body.get("metadata") or {}
        self.rollouts.observe_flag((meta.get("namespace", ""), meta.get("name", "")))

    def observe_rollout(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a FlagRollout: its controller looks at it again."""
        self.rollouts.observe_rollout(event_type, body)

    def not_ready(self) -> str | None:
        """Why this replica is not ready (readiness probe), or None: ready once the book is loaded."""
        if self._closing:
            return "shutting down"
        if self._task is None:
            return "loading flags and schedules"
        return self.healthy()

    async def close(self) -> None:
        """Stop applying, hand the Lease over, close the client and the endpoints."""
        self._closing = True
        for task in (*self._watches, self._completing, self._election, self._task, self._admission_task,
                     self._rollouts_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.crons.follow()
        await self.dispatcher.stop()
        await self.rollouts.close()
        await self.leadership.release()
        await asyncio.gather(*self.ctx.background, return_exceptions=True)
        await self._close_clients()

    def healthy(self) -> str | None:
        """Why this replica is unhealthy (for the liveness probe), or None."""
        if self._election is not None and self._election.done():
            return "the leader election task has ended"
        if any(task.done() for task in self._watches):
            return "a watch has ended"
        if self._admission_task is not None and self._admission_task.done():
            return "the admission policy check has ended"
        if self._rollouts_task is not None and self._rollouts_task.done():
            return "the rollout controller has ended"
        if not self.dispatcher.healthy():
            return "this replica leads but its dispatcher loop has stopped turning"
        return None
