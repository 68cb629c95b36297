"""Named pause points for tests of races that cannot be timed from outside (like etcd's gofail).

Off by default. ``FLAG_SCHEDULER_FAILPOINTS`` (comma-separated names from ``POINTS``) is read once at
start. An armed point, the first time the process reaches it, logs ``failpoint.stopped`` and stops
the whole process with ``SIGSTOP``: the process is frozen exactly as by a long GC pause or a stalled
VM (no Lease renewal, no watch reading). A test then resumes it (``SIGCONT``) or kills it. Each
point fires once, so a resumed process runs on normally. Unarmed, a point costs one set lookup.
"""

from __future__ import annotations

import os
import signal
import sys

from flag_scheduler.logs import get_logger

POINTS = frozenset({
    "apply.start",  # a due schedule is about to be worked on (before the claim and the checks)
    "apply.before-flag-patch",  # every check passed, the flag PATCH is next
    "apply.after-flag-patch",  # the change landed on the flag, no status written yet
    "rollout.before-create",  # a rollout's status names the next step's schedule, not yet created
    "rollout.after-create",  # the step's schedule was created, nothing after it done yet
    "settle.before-status",
    "start.after-list",  # every kind was listed at start; the watches from those LISTs are not open yet  # the flag was checked and fenced; Cancelled/Missed/Failed/Superseded is next
})
_armed: set[str] = set()


def parse(text: str) -> frozenset[str]:
    """The names in ``text`` (comma-separated); ValueError naming any unknown one."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - POINTS
    if unknown:
        raise ValueError(f"unknown failpoint(s) {sorted(unknown)}; known: {sorted(POINTS)}")
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
