"""The flag's InvalidSpec condition: written when the flag servers cannot serve its spec, and only then."""

from __future__ import annotations

from flag_scheduler.scheduling.flag_validity import INVALID_SPEC, wanted_condition

NOW = "2026-12-01T09:00:00.000Z"
GOOD = {"enabled": True, "type": "string", "variants": {"string": {"blue": "#00f"}}, "defaultVariant": "blue"}
BAD = {**GOOD, "targeting": {"fractional": "oops"}}


def flag(spec: dict, *conditions: dict, generation: int = 3) -> dict:
    return {"metadata": {"name": "f", "namespace": "ns", "generation": generation},
            "spec": spec, "status": {"conditions": list(conditions)}}


def test_a_valid_flag_without_the_condition_is_never_written() -> None:
    assert wanted_condition(flag(GOOD), NOW) is None
    assert wanted_condition(flag({"enabled": True, "rolloutPercentage": 30}), NOW) is None


def test_an_invalid_flag_gets_the_condition_naming_the_field() -> None:
    condition = wanted_condition(flag(BAD), NOW)
    assert condition is not None
    assert (condition["type"], condition["status"], condition["reason"]) == (INVALID_SPEC, "True", INVALID_SPEC)
    assert condition["message"].startswith("spec.targeting.fractional:") and "last valid definition" in condition["message"]
    assert (condition["lastTransitionTime"], condition["observedGeneration"]) == (NOW, 3)
    assert wanted_condition(flag(BAD, condition), "later") is None, "written once, not on every event"


def test_a_flag_made_valid_again_turns_the_condition_false_once() -> None:
    invalid = wanted_condition(flag(BAD), NOW)
    fixed = wanted_condition(flag(GOOD, invalid, generation=4), "later")
    assert fixed is not None and (fixed["status"], fixed["reason"], fixed["lastTransitionTime"]) == ("False", "Valid", "later")
    assert wanted_condition(flag(GOOD, fixed, generation=5), "much later") is None
