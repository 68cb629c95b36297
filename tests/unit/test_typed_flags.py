"""Typed flags → flagd definitions, checked by flagd's own evaluator (openfeature-flagd-core)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from flag_scheduler.models import FeatureFlagSpec, FlagUpdates
from flag_scheduler.serving.flag_definitions import flag_configuration, flag_definition, render
from flag_scheduler.targeting import definition_problem

KEYS = [f"user-{i}" for i in range(10_000)]
COLOURS = {"blue": "#00f", "green": "#0f0", "red": "#f00"}
ACME_GREEN = {"if": [{"in": [{"var": "tenant"}, ["acme", "globex"]]}, "green", None]}


def spec(kind: str = "string", variants: dict | None = None, default: str = "blue", **fields: Any) -> dict:
    return {"enabled": True, "type": kind, "variants": {kind: variants or COLOURS}, "defaultVariant": default, **fields}


def core_of(**flags: dict) -> FlagdCore:
    core = FlagdCore()
    core.set_flags(render(flag_configuration("team-a", {n: flag_definition(s) for n, s in flags.items()})))
    return core


def test_a_string_flag_serves_its_default_variant() -> None:
    got = core_of(theme=spec()).resolve_string_value("theme", "code-default", EvaluationContext("u"))
    assert (got.value, got.variant, got.reason) == ("#00f", "blue", Reason.STATIC)


def test_number_and_object_flags_serve_their_values() -> None:
    core = core_of(
        limit=spec("number", {"small": 10, "large": 50}, "large"),
        ratio=spec("number", {"low": 0.25, "high": 2}, "low"),
        pricing=spec("object", {"basic": {"eur": 9, "tiers": ["a"]}, "pro": {"eur": 29}}, "pro"),
    )
    assert core.resolve_integer_value("limit", 0).value == 50
    assert core.resolve_float_value("ratio", 0.0).value == 0.25
    assert core.resolve_object_value("pricing", {}).value == {"eur": 29}


def test_a_three_way_split_over_ten_thousand_keys_keeps_its_weights() -> None:
    split = [{"variant": "blue", "weight": 50}, {"variant": "green", "weight": 30}, {"variant": "red", "weight": 20}]
    core = core_of(theme=spec(split=split))
    counts = Counter(core.resolve_string_value("theme", "", EvaluationContext(k)).variant for k in KEYS)
    for share in split:
        assert abs(counts[share["variant"]] / len(KEYS) - share["weight"] / 100) <= 0.02, counts


def test_a_targeting_rule_picks_a_variant_and_otherwise_the_default() -> None:
    core = core_of(theme=spec(targeting=ACME_GREEN))
    acme = core.resolve_string_value("theme", "", EvaluationContext("u", {"tenant": "acme"}))
    other = core.resolve_string_value("theme", "", EvaluationContext("u", {"tenant": "initech"}))
    assert (acme.variant, acme.reason, other.variant, other.reason) == ("green", Reason.TARGETING_MATCH, "blue", Reason.DEFAULT)


def test_the_rule_goes_first_and_the_split_decides_the_rest() -> None:
    split = [{"variant": "blue", "weight": 1}, {"variant": "red", "weight": 1}]
    core = core_of(theme=spec(targeting=ACME_GREEN, split=split))
    acme = {core.resolve_string_value("theme", "", EvaluationContext(k, {"tenant": "acme"})).variant for k in KEYS[:200]}
    rest = Counter(core.resolve_string_value("theme", "", EvaluationContext(k, {"tenant": "x"})).variant for k in KEYS[:2000])
    assert acme == {"green"} and set(rest) == {"blue", "red"} and abs(rest["blue"] - 1000) < 150


@pytest.mark.parametrize(("offset", "variant"), [(-3600, "green"), (3600, "blue")])
def test_a_flagd_timestamp_rule_switches_at_its_time(offset: int, variant: str) -> None:
    rule = {"if": [{">=": [{"var": "$flagd.timestamp"}, int(time.time()) + offset]}, "green", None]}
    assert core_of(theme=spec(targeting=rule)).resolve_string_value("theme", "", EvaluationContext("u")).variant == variant


def test_a_disabled_typed_flag_serves_its_default_to_everyone() -> None:
    definition = flag_definition({**spec(targeting=ACME_GREEN, split=[{"variant": "red", "weight": 1}]), "enabled": False})
    assert definition == {"state": "ENABLED", "variants": COLOURS, "defaultVariant": "blue"}


def test_zero_weights_are_left_out_and_an_empty_split_or_rule_is_none() -> None:
    split = [{"variant": "blue", "weight": 0}, {"variant": "red", "weight": 3}]
    assert flag_definition(spec(split=split))["targeting"] == {"fractional": [["red", 3]]}
    assert "targeting" not in flag_definition(spec(split=[], targeting={}))


def test_an_on_off_flag_keeps_its_definition_with_the_type_field() -> None:
    assert flag_definition({"enabled": True, "rolloutPercentage": 30, "type": "boolean"}) == flag_definition(
        {"enabled": True, "rolloutPercentage": 30}
    )


DEEP: dict = {"var": "x"}
for _ in range(40):
    DEEP = {"!": [DEEP]}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"variants": None}, "spec.variants"),
        ({"variants": {"string": COLOURS, "number": {"a": 1}}}, "spec.variants"),
        ({"variants": {"number": {"a": 1}}}, "spec.variants"),
        ({"variants": {"string": {"blue": 1}}}, "spec.variants.string.blue"),
        ({"type": "number", "variants": {"number": {"blue": True}}}, "spec.variants.number.blue"),
        ({"type": "object", "variants": {"object": {"blue": [1]}}}, "spec.variants.object.blue"),
        ({"type": "object", "variants": {"object": {"blue": {"k": "v" * 17_000}}}}, "spec.variants.object.blue"),
        ({"variants": {"string": {"bad name": "x"}}}, "spec.variants.string"),
        ({"variants": {"string": {f"v{i}": "x" for i in range(33)}}}, "spec.variants.string"),
        ({"variants": {"string": {"blue": "x" * 1025}}}, "spec.variants.string.blue"),
        ({"defaultVariant": "purple"}, "spec.defaultVariant"),
        ({"rolloutPercentage": 50}, "spec.rolloutPercentage"),
        ({"split": [{"variant": "purple", "weight": 1}]}, r"spec.split\[0\].variant"),
        ({"split": [{"variant": "blue", "weight": -1}]}, r"spec.split\[0\].weight"),
        ({"split": [{"variant": "blue", "weight": 0}]}, "spec.split"),
        ({"targeting": {"fractional": "oops"}}, "spec.targeting.fractional"),
        ({"targeting": ["if"]}, "spec.targeting"),
        ({"targeting": DEEP}, "spec.targeting"),
    ],
)
def test_an_invalid_typed_flag_is_refused_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace(r"\\", "\\")):
        flag_definition({**spec(), **bad})


def test_a_schedule_replaces_the_flags_rule_whole() -> None:
    current = FeatureFlagSpec.model_validate(spec(targeting={"in": ["a", {"var": "x"}]}))
    patch = FlagUpdates.model_validate({"targeting": ACME_GREEN}).as_patch(current)
    assert patch == {"targeting": {"in": None, **ACME_GREEN}}


def test_a_schedule_with_a_rule_flagd_refuses_cannot_be_read() -> None:
    with pytest.raises(ValueError, match=r"targeting\.fractional"):
        FlagUpdates.model_validate({"targeting": {"fractional": "oops"}})


@pytest.mark.parametrize(
    "flag_spec",
    [
        {"enabled": False, "rolloutPercentage": 100},
        {"enabled": True, "rolloutPercentage": 30},
        {"enabled": True},
        spec(),
        spec(split=[{"variant": "blue", "weight": 2}, {"variant": "red", "weight": 1}], targeting=ACME_GREEN),
        spec("number", {"small": 10, "half": 0.5}, "small"),
        spec("object", {"basic": {"eur": 9, "tiers": ["a", None]}}, "basic"),
        spec("boolean", {"on": True, "off": False}, "off", split=[{"variant": "on", "weight": 1}]),
        {**spec(targeting=ACME_GREEN), "enabled": False},
    ],
)
def test_every_served_definition_passes_flagds_own_flag_schema(flag_spec: dict) -> None:
    """Clients that validate what they receive (flagd's Go and Java providers) accept every flag set."""
    assert definition_problem("f", flag_definition(flag_spec)) is None
