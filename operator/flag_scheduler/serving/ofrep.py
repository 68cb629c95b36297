"""OFREP (OpenFeature Remote Evaluation Protocol) over HTTP, for SDKs that evaluate remotely.

The first path segment is the namespace, so a client's base URL is ``http://host:port/<namespace>``
and the standard paths follow it:

- ``POST /<namespace>/ofrep/v1/evaluate/flags/{key}``: one flag; 404 ``FLAG_NOT_FOUND`` if absent.
- ``POST /<namespace>/ofrep/v1/evaluate/flags``: every flag of the namespace, with an ``ETag``;
  a request whose ``If-None-Match`` carries it gets ``304 Not Modified`` until a flag changes. The
  ETag covers the flag set *and* the request's context, since the answer depends on both.

Bounded (settings in ``config.py``): connections per replica (one over is answered 503 and
closed), the body's size (413) and the time to send it (408), the keep-alive timeout (an idle or
half-sent connection is closed). Every malformed request is a 400 with OFREP's error body, whatever
the parser raised (65,000 ``[`` are a ``RecursionError`` in ``json``), and no error repeats more
than ``ECHOED_CHARS`` of what the client sent.

Evaluation is flagd's own evaluator (``openfeature-flagd-core``, the one the Python in-process
provider runs) on the same flag set the sync stream sends. Which other SDKs bucket rollouts alike is
measured, not assumed: see the README's agreement table and ``tests/integration/test_sdk_clients.py``.

Every body, success or error, carries ``metadata`` (at least the flag set's ``flagSetId``): OFREP
providers copy it into the evaluation details, and may read it from error bodies too.
``reason`` stays within OFREP's enum: flagd's ``DEFAULT`` (a rule ran and matched nothing: a
rollout evaluated without a targeting key) is answered as ``UNKNOWN``, not ``STATIC``, because a
client may keep a ``STATIC`` answer for every context, and this one depends on the context.
Browsers reach it from the origins in ``FLAG_SCHEDULER_CORS_ORIGINS`` (``serving/cors.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from aiohttp import web
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, OpenFeatureError

from flag_scheduler.config import Settings
from flag_scheduler.http_server import Listener, listen
from flag_scheduler.serving.cors import cors_middleware
from flag_scheduler.serving.flag_definitions import namespace_problem
from flag_scheduler.serving.flag_store import FlagStore, Snapshot
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import OFREP_REQUESTS

log = get_logger()

ECHOED_CHARS = 128
OFREP_REASONS = frozenset({"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"})
STORE: web.AppKey[FlagStore] = web.AppKey("store", FlagStore)
READ_TIMEOUT: web.AppKey[float] = web.AppKey("read_timeout", float)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)


class BadRequest(Exception):
    """A request OFREP answers with an error code (400 unless ``status`` says otherwise)."""

    def __init__(self, code: ErrorCode, details: str, status: int = 400) -> None:
        super().__init__(details)
        self.code, self.details, self.status = code, details, status


def echo(text: str) -> str:
    """Client input as it may appear in an answer: at most ``ECHOED_CHARS`` characters."""
    return text if len(text) <= ECHOED_CHARS else text[:ECHOED_CHARS] + f"... ({len(text)} chars)"


async def evaluate_one(request: web.Request) -> web.Response:
    """``POST .../ofrep/v1/evaluate/flags/{key}``."""
    key = request.match_info["key"]
    try:
        snap, context = await _read(request)
        result = _evaluate(snap, key, context)
    except BadRequest as err:
        return _reply(err.status, failure_body(err.code, err.details, _set_metadata(request), echo(key)))
    if result.get("errorCode") == ErrorCode.FLAG_NOT_FOUND.value:
        return _reply(404, result)
    return _reply(400 if "errorCode" in result else 200, result)


async def evaluate_all(request: web.Request) -> web.Response:
    """``POST .../ofrep/v1/evaluate/flags``: the whole namespace, ETag/If-None-Match → 304."""
    try:
        snap, context = await _read(request)
        etag = '"' + hashlib.sha256(f"{snap.etag}|{_canonical(context)}".encode()).hexdigest()[:24] + '"'
    except BadRequest as err:
        return _reply(err.status, failure_body(err.code, err.details, _set_metadata(request)))
    tags = _tags(request.headers.get("If-None-Match", ""))
    if etag in tags or "*" in tags:
        OFREP_REQUESTS.labels("304").inc()
        return web.Response(status=304, headers={"ETag": etag})
    flags = [_evaluate(snap, key, context) for key in snap.keys]
    return _reply(200, {"flags": flags, "metadata": _set_metadata(request)}, etag)


async def _read(request: web.Request) -> tuple[Snapshot, EvaluationContext]:
    """The namespace's flag set and the request's evaluation context; BadRequest naming the field."""
    namespace = request.match_info["namespace"]
    problem = namespace_problem(namespace)
    if problem:
        raise BadRequest(ErrorCode.GENERAL, f"path: {echo(problem)}")
    body = _parse(await _body(request))
    if not isinstance(body, dict):
        raise BadRequest(ErrorCode.PARSE_ERROR, "body: must be a JSON object")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest(ErrorCode.INVALID_CONTEXT, "context: must be a JSON object")
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        raise BadRequest(ErrorCode.INVALID_CONTEXT, "context.targetingKey: must be a string")
    attributes = {k: v for k, v in context.items() if k != "targetingKey"}
    try:
        evaluation_context = EvaluationContext(targeting_key, attributes)
    except (TypeError, ValueError) as err:
        raise BadRequest(ErrorCode.INVALID_CONTEXT, f"context: {echo(str(err))}") from None
    return request.app[STORE].snapshot(namespace), evaluation_context


async def _body(request: web.Request) -> bytes:
    """The request body, within the size and time limits (413, 408)."""
    if not request.can_read_body:
        return b""
    try:
        return await asyncio.wait_for(request.read(), request.app[READ_TIMEOUT])
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        raise BadRequest(ErrorCode.GENERAL, f"body: larger than {limit} bytes", 413) from None
    except TimeoutError:
        raise BadRequest(ErrorCode.GENERAL, f"body: not sent within {request.app[READ_TIMEOUT]:g} s", 408) from None


def _parse(data: bytes) -> Any:
    """The body as JSON; PARSE_ERROR for anything the parser refuses, however it refuses it."""
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest(ErrorCode.PARSE_ERROR, "body: JSON nested too deeply") from None
    except ValueError as err:  # also UnicodeDecodeError
        raise BadRequest(ErrorCode.PARSE_ERROR, f"body: not JSON ({echo(str(err))})") from None


def _evaluate(snap: Snapshot, key: str, context: EvaluationContext) -> dict[str, Any]:
    """One flag as OFREP's evaluation success or failure object."""
    set_metadata = {"flagSetId": snap.namespace}
    try:
        details = snap.evaluate(key, context)
    except OpenFeatureError as err:
        return failure_body(err.error_code, echo(err.error_message or str(err)), set_metadata, echo(key))
    except (RecursionError, TypeError, ValueError) as err:  # a context the evaluator cannot walk
        return failure_body(ErrorCode.INVALID_CONTEXT, echo(str(err)), set_metadata, echo(key))
    reason = str(details.reason.value)
    return {
        "key": key, "value": details.value, "variant": details.variant,
        "reason": reason if reason in OFREP_REASONS else "UNKNOWN",
        "metadata": {**set_metadata, **(details.flag_metadata or {})},
    }


def failure_body(code: ErrorCode, details: str, metadata: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """OFREP's failure object (one flag's, with ``key``; the bulk request's, without)."""
    body: dict[str, Any] = {"key": key} if key is not None else {}
    body.update(errorCode=code.value, errorDetails=details, metadata=metadata)
    return body


def _set_metadata(request: web.Request) -> dict[str, Any]:
    """The flag set's metadata, from the path (only a valid namespace is named back)."""
    namespace = request.match_info["namespace"]
    return {} if namespace_problem(namespace) else {"flagSetId": namespace}


def _reply(status: int, body: dict[str, Any], etag: str | None = None) -> web.Response:
    OFREP_REQUESTS.labels(str(status)).inc()
    return web.json_response(body, status=status, headers={"ETag": etag} if etag else None)


def _canonical(context: EvaluationContext) -> str:
    try:
        return json.dumps([context.targeting_key, context.attributes], sort_keys=True, default=str)
    except RecursionError:
        raise BadRequest(ErrorCode.PARSE_ERROR, "body: JSON nested too deeply") from None


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def ofrep_app(store: FlagStore, settings: Settings) -> web.Application:
    """The OFREP routes on ``store``, answering browsers from ``FLAG_SCHEDULER_CORS_ORIGINS``."""
    app = web.Application(client_max_size=settings.ofrep_max_body_bytes,
                          middlewares=[cors_middleware(frozenset(settings.cors_origins))])
    app[STORE] = store
    app[READ_TIMEOUT] = settings.ofrep_read_timeout_seconds
    app[MAX_BODY] = settings.ofrep_max_body_bytes
    app.router.add_post("/{namespace}/ofrep/v1/evaluate/flags", evaluate_all)
    app.router.add_post("/{namespace}/ofrep/v1/evaluate/flags/{key}", evaluate_one)
    return app


async def start_ofrep_server(store: FlagStore, settings: Settings) -> Listener:
    """Serve OFREP on the OFREP port; SystemExit naming the setting if the port is taken."""
    # flagd's core logs an error for each fractional evaluation without a targeting key; OFREP
    # already answers those (reason UNKNOWN, flagd's DEFAULT), so the log would only repeat it.
    logging.getLogger("openfeature.contrib").setLevel(logging.CRITICAL)
    address, port = settings.serve_address, settings.ofrep_port
    listener = await listen(
        ofrep_app(store, settings), address, port, "FLAG_SCHEDULER_OFREP_PORT",
        max_connections=settings.ofrep_max_connections, keepalive_timeout=settings.http_keepalive_timeout_seconds,
    )
    log.info("ofrep.serving", address=address, port=port, max_connections=settings.ofrep_max_connections)
    return listener
