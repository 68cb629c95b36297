"""OFREP (OpenFeature Remote Evaluation Protocol) over HTTP, for SDKs that evaluate remotely.

The first path segment is the namespace, so a client's base URL is ``http://host:port/<namespace>``
and the standard paths follow it:

- ``POST /<namespace>/ofrep/v1/evaluate/flags/{key}``: one flag; 404 ``FLAG_NOT_FOUND`` if absent.
- ``POST /<namespace>/ofrep/v1/evaluate/flags``: every flag of the namespace, with an ``ETag``;
  a request whose ``If-None-Match`` carries it gets ``304 Not Modified`` until a flag changes. The
  ETag covers the flag set *and* the request's context, since the answer depends on both.

Evaluation is flagd's own evaluator (``openfeature-flagd-core``, the one in-process providers run)
on the same flag set the sync stream sends, so both protocols answer alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from aiohttp import web
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, OpenFeatureError

from flag_scheduler.serving.flag_definitions import namespace_problem
from flag_scheduler.serving.flag_store import FlagStore, Snapshot
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import OFREP_REQUESTS

log = get_logger()

MAX_BODY = 64 * 1024  # an evaluation context is small; a larger body is refused with 413
STORE: web.AppKey[FlagStore] = web.AppKey("store", FlagStore)


class BadRequest(Exception):
    """A request OFREP answers with 400 and an error code."""

    def __init__(self, code: ErrorCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


async def evaluate_one(request: web.Request) -> web.Response:
    """``POST .../ofrep/v1/evaluate/flags/{key}``."""
    key = request.match_info["key"]
    try:
        snap, context = await _read(request)
        result = _evaluate(snap, key, context)
    except BadRequest as err:
        return _reply(400, {"key": key, "errorCode": err.code.value, "errorDetails": err.details})
    if result.get("errorCode") == ErrorCode.FLAG_NOT_FOUND.value:
        return _reply(404, result)
    return _reply(400 if "errorCode" in result else 200, result)


async def evaluate_all(request: web.Request) -> web.Response:
    """``POST .../ofrep/v1/evaluate/flags``: the whole namespace, ETag/If-None-Match → 304."""
    try:
        snap, context = await _read(request)
    except BadRequest as err:
        return _reply(400, {"errorCode": err.code.value, "errorDetails": err.details})
    etag = '"' + hashlib.sha256(f"{snap.etag}|{_canonical(context)}".encode()).hexdigest()[:24] + '"'
    tags = _tags(request.headers.get("If-None-Match", ""))
    if etag in tags or "*" in tags:
        OFREP_REQUESTS.labels("304").inc()
        return web.Response(status=304, headers={"ETag": etag})
    flags = [_evaluate(snap, key, context) for key in snap.keys]
    return _reply(200, {"flags": flags, "metadata": {"flagSetId": snap.namespace}}, etag)


async def _read(request: web.Request) -> tuple[Snapshot, EvaluationContext]:
    """The namespace's flag set and the request's evaluation context; BadRequest naming the field."""
    namespace = request.match_info["namespace"]
    problem = namespace_problem(namespace)
    if problem:
        raise BadRequest(ErrorCode.GENERAL, f"path: {problem}")
    body: Any = {}
    if request.can_read_body:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as err:
            raise BadRequest(ErrorCode.PARSE_ERROR, f"body: not JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest(ErrorCode.PARSE_ERROR, "body: must be a JSON object")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest(ErrorCode.INVALID_CONTEXT, "context: must be a JSON object")
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        raise BadRequest(ErrorCode.INVALID_CONTEXT, "context.targetingKey: must be a string")
    attributes = {k: v for k, v in context.items() if k != "targetingKey"}
    return request.app[STORE].snapshot(namespace), EvaluationContext(targeting_key, attributes)


def _evaluate(snap: Snapshot, key: str, context: EvaluationContext) -> dict[str, Any]:
    """One flag as OFREP's evaluation success or failure object."""
    try:
        details = snap.evaluate(key, context)
    except OpenFeatureError as err:
        return {"key": key, "errorCode": err.error_code.value, "errorDetails": err.error_message or str(err)}
    out: dict[str, Any] = {"key": key, "value": details.value, "reason": str(details.reason.value)}
    out["variant"] = details.variant
    out["metadata"] = dict(details.flag_metadata or {})
    return out


def _reply(status: int, body: dict[str, Any], etag: str | None = None) -> web.Response:
    OFREP_REQUESTS.labels(str(status)).inc()
    return web.json_response(body, status=status, headers={"ETag": etag} if etag else None)


def _canonical(context: EvaluationContext) -> str:
    return json.dumps([context.targeting_key, context.attributes], sort_keys=True, default=str)


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def ofrep_app(store: FlagStore) -> web.Application:
    """The OFREP routes on ``store``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STORE] = store
    app.router.add_post("/{namespace}/ofrep/v1/evaluate/flags", evaluate_all)
    app.router.add_post("/{namespace}/ofrep/v1/evaluate/flags/{key}", evaluate_one)
    return app


async def start_ofrep_server(store: FlagStore, address: str, port: int) -> web.AppRunner:
    """Serve OFREP on ``address:port``; SystemExit naming the setting if the port is taken."""
    # flagd's core logs an error for each fractional evaluation without a targeting key; OFREP
    # already answers those with reason DEFAULT, so the log would only repeat it per request.
    logging.getLogger("openfeature.contrib").setLevel(logging.CRITICAL)
    runner = web.AppRunner(ofrep_app(store), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port, reuse_address=True).start()
    except OSError as err:
        await runner.cleanup()
        raise SystemExit(f"FLAG_SCHEDULER_OFREP_PORT: cannot listen on {address}:{port} ({err})") from None
    log.info("ofrep.serving", address=address, port=port)
    return runner
