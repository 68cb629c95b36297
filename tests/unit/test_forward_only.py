"""Forward only, field by field, and exactly once, as the flag's marker decides them (``forward``).

The property test plays a flag and its schedules through random arrival orders, failed attempts
and crashes between the flag PATCH and the status write, and compares the flag's end state with
applying the schedules one after another in (scheduledAt, name) order: a reference that knows
nothing of markers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flag_scheduler.forward import Verdict, after_landing, decide, decide_fields
from flag_scheduler.models import FeatureFlag, FlagSchedule, FlagUpdates, Landed, Marker, Setter

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def schedule(name: str, uid: str, at: datetime, updates: dict[str, Any] | None = None) -> FlagSchedule:
    return FlagSchedule.from_body({
        "metadata": {"namespace": "ns", "name": name, "uid": uid, "generation": 1},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": at.isoformat(), "updates": updates or {"enabled": True}},
    })


def set_by(name: str, uid: str, at: datetime) -> Setter:
    return Setter(name=name, uid=uid, scheduledAt=at)


BOTH = {"enabled": True, "rolloutPercentage": 50}


@pytest.mark.parametrize(("case", "sched", "mark", "verdict", "fields"), [
    ("no marker yet", schedule("a", "u1", T0, BOTH), Marker(), Verdict.GO, BOTH),
    ("this schedule landed, awaiting its status", schedule("a", "u1", T0),
     Marker(awaiting={"u1": Landed(generation=1)}), Verdict.LANDED, {}),
    ("a field set by an earlier schedule moves on", schedule("b", "u2", T0 + timedelta(hours=1), BOTH),
     Marker(setters={"enabled": set_by("a", "u1", T0)}), Verdict.GO, BOTH),
    ("a field set by a later schedule stays; the other is set", schedule("a", "u1", T0, BOTH),
     Marker(setters={"rolloutPercentage": set_by("b", "u2", T0 + timedelta(minutes=1))}), Verdict.GO,
     {"enabled": True}),
    ("every field set by later schedules", schedule("a", "u1", T0, BOTH),
     Marker(setters={"enabled": set_by("b", "u2", T0), "rolloutPercentage": set_by("c", "u3", T0)}),
     Verdict.SUPERSEDED, {}),
    ("re-created after it landed (same name and time, new uid)", schedule("a", "u9", T0),
     Marker(setters={"enabled": set_by("a", "u1", T0)}), Verdict.SUPERSEDED, {}),
    ("same time, name before the setter's", schedule("a", "u2", T0), Marker(setters={"enabled": set_by("b", "u1", T0)}),
     Verdict.SUPERSEDED, {}),
    ("one microsecond later", schedule("a", "u2", T0 + timedelta(microseconds=1)),
     Marker(setters={"enabled": set_by("z", "u1", T0)}), Verdict.GO, {"enabled": True}),
    ("an earlier version's marker: its last schedule set every field", schedule("a", "u2", T0 - timedelta(hours=1), BOTH),
     Marker(uid="u1", name="z", scheduled_at=T0), Verdict.SUPERSEDED, {}),
    ("an earlier version's bounded list still counts as landed", schedule("a", "u2", T0),
     Marker(uid="u1", name="z", scheduled_at=T0, recent=("u1", "u2")), Verdict.LANDED, {}),
])
def test_decide(case: str, sched: FlagSchedule, mark: Marker, verdict: Verdict, fields: dict) -> None:
    decision = decide(sched, mark)
    assert (decision.verdict, decision.fields) == (verdict, fields), case


def test_the_marker_round_trips_through_the_flags_annotations() -> None:
    """What the operator writes is what it reads back: per-field setters at full precision, awaiting entries."""
    a = schedule("a", "u1", T0 + timedelta(microseconds=1), BOTH)
    marker = after_landing(Marker(), set_by("a", "u1", a.spec.scheduled_at), 3, BOTH, T0, lambda uid: False)
    notes = {k: v for k, v in marker.notes().items() if v is not None}
    notes.update({"flagscheduler.dev/last-applied-schedule": "a", "flagscheduler.dev/last-applied-schedule-uid": "u1",
                  "flagscheduler.dev/last-applied-scheduled-at": "2026-12-01T09:00:00.000001Z",
                  "flagscheduler.dev/last-applied-at": "2026-12-01T09:00:00.000Z"})
    flag = FeatureFlag.from_body({"metadata": {"namespace": "ns", "name": "f", "annotations": notes},
                                  "spec": {"enabled": True}})
    assert flag.marker.setters == marker.setters
    assert flag.marker.landing("u1") == Landed(generation=3, appliedAt=T0)


def test_an_awaiting_entry_survives_any_number_of_later_landings_until_its_schedule_finishes() -> None:
    """No fixed window: a landed schedule whose status is missing is remembered however much lands after it."""
    marker = after_landing(Marker(), set_by("a", "u0", T0), 1, {"enabled": True}, T0, lambda uid: True)
    for n in range(1, 100):
        marker = after_landing(marker, set_by(f"b{n}", f"u{n}", T0 + timedelta(minutes=n)), 1,
                               {"enabled": n % 2 == 0}, T0, lambda uid: uid == "u0")
    assert decide(schedule("a", "u0", T0 + timedelta(days=9)), marker).verdict is Verdict.LANDED
    assert set(marker.awaiting) == {"u0", "u99"}  # the finished ones left as later changes landed


FIELDS = ["enabled", "rolloutPercentage", "description", "defaultVariant", "targeting"]
minutes = st.integers(min_value=0, max_value=5)


@st.composite
def plans(draw: Any) -> list[tuple[str, datetime, dict[str, int]]]:
    """Schedules of one flag: unique names, clashing times, random values over random fields."""
    count = draw(st.integers(min_value=1, max_value=24))
    names = draw(st.lists(st.from_regex(r"[a-c]{1,3}", fullmatch=True), min_size=count, max_size=count, unique=True))
    return [(name, T0 + timedelta(minutes=draw(minutes)),
             draw(st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 9), min_size=1)))
            for name in names]


def in_order(plan: list[tuple[str, datetime, dict[str, int]]]) -> dict[str, int]:
    """The reference: every schedule applied once, in (scheduledAt, name) order, later values winning."""
    spec: dict[str, int] = {}
    for _name, _at, updates in sorted(plan, key=lambda p: (p[1], p[0])):
        spec.update(updates)
    return spec


@settings(max_examples=150, deadline=None)
@given(plans(), st.data())
def test_the_end_state_is_the_same_whatever_the_order_retries_and_crashes(plan: list, data: Any) -> None:
    spec: dict[str, int] = {}
    marker = Marker()
    finished: dict[str, str] = {}
    landings = {f"u-{name}": 0 for name, _, _ in plan}
    outcome = st.sampled_from(["ok", "ok", "fails before the PATCH", "crashes after the PATCH"])
    while len(finished) < len(plan):
        live = [p for p in plan if f"u-{p[0]}" not in finished]
        name, at, updates = data.draw(st.sampled_from(live), label="arrives or is retried next")
        uid, happens = f"u-{name}", data.draw(outcome)
        decision = decide_fields(uid, (at, name), updates, marker)
        if decision.verdict is Verdict.SUPERSEDED:
            finished[uid] = "Superseded"
        elif decision.verdict is Verdict.LANDED:
            finished[uid] = "Applied"
        elif happens != "fails before the PATCH":
            spec.update(decision.fields)
            landings[uid] += 1
            marker = after_landing(marker, set_by(name, uid, at), 1, decision.fields, T0,
                                   lambda u: u not in finished)
            if happens == "ok":
                finished[uid] = "Applied"
    assert spec == in_order(plan)
    assert max(landings.values()) == 1
    applied = {uid for uid, phase in finished.items() if phase == "Applied"}
    assert applied == {uid for uid, n in landings.items() if n}


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_the_rule_covers_every_field_of_the_updates_model() -> None:
    """A field added to ``FlagUpdates`` joins the per-field rule without naming it anywhere else."""
    every = FlagUpdates.model_construct(**{name: f"value of {name}" for name in FlagUpdates.model_fields})
    base = schedule("a", "u1", T0)
    sched = base.model_copy(update={"spec": base.spec.model_copy(update={"updates": every})})
    fields = set(every.as_patch())
    assert len(fields) == len(FlagUpdates.model_fields)
    assert set(decide(sched, Marker()).fields) == fields
    later = set_by("z", "u9", T0 + timedelta(days=1))
    for covered in fields:
        decision = decide(sched, Marker(setters={covered: later}))
        assert set(decision.skipped) == {covered} and set(decision.fields) == fields - {covered}
