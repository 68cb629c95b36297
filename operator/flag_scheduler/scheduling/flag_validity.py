"""The FeatureFlag condition ``InvalidSpec``: a flag the flag servers cannot serve as written.

The API server checks what it can (schema and CEL); a targeting rule against flagd's schema, sizes
of free-form JSON, and flags stored before a CRD rule existed are checked here, with the same
function the flag servers use (``flag_definition``). Those keep serving the flag's last valid
definition; this module tells its owner why, on the flag (``kubectl describe``, Argo CD health).

Writes stay rare: a valid flag without the condition is never written, so a schedule that lands
costs nothing more. The condition is set (``True``, with the field and the problem, and a Warning
Event) when a flag turns invalid, and turned ``False`` when it is valid again. Only the leader
writes; every replica keeps the flags whose condition is stale, so a new leader writes them first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import ObjectRef, rfc3339
from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.serving.flag_definitions import flag_definition

INVALID_SPEC = "InvalidSpec"
log = get_logger()
Key = tuple[str, str]


def spec_problem(spec: dict[str, Any]) -> str | None:
    """Why the flag servers cannot serve this spec (None if they can)."""
    try:
        flag_definition(spec)
    except ValueError as err:
        return str(err)[:4000]
    return None


def wanted_condition(body: dict[str, Any], now_text: str) -> dict[str, Any] | None:
    """The ``InvalidSpec`` condition the flag should carry, or None if the one it has is right."""
    meta = body.get("metadata") or {}
    problem = spec_problem(body.get("spec") or {})
    conditions = (body.get("status") or {}).get("conditions") or []
    held = next((c for c in conditions if isinstance(c, dict) and c.get("type") == INVALID_SPEC), None)
    generation = meta.get("generation", 0)
    if problem is None:
        if held is None or held.get("status") == "False":
            return None
        status, reason = "False", "Valid"
        message = f"served as written since generation {generation}"
    else:
        status, reason = "True", INVALID_SPEC
        message = f"{problem}; flag servers keep serving its last valid definition, if it had one"
        if held is not None and held.get("status") == "True" and held.get("message") == message:
            return None
    since = held["lastTransitionTime"] if held is not None and held.get("status") == status else now_text
    return {"type": INVALID_SPEC, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


class FlagValidity:
    """Flags whose ``InvalidSpec`` condition is stale, and the leader's writes that fix them."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.stale: dict[Key, dict[str, Any]] = {}  # the latest body of each such flag
        self._writing: dict[Key, asyncio.Task] = {}

    def observe(self, event_type: str | None, body: dict[str, Any], leading: bool) -> None:
        """A flag watch event: note whether its condition is stale; the leader fixes it at once."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED" or wanted_condition(body, "") is None:
            self.stale.pop(key, None)
            return
        self.stale[key] = body
        if leading:
            self._write(key)

    def write_all(self) -> None:
        """Became leader: fix every stale condition."""
        for key in list(self.stale):
            self._write(key)

    def _write(self, key: Key) -> None:
        if key in self._writing:
            return  # the write in flight is followed by a watch event that re-checks the flag
        task = asyncio.create_task(self._patch(key))
        self._writing[key] = task
        self.ctx.background.add(task)
        task.add_done_callback(lambda t: (self._writing.pop(key, None), self.ctx.background.discard(t)))

    async def _patch(self, key: Key) -> None:
        body = self.stale.get(key)
        condition = None if body is None else wanted_condition(body, rfc3339(self.ctx.clock()))
        if body is None or condition is None or not self.ctx.is_leader():
            return
        ref = ObjectRef.from_meta(body["metadata"])
        kept = [c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") != INVALID_SPEC]
        try:
            await self.ctx.kube.patch_flag_status(ref, {"conditions": [*kept, condition]})
        except (ApiException, *TRANSPORT_ERRORS) as err:
            # 409: the flag changed; its watch event re-checks it. Others: the next event or leader.
            log.warning("flag.condition_failed", namespace=key[0], flag=key[1], error=describe(err))
            return
        log.info("flag.invalid_spec" if condition["status"] == "True" else "flag.valid_again",
                 namespace=key[0], flag=key[1], message=condition["message"])
        if condition["status"] == "True":
            self.ctx.event_about(ref, "FeatureFlag", "Warning", INVALID_SPEC, condition["message"])
