"""``flag-scheduler serve``: the flag server, a workload of its own beside the scheduler.

Stateless and read-only: no Lease, any number of replicas, a ServiceAccount that may only get,
list and watch FeatureFlags. It runs, on one asyncio loop: the FeatureFlag watch (``flag_watch``),
the flagd sync and OFREP listeners (``servers``), and ``/healthz`` + ``/metrics``. Apart from the
scheduler on purpose: whatever a reader of the ports does (thousands of streams, half-sent
requests) costs this process, never the scheduler's Lease renewals or due schedules.

``/healthz`` answers from the first moment, during the initial LIST (a slow LIST must not fail the
liveness probe); the sync and OFREP ports open once the LIST is done, so a client never receives
an empty flag set that is only empty because the server has not read the flags yet, and
``/readyz`` (the readiness probe) holds the Service back until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from flag_scheduler.config import Settings
from flag_scheduler.http_server import Listener, endpoints_app, serve_endpoints
from flag_scheduler.kube import api_client
from flag_scheduler.logs import get_logger
from flag_scheduler.serving.flag_store import FlagStore
from flag_scheduler.serving.flag_watch import FlagWatch
from flag_scheduler.serving.servers import Serving

log = get_logger()


class FlagServer:
    """The flag server's parts, started in order and stopped in reverse."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FlagStore()
        self.watch: FlagWatch | None = None
        self.watching: asyncio.Task | None = None
        self.serving: Serving | None = None
        self.endpoints: list[Listener] = []

    def healthy(self) -> str | None:
        """Why the process is unhealthy (the liveness probe), or None."""
        if self.watching is not None and self.watching.done():
            return "the FeatureFlag watch has ended"
        return None

    def ready(self) -> str | None:
        """Why the process should get no traffic yet (the readiness probe), or None."""
        return None if self.serving is not None else "listing the FeatureFlags"

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; SystemExit naming the setting if a port cannot be used."""
        settings = self.settings
        try:
            await self._endpoints()
            api = await api_client(pool_size=4)
            self.watch = FlagWatch(api, self.store, settings.namespaces)
            self.watching = asyncio.create_task(self.watch.run(), name="flag-watch")
            await _first(self.watch.ready.wait(), stop.wait(), self.watching)
            if not stop.is_set() and not self.watching.done():
                self.serving = await Serving.start(settings, self.store)
                log.info("flag_server.started", namespaces=settings.namespaces or "all",
                         flags_namespaces=len(self.store.namespaces()))
                await _first(stop.wait(), self.watching)
        finally:
            await self.close()
        if self.watching is not None and self.watching.done() and not self.watching.cancelled():
            self.watching.result()  # an unexpected end of the watch: let its exception stop the process

    async def _endpoints(self) -> None:
        s = self.settings
        if s.health_port:
            app = endpoints_app(self.healthy, self.ready)
            self.endpoints.append(await serve_endpoints(
                app, "0.0.0.0", s.health_port, "FLAG_SCHEDULER_HEALTH_PORT", s.http_keepalive_timeout_seconds))
        if s.metrics_port:
            self.endpoints.append(await serve_endpoints(
                endpoints_app(None), "0.0.0.0", s.metrics_port, "FLAG_SCHEDULER_METRICS_PORT",
                s.http_keepalive_timeout_seconds))

    async def close(self) -> None:
        """End every stream cleanly (clients reconnect elsewhere), stop the watch and the endpoints."""
        if self.serving is not None:
            await self.serving.close()
        if self.watching is not None and not self.watching.done():
            self.watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watching
        if self.watch is not None:
            await self.watch.custom.api_client.close()
        for listener in self.endpoints:
            await listener.close()


async def _first(*waits: object) -> None:
    """Wait until the first of these awaitables (or tasks) finishes; cancel the other coroutines."""
    tasks = [w if isinstance(w, asyncio.Task) else asyncio.ensure_future(w) for w in waits]  # type: ignore[arg-type]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, wait in zip(tasks, waits, strict=True):
        if task is not wait:
            task.cancel()


async def serve(settings: Settings) -> None:
    """Run the flag server until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await FlagServer(settings).run(stop)
    log.info("flag_server.stopped")
