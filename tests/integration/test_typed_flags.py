"""Typed flags (string, number, object) with variants, a weighted split and flagd targeting.

What a user meets: the API server's refusals naming the field, the printer columns, schedules that
switch the default variant, change the split and replace the rule, the flag's ``InvalidSpec``
condition with its last valid definition still served, and real OpenFeature clients (flagd's
in-process provider and OFREP) evaluating every type.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

from conftest import REPO, Kubectl
from operator_harness import Cluster, OperatorProcess, in_seconds, wait_for

from .admission import admin_exists
from .test_api import MISSING, apply, refused, schedule, table
from .test_openfeature import Served, in_process, sdk, served  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

API_VERSION = "flagscheduler.dev/v1alpha1"
COLOURS = {"blue": "#00f", "green": "#0f0", "red": "#f00"}
ACME_GREEN = {"if": [{"in": [{"var": "tenant"}, ["acme", "globex"]]}, "green", None]}
BETA_RED = {"var": "preferredColour"}  # another operator than ACME_GREEN's: a merge patch would keep both
SPLIT = [{"variant": "blue", "weight": 50}, {"variant": "green", "weight": 30}, {"variant": "red", "weight": 20}]
THEME: dict[str, Any] = {"enabled": True, "type": "string", "variants": {"string": COLOURS},
                         "defaultVariant": "blue", "split": SPLIT, "targeting": ACME_GREEN}
KEYS = [f"user-{i}" for i in range(10_000)]


def typed(name: str, **spec: Any) -> dict[str, Any]:
    """A FeatureFlag manifest: the string flag THEME with ``spec`` changed (MISSING removes a field)."""
    merged = {**copy.deepcopy(THEME), **spec}
    return {"apiVersion": API_VERSION, "kind": "FeatureFlag", "metadata": {"name": name},
            "spec": {k: v for k, v in merged.items() if v is not MISSING}}


# -- the API server refuses what it can see, naming the field ----------------------------------

BAD_FLAGS = [
    ("no-variants", {"variants": MISSING},
     ["spec.variants: Required value: spec.variants is required for a flag of type string"]),
    ("two-types", {"variants": {"string": COLOURS, "number": {"one": 1}}}, ["spec.variants", "must have at most 1"]),
    ("wrong-type-map", {"variants": {"number": {"one": 1}}},
     ["spec.variants: Invalid value", "must hold the values under the name of spec.type"]),
    ("value-not-a-string", {"variants": {"string": {"blue": 1}}},
     ["spec.variants.string.blue: Invalid value", "must be of type string"]),
    ("number-value-a-boolean", {"type": "number", "variants": {"number": {"blue": True}}},
     ["spec.variants.number.blue: Invalid value", "must be of type number"]),
    ("object-value-a-list", {"type": "object", "variants": {"object": {"blue": [1]}}},
     ["spec.variants.object.blue: Invalid value", "must be of type object"]),
    ("value-too-long", {"variants": {"string": {"blue": "x" * 1025}}},
     ["spec.variants.string.blue: Too long: may not be more than 1024"]),
    ("variant-name", {"variants": {"string": {"blue sky": "#00f"}}, "split": MISSING, "targeting": MISSING,
                      "defaultVariant": "blue sky"},
     ["spec.variants.string: Invalid value", "variant names are 1 to 63 letters"]),
    ("too-many-variants", {"variants": {"string": {f"v{i}": "x" for i in range(33)}}},
     ["spec.variants.string: Too many: 33: must have at most 32"]),
    ("type-unknown", {"type": "json"}, ['spec.type: Unsupported value: "json"']),
    ("default-undeclared", {"defaultVariant": "purple"},
     ["spec.defaultVariant: Invalid value", "must be one of the variants in spec.variants, not purple"]),
    ("default-missing", {"defaultVariant": MISSING},
     ["spec.defaultVariant: Required value: spec.defaultVariant is required when spec.variants is set"]),
    ("split-undeclared", {"split": [{"variant": "purple", "weight": 1}]},
     ["spec.split: Invalid value", "spec.split may only name variants declared in spec.variants"]),
    ("split-all-zero", {"split": [{"variant": "blue", "weight": 0}, {"variant": "red", "weight": 0}]},
     ["spec.split: Invalid value", "spec.split needs at least one weight above 0"]),
    ("split-negative", {"split": [{"variant": "blue", "weight": -1}]},
     ["spec.split[0].weight: Invalid value: -1", "greater than or equal to 0"]),
    ("split-too-heavy", {"split": [{"variant": "blue", "weight": 1_000_001}]},
     ["spec.split[0].weight: Invalid value: 1000001", "less than or equal to 1000000"]),
    ("split-decimal", {"split": [{"variant": "blue", "weight": 1.5}]}, ["spec.split[0].weight", "must be of type integer"]),
    ("split-twice", {"split": [{"variant": "blue", "weight": 1}, {"variant": "blue", "weight": 2}]},
     ["spec.split[1]: Duplicate value"]),
    ("rollout-with-variants", {"rolloutPercentage": 50},
     ["spec.rolloutPercentage: Forbidden: spec.rolloutPercentage applies only to on/off flags"]),
    ("rule-not-an-object", {"targeting": "if"}, ["spec.targeting: Invalid value", "must be of type object"]),
    ("rule-on-an-on-off-flag", {"type": MISSING, "variants": MISSING, "defaultVariant": MISSING, "split": MISSING},
     ["spec.targeting: Forbidden: spec.targeting needs spec.variants"]),
]


@pytest.mark.parametrize(("changes", "fragments"), [r[1:] for r in BAD_FLAGS], ids=[r[0] for r in BAD_FLAGS])
def test_a_bad_typed_flag_is_refused_naming_the_field(
    kubectl: Kubectl, crds: None, namespace: str, changes: dict[str, Any], fragments: list[str]
) -> None:
    refused(apply(kubectl, namespace, typed("bad", **changes)), *fragments)
    assert not admin_exists(kubectl, namespace, "ff/bad")  # nothing half-applied


BAD_UPDATES = [
    ("split-all-zero", {"split": [{"variant": "blue", "weight": 0}]},
     ["spec.updates.split: Invalid value", "spec.updates.split needs at least one weight above 0"]),
    ("split-negative", {"split": [{"variant": "blue", "weight": -5}]}, ["spec.updates.split[0].weight: Invalid value: -5"]),
    ("default-empty", {"defaultVariant": ""}, ["spec.updates.defaultVariant", "at least 1 chars long"]),
    ("rule-not-an-object", {"targeting": ["if"]}, ["spec.updates.targeting: Invalid value", "must be of type object"]),
]


@pytest.mark.parametrize(("updates", "fragments"), [r[1:] for r in BAD_UPDATES], ids=[r[0] for r in BAD_UPDATES])
def test_a_schedule_with_bad_typed_updates_is_refused_naming_the_field(
    kubectl: Kubectl, crds: None, namespace: str, updates: dict[str, Any], fragments: list[str]
) -> None:
    refused(apply(kubectl, namespace, schedule("bad", updates=updates)), *fragments)


def test_typed_flags_of_every_type_are_accepted_and_listed_with_type_and_default(
    kubectl: Kubectl, crds: None, namespace: str
) -> None:
    flags = [
        typed("theme"),
        typed("page-size", type="number", variants={"number": {"small": 10, "large": 50, "half": 0.5}},
              defaultVariant="small", split=MISSING, targeting=MISSING),
        typed("pricing", type="object", variants={"object": {"basic": {"eur": 9}, "pro": {"eur": 29, "seats": [1]}}},
              defaultVariant="pro", split=MISSING, targeting=MISSING),
        typed("dark-mode", type="boolean", variants={"boolean": {"on": True, "off": False}}, defaultVariant="off",
              split=[{"variant": "on", "weight": 1}, {"variant": "off", "weight": 3}], targeting=MISSING),
        {"apiVersion": API_VERSION, "kind": "FeatureFlag", "metadata": {"name": "checkout-v2"},
         "spec": {"enabled": True, "rolloutPercentage": 30}},
    ]
    assert apply(kubectl, namespace, *flags).returncode == 0
    out = kubectl("get", "ff", "-n", namespace).stdout
    assert out.splitlines()[0].split() == ["NAME", "ENABLED", "ROLLOUT", "TYPE", "DEFAULT", "LAST-SCHEDULE", "AGE"]
    rows = {r["NAME"]: (r["TYPE"], r["DEFAULT"]) for r in table(out)}
    assert rows == {"theme": ("string", "blue"), "page-size": ("number", "small"), "pricing": ("object", "pro"),
                    "dark-mode": ("boolean", "off"), "checkout-v2": ("", "")}


def test_an_applied_schedule_refuses_any_change_inside_its_rule(kubectl: Kubectl, crds: None, namespace: str) -> None:
    """CEL compares the whole rule: a changed operator of the same size is a change too."""
    rule = {"in": [{"var": "tenant"}, ["acme"]]}
    obj = schedule("rule", updates={"targeting": rule})
    assert apply(kubectl, namespace, typed("checkout-v2"), obj).returncode == 0
    applied = {"phase": "Applied", "appliedAt": "2030-01-01T09:00:00.000Z",
               "conditions": [{"type": "Applied", "status": "True", "reason": "Applied", "message": "",
                               "lastTransitionTime": "2030-01-01T09:00:00.000Z"}]}
    kubectl("patch", "fs", "rule", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": applied}))
    swapped = copy.deepcopy(obj)
    swapped["spec"]["updates"]["targeting"] = {"==": [{"var": "tenant"}, ["acme"]]}
    refused(apply(kubectl, namespace, swapped), "spec: Forbidden", "cannot change: the schedule is already Applied")
    assert kubectl.json("get", "fs", "rule", "-n", namespace)["spec"]["updates"]["targeting"] == rule


# -- schedules change typed flags field by field -------------------------------------------------


def test_schedules_switch_the_default_change_the_split_and_replace_the_rule(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                   typed("theme"))
    new_split = [{"variant": "green", "weight": 1}, {"variant": "red", "weight": 1}]
    cluster.schedule("switch-default", "theme", in_seconds(2), {"defaultVariant": "green"})
    cluster.schedule("change-split", "theme", in_seconds(3), {"split": new_split})
    cluster.schedule("replace-rule", "theme", in_seconds(4), {"targeting": BETA_RED})
    for name in ("switch-default", "change-split", "replace-rule"):
        cluster.wait_phase(name, "Applied", timeout=30)
    spec = cluster.get_flag("theme")["spec"]
    # The rule is replaced whole: nothing of the old one (its "if" arguments) is merged into it.
    assert (spec["defaultVariant"], spec["split"], spec["targeting"]) == ("green", new_split, BETA_RED)
    assert cluster.get_flag("theme")["metadata"]["annotations"]["flagscheduler.dev/last-applied-schedule"] == "replace-rule"
    cluster.schedule("clear", "theme", in_seconds(1), {"split": [], "targeting": {}})
    cluster.wait_phase("clear", "Applied", timeout=30)
    spec = cluster.get_flag("theme")["spec"]
    assert (spec["defaultVariant"], spec["split"], spec.get("targeting", {})) == ("green", [], {})


def test_a_schedule_naming_an_undeclared_variant_fails_naming_the_field(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                   typed("theme"))
    cluster.schedule("purple", "theme", in_seconds(1), {"defaultVariant": "purple"}, retry={"maxRetries": 0})
    status = cluster.wait_phase("purple", "Failed", timeout=30)
    assert "spec.defaultVariant" in status["lastError"] and "not purple" in status["lastError"]
    cluster.schedule("bad-rule", "theme", in_seconds(1), {"targeting": {"fractional": "oops"}})
    status = cluster.wait_phase("bad-rule", "Failed", timeout=30)
    applied = next(c for c in status["conditions"] if c["type"] == "Applied")
    assert applied["reason"] == "InvalidSpec" and "targeting.fractional" in applied["message"]
    assert cluster.get_flag("theme")["spec"] == {**typed("theme")["spec"], "rolloutPercentage": 100}


# -- a flag the servers cannot serve keeps its last valid definition ----------------------------


def ofrep_variant(served: Served, namespace: str, flag: str, context: dict[str, Any]) -> str | None:
    import requests

    url = f"{served.ofrep_url(namespace)}/ofrep/v1/evaluate/flags/{flag}"
    answer = requests.post(url, json={"context": context}, timeout=5)
    return answer.json().get("variant") if answer.status_code == 200 else None


def invalid_spec(cluster: Cluster, name: str) -> dict[str, Any] | None:
    conditions = (cluster.get_flag(name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "InvalidSpec"), None)


def test_a_flag_with_a_rule_flagd_refuses_keeps_its_last_valid_rule_and_says_why(
    cluster: Cluster, served: Served
) -> None:
    cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                   typed("theme", split=MISSING))
    acme = {"targetingKey": "u", "tenant": "acme"}
    wait_for(lambda: ofrep_variant(served, cluster.ns, "theme", acme) == "green", what="the rule to be served")
    assert invalid_spec(cluster, "theme") is None, "a valid flag gets no condition"

    # The CRD keeps the rule as free JSON: the API server accepts what flagd's schema refuses.
    cluster.custom.patch_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                  "theme", {"spec": {"targeting": {"fractional": "oops"}}})
    condition = wait_for(lambda: (c := invalid_spec(cluster, "theme")) and c["status"] == "True" and c,
                         what="the InvalidSpec condition")
    assert condition["message"].startswith("spec.targeting.fractional:"), condition
    assert "spec.targeting.fractional" in cluster.wait_event("theme", "InvalidSpec", "Warning")["message"]
    assert ofrep_variant(served, cluster.ns, "theme", acme) == "green", "the last valid rule is still served"

    cluster.custom.patch_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                  "theme", {"spec": {"targeting": None}})
    wait_for(lambda: invalid_spec(cluster, "theme")["status"] == "False", what="the condition to turn False")
    wait_for(lambda: ofrep_variant(served, cluster.ns, "theme", acme) == "blue", what="the flag without a rule")


FLAG_SPEC_PATH = "/spec/versions/0/schema/openAPIV3Schema/properties/spec"


@pytest.mark.exclusive
def test_a_flag_made_invalid_before_a_crd_upgrade_keeps_serving_its_last_valid_definition(
    cluster: Cluster, served: Served, kubectl: Kubectl
) -> None:
    cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags",
                                                   typed("theme", split=MISSING, targeting=MISSING))
    anyone = {"targetingKey": "u"}
    wait_for(lambda: ofrep_variant(served, cluster.ns, "theme", anyone) == "blue", what="the flag to be served")
    crd = "crd/featureflags.flagscheduler.dev"
    kubectl("patch", crd, "--type=json",
            "-p", json.dumps([{"op": "remove", "path": f"{FLAG_SPEC_PATH}/x-kubernetes-validations"}]))
    try:
        wait_for(lambda: kubectl("patch", "ff", "theme", "-n", cluster.ns, "--type=merge",
                                 "-p", '{"spec":{"defaultVariant":"purple"}}', check=False).returncode == 0,
                 timeout=30, what="the CRD without its rules to be served")
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
    condition = wait_for(lambda: (c := invalid_spec(cluster, "theme")) and c["status"] == "True" and c,
                         what="the InvalidSpec condition")
    assert condition["message"].startswith("spec.defaultVariant must be one of the variants"), condition
    assert ofrep_variant(served, cluster.ns, "theme", anyone) == "blue"
    # A second, valid flag created afterwards is served beside it: the flag set is never broken.
    cluster.flag("checkout-v2", enabled=True, rollout=100)
    wait_for(lambda: ofrep_variant(served, cluster.ns, "checkout-v2", anyone) == "on", what="the new flag")
    assert ofrep_variant(served, cluster.ns, "theme", anyone) == "blue"


# -- real OpenFeature clients ------------------------------------------------------------------


def create_typed(cluster: Cluster, *flags: dict[str, Any]) -> None:
    for flag in flags:
        cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", flag)


def test_openfeature_clients_evaluate_string_number_and_object_flags(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]  # noqa: F811
) -> None:
    create_typed(
        cluster,
        typed("theme", split=MISSING),
        typed("page-size", type="number", variants={"number": {"small": 10, "large": 50}}, defaultVariant="large",
              split=MISSING, targeting=MISSING),
        typed("ratio", type="number", variants={"number": {"low": 0.25, "high": 2.5}}, defaultVariant="low",
              split=MISSING, targeting=MISSING),
        typed("pricing", type="object", variants={"object": {"basic": {"eur": 9}, "pro": {"eur": 29, "seats": 5}}},
              defaultVariant="pro", split=MISSING, targeting=MISSING),
    )
    for client in (sdk(in_process(served, cluster.ns)), sdk(OFREPProvider(served.ofrep_url(cluster.ns)))):
        wait_for(lambda c=client: c.get_object_value("pricing", {}, EvaluationContext("u")) != {},
                 timeout=20, what="the client to know the flags")
        assert client.get_string_value("theme", "code", EvaluationContext("u")) == "#00f"
        acme = client.get_string_details("theme", "code", EvaluationContext("u", {"tenant": "acme"}))
        assert (acme.value, acme.variant, acme.reason) == ("#0f0", "green", "TARGETING_MATCH")
        assert client.get_integer_value("page-size", 0, EvaluationContext("u")) == 50
        assert client.get_float_value("ratio", 0.0, EvaluationContext("u")) == 0.25
        assert client.get_object_value("pricing", {}, EvaluationContext("u")) == {"eur": 29, "seats": 5}


def test_a_three_way_split_over_ten_thousand_keys_keeps_its_weights_for_both_protocols(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]  # noqa: F811
) -> None:
    create_typed(cluster, typed("theme", targeting=MISSING))
    client = sdk(in_process(served, cluster.ns))
    ofrep_client = sdk(OFREPProvider(served.ofrep_url(cluster.ns)))
    wait_for(lambda: client.get_string_value("theme", "", EvaluationContext("u")) != "", timeout=20, what="theme")
    got = {k: client.get_string_details("theme", "", EvaluationContext(k)).variant for k in KEYS}
    counts = Counter(got.values())
    for share in SPLIT:
        assert abs(counts[share["variant"]] / len(KEYS) - share["weight"] / 100) <= 0.02, counts
    sample = KEYS[:300]  # the same evaluator on the same definition: OFREP agrees key by key
    assert [ofrep_client.get_string_details("theme", "", EvaluationContext(k)).variant for k in sample] == [
        got[k] for k in sample
    ]


def test_a_flagd_timestamp_rule_switches_variants_at_its_time_without_a_schedule(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]  # noqa: F811
) -> None:
    at = int(time.time()) + 4
    rule = {"if": [{">=": [{"var": "$flagd.timestamp"}, at]}, "green", None]}
    create_typed(cluster, typed("theme", split=MISSING, targeting=rule))
    clients = [sdk(in_process(served, cluster.ns)), sdk(OFREPProvider(served.ofrep_url(cluster.ns)))]
    for client in clients:
        wait_for(lambda c=client: c.get_string_value("theme", "", EvaluationContext("u")) == "#00f",
                 timeout=20, what="the default before the time")
    for client in clients:
        wait_for(lambda c=client: c.get_string_value("theme", "", EvaluationContext("u")) == "#0f0",
                 timeout=20, what="green once $flagd.timestamp passes the time")
    assert time.time() >= at


# -- the worst the API server admits ----------------------------------------------------------


def deep_flag(name: str, levels: int) -> str:
    """A typed flag whose rule nests ``levels`` objects in lists: JSON text, as Python cannot dump it."""
    rule = '{"!":[' * levels + '{"var":"x"}' + "]}" * levels
    return ('{"apiVersion":"%s","kind":"FeatureFlag","metadata":{"name":"%s"},"spec":{"enabled":true,'
            '"type":"string","variants":{"string":{"a":"x"}},"defaultVariant":"a","targeting":%s}}'
            % (API_VERSION, name, rule))


def test_a_rule_nested_as_deep_as_the_api_server_admits_harms_no_other_flag(
    cluster: Cluster, served: Served, kubectl: Kubectl
) -> None:
    """Free-form JSON nests up to the API server's limit, far deeper than Python's default recursion limit."""
    kubectl("create", "-n", cluster.ns, "-f", "-", input=deep_flag("abyss", 4_900))
    cluster.flag("checkout-v2", enabled=False, rollout=100)
    cluster.schedule("go-live", "checkout-v2", in_seconds(2), {"enabled": True})
    cluster.wait_phase("go-live", "Applied", timeout=30)
    wait_for(lambda: ofrep_variant(served, cluster.ns, "checkout-v2", {"targetingKey": "u"}) == "on",
             what="the other flag to be served")
    # Read with kubectl: this test's own Python client cannot decode the flag either.
    conditions = wait_for(lambda: kubectl("get", "ff", "abyss", "-n", cluster.ns,
                                          "-o", "jsonpath={.status.conditions}").stdout, what="the deep flag's condition")
    (condition,) = json.loads(conditions)
    assert (condition["type"], condition["status"]) == ("InvalidSpec", "True")
    assert condition["message"].startswith("spec.targeting: nests deeper than 32 levels"), condition
    assert ofrep_variant(served, cluster.ns, "abyss", {"targetingKey": "u"}) is None  # never valid: not served
    assert served.op.proc is not None and served.op.proc.poll() is None
