"""What a FlagCronSchedule should do now, from plain values: the pure half of its controller.

Like the CronJob controller's ``mostRecentScheduleTime``: given the recurrence, the latest edge it
already created a schedule for, the schedules it owns and ``now``, say which edge to apply to
converge (only the most recent one at or before now), how many older ones were missed, which edge
is next, which live edge schedules to withdraw and which finished ones to delete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flag_scheduler.cronschedule.edges import (
    Edge,
    EdgeKind,
    Recurrence,
    edge_schedule_name,
    edges_between,
    latest_edge,
    next_edge,
)
from flag_scheduler.cronschedule.model import CronPhase, LastEdge
from flag_scheduler.models import MAX_DEADLINE_SECONDS, FlagSchedule, Phase

SUCCEEDED = frozenset({Phase.APPLIED, Phase.SUPERSEDED})


@dataclass(frozen=True)
class Plan:
    """The edges to have as FlagSchedules, and what to report."""

    phase: CronPhase
    converge: Edge | None = None  # the most recent edge at or before now, not yet had
    missed: int = 0  # edges strictly between the last one had and ``converge``
    next: Edge | None = None
    keep: frozenset[str] = frozenset()  # names of the edge schedules that may stay live
    prune: list[FlagSchedule] = field(default_factory=list)


def plan(rec: Recurrence, cron_name: str, last: LastEdge | None, now: datetime) -> Plan:
    """The converge edge, the missed count and the next edge at ``now``."""
    latest = latest_edge(rec, now)
    upcoming = next_edge(rec, now)
    keep = frozenset(edge_schedule_name(cron_name, e) for e in (latest, upcoming) if e is not None)
    phase = CronPhase.IN_WINDOW if latest is not None and latest.kind is EdgeKind.START else CronPhase.OUT_OF_WINDOW
    if latest is None or (last is not None and latest.at <= last.at):
        return Plan(phase, next=upcoming, keep=keep)
    missed = 0 if last is None else edges_between(rec, last.at, latest.at)
    return Plan(phase, converge=latest, missed=missed, next=upcoming, keep=keep)


def starting_deadline(rec: Recurrence, edge: Edge) -> int | None:
    """Seconds after its instant an edge may still be applied: until the edge after it is due.

    So an operator that was down across several edges never applies a stale one before the
    latest: the scheduler marks the stale one Missed.
    """
    following = next_edge(rec, edge.at)
    if following is None:
        return None
    return max(1, min(MAX_DEADLINE_SECONDS, int((following.at - edge.at) / timedelta(seconds=1))))


def to_prune(schedules: list[FlagSchedule], successful: int, failed: int) -> list[FlagSchedule]:
    """Finished edge schedules beyond the history limits, oldest first; the newest are kept."""
    done = sorted((s for s in schedules if s.status.phase.terminal),
                  key=lambda s: (s.spec.scheduled_at, s.ref.name), reverse=True)
    good = [s for s in done if s.status.phase in SUCCEEDED]
    bad = [s for s in done if s.status.phase not in SUCCEEDED]
    return [*reversed(good[successful:]), *reversed(bad[failed:])]


def to_withdraw(schedules: list[FlagSchedule], keep: frozenset[str], now: datetime) -> list[FlagSchedule]:
    """Edge schedules still in the future that are no longer the next edge (spec changed, suspended).

    Past-due ones are the scheduler's: applied within their starting deadline (the next edge's
    instant), Missed after it, so the record of a missed edge stays.
    """
    return [s for s in schedules
            if not s.status.phase.terminal and s.spec.scheduled_at > now and s.ref.name not in keep]
