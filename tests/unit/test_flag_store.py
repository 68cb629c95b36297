"""The served flag store: what changes a namespace's flag set, and who is woken when it does."""

from __future__ import annotations

import json
from typing import Any

from openfeature.evaluation_context import EvaluationContext

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


def test_a_flag_that_becomes_invalid_keeps_its_last_valid_definition() -> None:
    store = FlagStore()
    store.put(flag("a", rollout=30))
    served = store.snapshot("team-a")
    broken = flag("a")
    broken["spec"] = {"rolloutPercentage": 50}  # no enabled: the CRD forbids it, the store survives it
    store.put(broken)
    assert store.snapshot("team-a") is served and not served.replaced.is_set()
    assert flags_of(store)["a"]["targeting"] == {"fractional": [["on", 30], ["off", 70]]}
    store.put(flag("a", rollout=60))  # valid again: served at once
    assert served.replaced.is_set() and flags_of(store)["a"]["targeting"]["fractional"][0] == ["on", 60]


def test_a_typed_flag_with_a_bad_rule_keeps_serving_its_last_valid_rule() -> None:
    store = FlagStore()
    good = typed("theme", targeting={"if": [{"in": [{"var": "tenant"}, ["acme"]]}, "green", None]})
    store.put(good)
    store.put(typed("theme", targeting={"fractional": "oops"}))
    assert flags_of(store)["theme"]["targeting"] == good["spec"]["targeting"]


def test_a_flag_never_valid_is_not_served_and_its_namesake_is_not_kept() -> None:
    store = FlagStore()
    store.put(typed("theme", default="purple"))
    assert flags_of(store) == {}
    store.put(flag("b"))
    store.put({**flag("b", uid="u2"), "spec": {"enabled": "yes"}})  # another object under the name
    assert flags_of(store) == {}


def test_each_flag_is_evaluated_with_the_resolve_method_of_its_type() -> None:
    store = FlagStore()
    store.put(typed("theme"))
    store.put(typed("limit", kind="number", variants={"small": 10, "large": 50}, default="large"))
    store.put(typed("ratio", kind="number", variants={"low": 0.5, "high": 2}, default="low"))
    store.put(typed("pricing", kind="object", variants={"basic": {"eur": 9}}, default="basic"))
    store.put(flag("on-off"))
    snap = store.snapshot("team-a")
    got = {key: snap.evaluate(key, EvaluationContext("user-1")).value for key in snap.keys}
    assert got == {"theme": "#00f", "limit": 50, "ratio": 0.5, "pricing": {"eur": 9}, "on-off": True}


def typed(name: str, kind: str = "string", variants: dict | None = None, default: str = "blue", **spec: Any) -> dict:
    body = flag(name)
    variants = variants or {"blue": "#00f", "green": "#0f0"}
    body["spec"] = {"enabled": True, "type": kind, "variants": {kind: variants}, "defaultVariant": default, **spec}
    return body


def test_close_wakes_every_reader() -> None:
    store = FlagStore()
    store.put(flag("a"))
    served, empty = store.snapshot("team-a"), store.snapshot("team-b")
    store.close()
    assert store.closed and served.replaced.is_set() and empty.replaced.is_set()


def test_a_fresh_list_drops_what_was_deleted_while_the_watch_was_away_and_wakes_only_on_change() -> None:
    store = FlagStore()
    for name in ("a", "b"):
        store.put(flag(name, ns="team-a"))
    store.put(flag("c", ns="team-b"))
    unchanged = store.snapshot("team-b")
    before = store.snapshot("team-a")
    store.replace([flag("a", ns="team-a")], "team-a")  # b was deleted while the watch was gone (410)
    assert list(flags_of(store, "team-a")) == ["a"] and before.replaced.is_set()
    assert list(flags_of(store, "team-b")) == ["c"] and not unchanged.replaced.is_set()
    store.replace([flag("a", ns="team-a")], None)  # every namespace: team-b's c is gone too
    assert flags_of(store, "team-b") == {} and unchanged.replaced.is_set()


def test_a_snapshot_is_encoded_once_and_the_bytes_shared() -> None:
    store = FlagStore()
    store.put(flag("a"))
    calls = []
    snap = store.snapshot("team-a")
    first = snap.encoded("sync", lambda text: calls.append(text) or text.encode())
    assert store.snapshot("team-a").encoded("sync", lambda text: b"other") is first and len(calls) == 1
