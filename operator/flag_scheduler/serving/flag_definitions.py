"""FeatureFlag → flagd flag definition: what OpenFeature SDKs evaluate. Pure: no I/O, no clients.

A FeatureFlag without ``variants`` is an on/off flag with the variants ``on`` (true) and ``off`` (false):

- disabled → ``defaultVariant: off``. Never flagd's ``state: DISABLED``: with it an SDK returns the
  application's code default, so a flag switched off would read as *on* wherever the code defaults
  to true.
- enabled with ``rolloutPercentage`` 100 → ``defaultVariant: on``; 0 → ``off``.
- enabled with 0 < p < 100 → ``defaultVariant: off`` and a ``fractional`` targeting rule in flagd's
  shorthand, ``[["on", p], ["off", 100 - p]]``, which buckets on a hash of the flag key and the
  evaluation's targeting key. ``on`` comes first, so a key in the bucket at p stays in it at any
  larger p: growing a rollout only adds users. An evaluation without a targeting key gets ``off``.

A typed flag (``variants``) maps field for field (``typed_definition``): ``variants.<type>`` →
``variants``, ``defaultVariant`` → ``defaultVariant``, ``split`` → a ``fractional`` rule (entries of
weight 0 left out), ``targeting`` → ``targeting``. With both, the rule runs first and the split
decides where it returns null: ``{"if": [{"!==": [rule, null]}, rule, split]}``. Disabled → only
``defaultVariant``, static. Everything the CRD checks is checked again here, with flagd's targeting
schema and the size bounds the API server cannot apply, because a flag may predate the CRD's rules.

A namespace's flags form one flag set (flagd's configuration document) keyed by the flags' names,
with the namespace as its ``flagSetId`` metadata. Each flag changed by a schedule also carries flagd
flag ``metadata``: ``lastAppliedSchedule`` and ``lastAppliedAt`` (from the operator's marker
annotations), which SDKs return as the evaluation's flag metadata. Nothing else is served:
descriptions, labels and other annotations are not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.exception import OpenFeatureError

from flag_scheduler.targeting import definition_problem, size_problem, targeting_problem
from flag_scheduler.variants import MAX_STRING_VALUE as MAX_STRING
from flag_scheduler.variants import MAX_VARIANTS, MAX_WEIGHT

SCHEMA = "https://flagd.dev/schema/v0/flags.json"
VARIANTS = {"on": True, "off": False}
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Flag metadata served from the operator's marker annotations (only the operator may write them).
CHANGE_METADATA = {
    "lastAppliedSchedule": ("flagscheduler.dev/last-applied-schedule", 253),
    "lastAppliedAt": ("flagscheduler.dev/last-applied-at", 64),
}


def flag_definition(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The flagd definition of one FeatureFlag's ``spec``; ValueError naming the field if it is malformed."""
    enabled = spec.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError(f"spec.enabled must be a boolean, got {enabled!r}")
    if any(field in spec for field in TYPED_FIELDS) or spec.get("type", "boolean") != "boolean":
        return typed_definition(spec, enabled)
    rollout = spec.get("rolloutPercentage", 100)
    if isinstance(rollout, bool) or not isinstance(rollout, int) or not 0 <= rollout <= 100:
        raise ValueError(f"spec.rolloutPercentage must be an integer 0..100, got {rollout!r}")
    definition: dict[str, Any] = {"state": "ENABLED", "variants": dict(VARIANTS)}
    if not enabled or rollout == 0:
        definition["defaultVariant"] = "off"
    elif rollout == 100:
        definition["defaultVariant"] = "on"
    else:
        definition["defaultVariant"] = "off"
        definition["targeting"] = {"fractional": [["on", rollout], ["off", 100 - rollout]]}
    return definition


TYPED_FIELDS = ("variants", "defaultVariant", "split", "targeting")
# What the CRD admits as each type's values (flagd: an object variant is a JSON object).
VALUE_TYPES: dict[str, tuple[type, ...]] = {"boolean": (bool,), "string": (str,), "number": (int, float), "object": (dict,)}
_VARIANT_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def typed_definition(spec: Mapping[str, Any], enabled: bool) -> dict[str, Any]:
    """The flagd definition of a typed flag (``variants``); ValueError naming the field."""
    variants = typed_variants(spec)
    default = spec.get("defaultVariant")
    if default not in variants:
        raise ValueError(f"spec.defaultVariant must be one of the variants in spec.variants, got {default!r}")
    if spec.get("rolloutPercentage", 100) != 100:
        raise ValueError("spec.rolloutPercentage applies only to on/off flags without spec.variants; use spec.split")
    split = split_rule(spec.get("split"), variants)
    rule = spec.get("targeting")
    if rule is not None:
        problem = targeting_problem(rule)
        if problem is not None:
            raise ValueError(problem)
    definition: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": default}
    targeting = _combined(rule or None, split) if enabled else None
    if targeting is not None:
        definition["targeting"] = targeting
    _check_loads(definition)
    return definition


def typed_variants(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec.variants.<type>``, checked: one type, the type's values, names and bounds."""
    kind = spec.get("type", "boolean")
    if kind not in VALUE_TYPES:
        raise ValueError(f"spec.type must be one of {', '.join(VALUE_TYPES)}, got {kind!r}")
    holder = spec.get("variants")
    if not isinstance(holder, Mapping) or list(holder) != [kind]:
        raise ValueError(f"spec.variants must hold the values under the name of spec.type: spec.variants.{kind}")
    variants = holder[kind]
    where = f"spec.variants.{kind}"
    if not isinstance(variants, Mapping) or not 1 <= len(variants) <= MAX_VARIANTS:
        raise ValueError(f"{where} must name 1 to {MAX_VARIANTS} variants")
    for name, value in variants.items():
        if not _VARIANT_NAME.fullmatch(name):
            raise ValueError(f"{where}: {name[:80]!r} is not a variant name (1 to 63 letters, digits, -, _ or .)")
        if isinstance(value, bool) != (kind == "boolean") or not isinstance(value, VALUE_TYPES[kind]):
            raise ValueError(f"{where}.{name} must be a {kind}, got {type(value).__name__}")
        if kind == "string" and len(value) > MAX_STRING:
            raise ValueError(f"{where}.{name} is longer than {MAX_STRING} characters")
        if kind == "object" and (problem := size_problem(value, f"{where}.{name}")):
            raise ValueError(problem)
    return dict(variants)


def split_rule(split: Any, variants: Mapping[str, Any]) -> dict[str, Any] | None:
    """flagd's ``fractional`` rule for ``spec.split`` (None for no split); ValueError naming the field."""
    if split is None or split == []:
        return None
    if not isinstance(split, list) or len(split) > MAX_VARIANTS:
        raise ValueError(f"spec.split must be a list of at most {MAX_VARIANTS} {{variant, weight}}")
    shares: dict[str, int] = {}
    for i, share in enumerate(split):
        variant, weight = (share.get("variant"), share.get("weight")) if isinstance(share, Mapping) else (None, None)
        if variant not in variants or variant in shares:
            raise ValueError(f"spec.split[{i}].variant must be a variant of spec.variants, once, got {variant!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"spec.split[{i}].weight must be an integer 0..{MAX_WEIGHT}, got {weight!r}")
        shares[variant] = weight
    if not any(shares.values()):
        raise ValueError("spec.split needs at least one weight above 0")
    return {"fractional": [[variant, weight] for variant, weight in shares.items() if weight > 0]}


def _combined(rule: dict[str, Any] | None, split: dict[str, Any] | None) -> dict[str, Any] | None:
    """The served targeting: the rule, then the split where the rule returns null."""
    if rule is None or split is None:
        return rule or split
    return {"if": [{"!==": [rule, None]}, rule, split]}


def _check_loads(definition: dict[str, Any]) -> None:
    """flagd's schema and evaluator must accept the definition: a flag set is never sent broken."""
    problem = definition_problem("flag", definition)
    if problem is not None:
        raise ValueError(problem)
    try:
        FlagdCore().set_flags({"flags": {"flag": json.loads(json.dumps(definition))}})
    except (OpenFeatureError, ValueError, TypeError) as err:
        raise ValueError(f"spec: flagd cannot load this flag ({err})") from None


def with_change_metadata(definition: dict[str, Any], annotations: Mapping[str, Any] | None) -> dict[str, Any]:
    """``definition`` plus flag ``metadata`` naming the schedule that changed the flag last, and when."""
    metadata = {}
    for name, (annotation, limit) in CHANGE_METADATA.items():
        value = (annotations or {}).get(annotation)
        if isinstance(value, str) and 0 < len(value) <= limit:
            metadata[name] = value
    return {**definition, "metadata": metadata} if metadata else definition


def flag_configuration(namespace: str, definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The flag set of one namespace: flagd's configuration document, flags keyed by name."""
    return {
        "$schema": SCHEMA,
        "flags": {name: definitions[name] for name in sorted(definitions)},
        "metadata": {"flagSetId": namespace},
    }


def render(configuration: Mapping[str, Any]) -> str:
    """The configuration as the compact, deterministic JSON text the sync protocol carries."""
    return json.dumps(configuration, sort_keys=True, separators=(",", ":"))


def selected_namespace(selector: str) -> tuple[str, str | None]:
    """The namespace a flagd selector names, and why it cannot select (None if it can).

    flagd's selector syntax: a bare value (``team-a``), or ``flagSetId=team-a`` (every flag set
    served here has its namespace as ``flagSetId``), or ``source=team-a``.
    """
    key, sep, value = selector.partition("=")
    if not sep:
        return selector, namespace_problem(selector)
    if key.strip() not in ("flagSetId", "source"):
        return value, f"{key.strip()!r} is not a selector key here: use flagSetId=<namespace> or the namespace alone"
    return value.strip(), namespace_problem(value.strip())


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` cannot select a flag set (None if it can): clients choose it, so it is checked."""
    if not namespace:
        return "empty: set it to the namespace whose flags you want"
    if len(namespace) > 63 or not _LABEL.fullmatch(namespace):
        return f"{namespace[:80]!r} is not a namespace name (a DNS-1123 label)"
    return None
