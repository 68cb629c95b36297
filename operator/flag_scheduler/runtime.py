"""The operator's runtime, built at Kopf startup: client, book, dispatcher, metrics, leadership."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from prometheus_client import start_http_server

from flag_scheduler.apply import Ctx
from flag_scheduler.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.kube import Kube
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, SCHEDULES
from flag_scheduler.scheduler import Dispatcher

log = get_logger()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Runtime:
    """Everything the handlers need, created once per process."""

    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.book = Book()
        self.ctx = Ctx(kube=kube, book=self.book, settings=settings, clock=utcnow)
        self.dispatcher = Dispatcher(self.ctx)
        self._task: asyncio.Task | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Connect, load every flag and schedule (so catch-up sees all of them), start dispatching."""
        kube = await Kube.connect(settings.identity, pool_size=settings.max_concurrency * 2)
        runtime = cls(settings, kube)
        if settings.metrics_port:
            start_http_server(settings.metrics_port)
        for body in await kube.list_all(FLAGS, settings.namespaces):
            runtime.book.put_flag(body)
        for body in await kube.list_all(SCHEDULES, settings.namespaces):
            runtime.book.put_schedule(body)
        runtime.dispatcher.replan_all()
        runtime._task = asyncio.create_task(runtime.dispatcher.run(), name="dispatcher")
        runtime.dispatcher.leading.set()  # single replica: lead at once
        log.info("operator.started", identity=settings.identity, schedules=len(runtime.book.schedules))
        return runtime

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a schedule: update the book and re-plan its flag."""
        meta = body["metadata"]
        if event_type == "DELETED":
            flag = self.book.drop_schedule(meta["namespace"], meta["name"])
        else:
            flag = self.book.put_schedule(body)
        if flag is not None:
            self.dispatcher.plan(flag)

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event for a flag: update the book and re-plan its schedules."""
        meta = body["metadata"]
        if event_type == "DELETED":
            key = self.book.drop_flag(meta["namespace"], meta["name"])
        else:
            key = self.book.put_flag(body)
        if key is not None:
            self.dispatcher.plan(key)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.dispatcher.stop()
        await asyncio.gather(*self.ctx.background, return_exceptions=True)
        await self.kube.close()
