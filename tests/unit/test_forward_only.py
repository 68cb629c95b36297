"""Forward only and exactly once, as the flag's marker decides them (``timing.against_marker``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flag_scheduler.models import FeatureFlag, FlagSchedule, Marker
from flag_scheduler.timing import Verdict, against_marker, order_key

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def schedule(name: str, uid: str, at: datetime) -> FlagSchedule:
    return FlagSchedule.from_body({
        "metadata": {"namespace": "ns", "name": name, "uid": uid},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": at.isoformat(), "updates": {"enabled": True}},
    })


def marker(name: str | None, uid: str | None, at: datetime | None) -> Marker:
    return Marker(name=name, uid=uid, scheduled_at=at)


@pytest.mark.parametrize(("case", "sched", "mark", "verdict"), [
    ("no marker yet", schedule("a", "u1", T0), Marker(), Verdict.GO),
    ("this schedule landed", schedule("a", "u1", T0), marker("a", "u1", T0), Verdict.LANDED),
    ("landed, marker time unreadable", schedule("a", "u1", T0), marker("a", "u1", None), Verdict.LANDED),
    ("later than the last change", schedule("b", "u2", T0 + timedelta(hours=1)), marker("a", "u1", T0), Verdict.GO),
    ("earlier than the last change", schedule("b", "u2", T0 - timedelta(hours=1)), marker("a", "u1", T0),
     Verdict.SUPERSEDED),
    ("re-created after it landed (same name and time, new uid)", schedule("a", "u9", T0), marker("a", "u1", T0),
     Verdict.SUPERSEDED),
    ("same time, name after the last one's", schedule("b", "u2", T0), marker("a", "u1", T0), Verdict.GO),
    ("same time, name before the last one's", schedule("a", "u2", T0), marker("b", "u1", T0), Verdict.SUPERSEDED),
    ("one microsecond later", schedule("a", "u2", T0 + timedelta(microseconds=1)), marker("z", "u1", T0), Verdict.GO),
    ("marker without a time orders nothing", schedule("a", "u2", T0 - timedelta(days=9)), marker("z", "u1", None),
     Verdict.GO),
])
def test_against_marker(case: str, sched: FlagSchedule, mark: Marker, verdict: Verdict) -> None:
    assert against_marker(sched, mark) is verdict, case


def test_the_marker_is_read_from_the_flags_annotations_and_unreadable_times_are_ignored() -> None:
    notes = {
        "flagscheduler.dev/last-applied-schedule": "a",
        "flagscheduler.dev/last-applied-schedule-uid": "u1",
        "flagscheduler.dev/last-applied-scheduled-at": "2026-12-01T09:00:00.000001Z",
        "flagscheduler.dev/last-applied-at": "yesterday",
        "flagscheduler.dev/fencing-token": "t1",
    }
    flag = FeatureFlag.from_body({"metadata": {"namespace": "ns", "name": "f", "annotations": notes},
                                  "spec": {"enabled": True}})
    assert flag.marker == Marker(name="a", uid="u1", scheduled_at=T0 + timedelta(microseconds=1),
                                 applied_at=None, fencing_token="t1")


times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC))
names = st.from_regex(r"[a-z]{1,5}", fullmatch=True)


@given(names, times, names, times)
def test_exactly_one_of_two_distinct_schedules_can_follow_the_other(n1: str, t1: datetime, n2: str, t2: datetime) -> None:
    """Whatever two schedules of a flag, once one landed the other applies only if it orders after it."""
    first, second = schedule(n1, "u1", t1), schedule(n2, "u2", t2)
    after_first = against_marker(second, marker(n1, "u1", t1))
    assert (after_first is Verdict.GO) == (order_key(second) > order_key(first))
