"""Optional profiling of the operator with py-spy (``run.py --profile``): where its CPU goes in a burst.

py-spy samples the running process from outside (no change to the operator). The raw collapsed
stacks go to ``results/profile-<name>.txt``; the summary lists the frames with the most samples,
inclusive (the frame or anything it called) and exclusive (the frame itself).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH; None if it is not installed."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    """A py-spy recording of one process, from ``start()`` to ``stop()``."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [py_spy() or "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self, top: int = 25) -> dict[str, Any]:
        """Stop recording and summarize the samples."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarize(self.out, top)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    """Top frames by inclusive and exclusive samples from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "file": str(path)}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        n = int(count)
        total += n
        for frame in set(frames[1:]):  # frames[0] is the thread
            inclusive[frame] += n
        exclusive[frames[-1]] += n

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[frame, round(100 * n / max(1, total), 1)] for frame, n in counter.most_common(top)]

    return {"samples": total, "file": str(path), "inclusive_percent": share(inclusive),
            "exclusive_percent": share(exclusive)}
