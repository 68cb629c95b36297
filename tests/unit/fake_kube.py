"""A narrow in-memory stand-in for ``flag_scheduler.kube.Kube``, for the unit tier of apply and dispatch.

It keeps objects as API-shaped dicts and enforces what the operator relies on: uid and
resourceVersion preconditions (409), 404 for missing objects, merge of metadata/spec/status.
Integration tests use the real API server; this only lets pure-ish steps run in milliseconds.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.models import (
    ANNOTATION_APPLIED_AT,
    ANNOTATION_FENCING_TOKEN,
    ANNOTATION_SCHEDULE,
    ANNOTATION_SCHEDULE_UID,
    ANNOTATION_SCHEDULED_AT,
    FLAGS,
    SCHEDULES,
    Marker,
    ObjectRef,
    exact_time,
    rfc3339,
)


def _error(status: int, reason: str) -> ApiException:
    err = ApiException(status=status, reason=reason)
    err.body = json.dumps({"reason": reason, "message": reason})
    return err


class FakeKube:
    """Objects by (plural, namespace, name); ``fail_next`` injects an error into the next call of a method."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._rv = itertools.count(1)
        self._uid = itertools.count(1)
        self.events: list[tuple[str, str, str]] = []
        self.calls: list[str] = []
        self.hooks: dict[str, Callable[[], None]] = {}
        self.lose_response: set[str] = set()  # writes that land but whose answer never comes back

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        meta = body["metadata"]
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("generation", 1)
        self.objects[(plural, meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        del self.objects[(plural, namespace, name)]

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {plural}/{name}")
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def _write(self, plural: str, ref: ObjectRef, change: Callable[[dict[str, Any]], None], what: str) -> dict:
        self.calls.append(what)
        if what in self.hooks:
            self.hooks.pop(what)()
        obj = self.objects.get((plural, ref.namespace, ref.name))
        if obj is None:
            raise _error(404, "NotFound")
        meta = obj["metadata"]
        if meta["uid"] != ref.uid or meta["resourceVersion"] != ref.resource_version:
            raise _error(409, "Conflict")
        before = copy.deepcopy(obj)
        change(obj)
        if obj == before:  # like the API server: a write that changes nothing is not stored, the version stays
            return copy.deepcopy(obj)
        meta["resourceVersion"] = str(next(self._rv))
        if what in self.lose_response:
            self.lose_response.discard(what)
            raise TimeoutError("the response was lost")
        return copy.deepcopy(obj)

    async def patch_flag_spec(self, flag: ObjectRef, fields: dict[str, Any], marker: Marker, token: str) -> dict:
        def change(obj: dict[str, Any]) -> None:
            notes = obj["metadata"].setdefault("annotations", {})
            notes.update({
                ANNOTATION_SCHEDULE: marker.name, ANNOTATION_SCHEDULE_UID: marker.uid,
                ANNOTATION_SCHEDULED_AT: exact_time(marker.scheduled_at),
                ANNOTATION_APPLIED_AT: rfc3339(marker.applied_at), ANNOTATION_FENCING_TOKEN: token,
            })
            for key, value in marker.notes().items():  # a merge patch: None removes
                if value is None:
                    notes.pop(key, None)
                else:
                    notes[key] = value
            obj["spec"].update(fields)
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        return self._write(FLAGS, flag, change, "patch_flag_spec")

    async def fence_flag(self, flag: ObjectRef, token: str) -> dict:
        def change(obj: dict[str, Any]) -> None:
            obj["metadata"].setdefault("annotations", {})[ANNOTATION_FENCING_TOKEN] = token
        return self._write(FLAGS, flag, change, "fence_flag")

    async def fence_flag_status(self, flag: ObjectRef, token: str) -> dict:
        def change(obj: dict[str, Any]) -> None:
            obj.setdefault("status", {})["fencingToken"] = token
        return self._write(FLAGS, flag, change, "fence_flag_status")

    async def patch_schedule_status(self, ref: ObjectRef, status: dict[str, Any]) -> dict:
        def change(obj: dict[str, Any]) -> None:
            current = obj.setdefault("status", {})
            for key, value in status.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
        return self._write(SCHEDULES, ref, change, "patch_schedule_status")

    async def set_owner(self, ref: ObjectRef, owners: list[dict[str, Any]]) -> dict:
        def change(obj: dict[str, Any]) -> None:
            obj["metadata"]["ownerReferences"] = owners
        return self._write(SCHEDULES, ref, change, "set_owner")

    async def post_event(self, ref: ObjectRef, kind: str, type_: str, reason: str, message: str, now: datetime) -> None:
        self.events.append((ref.name, type_, reason))
