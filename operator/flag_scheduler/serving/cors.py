"""CORS for OFREP: browsers (client-side providers) on the allowed origins may call it.

An OFREP call from a page is a JSON ``POST``, so the browser first sends a preflight ``OPTIONS``.
For an origin in ``FLAG_SCHEDULER_CORS_ORIGINS`` the preflight is answered ``204`` allowing
``POST`` with the headers the page asked for (``Content-Type``, ``If-None-Match``, ...), and every
answer names the origin and exposes ``ETag`` so the provider can send it back. Any other origin
gets no CORS header (a preflight gets ``403`` saying why), so its page cannot read the answers;
servers and SDKs outside a browser send no ``Origin`` and are not affected. Default: no origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

PREFLIGHT_MAX_AGE = "600"  # seconds a browser may reuse a preflight answer
ALLOWED_HEADERS = "Content-Type, If-None-Match, Authorization"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_headers(origin: str, allowed: frozenset[str]) -> dict[str, str]:
    """The CORS headers of an answer to ``origin`` (none unless it is allowed)."""
    if origin not in allowed:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": "ETag", "Vary": "Origin"}


def preflight_headers(origin: str, allowed: frozenset[str], requested_headers: str) -> dict[str, str] | None:
    """The answer headers of a preflight from ``origin``; None if the origin is not allowed."""
    headers = cors_headers(origin, allowed)
    if not headers:
        return None
    headers.update({
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": requested_headers or ALLOWED_HEADERS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
    })
    return headers


def cors_middleware(allowed: frozenset[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware applying ``allowed`` (exact origins, as browsers send them)."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers = preflight_headers(origin, allowed, request.headers.get("Access-Control-Request-Headers", ""))
            if headers is None:
                return web.Response(status=403, text=f"origin {origin[:200]!r} is not in FLAG_SCHEDULER_CORS_ORIGINS")
            return web.Response(status=204, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException as err:  # the router's 404/405 are answers too
            response = err
        response.headers.update(cors_headers(origin, allowed))
        return response

    return cors
