"""The served flag store: what changes a namespace's flag set, and who is woken when it does."""

from __future__ import annotations

import json
from typing import Any

from flag_scheduler.serving.flag_store import FlagStore


def flag(name: str, enabled: bool = True, rollout: int = 100, ns: str = "team-a", uid: str = "u1", **meta: Any) -> dict:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": uid, **meta},
        "spec": {"enabled": enabled, "rolloutPercentage": rollout},
    }


def flags_of(store: FlagStore, ns: str = "team-a") -> dict[str, Any]:
    return json.loads(store.snapshot(ns).configuration)["flags"]


def test_a_change_of_definition_replaces_the_snapshot_and_wakes_its_readers() -> None:
    store = FlagStore()
    store.put(flag("a", enabled=False))
    before = store.snapshot("team-a")
    store.observe("MODIFIED", flag("a", enabled=True))
    assert before.replaced.is_set()
    assert store.snapshot("team-a").etag != before.etag and flags_of(store)["a"]["defaultVariant"] == "on"


def test_a_change_that_serves_nothing_new_wakes_nobody() -> None:
    store = FlagStore()
    store.put(flag("a"))
    before = store.snapshot("team-a")
    changed = flag("a", annotations={"flagscheduler.dev/fencing-token": "7", "team": "x"})
    changed["spec"]["description"] = "new words"
    store.observe("MODIFIED", changed)
    assert not before.replaced.is_set() and store.snapshot("team-a") is before


def test_the_schedule_that_changed_a_flag_is_served_as_its_metadata() -> None:
    store = FlagStore()
    store.put(flag("a", annotations={
        "flagscheduler.dev/last-applied-schedule": "go-live",
        "flagscheduler.dev/last-applied-at": "2027-03-01T09:00:00.012345Z",
    }))
    assert flags_of(store)["a"]["metadata"] == {
        "lastAppliedSchedule": "go-live", "lastAppliedAt": "2027-03-01T09:00:00.012345Z"
    }
    details = store.snapshot("team-a").evaluator().resolve_boolean_value("a", False, None)
    assert details.flag_metadata == {
        "flagSetId": "team-a", "lastAppliedSchedule": "go-live", "lastAppliedAt": "2027-03-01T09:00:00.012345Z"
    }


def test_a_late_delete_of_an_older_object_of_the_same_name_is_ignored() -> None:
    store = FlagStore()
    store.put(flag("a", uid="new"))
    store.observe("DELETED", flag("a", uid="old"))
    assert "a" in flags_of(store)
    store.observe("DELETED", flag("a", uid="new"))
    assert flags_of(store) == {}


def test_a_namespace_without_flags_is_an_empty_set_woken_by_its_first_flag() -> None:
    store = FlagStore()
    empty = store.snapshot("team-b")
    assert flags_of(store, "team-b") == {} and store.namespaces() == []
    store.put(flag("a", ns="team-b"))
    assert empty.replaced.is_set() and list(flags_of(store, "team-b")) == ["a"]


def test_namespaces_are_apart() -> None:
    store = FlagStore()
    store.put(flag("a", ns="team-a"))
    other = store.snapshot("team-b")
    store.put(flag("b", ns="team-a"))
    assert list(flags_of(store, "team-a")) == ["a", "b"] and flags_of(store, "team-b") == {}
    assert not other.replaced.is_set()


def test_a_flag_that_becomes_unservable_stops_being_served() -> None:
    store = FlagStore()
    store.put(flag("a"))
    broken = flag("a")
    broken["spec"] = {"rolloutPercentage": 50}  # no enabled: the CRD forbids it, the store survives it
    store.put(broken)
    assert flags_of(store) == {}


def test_close_wakes_every_reader() -> None:
    store = FlagStore()
    store.put(flag("a"))
    served, empty = store.snapshot("team-a"), store.snapshot("team-b")
    store.close()
    assert store.closed and served.replaced.is_set() and empty.replaced.is_set()
