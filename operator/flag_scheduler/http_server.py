"""A bounded aiohttp listener, and the health and metrics endpoints both workloads serve with it.

aiohttp bounds the request line and headers (8 KiB each) and the body (``client_max_size``); this
adds what a reader of the port could otherwise hold open for ever:

- a cap on open connections: one over it is answered ``503`` and closed before anything is read;
- the keep-alive timeout, which aiohttp also applies to a connection that has not finished sending
  its request headers, so a half-sent request is dropped after it like an idle one.

The metrics endpoint runs on the same asyncio loop (not ``prometheus_client``'s thread-per-connection
server, which has no timeout): rendering the registry takes well under a millisecond.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flag_scheduler.logs import get_logger

log = get_logger()

REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refuse(asyncio.Protocol):
    """The connection over the cap: one 503 line, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSED)
        transport.close()


@dataclass
class Listener:
    """One aiohttp app on one port; ``close`` stops accepting, then ends open requests."""

    runner: web.AppRunner
    server: asyncio.Server

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def listen(
    app: web.Application, address: str, port: int, setting: str, *, max_connections: int, keepalive_timeout: float
) -> Listener:
    """Serve ``app`` on ``address:port``; SystemExit naming ``setting`` if the port is taken."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    handlers = runner.server
    assert handlers is not None

    def protocol() -> asyncio.Protocol:
        if len(handlers.connections) >= max_connections:
            return _Refuse()
        return handlers()

    try:
        server = await asyncio.get_running_loop().create_server(protocol, address, port, reuse_address=True)
    except OSError as err:
        await runner.cleanup()
        raise SystemExit(f"{setting}: cannot listen on {address}:{port} ({err})") from None
    return Listener(runner, server)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def endpoints_app(health: Callable[[], str | None] | None = None,
                  ready: Callable[[], str | None] | None = None) -> web.Application:
    """``/metrics``; ``/healthz`` and ``/readyz`` if given: 200 ``ok``, or 500/503 with the problem."""
    app = web.Application(client_max_size=1024)
    app.router.add_get("/metrics", _metrics)
    for path, check, failed in (("/healthz", health, 500), ("/readyz", ready, 503)):
        if check is not None:
            app.router.add_get(path, _probe(check, failed))
    return app


def _probe(check: Callable[[], str | None], failed: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def probe(_: web.Request) -> web.Response:
        problem = check()
        return web.Response(status=failed if problem else 200, text=problem or "ok")

    return probe


async def serve_endpoints(
    app: web.Application, address: str, port: int, setting: str, keepalive_timeout: float
) -> Listener:
    """Health or metrics: at most 64 connections (probes and a scraper need a few)."""
    listener = await listen(app, address, port, setting, max_connections=64, keepalive_timeout=keepalive_timeout)
    log.info("endpoints.serving", port=port, paths=sorted(r.resource.canonical for r in app.router.routes()))
    return listener
