"""The FeatureFlag → flagd mapping, checked by flagd's own evaluator (openfeature-flagd-core).

What an application sees is an evaluation, so every case is asserted as one: the definition is
loaded into ``FlagdCore`` exactly as the in-process providers load what the sync stream sends.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from flag_scheduler.serving.flag_definitions import (
    flag_configuration,
    flag_definition,
    with_change_metadata,
    namespace_problem,
    render,
    selected_namespace,
)

KEYS = [f"user-{i}" for i in range(10_000)]


def evaluator(specs: dict[str, dict]) -> FlagdCore:
    core = FlagdCore()
    core.set_flags(render(flag_configuration("team-a", {n: flag_definition(s) for n, s in specs.items()})))
    return core


def share_on(core: FlagdCore, flag: str, keys: list[str] = KEYS) -> set[str]:
    return {k for k in keys if core.resolve_boolean_value(flag, False, EvaluationContext(k)).value}


@pytest.mark.parametrize(
    ("spec", "value", "variant", "reason"),
    [
        ({"enabled": False, "rolloutPercentage": 100}, False, "off", Reason.STATIC),
        ({"enabled": False, "rolloutPercentage": 50}, False, "off", Reason.STATIC),
        ({"enabled": True, "rolloutPercentage": 100}, True, "on", Reason.STATIC),
        ({"enabled": True}, True, "on", Reason.STATIC),  # the CRD's default rollout is 100
        ({"enabled": True, "rolloutPercentage": 0}, False, "off", Reason.STATIC),
    ],
)
def test_static_flags_evaluate_to_their_variant(spec: dict, value: bool, variant: str, reason: Reason) -> None:
    # The code default is the opposite of the expected value: a flag must never fall back to it.
    got = evaluator({"f": spec}).resolve_boolean_value("f", not value, EvaluationContext("anyone"))
    assert (got.value, got.variant, got.reason) == (value, variant, reason)


def test_a_disabled_flag_is_served_as_off_not_as_flagd_disabled() -> None:
    definition = flag_definition({"enabled": False, "rolloutPercentage": 100})
    assert definition == {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def test_a_partial_rollout_is_a_fractional_rule_on_the_targeting_key() -> None:
    definition = flag_definition({"enabled": True, "rolloutPercentage": 30})
    assert definition["defaultVariant"] == "off"
    assert definition["targeting"] == {"fractional": [["on", 30], ["off", 70]]}


def test_thirty_percent_of_ten_thousand_keys_get_on() -> None:
    on = share_on(evaluator({"f": {"enabled": True, "rolloutPercentage": 30}}), "f")
    assert 2800 <= len(on) <= 3200


def test_a_growing_rollout_keeps_every_key_that_was_on() -> None:
    at_30 = share_on(evaluator({"f": {"enabled": True, "rolloutPercentage": 30}}), "f")
    at_60 = share_on(evaluator({"f": {"enabled": True, "rolloutPercentage": 60}}), "f")
    assert at_30 < at_60 and 5800 <= len(at_60) <= 6200


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 99), st.integers(1, 99))
def test_buckets_are_monotonic_in_the_percentage(p: int, q: int) -> None:
    low, high = sorted((p, q))
    keys = KEYS[:500]
    core = evaluator({"low": {"enabled": True, "rolloutPercentage": low}})
    core_high = evaluator({"low": {"enabled": True, "rolloutPercentage": high}})
    assert share_on(core, "low", keys) <= share_on(core_high, "low", keys)


def test_different_flags_bucket_users_independently() -> None:
    core = evaluator({"a": {"enabled": True, "rolloutPercentage": 50}, "b": {"enabled": True, "rolloutPercentage": 50}})
    assert share_on(core, "a", KEYS[:2000]) != share_on(core, "b", KEYS[:2000])


def test_a_partial_rollout_without_a_targeting_key_is_off() -> None:
    got = evaluator({"f": {"enabled": True, "rolloutPercentage": 99}}).resolve_boolean_value("f", True)
    assert (got.value, got.variant, got.reason) == (False, "off", Reason.DEFAULT)


def test_the_flag_set_is_keyed_by_name_and_names_its_namespace() -> None:
    text = render(flag_configuration("team-a", {"b": flag_definition({"enabled": True}), "a": flag_definition({"enabled": False})}))
    doc = json.loads(text)
    assert list(doc["flags"]) == ["a", "b"] and doc["metadata"] == {"flagSetId": "team-a"}
    assert text == render(json.loads(text)), "rendering is deterministic (the ETag is its hash)"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.enabled"),
        ({"enabled": "yes"}, "spec.enabled"),
        ({"enabled": True, "rolloutPercentage": 101}, "spec.rolloutPercentage"),
        ({"enabled": True, "rolloutPercentage": -1}, "spec.rolloutPercentage"),
        ({"enabled": True, "rolloutPercentage": 12.5}, "spec.rolloutPercentage"),
        ({"enabled": True, "rolloutPercentage": True}, "spec.rolloutPercentage"),
    ],
)
def test_a_malformed_spec_is_refused_naming_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        flag_definition(spec)


@pytest.mark.parametrize(
    ("namespace", "ok"),
    [("team-a", True), ("a", True), ("", False), ("Team-A", False), ("-a", False), ("a" * 64, False), ("a/b", False)],
)
def test_only_namespace_names_select_a_flag_set(namespace: str, ok: bool) -> None:
    assert (namespace_problem(namespace) is None) is ok


@pytest.mark.parametrize(
    ("selector", "namespace", "ok"),
    [
        ("team-a", "team-a", True),
        ("flagSetId=team-a", "team-a", True),
        ("source=team-a", "team-a", True),
        ("flagSetId=", "", False),
        ("app=weather", "weather", False),
        ("", "", False),
    ],
)
def test_a_selector_names_a_namespace_bare_or_as_flag_set_id(selector: str, namespace: str, ok: bool) -> None:
    got, problem = selected_namespace(selector)
    assert got == namespace and (problem is None) is ok


@pytest.mark.parametrize(
    ("annotations", "metadata"),
    [
        (None, None),
        ({"team": "x"}, None),
        ({"flagscheduler.dev/last-applied-schedule": "s1"}, {"lastAppliedSchedule": "s1"}),
        # Values the operator would never write are left out rather than served half-checked.
        ({"flagscheduler.dev/last-applied-schedule": "x" * 254, "flagscheduler.dev/last-applied-at": ""}, None),
        ({"flagscheduler.dev/last-applied-at": "2027-01-01T00:00:00Z"}, {"lastAppliedAt": "2027-01-01T00:00:00Z"}),
    ],
)
def test_change_metadata_comes_from_the_marker_annotations_only(annotations, metadata) -> None:
    definition = with_change_metadata(flag_definition({"enabled": True}), annotations)
    assert definition.get("metadata") == metadata
