"""Readiness at ``/readyz``: 200 once this replica's book holds every flag and schedule, 503 before and after.

Apart from liveness (Kopf's ``/healthz``, which fails when a leader's dispatcher stops turning, and
makes the kubelet restart the container): a replica still loading its start-up LIST is not dead,
only not ready yet, and a ready follower is ready (it can take over at once, its book is warm).
Readiness turns false again when shutdown begins, so a rolling update sends nothing to a replica
that is leaving.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def serve_readiness(address: str, port: int, ready: Callable[[], str | None]) -> web.AppRunner:
    """Serve ``/readyz`` on ``address:port``; ``ready()`` returns None when ready, else why not."""

    async def readyz(_: web.Request) -> web.Response:
        why = ready()
        return web.Response(text="ok\n" if why is None else f"{why}\n", status=200 if why is None else 503)

    app = web.Application()
    app.add_routes([web.get("/readyz", readyz)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
