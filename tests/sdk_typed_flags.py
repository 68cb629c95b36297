"""The typed flags every runtime's client evaluates in ``test_sdk_clients.py``, and the Python side of it.

One of each type (string with a three-way split and a targeting rule, integer and float number,
object), the evaluations each client makes with its SDK's typed method (``TYPED``, sent in the
job), what a user must see (``EXPECTED``), and the same evaluations through the Python SDK, so a
test can hold every runtime against the Python clients.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext

from operator_harness import GROUP, VERSION

COLOURS = {"blue": "#00f", "green": "#0f0", "red": "#f00"}
SPLIT = [("blue", 50), ("green", 30), ("red", 20)]
SPLIT_FLAG = "theme"
PRO = {"currency": "EUR", "monthly": 29, "seats": 5, "features": ["sso", "audit"]}
SWITCHED = "page-size"  # a schedule switches its defaultVariant small -> large beside the watched flag's


def typed_flags() -> list[dict[str, Any]]:
    """The FeatureFlags: ``theme`` splits 50/30/20 by targeting key; tenants acme and globex get green."""
    specs = {
        SPLIT_FLAG: {"type": "string", "variants": {"string": COLOURS}, "defaultVariant": "blue",
                     "split": [{"variant": v, "weight": w} for v, w in SPLIT],
                     "targeting": {"if": [{"in": [{"var": "tenant"}, ["acme", "globex"]]}, "green", None]}},
        SWITCHED: {"type": "number", "variants": {"number": {"small": 10, "large": 50}}, "defaultVariant": "small"},
        "ratio": {"type": "number", "variants": {"number": {"low": 0.25, "high": 2.5}}, "defaultVariant": "low"},
        "pricing": {"type": "object", "variants": {"object": {"basic": {"currency": "EUR", "monthly": 9}, "pro": PRO}},
                    "defaultVariant": "pro"},
    }
    return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "metadata": {"name": name},
             "spec": {"enabled": True, **spec}} for name, spec in specs.items()]


# Each client evaluates these for targeting key user-1 (plus ``attributes``) with its typed method:
# string, integer and float (JS and the browser: getNumberDetails for both), object.
TYPED = [
    {"name": "theme-acme", "flag": SPLIT_FLAG, "type": "string", "default": "code", "attributes": {"tenant": "acme"}},
    {"name": "theme", "flag": SPLIT_FLAG, "type": "string", "default": "code"},
    {"name": "page-size", "flag": SWITCHED, "type": "integer", "default": 0},
    {"name": "ratio", "flag": "ratio", "type": "float", "default": 0.0},
    {"name": "pricing", "flag": "pricing", "type": "object", "default": {}},
]
# (value, variant) a user sees; "theme" for user-1 depends on the client's fractional generation.
EXPECTED = {"theme-acme": ("#0f0", "green"), "page-size": (10, "small"), "ratio": (0.25, "low"), "pricing": (PRO, "pro")}
SPLIT_JOB = {"flag": SPLIT_FLAG, "default": "code"}
SWITCH_JOB = {**next(e for e in TYPED if e["flag"] == SWITCHED), "variant": "large"}

_PY_METHODS = {"string": "get_string_details", "integer": "get_integer_details", "float": "get_float_details",
               "object": "get_object_details"}


def python_typed(client: OpenFeatureClient) -> dict[str, dict[str, Any]]:
    """``TYPED`` through the Python SDK, in the shape the other clients report."""
    out = {}
    for e in TYPED:
        d = getattr(client, _PY_METHODS[e["type"]])(e["flag"], e["default"],
                                                   EvaluationContext("user-1", e.get("attributes", {})))
        out[e["name"]] = {"value": d.value, "variant": d.variant, "reason": getattr(d.reason, "value", d.reason),
                          "errorCode": d.error_code.value if d.error_code else None, "flagMetadata": dict(d.flag_metadata)}
    return out


def python_split(client: OpenFeatureClient, count: int) -> list[str | None]:
    """The split flag's variant for the first ``count`` keys through the Python SDK."""
    return [client.get_string_details(SPLIT_FLAG, "code", EvaluationContext(f"user-{i}")).variant for i in range(count)]


def assert_typed_as_expected(where: str, typed: dict[str, dict[str, Any]], split: list[str | None]) -> None:
    """Value, variant and no error for every evaluation; user-1's theme is its own split's answer."""
    for name, (value, variant) in EXPECTED.items():
        d = typed[name]
        assert (d["value"], d["variant"], d["errorCode"]) == (value, variant, None), (where, name, d)
    assert typed["theme-acme"]["reason"] == "TARGETING_MATCH", (where, typed["theme-acme"])
    theme = typed["theme"]
    assert (theme["variant"], theme["value"], theme["errorCode"]) == (split[1], COLOURS[split[1]], None), (where, theme)


def assert_split_keeps_its_weights(where: str, variants: list[str | None]) -> Counter[str | None]:
    """Each variant's share of the keys within 2 points of its weight (the weights add up to 100)."""
    counts = Counter(variants)
    for variant, weight in SPLIT:
        assert abs(counts[variant] / len(variants) - weight / 100) <= 0.02, (where, counts)
    return counts


def assert_typed_flags_as_the_python_clients(typed: dict[str, dict[str, Any]], splits: dict[str, list[str | None]],
                                            truth_split: list[str | None]) -> None:
    """Every client, typed methods: the values and variants a user must see, the same as the Python
    clients'; the split keeps its weights wherever 10,000 keys were evaluated."""
    python = typed["python in-process"]
    for client, answers in typed.items():
        assert_typed_as_expected(client, answers, splits[client])
        same = {n: (d["value"], d["variant"]) for n, d in answers.items() if n != "theme"}
        assert same == {n: (d["value"], d["variant"]) for n, d in python.items() if n != "theme"}, client
    print("\ntyped flags, value / variant / reason per client:")
    for client, answers in typed.items():
        print(f"  {client}: " + "; ".join(f"{n} {d['value']} {d['variant']} {d['reason']}" for n, d in answers.items()))
    shares = {client: assert_split_keeps_its_weights(client, variants)
              for client, variants in {"OFREP (bulk)": truth_split, **splits}.items() if len(variants) == len(truth_split)}
    print(f"{SPLIT_FLAG} {SPLIT} over {len(truth_split)} keys:", {c: dict(n) for c, n in shares.items()})
