"""Go-style durations as rollouts write them (``90m``, ``1h30m``, ``2s``, ``500ms``, ``0``): parse and format."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"([0-9]+)(h|ms|m|s)")
_UNITS = {"h": timedelta(hours=1), "m": timedelta(minutes=1), "s": timedelta(seconds=1), "ms": timedelta(milliseconds=1)}


def parse_duration(text: str) -> timedelta:
    """``1h30m`` -> 90 minutes; ValueError naming the text if it is not whole h, m, s and ms parts."""
    if text == "0":
        return timedelta(0)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m or 1h30m")
    return sum((int(n) * _UNITS[u] for n, u in parts), timedelta(0))


def format_duration(span: timedelta) -> str:
    """The shortest Go-style spelling, to the millisecond (``1h2m3s500ms``); ``0`` for nothing or less."""
    ms = max(0, round(span.total_seconds() * 1000))
    if ms == 0:
        return "0"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s"), (ms, "ms")) if n)
