"""The flag server's view of the FeatureFlags: LIST, then WATCH from that resourceVersion, per namespace.

A plain watch with the official client rather than Kopf: the flag server reads one kind and writes
nothing, so it needs none of Kopf's per-object workers, handler bookkeeping or startup ordering.
With its own loop it LISTs once (Kopf would LIST again after any LIST of ours), ``/healthz``
answers while that LIST runs, and readiness waits for it. A watch the server ends is resumed from
the last resourceVersion seen (bookmarks keep it fresh); only ``410 Gone`` costs a new LIST, after
which flags that disappeared meanwhile are dropped.

Each watched namespace (or the whole cluster) has its own loop, so one namespace that cannot be
read (its RoleBinding deleted: 403) is reported (log, ``flag_scheduler_namespace_readable``) and
retried every ``RETRY_FORBIDDEN`` seconds, while every other namespace is served as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import PAGE_SIZE, REQUEST_TIMEOUT, TRANSPORT_ERRORS, WATCH_SECONDS, watch_events
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import NAMESPACE_READABLE
from flag_scheduler.models import FLAGS, GROUP, VERSION
from flag_scheduler.serving.flag_store import FlagStore

log = get_logger()

RETRY_FORBIDDEN = 10.0
RETRY_ERROR = 1.0
CLUSTER = ""  # the metric's namespace label when watching every namespace


class Gone(Exception):
    """The resourceVersion is too old to watch from: LIST again."""


class FlagWatch:
    """Feeds a FlagStore from the API server; ``ready`` once every namespace was listed (or reported)."""

    def __init__(self, api: client.ApiClient, store: FlagStore, namespaces: list[str]) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.store = store
        self.scopes: list[str | None] = list(namespaces) or [None]
        self.ready = asyncio.Event()
        self._pending = set(self.scopes)

    async def run(self) -> None:
        """Watch every scope until cancelled."""
        await asyncio.gather(*(self._follow(scope) for scope in self.scopes))

    async def _follow(self, scope: str | None) -> None:
        label = scope or CLUSTER
        while True:
            try:
                version = await self._list(scope)
                NAMESPACE_READABLE.labels(label).set(1)
                self._listed(scope)
                while True:
                    version = await self._watch(scope, version)
            except Gone:
                continue
            except ApiException as err:
                if err.status not in (401, 403, 404):
                    log.warning("flags.watch_failed", namespace=label, status=err.status, reason=err.reason)
                    await asyncio.sleep(RETRY_ERROR)
                    continue
                NAMESPACE_READABLE.labels(label).set(0)
                log.error("flags.namespace_unreadable", namespace=label, status=err.status, reason=err.reason,
                          retry_in=RETRY_FORBIDDEN)
                self._listed(scope)
                await asyncio.sleep(RETRY_FORBIDDEN)
            except (*TRANSPORT_ERRORS, ValueError) as err:  # ValueError: a line that is not JSON
                log.warning("flags.watch_failed", namespace=label, error=f"{type(err).__name__}: {err}")
                await asyncio.sleep(RETRY_ERROR)

    def _listed(self, scope: str | None) -> None:
        self._pending.discard(scope)
        if not self._pending and not self.ready.is_set():
            self.ready.set()
            log.info("flags.listed", namespaces_with_flags=len(self.store.namespaces()))

    async def _list(self, scope: str | None) -> str:
        """LIST page by page into the store (replacing what it held for the scope); the list's version."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": REQUEST_TIMEOUT}
            if token:
                kw["_continue"] = token
            if scope is None:
                page = await self.custom.list_cluster_custom_object(GROUP, VERSION, FLAGS, **kw)
            else:
                page = await self.custom.list_namespaced_custom_object(GROUP, VERSION, scope, FLAGS, **kw)
            items.extend(page["items"])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.store.replace(items, scope)
                return meta["resourceVersion"]

    async def _watch(self, scope: str | None, version: str) -> str:
        """One WATCH from ``version`` into the store, until the server ends it; the last version seen."""
        kw: dict[str, Any] = {
            "watch": True, "resource_version": version, "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            # The whole watch, bounded: a connection gone silent is abandoned 30 s after the server's end.
            "_request_timeout": float(WATCH_SECONDS + 30),
        }
        if scope is None:
            response = await self.custom.list_cluster_custom_object_without_preload_content(GROUP, VERSION, FLAGS, **kw)
        else:
            response = await self.custom.list_namespaced_custom_object_without_preload_content(
                GROUP, VERSION, scope, FLAGS, **kw)
        try:  # the aiohttp response itself, read line by line
            if response.status >= 400:
                raise ApiException(status=response.status, reason=response.reason)
            async for event in watch_events(response.content):
                version = self._apply(event, version)
        finally:
            response.release()
        return version

    def _apply(self, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code") or 500, reason=obj.get("message"))
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.store.observe(kind, obj)
        return (obj.get("metadata") or {}).get("resourceVersion") or version

