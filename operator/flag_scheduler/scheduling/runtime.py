"""The scheduler's runtime, built at Kopf startup: client, book, dispatcher, metrics, leadership.

It serves no flags (that is the flag server, ``flag-scheduler serve``) and listens on no port an
application reaches: only ``/healthz`` and ``/metrics``, both served from before the initial LIST
(Kopf's own liveness endpoint would only open after the startup handler, i.e. after that LIST).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio.client import ApiClient

from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.http_server import Listener, endpoints_app, serve_endpoints
from flag_scheduler.kube import Kube, api_client
from flag_scheduler.scheduling.leader import Leadership, check_lease_namespace
from flag_scheduler.scheduling.namespace_access import NamespaceAccess
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES
from flag_scheduler.scheduling.dispatcher import Dispatcher

log = get_logger()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Runtime:
    """Everything the handlers need, created once per process."""

    def __init__(self, settings: Settings, kube: Kube, lease_api: ApiClient) -> None:
        self.settings = settings
        self.kube = kube
        self.lease_api = lease_api
        self.book = Book(default_ttl=settings.finished_ttl_seconds)
        self.endpoints: list[Listener] = []
        self.ctx = Ctx(kube=kube, book=self.book, settings=settings, clock=utcnow)
        self.dispatcher = Dispatcher(self.ctx)
        self.leadership = Leadership(settings, lease_api, self._lead, self._follow)
        self.ctx.is_leader = self.leadership.fresh
        self.ctx.fencing_token = lambda: self.leadership.term
        self.access = NamespaceAccess(kube, settings.namespaces, settings.lease_namespace, settings.lease_name, utcnow)
        self._task: asyncio.Task | None = None
        self._election: asyncio.Task | None = None
        self._recheck: asyncio.Task | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Connect, load every flag and schedule (so catch-up sees all of them), start dispatching."""
        kube = await Kube.connect(settings.identity, pool_size=settings.max_concurrency * 2)
        # The Lease has its own connections: renewals never queue behind flag work or Events.
        runtime = cls(settings, kube, await api_client(pool_size=2))
        try:
            await runtime._serve_endpoints()
            await check_lease_namespace(settings, kube.api)
        except BaseException:
            await runtime._close_clients()
            raise
        await runtime._load()
        runtime._recheck = asyncio.create_task(runtime.access.recheck(), name="namespace-recheck")
        runtime._task = asyncio.create_task(runtime.dispatcher.run(), name="dispatcher")
        runtime._election = asyncio.create_task(runtime.leadership.run(), name="leader-election")
        log.info("operator.started", identity=settings.identity, live_schedules=runtime.book.pending_count(),
                 finished_schedules=runtime.book.finished_count())
        return runtime

    async def _serve_endpoints(self) -> None:
        """``/healthz`` and ``/metrics``, before the LIST: a long LIST must not fail the liveness probe."""
        s = self.settings
        for port, setting, app in ((s.health_port, "FLAG_SCHEDULER_HEALTH_PORT", endpoints_app(health=self.healthy)),
                                   (s.metrics_port, "FLAG_SCHEDULER_METRICS_PORT", endpoints_app())):
            if port:
                self.endpoints.append(await serve_endpoints(app, "0.0.0.0", port, setting,
                                                            s.http_keepalive_timeout_seconds))

    async def _close_clients(self) -> None:
        for listener in self.endpoints:
            await listener.close()
        await self.kube.close()
        await self.lease_api.close()

    async def _load(self) -> None:
        """Every flag and schedule of the readable watched namespaces into the book (unreadable ones reported)."""
        async for page in self.access.list_pages(FLAGS):
            for body in page:
                self.book.observe_flag(None, body)
        async for page in self.access.list_pages(SCHEDULES):
            for body in page:
                self.book.observe_schedule(None, body)

    async def _lead(self) -> None:
        """Became leader: plan every flag from the (warm) book and start applying."""
        self.dispatcher.leading.set()
        self.dispatcher.replan_all()

    async def _follow(self) -> None:
        """Lost the Lease: stop applying at once; watches keep the book warm for the next term."""
        self.dispatcher.leading.clear()
        await self.dispatcher.stop()

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a schedule: update the book and re-plan the flags it touched."""
        for flag in self.book.observe_schedule(event_type, body):
            self.dispatcher.plan(flag)

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a flag: update the book and re-plan its schedules."""
        key = self.book.observe_flag(event_type, body)
        if key is not None:
            self.dispatcher.plan(key)

    async def close(self) -> None:
        """Stop applying, hand the Lease over, close the client and the metrics endpoint."""
        for task in (self._recheck, self._election, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.dispatcher.stop()
        await self.leadership.release()
        await asyncio.gather(*self.ctx.background, return_exceptions=True)
        await self._close_clients()

    def healthy(self) -> str | None:
        """Why this replica is unhealthy (for the liveness probe), or None."""
        if self._election is not None and self._election.done():
            return "the leader election task has ended"
        if not self.dispatcher.healthy():
            return "this replica leads but its dispatcher loop has stopped turning"
        return None
