"""The scheduler's view of one kind: one LIST at start, then a WATCH from that LIST's resourceVersion.

Why not Kopf's watch: Kopf LISTs every object itself once its startup handler has returned, so
the scheduler's own LIST (which the book needs complete before the replica may lead) was followed
by a second LIST of everything, each object then routed through a Kopf per-object worker. At
110,000 objects that doubled the start-up. Here each kind is listed once and watched from there,
the way the flag server does (``serving/flag_watch.py``); Kopf only runs the process.

- ``load``: each watched namespace (or the whole cluster) is listed page by page, every object
  handed to ``observe`` with event type None (as Kopf did). When ``load`` returns, the runtime has
  seen every object as of that LIST, or, with ``first_selector``, every object it matches.
- ``first_selector`` (a field selector: for schedules, the unfinished ones) makes the first LIST
  short: at 110,000 schedules of which 10,000 are unfinished, the replica can lead after reading
  those. ``run`` then watches such a scope from that LIST at once, as any other, and beside the
  watch LISTs it whole (the *history*: for schedules, the finished ones). The watch keeps what it
  delivers current; the history LIST hands over only objects the informer has not handed a newer
  version of, nor seen deleted, since the first LIST, so an older copy never follows a newer one
  (the book also ignores older versions; the cron and rollout controllers do not). ``complete`` is
  set once every scope was listed whole (or refused). A server that refuses the selector (400: a
  CRD installed without the ``selectableFields`` entry) gets the whole LIST at once, with a warning.
- ``run``: one WATCH per namespace from the LIST's resourceVersion, so nothing created, changed or
  deleted between the LIST and the WATCH is missed. A watch the server ends (every
  ``WATCH_SECONDS``) or a dropped connection resumes from the last resourceVersion seen; bookmarks
  keep it fresh. Only ``410 Gone`` (that version was compacted away) costs a new LIST, after
  which objects that disappeared meanwhile are handed over as DELETED.
- A namespace that refuses (401/403/404: its RoleBinding deleted) is reported through
  ``NamespaceAccess`` and tried again every ``RECHECK_SECONDS``, with a new LIST once readable;
  every other namespace goes on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe, version_number
from flag_scheduler.logs import get_logger
from flag_scheduler.scheduling.namespace_access import RECHECK_SECONDS, REFUSED, NamespaceAccess

log = get_logger()

Observe = Callable[[str | None, dict[str, Any]], None]
RETRY_ERROR = 1.0  # seconds before a watch that failed for another reason is opened again
YIELD_EVERY = 500  # objects of a LIST page taken in before other work gets the event loop


class Gone(Exception):
    """The resourceVersion is too old to watch from: LIST again."""


class Stub(NamedTuple):
    """What a DELETED event needs of an object that vanished while the watch was gone."""

    namespace: str
    name: str
    labels: dict[str, str] | None

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Stub:
        return cls(sys.intern(meta.get("namespace", "")), meta.get("name", ""), meta.get("labels") or None)

    def deleted(self, uid: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"uid": uid, "namespace": self.namespace, "name": self.name}
        if self.labels:
            meta["labels"] = self.labels
        return {"metadata": meta}


class Handed(NamedTuple):
    """What the informer handed over of a scope listed in part, since its first LIST."""

    versions: dict[str, int]  # uid -> resourceVersion
    deleted: set[str]  # uids the watch deleted


class Informer:
    """LIST then WATCH one kind in every watched namespace, handing each object to ``observe``."""

    def __init__(self, kube: Kube, access: NamespaceAccess, plural: str, observe: Observe,
                 first_selector: str | None = None) -> None:
        self.kube, self.access, self.plural, self.observe = kube, access, plural, observe
        self.first_selector = first_selector
        self.scopes: list[str | None] = list(access.namespaces) or [None]
        self._versions: dict[str | None, str | None] = {}  # scope -> the version to watch from
        self._known: dict[str | None, dict[str, Stub]] = {}  # scope -> uid -> stub
        # Scopes listed only as far as ``first_selector`` goes, until their history is in: the versions
        # handed over since the first LIST (uid -> resourceVersion) and the uids the watch deleted.
        self._partial: dict[str | None, Handed] = {}
        self._unlisted: set[str | None] = set(self.scopes)  # scopes not yet listed whole (nor refused)
        self.complete = asyncio.Event()  # every scope listed whole once (or refused)

    async def load(self) -> None:
        """The first LIST of every scope; an unreadable namespace is reported and left to ``run``."""
        for scope in self.scopes:
            self._versions[scope] = await self._list(scope, self.first_selector)

    async def run(self) -> None:
        """Watch every scope from its LIST until cancelled."""
        await asyncio.gather(*(self._follow(scope) for scope in self.scopes))

    async def _follow(self, scope: str | None) -> None:
        version = self._versions.pop(scope, None)
        history = asyncio.create_task(self._list_history(scope)) if scope in self._partial else None
        try:
            await self._follow_from(scope, version, history)
        finally:
            if history is not None:
                history.cancel()

    async def _follow_from(self, scope: str | None, version: str | None, history: asyncio.Task | None) -> None:
        while True:
            try:
                if version is None:
                    if history is not None:  # a new whole LIST replaces the history LIST
                        history.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await history
                        history = None
                    version = await self._list(scope)
                    if version is None:
                        await asyncio.sleep(RECHECK_SECONDS)
                        continue
                version = await self._watch(scope, version)
            except Gone:
                log.info("watch.gone", kind=self.plural, namespace=scope)
                version = None
            except ApiException as err:
                if err.status == 410:
                    log.info("watch.gone", kind=self.plural, namespace=scope)
                    version = None
                    continue
                if scope is not None and err.status in REFUSED:
                    await self.access.report(scope, err)
                    version = None
                    await asyncio.sleep(RECHECK_SECONDS)
                    continue
                log.warning("watch.failed", kind=self.plural, namespace=scope, error=describe(err))
                await asyncio.sleep(RETRY_ERROR)
            except (*TRANSPORT_ERRORS, ValueError) as err:  # ValueError: a line that is not JSON
                log.warning("watch.failed", kind=self.plural, namespace=scope, error=describe(err))
                await asyncio.sleep(RETRY_ERROR)

    async def _list(self, scope: str | None, selector: str | None = None) -> str | None:
        """LIST one scope (what ``selector`` matches, None: all) into ``observe``; the LIST's
        resourceVersion (None: the namespace refused it)."""
        seen: dict[str, Stub] = {}
        handed: dict[str, int] = {}  # uid -> resourceVersion, for a LIST in part
        version = ""
        started, pages = time.monotonic(), 0
        try:
            async for page in self.kube.list_pages(self.plural, scope, field_selector=selector):
                for n, body in enumerate(page.items, 1):
                    meta = body.get("metadata") or {}
                    seen[meta.get("uid", "")] = Stub.of(meta)
                    if selector is not None:
                        handed[meta.get("uid", "")] = version_number(meta.get("resourceVersion", ""))
                    self._hand(None, body)
                    if not n % YIELD_EVERY:
                        await asyncio.sleep(0)
                version, pages = page.version, pages + 1  # known once the page's items are taken
        except ApiException as err:
            if selector is not None and err.status == 400 and not pages:
                log.warning("informer.selector_refused", kind=self.plural, namespace=scope, selector=selector,
                            error=describe(err), fix="apply this version's CRDs (selectableFields)")
                return await self._list(scope)
            if scope is None or err.status not in REFUSED:
                raise
            await self.access.report(scope, err)
            self._listed_whole(scope)
            return None
        if selector is None:
            for uid in self._known.get(scope, {}).keys() - seen.keys():
                self._hand("DELETED", self._known[scope][uid].deleted(uid))
            self._listed_whole(scope)
        else:
            self._partial[scope] = Handed(handed, set())
        self._known[scope] = seen
        self.access.readable(scope)
        log.info("informer.listed", kind=self.plural, namespace=scope, objects=len(seen), pages=pages,
                 seconds=round(time.monotonic() - started, 3), **({"selector": selector} if selector else {}))
        return version

    async def _list_history(self, scope: str | None) -> None:
        """LIST a scope listed in part whole, beside its watch; hand over only what is new to the informer."""
        while scope in self._partial:
            started, pages, taken = time.monotonic(), 0, 0
            try:
                async for page in self.kube.list_pages(self.plural, scope):
                    for n, body in enumerate(page.items, 1):
                        taken += self._take_history(scope, body)
                        if not n % YIELD_EVERY:
                            await asyncio.sleep(0)
                    pages += 1
            except ApiException as err:
                # Refused: the watch reports it and lists the namespace whole once readable. Until then
                # it counts as listed, as a namespace refused at start does, so the other namespaces'
                # controllers are not held up (cron and rollout names are fixed: a repeat create is a 409).
                if scope is not None and err.status in REFUSED:
                    log.warning("informer.history_refused", kind=self.plural, namespace=scope, error=describe(err))
                    break
                log.warning("informer.history_failed", kind=self.plural, namespace=scope, error=describe(err))
                await asyncio.sleep(RETRY_ERROR)
                continue
            except (*TRANSPORT_ERRORS, ValueError) as err:
                log.warning("informer.history_failed", kind=self.plural, namespace=scope, error=describe(err))
                await asyncio.sleep(RETRY_ERROR)
                continue
            log.info("informer.listed", kind=self.plural, namespace=scope, objects=taken, pages=pages,
                     seconds=round(time.monotonic() - started, 3), history=True)
            break
        self._partial.pop(scope, None)
        self._listed_whole(scope)

    def _take_history(self, scope: str | None, body: dict[str, Any]) -> int:
        """Hand over one object of the history LIST unless a newer version was handed or it was deleted."""
        handed, deleted = self._partial[scope]
        meta = body.get("metadata") or {}
        uid, version = meta.get("uid", ""), version_number(meta.get("resourceVersion", ""))
        if uid in deleted or handed.get(uid, -2) >= version:
            return 0
        handed[uid] = version
        self._known.setdefault(scope, {}).setdefault(uid, Stub.of(meta))
        self._hand(None, body)
        return 1

    def _listed_whole(self, scope: str | None) -> None:
        self._partial.pop(scope, None)
        self._unlisted.discard(scope)
        if not self._unlisted:
            self.complete.set()

    async def _watch(self, scope: str | None, version: str) -> str:
        """One WATCH from ``version`` into ``observe``, until the server ends it; the last version seen."""
        known = self._known.setdefault(scope, {})
        async for event in self.kube.watch(self.plural, scope, version):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if body.get("code") == 410:
                    raise Gone()
                raise ApiException(status=body.get("code") or 500, reason=body.get("message"))
            meta = body.get("metadata") or {}
            uid = meta.get("uid", "")
            partial = self._partial.get(scope)
            if kind in ("ADDED", "MODIFIED"):
                known[uid] = Stub.of(meta)
                if partial is not None:
                    partial.versions[uid] = version_number(meta.get("resourceVersion", ""))
                self._hand(kind, body)
            elif kind == "DELETED":
                known.pop(uid, None)
                if partial is not None:
                    partial.deleted.add(uid)
                self._hand(kind, body)
            version = meta.get("resourceVersion") or version
        return version

    def _hand(self, kind: str | None, body: dict[str, Any]) -> None:
        """Give one object to ``observe``; a failure there is logged and never stops the watch."""
        try:
            self.observe(kind, body)
        except Exception as err:  # noqa: BLE001 - one odd object must not stop every other one
            meta = body.get("metadata") or {}
            log.error("watch.observe_failed", kind=self.plural, namespace=meta.get("namespace"),
                      name=meta.get("name"), error=describe(err), exc_info=True)
