"""The operator's runtime, built at Kopf startup: client, book, dispatcher, metrics, leadership."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio.client import ApiClient
from prometheus_client import start_http_server

from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.serving.flag_store import FlagStore
from flag_scheduler.kube import Kube, api_client
from flag_scheduler.scheduling.leader import Leadership, check_lease_namespace
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.serving.servers import Serving
from flag_scheduler.rollout.controller import RolloutController
from flag_scheduler.rollout.models import ROLLOUTS

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
        self.flag_store = FlagStore()  # what SDKs read; apart from the book
        self.serving: Serving | None = None
        self.ctx = Ctx(kube=kube, book=self.book, settings=settings, clock=utcnow)
        self.dispatcher = Dispatcher(self.ctx)
        self.leadership = Leadership(settings, lease_api, self._lead, self._follow)
        self.ctx.is_leader = self.leadership.fresh
        self.ctx.fencing_token = lambda: self.leadership.term
        # FlagRollouts: a controller of its own that creates FlagSchedules, acting only while leading.
        self.rollouts = RolloutController(kube, utcnow, self.book.flag, self.leadership.fresh)
        self._rollouts_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._election: asyncio.Task | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Connect, load every flag and schedule (so catch-up sees all of them), start dispatching."""
        kube = await Kube.connect(settings.identity, pool_size=settings.max_concurrency * 2)
        try:
            await check_lease_namespace(settings, kube.api)
        except SystemExit:
            await kube.close()
            raise
        # The Lease has its own connections: renewals never queue behind flag work or Events.
        runtime = cls(settings, kube, await api_client(pool_size=2))
        if settings.metrics_port:
            start_http_server(settings.metrics_port)
        async for page in kube.list_pages(FLAGS, settings.namespaces):
            for body in page:
                runtime.book.observe_flag(None, body)
                runtime.flag_store.put(body)
        async for page in kube.list_pages(SCHEDULES, settings.namespaces):
            for body in page:
                runtime.book.observe_schedule(None, body)
                runtime.rollouts.observe_schedule(None, body)
        async for page in kube.list_pages(ROLLOUTS, settings.namespaces):
            for body in page:
                runtime.rollouts.observe_rollout(None, body)
        try:
            runtime.serving = await Serving.start(settings, runtime.flag_store)
        except BaseException:
            await kube.close()
            await runtime.lease_api.close()
            raise
        runtime._task = asyncio.create_task(runtime.dispatcher.run(), name="dispatcher")
        runtime._rollouts_task = asyncio.create_task(runtime.rollouts.run(), name="rollouts")
        runtime._election = asyncio.create_task(runtime.leadership.run(), name="leader-election")
        log.info("operator.started", identity=settings.identity, live_schedules=runtime.book.pending_count(),
                 finished_schedules=runtime.book.finished_count())
        return runtime

    async def _lead(self) -> None:
        """Became leader: plan every flag from the (warm) book and start applying."""
        self.dispatcher.leading.set()
        self.dispatcher.replan_all()
        self.rollouts.lead()

    async def _follow(self) -> None:
        """Lost the Lease: stop applying at once; watches keep the book warm for the next term."""
        self.dispatcher.leading.clear()
        self.rollouts.follow()
        await self.dispatcher.stop()
        await self.rollouts.close()

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a schedule: update the book and re-plan the flags it touched."""
        for flag in self.book.observe_schedule(event_type, body):
            self.dispatcher.plan(flag)
        self.rollouts.observe_schedule(event_type, body)

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a flag: update the book and re-plan its schedules."""
        self.flag_store.observe(event_type, body)
        key = self.book.observe_flag(event_type, body)
        if key is not None:
            self.dispatcher.plan(key)
        meta = body.get("metadata") or {}
        self.rollouts.observe_flag((meta.get("namespace", ""), meta.get("name", "")))

    def observe_rollout(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a FlagRollout: its controller looks at it again."""
        self.rollouts.observe_rollout(event_type, body)

    async def close(self) -> None:
        """Stop serving flags, stop applying, hand the Lease over, close the client."""
        if self.serving is not None:
            await self.serving.close()
        for task in (self._election, self._task, self._rollouts_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.dispatcher.stop()
        await self.rollouts.close()
        await self.leadership.release()
        await asyncio.gather(*self.ctx.background, return_exceptions=True)
        await self.kube.close()
        await self.lease_api.close()

    def healthy(self) -> str | None:
        """Why this replica is unhealthy (for the liveness probe), or None."""
        if self._election is not None and self._election.done():
            return "the leader election task has ended"
        if not self.dispatcher.healthy():
            return "this replica leads but its dispatcher loop has stopped turning"
        return None
