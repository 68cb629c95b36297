"""Watched namespaces the scheduler may not read: reported and skipped, never a reason to stop.

In the namespaced install each watched namespace grants the operator a Role through a RoleBinding
that the namespace's own admins can delete. One such namespace must not stop the others: at start
its LIST answers 403, and the scheduler used to fail start-up for ever. Now the namespace is
reported (a log line, ``flag_scheduler_namespace_readable{namespace} 0``, and a Warning Event
``NamespaceUnreadable`` in the operator's namespace, about its Lease), the others are loaded and
scheduled as before, and the namespace is checked again every ``RECHECK_SECONDS``.

It comes back by itself: Kopf's watch of that namespace keeps retrying (the scheduler gives Kopf
retries without end, see ``handlers.startup``) and, once access returns, its LIST hands every
flag and schedule to the book like any watch event; the recheck here sets the gauge back to 1.
Watching every namespace (no ``FLAG_SCHEDULER_NAMESPACES``), a refused LIST is a broken install,
and start-up fails as before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import Kube, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import NAMESPACE_READABLE
from flag_scheduler.models import FLAGS

log = get_logger()

RECHECK_SECONDS = 10.0
REFUSED = (401, 403, 404)


class NamespaceAccess:
    """Which watched namespaces this process can read; LISTs that skip the others."""

    def __init__(self, kube: Kube, namespaces: list[str], home: str, lease: str, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.home, self.lease, self.clock = home, lease, clock
        self.unreadable: set[str] = set()

    async def list_pages(self, plural: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Every object of ``plural`` in the readable watched namespaces (all namespaces if none listed)."""
        if not self.namespaces:
            async for page in self.kube.list_pages(plural, []):
                yield page
            return
        for ns in self.namespaces:
            if ns in self.unreadable:
                continue
            try:
                async for page in self.kube.list_pages(plural, [ns]):
                    yield page
            except ApiException as err:
                if err.status not in REFUSED:
                    raise
                await self._report(ns, err)
            else:
                NAMESPACE_READABLE.labels(ns).set(1)

    async def recheck(self) -> None:
        """Every ``RECHECK_SECONDS``: a namespace readable again is logged and its gauge set back to 1."""
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            for ns in sorted(self.unreadable):
                try:
                    async for _ in self.kube.list_pages(FLAGS, [ns], patience=0):
                        break
                except (ApiException, *_TRANSIENT) as err:
                    log.debug("namespace.still_unreadable", namespace=ns, error=describe(err))
                    continue
                self.unreadable.discard(ns)
                NAMESPACE_READABLE.labels(ns).set(1)
                log.info("namespace.readable", namespace=ns)

    async def _report(self, ns: str, err: ApiException) -> None:
        self.unreadable.add(ns)
        NAMESPACE_READABLE.labels(ns).set(0)
        message = (f"cannot read watched namespace {ns} ({describe(err)}); its schedules wait until the"
                   f" operator's Role and RoleBinding there are restored; other namespaces are unaffected")
        log.error("namespace.unreadable", namespace=ns, status=err.status, error=describe(err))
        try:
            await self.kube.post_operator_event(self.home, self.lease, "NamespaceUnreadable", message, self.clock())
        except (ApiException, *_TRANSIENT) as post_err:
            log.warning("namespace.event_failed", namespace=ns, error=describe(post_err))


_TRANSIENT = (asyncio.TimeoutError, ConnectionError, OSError)


class EndlessBackoff:
    """Kopf's ``error_backoffs`` without an end: 1, 2, 5, then every ``RECHECK_SECONDS`` (no ``len``: endless)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1.0, 2.0, 5.0), itertools.repeat(RECHECK_SECONDS))
