"""The readiness endpoint answers 503 with the reason until ready, then 200."""

from __future__ import annotations

import aiohttp

from controlplane import free_port
from flag_scheduler.http_server import endpoints_app, serve_endpoints


async def test_readyz_says_why_until_ready() -> None:
    port = free_port()
    why: list[str | None] = ["loading flags and schedules"]
    listener = await serve_endpoints(endpoints_app(ready=lambda: why[0]), "127.0.0.1", port,
                                     "FLAG_SCHEDULER_READY_PORT", 5.0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert (answer.status, await answer.text()) == (503, "loading flags and schedules")
            why[0] = None
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert (answer.status, await answer.text()) == (200, "ok")
            why[0] = "shutting down"
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert answer.status == 503
    finally:
        await listener.close()
