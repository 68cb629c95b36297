"""FeatureFlag → flagd flag definition: what OpenFeature SDKs evaluate. Pure: no I/O, no clients.

Every FeatureFlag is a boolean flag with the variants ``on`` (true) and ``off`` (false):

- disabled → ``defaultVariant: off``. Never flagd's ``state: DISABLED``: with it an SDK returns the
  application's code default, so a flag switched off would read as *on* wherever the code defaults
  to true.
- enabled with ``rolloutPercentage`` 100 → ``defaultVariant: on``; 0 → ``off``.
- enabled with 0 < p < 100 → ``defaultVariant: off`` and a ``fractional`` targeting rule in flagd's
  shorthand, ``[["on", p], ["off", 100 - p]]``, which buckets on a hash of the flag key and the
  evaluation's targeting key. ``on`` comes first, so a key in the bucket at p stays in it at any
  larger p: growing a rollout only adds users. An evaluation without a targeting key gets ``off``.

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
