"""Named failpoints for tests of races that cannot be timed from outside (like etcd's gofail).

Off by default. ``FLAG_SCHEDULER_FAILPOINTS`` (comma-separated names from ``POINTS``) is read once at
start. Each point fires once, so the process runs on normally after it. Unarmed, a point costs one
set lookup. Two kinds:

- a *pause* point (``reach``), the first time the process reaches it, logs ``failpoint.stopped``
  and stops the whole process with ``SIGSTOP``: the process is frozen exactly as by a long GC pause
  or a stalled VM (no Lease renewal, no watch reading). A test then resumes it (``SIGCONT``) or
  kills it;
- an *unanswered* point (``deliver``) guards one request: armed, the request is not sent but held,
  the caller gets ``TimeoutError`` at once (as when its client gives up waiting), and the process
  logs ``failpoint.held``. ``SIGUSR1`` sends every held request, as a network that delivers it
  late; ``failpoint.released`` logs how the API server answered (``code``, 200 when it committed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flag_scheduler.logs import get_logger

POINTS = frozenset({
    "apply.start",  # a due schedule is about to be worked on (before the claim and the checks)
    "apply.before-flag-patch",  # every check passed, the flag PATCH is next
    "apply.after-flag-patch",  # the change landed on the flag, no status written yet
    "rollout.before-create",  # a rollout's status names the next step's schedule, not yet created
    "rollout.after-create",  # the step's schedule was created, nothing after it done yet
    "settle.before-status",  # the flag was checked and fenced; Cancelled/Missed/Failed/Superseded is next
    "start.after-list",  # every kind was listed at start; the watches from those LISTs are not open yet
})
UNANSWERED = frozenset({
    "apply.flag-patch-unanswered",  # the flag PATCH carrying a schedule's change
    "fence.write-unanswered",  # the fencing write of a flag (its token annotation)
})
_armed: set[str] = set()
_held: list[tuple[str, Callable[[], Awaitable[object]]]] = []
_late: set[asyncio.Task] = set()  # held requests being sent (a reference, so they are not collected)
T = TypeVar("T")


def parse(text: str) -> frozenset[str]:
    """The names in ``text`` (comma-separated); ValueError naming any unknown one."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - POINTS - UNANSWERED
    if unknown:
        raise ValueError(f"unknown failpoint(s) {sorted(unknown)}; known: {sorted(POINTS | UNANSWERED)}")
    return names


def arm(names: frozenset[str]) -> None:
    """Arm the given points (called once, at start)."""
    _armed.clear()
    _armed.update(names)


def reach(name: str) -> None:
    """Freeze the process here if ``name`` is armed (once)."""
    if name not in _armed:
        return
    _armed.discard(name)
    get_logger().warning("failpoint.stopped", failpoint=name, pid=os.getpid())
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


async def deliver(name: str, request: Callable[[], Awaitable[T]]) -> T:
    """Send ``request`` and return its answer; if ``name`` is armed (once), hold it and raise TimeoutError."""
    if name not in _armed:
        return await request()
    _armed.discard(name)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: _release(loop))
    _held.append((name, request))
    get_logger().warning("failpoint.held", failpoint=name, pid=os.getpid())
    raise TimeoutError(f"failpoint {name}: the request was held, as if its answer never came")


def _release(loop: asyncio.AbstractEventLoop) -> None:
    """Send the held requests now (on ``SIGUSR1``)."""
    while _held:
        name, request = _held.pop(0)
        task = loop.create_task(_send_late(name, request))
        _late.add(task)
        task.add_done_callback(_late.discard)



async def _send_late(name: str, request: Callable[[], Awaitable[object]]) -> None:
    try:
        await request()
    except Exception as err:  # noqa: BLE001 - the answer is what the test reads
        get_logger().warning("failpoint.released", failpoint=name, code=getattr(err, "status", None),
                             error=str(err)[:200])
        return
    get_logger().warning("failpoint.released", failpoint=name, code=200)
