"""When a recurring window opens and closes: the pure edge computation of a FlagCronSchedule.

No Kopf, no Kubernetes, ``now`` always a parameter. Every instant in and out is UTC; wall-clock
times exist only inside the cron match, because Python ignores ``fold`` in ``timedelta``
arithmetic on aware datetimes.

The DST rule (Debian cron's, which cronsim implements; the README shows it as a table):

- A *fixed-time* expression (neither the minute nor the hour field starts with ``*``, e.g.
  ``30 2 * * *`` or ``0 9-17/2 * * *``) fires once per matching wall-clock time. One that falls in
  a spring-forward gap fires once, at the first instant after the gap; one that falls in a
  repeated hour fires once, at its first occurrence.
- An *elapsed-time* expression (minute or hour field starts with ``*``: ``*/15 * * * *``,
  ``0 * * * *``) fires at every real instant whose wall-clock time matches: twice in a repeated
  hour, never at wall-clock times the gap skipped.

An occurrence is identified by its UTC instant. Edges are the start and end occurrences together;
each start pairs with the first end after it, and where a start and an end fall on the same instant
the start wins (the end would close a window the start reopens at once).
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from zoneinfo import ZoneInfo

import tzdata
from cronsim import CronSim, CronSimError

TZDATA_VERSION = tzdata.IANA_VERSION
# How far back to look for the latest occurrence, widening: dense expressions stop early, sparse
# ones (a leap day on a Monday) are found within 28 years; cronsim itself gives up after 50.
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=366),
             timedelta(days=366 * 29), timedelta(days=366 * 51))
# Counting missed edges stops here (a per-minute window left suspended for a day would count 1,440):
# 1,000 edges cost about 0.2 s of CPU, which the controller spends in a thread.
MAX_COUNTED = 1_000


class InvalidRecurrence(ValueError):
    """A cron expression or time zone the operator cannot use; the message names the field."""


class EdgeKind(StrEnum):
    START = "start"
    END = "end"


@dataclass(frozen=True)
class Edge:
    """One opening or closing of the window, at an instant in UTC."""

    kind: EdgeKind
    at: datetime


@dataclass(frozen=True)
class Recurrence:
    """A validated start (and optional end) expression in a time zone."""

    start: str
    end: str | None
    zone: ZoneInfo


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split())


@functools.lru_cache(maxsize=1024)
def load_zone(name: str) -> ZoneInfo:
    """The IANA zone from the pinned ``tzdata`` package (never the host's), or InvalidRecurrence."""
    if name not in _zone_names():
        raise InvalidRecurrence(f"spec.timeZone: unknown time zone {name!r} (tz database {TZDATA_VERSION})")
    path = importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/"))
    with path.open("rb") as data:
        return ZoneInfo.from_file(data, key=name)


def check_expression(expr: str, field: str) -> str:
    """The expression if it is a 5-field cron cronsim accepts; InvalidRecurrence naming ``field``."""
    if "TZ=" in expr.upper():
        raise InvalidRecurrence(f"{field}: TZ= and CRON_TZ= are not allowed; use spec.timeZone")
    if len(expr.split()) != 5:
        raise InvalidRecurrence(f"{field}: {expr!r} must have 5 fields (minute hour day-of-month month day-of-week)")
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError) as err:
        raise InvalidRecurrence(f"{field}: {expr!r} is not a valid cron expression ({err})") from None
    return expr


def recurrence(start: str, end: str | None, zone: str) -> Recurrence:
    """Validate a FlagCronSchedule's expressions and zone into a Recurrence."""
    if end is not None and " ".join(start.split()) == " ".join(end.split()):
        raise InvalidRecurrence("spec.end.schedule: must differ from spec.start.schedule")
    return Recurrence(check_expression(start, "spec.start.schedule"),
                      None if end is None else check_expression(end, "spec.end.schedule"), load_zone(zone))


def elapsed_time(expr: str) -> bool:
    """True if the expression follows elapsed time (its minute or hour field starts with ``*``)."""
    minute, hour = expr.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def occurrences_after(expr: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The expression's occurrences strictly after ``after``, in order, as UTC instants."""
    step = _next_elapsed if elapsed_time(expr) else _next_fixed
    cursor = after
    while (moment := step(expr, zone, cursor)) is not None:
        yield moment
        cursor = moment


def _next_fixed(expr: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    # cronsim walks the wall clock; started in the second pass of a repeated hour it can hand back
    # the first pass, already past.
    try:
        for local in CronSim(expr, after.astimezone(zone)):
            if (moment := local.astimezone(UTC)) > after:
                return moment
    except StopIteration:  # cronsim gives up after 50 years without a match
        pass
    return None


def _next_elapsed(expr: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    # cronsim's own walk of an aware wall clock steps whole hours in UTC and so loses its place after
    # a 30-minute shift (Lord Howe). Walk instead with the fixed UTC offset in force, and start again
    # with the new offset at each transition the walk crosses.
    offset, since, origin = _offset(zone, after), after, after
    while True:
        try:
            local = next(CronSim(expr, origin.astimezone(timezone(offset))))
        except StopIteration:
            return None
        moment = local.astimezone(UTC)
        transition = _first_transition(zone, offset, since, moment)
        if transition is None:
            return moment
        # Match from the transition on (cronsim starts one second after its origin), in the new offset.
        offset, since, origin = _offset(zone, transition), transition, transition - timedelta(seconds=1)


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    return moment.astimezone(zone).utcoffset() or timedelta(0)


def _first_transition(zone: ZoneInfo, offset: timedelta, begin: datetime, end: datetime) -> datetime | None:
    """The first instant in (begin, end] whose UTC offset is not ``offset`` (to the second), or None.

    Scans a day at a time, so two transitions within one day would hide each other: no zone has had
    that in the tz database's modern history.
    """
    low = begin
    while low < end:
        high = min(low + timedelta(days=1), end)
        if _offset(zone, high) != offset:
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if _offset(zone, middle) == offset else (low, middle)
            return high.replace(microsecond=0)  # transitions fall on whole seconds
        low = high
    return None


def next_occurrence(expr: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``; None if there is none within 50 years."""
    return next(occurrences_after(expr, zone, after), None)


def latest_occurrence(expr: str, zone: ZoneInfo, now: datetime) -> datetime | None:
    """The last occurrence at or before ``now``; None if there is none in the last 50 years."""
    for lookback in _LOOKBACK:
        found = None
        for moment in occurrences_after(expr, zone, now - lookback):
            if moment > now:
                break
            found = moment
        if found is not None:
            return found
    return None


def next_edge(rec: Recurrence, after: datetime) -> Edge | None:
    """The first edge strictly after ``after`` (a start wins a tie with an end)."""
    start = next_occurrence(rec.start, rec.zone, after)
    end = None if rec.end is None else next_occurrence(rec.end, rec.zone, after)
    if start is not None and (end is None or start <= end):
        return Edge(EdgeKind.START, start)
    return None if end is None else Edge(EdgeKind.END, end)


def latest_edge(rec: Recurrence, now: datetime) -> Edge | None:
    """The most recent edge at or before ``now`` (a start wins a tie with an end)."""
    start = latest_occurrence(rec.start, rec.zone, now)
    end = None if rec.end is None else latest_occurrence(rec.end, rec.zone, now)
    if start is not None and (end is None or start >= end):
        return Edge(EdgeKind.START, start)
    return None if end is None else Edge(EdgeKind.END, end)


def edges_between(rec: Recurrence, after: datetime, before: datetime) -> int:
    """How many edge instants fall strictly between ``after`` and ``before`` (at most MAX_COUNTED)."""
    count, cursor = 0, after
    while count < MAX_COUNTED:
        edge = next_edge(rec, cursor)
        if edge is None or edge.at >= before:
            break
        count, cursor = count + 1, edge.at
    return count


def in_window(rec: Recurrence, now: datetime) -> bool:
    """True if the latest edge at or before ``now`` opened the window."""
    edge = latest_edge(rec, now)
    return edge is not None and edge.kind is EdgeKind.START


def edge_schedule_name(cron_name: str, edge: Edge) -> str:
    """The FlagSchedule name of an edge: deterministic, so a second create is AlreadyExists."""
    return f"{cron_name}-{edge.kind.value}-{edge.at.astimezone(UTC):%Y%m%d%H%M}"
