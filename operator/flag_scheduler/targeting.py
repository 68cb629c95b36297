"""Checks of typed flags' values and targeting rules that the API server cannot make. Pure.

A targeting rule is JSONLogic with flagd's operations; the CRDs keep it as free-form JSON, so the
API server sees neither its shape nor its size. Both the scheduler (the flag's ``InvalidSpec``
condition, a schedule's first read) and the flag server (which keeps serving a flag's last valid
definition) ask ``targeting_problem``. The shape is flagd's own published schema
(``schemas/flagd-targeting.json``, see ``schemas/NOTICE``); size and depth are bounded first so
that neither the check nor any client's evaluator can be made to recurse or allocate without limit.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

MAX_JSON_BYTES = 16 * 1024  # a targeting rule or an object variant, as compact JSON
MAX_DEPTH = 32  # nesting of objects and lists in a targeting rule or an object variant


def _schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("flag_scheduler").joinpath(f"schemas/{name}").read_text())


@cache
def _validator() -> Draft7Validator:
    return Draft7Validator(_schema("flagd-targeting.json"))


@cache
def _flags_validator() -> Draft7Validator:
    """flagd's schema of a whole flag configuration; it refers to the targeting schema by its ``$id``."""
    schemas = [_schema("flagd-flags.json"), _schema("flagd-targeting.json")]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    return Draft7Validator({"$ref": schemas[0]["$id"]}, registry=registry)


def definition_problem(name: str, definition: dict[str, Any]) -> str | None:
    """Why flagd's schema refuses this flag definition (None if it accepts it): what clients that
    validate what they receive (flagd's Go and Java providers do) would do with the whole set."""
    error = best_match(_flags_validator().iter_errors({"flags": {name: definition}}))
    return None if error is None else f"spec: flagd's flag schema refuses the definition: {error.message[:300]}"


def depth(value: Any) -> int:
    """How deeply objects and lists nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def size_problem(value: Any, where: str) -> str | None:
    """Why ``value`` is too deep or too large to serve (None if it is not)."""
    if depth(value) > MAX_DEPTH:
        return f"{where}: nests deeper than {MAX_DEPTH} levels"
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_JSON_BYTES:
        return f"{where}: {size} bytes as JSON, more than {MAX_JSON_BYTES}"
    return None


def targeting_problem(rule: Any, where: str = "spec.targeting") -> str | None:
    """Why ``rule`` is not a flagd targeting rule that may be served (None if it is), naming the field."""
    if not isinstance(rule, dict):
        return f"{where}: must be an object (a JSONLogic rule), got {type(rule).__name__}"
    problem = size_problem(rule, where)
    if problem is not None:
        return problem
    error = best_match(_validator().iter_errors(rule))
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where}{path}: {error.message[:300]} (flagd's targeting schema)"
