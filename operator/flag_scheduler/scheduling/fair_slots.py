"""Slots shared fairly between namespaces: round-robin between namespaces, first come first served within one.

A plain ``asyncio.Semaphore`` lets waiters in the order they came. When one namespace creates
20,000 schedules due now, their 20,000 flags queue ahead of a schedule another namespace has due a
moment later, and that schedule waits for the whole burst. Here each namespace waits in its own
line and a freed slot goes to the next namespace in turn, so a namespace that has work waits for
at most one turn of the others, however long their lines are. Used by the dispatcher for flag
work and by ``Ctx`` for posting Events, whose backlog is shared the same way (``within_share``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping


class FairSlots:
    """At most ``size`` holders at once; a freed slot goes to the next namespace in turn."""

    def __init__(self, size: int) -> None:
        self._free = size
        # Namespaces with waiters, in turn order (the next to be served first), each a FIFO line.
        self._lines: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def waiting(self, namespace: str | None = None) -> int:
        """How many wait for a slot (in one namespace, or in all)."""
        if namespace is not None:
            return len(self._lines.get(namespace, ()))
        return sum(len(line) for line in self._lines.values())

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """Hold one slot for the block, waiting in ``namespace``'s line for it."""
        await self.acquire(namespace)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, namespace: str) -> None:
        """Take a slot, waiting for ``namespace``'s turn if none is free."""
        if self._free > 0 and not self._lines:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines.setdefault(namespace, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted, then cancelled before it ran: pass the slot on
            else:
                self._leave(namespace, granted)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter of the namespace whose turn it is, else to the pool."""
        while self._lines:
            namespace, line = next(iter(self._lines.items()))
            granted = line.popleft()
            if line:
                self._lines.move_to_end(namespace)  # served: to the back of the turn
            else:
                del self._lines[namespace]
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    def _leave(self, namespace: str, granted: asyncio.Future[None]) -> None:
        line = self._lines.get(namespace)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove(granted)
        if not line:
            del self._lines[namespace]


def within_share(queued: Mapping[str, int], namespace: str, limit: int) -> bool:
    """May ``namespace`` queue one more item when ``queued`` are waiting, by namespace?

    Each namespace with a backlog gets an equal share of ``limit`` (one namespace alone gets all of
    it, two get half each, ...). What a namespace queued before another one joined stays queued, so
    the total is also capped, at twice ``limit``: memory stays bounded however many namespaces post.
    """
    others = sum(1 for name, count in queued.items() if count and name != namespace)
    return sum(queued.values()) < 2 * limit and queued.get(namespace, 0) < limit // (others + 1)
