"""Every request the operator makes to the API server, through the official ``kubernetes.aio`` client.

Writes are JSON merge patches. Spec and metadata patches of a flag use the field manager
``flag-scheduler`` (so Argo CD can ignore exactly those fields). Every write of an existing object
carries ``metadata.uid`` and ``metadata.resourceVersion``, which the API server treats as
preconditions (409 on mismatch): a write never lands on a re-created namesake or on a version the
operator has not seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.models import (
    ANNOTATION_APPLIED_AT,
    ANNOTATION_FENCING_TOKEN,
    ANNOTATION_SCHEDULE,
    ANNOTATION_SCHEDULE_UID,
    ANNOTATION_SCHEDULED_AT,
    FIELD_MANAGER,
    FLAGS,
    GROUP,
    SCHEDULES,
    VERSION,
    Marker,
    ObjectRef,
    exact_time,
    rfc3339,
)

MERGE = "application/merge-patch+json"
T = TypeVar("T")
# Failures below HTTP: the server did not answer.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


# The CRD bounds status.lastError (and condition messages) so one odd error cannot bloat etcd.
MAX_ERROR_LENGTH = 4096


def describe(err: BaseException) -> str:
    """A one-line error for status.lastError: HTTP status, reason and the server's message."""
    return _describe(err)[:MAX_ERROR_LENGTH]


def _describe(err: BaseException) -> str:
    if isinstance(err, ApiException):
        message = ""
        try:
            body = json.loads(err.body or "{}")
            message = body.get("message", "")
            reason = body.get("reason") or err.reason
        except ValueError:
            reason, message = err.reason, (err.body or "")[:300]
        return f"{err.status} {reason}: {message}".strip()
    return f"{type(err).__name__}: {err}"


def _preconditions(ref: ObjectRef, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """``metadata`` that makes the API server refuse the write (409) unless uid and version match."""
    meta: dict[str, Any] = {"uid": ref.uid, "resourceVersion": ref.resource_version}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta}


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


# Every request is bounded: an answer within this many seconds or a timeout (an ApplyFailure).
REQUEST_TIMEOUT = 30.0
# Objects per LIST page: memory stays flat however many schedules the cluster holds. The API server
# serves each page of a LIST from its watch cache by walking every object from the page's start to
# the end of the kind, so the pages of one LIST cost it O(objects² / PAGE_SIZE): at 110,000 schedules
# 500 a page took 18 to 24 CPU-s of it, 5,000 10 to 15. A page is decoded one object at a time
# (``Page``), so its size costs the operator the page's text (about 7 MB), not its decoded objects.
PAGE_SIZE = 5000


# The server ends each WATCH after this; it is resumed from the last resourceVersion seen.
WATCH_SECONDS = 240
MAX_LINE = 8 * 1024 * 1024  # one watch event; etcd refuses objects above ~1.5 MiB


def version_number(resource_version: str) -> int:
    """resourceVersions are opaque, but etcd-backed ones are increasing integers; -1 if not."""
    return int(resource_version) if resource_version.isdigit() else -1


class Page:
    """One page of a LIST: its objects, and the LIST's metadata (its resourceVersion is the same on
    every page). Decoded from the response's text one object at a time, as the objects are taken:
    the decoded objects of a page never all live at once (decoded whole, 5,000 schedules took about
    30 MB at a time, and Python's allocator keeps what it once held). ``meta`` is complete once
    ``items`` has been taken to its end (the API server writes ``metadata`` after ``items``)."""

    def __init__(self, items: Iterable[dict[str, Any]], meta: dict[str, Any] | None = None) -> None:
        self.items, self.meta = items, meta if meta is not None else {}

    @classmethod
    def decode(cls, text: str) -> Page:
        meta: dict[str, Any] = {}
        return cls(_list_objects(text, meta), meta)

    @property
    def version(self) -> str:
        return self.meta.get("resourceVersion", "")


_DECODE = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")


def _list_objects(text: str, meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The objects of a LIST response's ``items``, one at a time; its ``metadata`` into ``meta``.

    Malformed JSON raises ``ValueError`` (``json.JSONDecodeError``), as ``json.loads`` would, though
    possibly after the objects before the fault were taken (a repeated key is not looked for).
    """
    def skip(at: int, *expected: str) -> int:
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]  (always matches)
        if expected and text[at:at + 1] not in expected:
            raise json.JSONDecodeError(f"expected {' or '.join(expected)}", text, at)
        return at

    i = skip(skip(0, "{") + 1, '"', "}")
    while text[i:i + 1] != "}":
        key, i = _DECODE(text, i)
        i = skip(skip(i, ":") + 1)
        if key == "items" and text[i:i + 1] == "[":
            i = skip(i + 1)
            while text[i:i + 1] != "]":
                item, i = _DECODE(text, i)
                yield item
                i = skip(i, ",", "]")
                if text[i] == ",":
                    i = skip(i + 1)
                    if text[i:i + 1] == "]":
                        raise json.JSONDecodeError("a comma before ]", text, i)
            i += 1
        else:
            value, i = _DECODE(text, i)
            if key == "metadata" and isinstance(value, dict):
                meta.update(value)
        i = skip(i, ",", "}")
        if text[i] == ",":
            i = skip(i + 1, '"')
    if skip(i + 1) != len(text):
        raise json.JSONDecodeError("extra data", text, skip(i + 1))


async def watch_events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a watch response, one per line (lines of any size up to ``MAX_LINE``)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
        if len(buffer) > MAX_LINE:
            raise aiohttp.ClientPayloadError(f"a watch event larger than {MAX_LINE} bytes")


async def api_client(pool_size: int) -> client.ApiClient:
    """An API client with its own connection pool: in-cluster config in a pod, else ``$KUBECONFIG``."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    # aiohttp's trust_env reads proxy variables and ~/.netrc on every request (in a thread):
    # about a tenth of the operator's CPU in the burst profile. Keep it only when a proxy is set.
    configuration.client_session_kwargs = {"trust_env": any(os.environ.get(v) for v in PROXY_VARIABLES)}
    return client.ApiClient(configuration)


class Kube:
    """The operator's API client: flags, schedules, events. Every call has ``REQUEST_TIMEOUT``."""

    def __init__(self, api: client.ApiClient, identity: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.identity = identity
        self.timeout = timeout

    @classmethod
    async def connect(cls, identity: str, pool_size: int) -> Kube:
        """Load in-cluster config in a pod, else ``$KUBECONFIG``/``~/.kube/config``."""
        return cls(await api_client(pool_size), identity)

    async def close(self) -> None:
        await self.api.close()

    async def list_pages(self, plural: str, namespace: str | None, patience: float = 60.0,
                         field_selector: str | None = None) -> AsyncIterator[Page]:
        """One LIST of a kind in one namespace (None: every namespace), page by page, at one resourceVersion.

        With ``field_selector``, only the objects it matches (a CRD's ``selectableFields``).

        Retries a page for up to ``patience`` seconds while the server is not ready to answer (429
        while a new CRD's storage initializes, 5xx, connection errors), as happens right after install.
        """
        token: str | None = None
        while True:
            page = Page.decode(await self._with_patience(
                lambda: self._list_page(plural, namespace, token, field_selector), patience))
            yield page
            for _ in page.items:  # the rest of a page the caller did not take: its metadata comes after
                pass
            token = page.meta.get("continue")
            if not token:
                return

    async def _list_page(self, plural: str, ns: str | None, token: str | None,
                         field_selector: str | None) -> str:
        """One page's text (read as bytes: the generated client would decode every object at once)."""
        kw: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": self.timeout}
        if token:
            kw["_continue"] = token
        if field_selector:
            kw["field_selector"] = field_selector
        if ns is None:
            response = await self.custom.list_cluster_custom_object_without_preload_content(
                GROUP, VERSION, plural, **kw)
        else:
            response = await self.custom.list_namespaced_custom_object_without_preload_content(
                GROUP, VERSION, ns, plural, **kw)
        try:
            body = await response.read()
        finally:
            response.release()
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason, body=body.decode(errors="replace"))
        return body.decode()

    async def watch(self, plural: str, namespace: str | None, version: str) -> AsyncIterator[dict[str, Any]]:
        """The events of one WATCH from ``version`` (bookmarks included), until the server ends it.

        Bounded: the server ends it after ``WATCH_SECONDS``, and a connection gone silent is
        abandoned 30 s later. A refusal at the start is an ``ApiException`` (410: the version is gone).
        """
        kw: dict[str, Any] = {"watch": True, "resource_version": version, "allow_watch_bookmarks": True,
                              "timeout_seconds": WATCH_SECONDS, "_request_timeout": float(WATCH_SECONDS + 30)}
        if namespace is None:
            response = await self.custom.list_cluster_custom_object_without_preload_content(
                GROUP, VERSION, plural, **kw)
        else:
            response = await self.custom.list_namespaced_custom_object_without_preload_content(
                GROUP, VERSION, namespace, plural, **kw)
        try:
            if response.status >= 400:
                raise ApiException(status=response.status, reason=response.reason)
            async for event in watch_events(response.content):
                yield event
        finally:
            response.release()

    @staticmethod
    async def _with_patience(call: Callable[[], Awaitable[T]], patience: float) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            try:
                return await call()
            except ApiException as err:
                if err.status not in (429, 500, 502, 503, 504) or loop.time() > deadline:
                    raise
            except TRANSPORT_ERRORS:
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.5)

    async def list_admission_policies(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding, as plain dicts."""
        policies = await self.admission.list_validating_admission_policy(_request_timeout=self.timeout)
        bindings = await self.admission.list_validating_admission_policy_binding(_request_timeout=self.timeout)
        plain = self.api.sanitize_for_serialization
        return plain(policies)["items"], plain(bindings)["items"]

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one object; None if it does not exist."""
        try:
            return await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=self.timeout
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def patch_flag_spec(
        self, flag: ObjectRef, fields: dict[str, Any], marker: Marker, fencing_token: str
    ) -> dict[str, Any]:
        """Set ``fields`` of the flag's spec and its marker, in one request.

        The marker (annotations) names the schedule that changed the flag last, its uid and
        ``scheduledAt``, when it landed, who set each field (forward only), which schedules wait for
        their status (exactly once) and the leader term that wrote it (fencing).
        """
        assert marker.uid and marker.name and marker.scheduled_at and marker.applied_at
        notes = {
            ANNOTATION_SCHEDULE: marker.name,
            ANNOTATION_SCHEDULE_UID: marker.uid,
            ANNOTATION_SCHEDULED_AT: exact_time(marker.scheduled_at),
            ANNOTATION_APPLIED_AT: rfc3339(marker.applied_at),
            ANNOTATION_FENCING_TOKEN: fencing_token,
            **marker.notes(),
        }
        body = {**_preconditions(flag, notes), "spec": fields}
        return await self._patch(FLAGS, flag, body)

    async def fence_flag(self, flag: ObjectRef, fencing_token: str) -> dict[str, Any]:
        """Write only the fencing token: any PATCH prepared against an older version now fails."""
        return await self._patch(FLAGS, flag, _preconditions(flag, {ANNOTATION_FENCING_TOKEN: fencing_token}))

    async def fence_flag_status(self, flag: ObjectRef, fencing_token: str) -> dict[str, Any]:
        """Write the fencing token to the flag's status subresource (``status.fencingToken``).

        It moves the flag's resourceVersion like any write, and admission that guards the flag
        itself (``featureflags``) does not see it: a write of ``featureflags/status`` is another
        resource to a policy or webhook.
        """
        body = {**_preconditions(flag), "status": {"fencingToken": fencing_token}}
        return await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, flag.namespace, FLAGS, flag.name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )

    async def patch_schedule_status(self, ref: ObjectRef, status: dict[str, Any]) -> dict[str, Any]:
        """Write a schedule's status, on the condition that it is the same object, unchanged since read."""
        body = {**_preconditions(ref), "status": status}
        return await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ref.namespace, SCHEDULES, ref.name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )

    async def patch_flag_status(self, ref: ObjectRef, status: dict[str, Any]) -> dict[str, Any]:
        """Write a flag's status (its ``InvalidSpec`` condition), preconditioned like every write."""
        body = {**_preconditions(ref), "status": status}
        return await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ref.namespace, FLAGS, ref.name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )

    async def set_owner(self, ref: ObjectRef, owners: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace a schedule's ownerReferences (preconditioned like every write)."""
        body = _preconditions(ref)
        body["metadata"]["ownerReferences"] = owners
        return await self._patch(SCHEDULES, ref, body)

    async def _patch(self, plural: str, ref: ObjectRef, body: dict[str, Any]) -> dict[str, Any]:
        return await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ref.namespace, plural, ref.name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )

    async def delete_schedule(self, ref: ObjectRef) -> None:
        """Delete a finished schedule (its TTL ran out), only if it is still that object and version."""
        body = {"preconditions": {"uid": ref.uid, "resourceVersion": ref.resource_version}}
        await self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, ref.namespace, SCHEDULES, ref.name, body=body, _request_timeout=self.timeout
        )

    async def _post_event(self, namespace: str, event: dict[str, Any]) -> None:
        """Create an Event without turning the answer into a model: nobody reads it, and in a burst the
        generated client's deserialization of every answer was most of the cost of posting Events."""
        answer = await self.core.create_namespaced_event_without_preload_content(
            namespace, event, _request_timeout=self.timeout)
        try:
            if answer.status >= 400:
                raise ApiException(status=answer.status, reason=answer.reason, body=(await answer.text())[:1000])
        finally:
            answer.release()

    async def post_event(self, ref: ObjectRef, kind: str, type_: str, reason: str, message: str, now: datetime) -> None:
        """Post a core/v1 Event about a flag or schedule (shown by ``kubectl describe``)."""
        stamp = rfc3339(now)
        event = {
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"{GROUP}/{FIELD_MANAGER}",
            "reportingInstance": self.identity[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": None,
            "count": 1,
            "action": reason,
        }
        await self._post_event(ref.namespace, event)

    # Controllers of kinds that create FlagSchedules (FlagCronSchedule, FlagRollout) use the calls below.

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create an object; an ApiException 409 (AlreadyExists) if its name is taken."""
        return await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, body, field_manager=FIELD_MANAGER, _request_timeout=self.timeout
        )

    async def patch_status(
        self, plural: str, ref: ObjectRef, status: dict[str, Any], unchanged: bool = False
    ) -> dict[str, Any]:
        """Merge-patch an object's status if it is the same object (uid); ``unchanged``: and unchanged since read."""
        body = {**(_preconditions(ref) if unchanged else {"metadata": {"uid": ref.uid}}), "status": status}
        return await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ref.namespace, plural, ref.name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )

    async def set_owners(self, plural: str, ref: ObjectRef, owners: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace an object's ownerReferences (uid and resourceVersion preconditions)."""
        body = _preconditions(ref)
        body["metadata"]["ownerReferences"] = owners
        return await self._patch(plural, ref, body)

    async def post_operator_event(self, namespace: str, lease: str, reason: str, message: str, now: datetime) -> None:
        """A Warning Event in the operator's own namespace, about its Lease (the scheduler as a whole)."""
        stamp = rfc3339(now)
        event = {
            "metadata": {"generateName": f"{lease}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": lease,
                               "namespace": namespace},
            "type": "Warning", "reason": reason, "message": message[:1024],
            "source": {"component": FIELD_MANAGER}, "reportingComponent": f"{GROUP}/{FIELD_MANAGER}",
            "reportingInstance": self.identity[:128], "firstTimestamp": stamp, "lastTimestamp": stamp,
            "eventTime": None, "count": 1, "action": reason,
        }
        await self._post_event(namespace, event)

    async def cancel_schedule(self, namespace: str, name: str, uid: str) -> dict[str, Any]:
        """Set ``spec.cancelled`` on a schedule, only if it is still the object with ``uid``."""
        body = {"metadata": {"uid": uid}, "spec": {"cancelled": True}}
        return await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, SCHEDULES, name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self.timeout,
        )
