"""What a FlagCronSchedule does at ``now``: converge on the latest edge only, count the missed, prune history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flag_scheduler.cronschedule.edges import Edge, EdgeKind, recurrence
from flag_scheduler.cronschedule.model import CronPhase, LastEdge
from flag_scheduler.cronschedule.plan import plan, starting_deadline, to_prune, to_withdraw
from flag_scheduler.models import FlagSchedule

BUSINESS = recurrence("0 9 * * 1-5", "0 18 * * 1-5", "Europe/Berlin")  # CET = UTC+1 in December


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


def last(kind: str, at: datetime) -> LastEdge:
    return LastEdge(kind=kind, at=at, schedule="x")


def edge_schedule(name: str, at: datetime, phase: str | None = None) -> FlagSchedule:
    body = {"metadata": {"namespace": "ns", "name": name, "uid": name},
            "spec": {"flagRef": {"name": "f"}, "scheduledAt": at.isoformat(), "updates": {"enabled": True}},
            "status": {"phase": phase} if phase else {}}
    return FlagSchedule.from_body(body)


def test_a_new_window_applies_the_latest_edge_and_counts_nothing_missed() -> None:
    p = plan(BUSINESS, "w", None, utc(2, 10))  # Wednesday 11:00 Berlin
    assert p.converge == Edge(EdgeKind.START, utc(2, 8)) and p.missed == 0
    assert p.next == Edge(EdgeKind.END, utc(2, 17)) and p.phase is CronPhase.IN_WINDOW
    assert p.keep == {"w-start-202612020800", "w-end-202612021700"}


def test_an_edge_already_had_is_not_applied_again() -> None:
    p = plan(BUSINESS, "w", last("start", utc(2, 8)), utc(2, 10))
    assert p.converge is None and p.next == Edge(EdgeKind.END, utc(2, 17))


def test_down_from_0850_to_1830_applies_the_end_and_counts_the_start_missed() -> None:
    p = plan(BUSINESS, "w", last("end", utc(1, 17)), utc(2, 17, 30))
    assert p.converge == Edge(EdgeKind.END, utc(2, 17)) and p.missed == 1
    assert p.phase is CronPhase.OUT_OF_WINDOW


def test_a_stale_edge_may_be_applied_only_until_the_next_edge_is_due() -> None:
    assert starting_deadline(BUSINESS, Edge(EdgeKind.START, utc(2, 8))) == 9 * 3600
    friday_end = Edge(EdgeKind.END, utc(4, 17))
    assert starting_deadline(BUSINESS, friday_end) == (utc(7, 8) - utc(4, 17)) / timedelta(seconds=1)


def test_history_keeps_the_newest_finished_and_never_a_live_one() -> None:
    schedules = [edge_schedule(f"s{d}", utc(d, 8), "Applied") for d in (1, 2, 3)]
    schedules += [edge_schedule("m", utc(4, 8), "Missed"), edge_schedule("f", utc(5, 8), "Failed"),
                  edge_schedule("live", utc(6, 8))]
    assert [s.ref.name for s in to_prune(schedules, successful=1, failed=1)] == ["s1", "s2", "m"]
    assert to_prune(schedules, successful=0, failed=0)[-1].ref.name == "f"


def test_only_future_edges_that_are_no_longer_next_are_withdrawn() -> None:
    now = utc(2, 10)
    schedules = [edge_schedule("past-due", utc(2, 9)), edge_schedule("next", utc(2, 17)),
                 edge_schedule("stale", utc(2, 16)), edge_schedule("done", utc(2, 16, 30), "Applied")]
    assert [s.ref.name for s in to_withdraw(schedules, frozenset({"next"}), now)] == ["stale"]
