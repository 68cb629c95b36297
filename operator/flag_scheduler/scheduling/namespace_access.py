"""Watched namespaces the scheduler may not read: reported and skipped, never a reason to stop.

In the namespaced install each watched namespace grants the operator a Role through a RoleBinding
that the namespace's own admins can delete. One such namespace must not stop the others: at start
its LIST answers 403, and the scheduler used to fail start-up for ever. Now the namespace is
reported once (a log line, ``flag_scheduler_namespace_readable{namespace} 0``, and a Warning Event
``NamespaceUnreadable`` in the operator's namespace, about its Lease), the others are loaded and
scheduled as before, and the informers (``informer.py``) try that namespace again every
``RECHECK_SECONDS``.

It comes back by itself: once access returns, the informer's LIST hands every flag and schedule
of the namespace to the book like any watch event, and the gauge goes back to 1. Watching every
namespace (no ``FLAG_SCHEDULER_NAMESPACES``), a refused LIST is a broken install, and start-up
fails as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import Kube, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import NAMESPACE_READABLE

log = get_logger()

RECHECK_SECONDS = 10.0
REFUSED = (401, 403, 404)
_TRANSIENT = (asyncio.TimeoutError, ConnectionError, OSError)


class NamespaceAccess:
    """Which watched namespaces this process can read, and the report when one cannot be read."""

    def __init__(self, kube: Kube, namespaces: list[str], home: str, lease: str, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.home, self.lease, self.clock = home, lease, clock
        self.unreadable: set[str] = set()

    def readable(self, ns: str | None) -> None:
        """A LIST of ``ns`` succeeded: gauge 1, and a log line if it was unreadable."""
        if ns is None:
            return
        NAMESPACE_READABLE.labels(ns).set(1)
        if ns in self.unreadable:
            self.unreadable.discard(ns)
            log.info("namespace.readable", namespace=ns)

    async def report(self, ns: str, err: ApiException) -> None:
        """``ns`` refused a request: report it once (log, gauge 0, Event) until it is readable again."""
        if ns in self.unreadable:
            log.debug("namespace.still_unreadable", namespace=ns, error=describe(err))
            return
        self.unreadable.add(ns)
        NAMESPACE_READABLE.labels(ns).set(0)
        message = (f"cannot read watched namespace {ns} ({describe(err)}); its schedules wait until the"
                   f" operator's Role and RoleBinding there are restored; other namespaces are unaffected")
        log.error("namespace.unreadable", namespace=ns, status=err.status, error=describe(err))
        try:
            await self.kube.post_operator_event(self.home, self.lease, "NamespaceUnreadable", message, self.clock())
        except (ApiException, *_TRANSIENT) as post_err:
            log.warning("namespace.event_failed", namespace=ns, error=describe(post_err))
