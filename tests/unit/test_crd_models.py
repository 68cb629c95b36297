"""The CRD schemas in ``crds/`` and the pydantic models in ``flag_scheduler.models`` say the same thing.

A generic walker compares each schema object with its model, field by field: names (model aliases),
required fields, types, bounds, lengths, patterns, enums and defaults. Adding, dropping or changing
a field on one side only fails here. Deliberate differences are listed in ``ALLOWED`` with a reason.
"""

from __future__ import annotations

import enum
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flag_scheduler.models import (
    FeatureFlagSpec,
    FeatureFlagStatus,
    FlagSchedule,
    FlagScheduleSpec,
    FlagScheduleStatus,
    Phase,
)

from flag_scheduler.rollout.models import FlagRolloutSpec, FlagRolloutStatus

CRDS = Path(__file__).resolve().parents[2] / "crds"
ROOT_IGNORED = {"apiVersion", "kind", "metadata"}  # standard object fields, not in the models
# Keywords of a map (``dict[str, X]``) that ``Comparison.mapping`` compares itself.
MAPS = {"additionalProperties", "minProperties", "maxProperties", "x-kubernetes-preserve-unknown-fields"}

# Schema keywords that say nothing the models could mirror.
DOCUMENTATION = {"description", "format", "x-kubernetes-list-map-keys"}
# Schema keywords the walker compares.
COMPARED = {
    "type", "properties", "required", "items", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "pattern", "enum", "default",
}  # fmt: skip

# Deliberate differences, as "Model.field:what" or "Model:keyword" -> why. Each must still occur.
ALLOWED = {
    # metav1.Condition has no schema default, but the operator writes conditions without a message.
    "Condition.message:default": "the model fills in an empty message",
    # Whole-object rules the API server enforces on write; the operator only reads objects that
    # passed them, so the models do not repeat them.
    "FlagUpdates:minProperties": "API server refuses an empty updates object",
    "StepUpdates:minProperties": "API server refuses an empty updates object",
    "RetryPolicy:minProperties": "API server refuses an empty retry object",
    "RetryPolicy:x-kubernetes-validations": "CEL: maxBackoffSeconds >= backoffSeconds, checked by the API server",
    # scheduledAt's range (2000..2200) is mirrored by FlagScheduleSpec._in_range; the shape (time
    # zone offsets up to 23:59) and the length are the API server's: pydantic parses the datetime.
    "FlagScheduleSpec.scheduledAt:x-kubernetes-validations": "CEL: the range, mirrored by a validator",
    "FlagScheduleSpec.scheduledAt:maxLength": "no longer string parses as a date-time",
    "FlagScheduleSpec.scheduledAt:pattern": "the shape of an RFC 3339 date-time; pydantic parses it",
    "FlagScheduleStatus:x-kubernetes-validations": "CEL: a coherent status that only moves forward, checked on write",
    "FeatureFlagStatus.conditions:x-kubernetes-list-type": "map list keyed by type, merged by the API server",
    # Typed flags: the rules across fields (one type, defaultVariant and split among the variants,
    # variant names) are the API server's; the operator checks the same again when it serves a
    # flag (flag_definitions), since a flag may predate them.
    "FeatureFlagSpec:x-kubernetes-validations": "CEL: typed flags' cross-field rules, checked again when served",
    "Variants:minProperties": "exactly one type's map: CEL and flag_definitions",
    "Variants:maxProperties": "exactly one type's map: CEL and flag_definitions",
    "Variants.boolean:x-kubernetes-validations": "CEL: variant names, checked again when served",
    "Variants.string:x-kubernetes-validations": "CEL: variant names, checked again when served",
    "Variants.number:x-kubernetes-validations": "CEL: variant names, checked again when served",
    "Variants.object:x-kubernetes-validations": "CEL: variant names, checked again when served",
    "FeatureFlagSpec.split:x-kubernetes-list-type": "map list keyed by variant: unique variants, API server",
    "FeatureFlagSpec.split:x-kubernetes-validations": "CEL: a weight above 0, checked again when served",
    "FlagUpdates.split:x-kubernetes-list-type": "map list keyed by variant: unique variants, API server",
    "FlagUpdates.split:x-kubernetes-validations": "CEL: a weight above 0, checked by the API server",
    "FlagScheduleStatus.conditions:x-kubernetes-list-type": "map list keyed by type, merged by the API server",
    "FlagRolloutSpec:x-kubernetes-validations": "CEL transition rules (flagRef fixed, abort one way, approvals grow)",
    "FlagRolloutSpec.startAt:x-kubernetes-validations": "CEL: the range, mirrored by a validator",
    "FlagRolloutSpec.startAt:maxLength": "no longer string parses as a date-time",
    "FlagRolloutSpec.startAt:pattern": "the shape of an RFC 3339 date-time; pydantic parses it",
    "FlagRolloutSpec.steps:x-kubernetes-list-type": "map list keyed by name: the API server refuses duplicate step names",
    "FlagRolloutSpec.approvedSteps[]:maxLength": "CEL makes every entry name a step (at most 63 characters)",
    "RolloutStep.hold:x-kubernetes-validations": "CEL: at most 720h; parse_duration reads any length",
    "FlagRolloutStatus.conditions:x-kubernetes-list-type": "map list keyed by type, merged by the API server",
}


def load_schema(filename: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / filename).read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


FLAG_SCHEMA = load_schema("featureflags.flagscheduler.dev.yaml")
SCHEDULE_SCHEMA = load_schema("flagschedules.flagscheduler.dev.yaml")
ROLLOUT_SCHEMA = load_schema("flagrollouts.flagscheduler.dev.yaml")


class Comparison:
    """Walks a schema object and a model side by side and collects their disagreements."""

    def __init__(self) -> None:
        self.mismatches: list[str] = []
        self.allowed_used: set[str] = set()

    def differ(self, key: str, path: str, message: str) -> None:
        if key in ALLOWED:
            self.allowed_used.add(key)
        else:
            self.mismatches.append(f"{path} ({key}): {message}")

    def object(self, schema: dict[str, Any], model: type[BaseModel], path: str) -> None:
        """Compare a schema of type object with a model: fields, required set, then each field."""
        self.keywords(schema, model.__name__, path)
        if schema.get("type") != "object":
            self.differ(model.__name__, path, f"schema type {schema.get('type')!r}, model is an object")
        properties = schema.get("properties", {})
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        for name in sorted(properties.keys() - fields.keys()):
            self.differ(f"{model.__name__}.{name}", f"{path}.{name}", "in the schema, not in the model")
        for name in sorted(fields.keys() - properties.keys()):
            self.differ(f"{model.__name__}.{name}", f"{path}.{name}", "in the model, not in the schema")
        required = set(schema.get("required", []))
        model_required = {alias for alias, field in fields.items() if field.is_required()}
        if required != model_required:
            message = f"schema {sorted(required)} != model {sorted(model_required)}"
            self.differ(f"{model.__name__}:required", path, message)
        for name in sorted(properties.keys() & fields.keys()):
            self.field(properties[name], fields[name], f"{model.__name__}.{name}", f"{path}.{name}")

    def keywords(self, schema: dict[str, Any], key: str, path: str) -> None:
        """Any schema keyword the walker does not compare is a constraint the model may be missing."""
        for keyword in sorted(schema.keys() - COMPARED - DOCUMENTATION):
            self.differ(f"{key}:{keyword}", path, f"schema keyword {keyword} is not mirrored by the model")

    def field(self, schema: dict[str, Any], field: FieldInfo, key: str, path: str) -> None:
        self.default(schema, field, key, path)
        self.value(schema, field.annotation, field.metadata, key, path)

    def default(self, schema: dict[str, Any], field: FieldInfo, key: str, path: str) -> None:
        if field.default_factory is not None:
            model_default = field.default_factory()  # type: ignore[call-arg]
        else:
            model_default = field.default
        if "default" in schema:
            if model_default is PydanticUndefined or model_default != schema["default"]:
                self.differ(f"{key}:default", path, f"schema default {schema['default']!r} != model {model_default!r}")
        # A model default of None or [] is how the model spells "absent"; any other needs the schema's.
        elif model_default not in (PydanticUndefined, None, []):
            self.differ(f"{key}:default", path, f"model default {model_default!r}, none in the schema")

    def value(self, schema: dict[str, Any], annotation: Any, metadata: list[Any], key: str, path: str) -> None:
        """Compare one value's schema with its annotation and its constraint metadata."""
        annotation = unwrap_optional(annotation)
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            metadata = [*metadata, *(m for info in extra for m in getattr(info, "metadata", [info]))]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self.object(schema, annotation, path)
            return
        if get_origin(annotation) is dict:
            self.mapping(schema, annotation, metadata, key, path)
            return
        self.keywords(schema, key, path)
        expected_type = json_type(annotation)
        if schema.get("type") != expected_type:
            self.differ(f"{key}:type", path, f"schema type {schema.get('type')!r}, model {annotation!r}")
        if annotation is datetime and schema.get("format") != "date-time":
            self.differ(f"{key}:format", path, f"model is a datetime, schema format is {schema.get('format')!r}")
        self.constraints(schema, constraints_of(metadata, expected_type), key, path)
        self.enum(schema, annotation, key, path)
        if get_origin(annotation) is list:
            (item,) = get_args(annotation)
            if "items" not in schema:
                self.differ(f"{key}:items", path, "model is a list, schema has no items")
            else:
                self.value(schema["items"], item, [], f"{key}[]", f"{path}[]")

    def mapping(self, schema: dict[str, Any], annotation: Any, metadata: list[Any], key: str, path: str) -> None:
        """A ``dict[str, X]``: an object whose ``additionalProperties`` are X; ``dict[str, Any]`` is free JSON."""
        self.keywords({k: v for k, v in schema.items() if k not in MAPS}, key, path)
        if schema.get("type") != "object":
            self.differ(f"{key}:type", path, f"schema type {schema.get('type')!r}, model {annotation!r}")
        found = constraints_of(metadata, "object")
        for keyword in ("minProperties", "maxProperties"):
            if schema.get(keyword) != found.get(keyword):
                self.differ(f"{key}:{keyword}", path, f"schema {schema.get(keyword)!r} != model {found.get(keyword)!r}")
        _, item = get_args(annotation)
        free = {"x-kubernetes-preserve-unknown-fields": True}
        if item is Any:
            if not (schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") == free):
                self.differ(f"{key}:x-kubernetes-preserve-unknown-fields", path, "model holds any JSON, schema does not")
        elif "additionalProperties" not in schema:
            self.differ(f"{key}:additionalProperties", path, "model is a dict, schema has no additionalProperties")
        else:
            self.value(schema["additionalProperties"], item, [], f"{key}{{}}", f"{path}{{}}")

    def constraints(self, schema: dict[str, Any], model: dict[str, Any], key: str, path: str) -> None:
        for keyword in sorted({"minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern"}):
            if schema.get(keyword) != model.get(keyword):
                self.differ(f"{key}:{keyword}", path, f"schema {schema.get(keyword)!r} != model {model.get(keyword)!r}")

    def enum(self, schema: dict[str, Any], annotation: Any, key: str, path: str) -> None:
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            values = [member.value for member in annotation]
        elif get_origin(annotation) is Literal:
            values = list(get_args(annotation))
        else:
            values = None
        if schema.get("enum") != values:
            self.differ(f"{key}:enum", path, f"schema {schema.get('enum')!r} != model {values!r}")


def unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def json_type(annotation: Any) -> str | None:
    """The OpenAPI type a model annotation must have."""
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is datetime or get_origin(annotation) is Literal:
        return "string"
    if isinstance(annotation, type) and issubclass(annotation, str):  # str and StrEnums
        return "string"
    if annotation is float:
        return "number"
    if get_origin(annotation) is list:
        return "array"
    if get_origin(annotation) is dict:
        return "object"
    return None


def constraints_of(metadata: list[Any], json_type: str | None) -> dict[str, Any]:
    """Pydantic field metadata (annotated_types objects) as OpenAPI keywords."""
    length = {"array": "Items", "object": "Properties"}.get(json_type or "", "Length")
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            found["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            found["maximum"] = item.le
        elif isinstance(item, annotated_types.MinLen):
            found[f"min{length}"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            found[f"max{length}"] = item.max_length
        elif getattr(item, "pattern", None) is not None:
            found["pattern"] = item.pattern
        else:  # Gt, Lt, MultipleOf...: the schema could say it, but the walker would not check it
            raise AssertionError(f"constraint {item!r} is not compared with the schema; teach the walker")
    return found


PAIRS = [
    pytest.param(FLAG_SCHEMA, "spec", FeatureFlagSpec, id="FeatureFlag.spec"),
    pytest.param(FLAG_SCHEMA, "status", FeatureFlagStatus, id="FeatureFlag.status"),
    pytest.param(SCHEDULE_SCHEMA, "spec", FlagScheduleSpec, id="FlagSchedule.spec"),
    pytest.param(SCHEDULE_SCHEMA, "status", FlagScheduleStatus, id="FlagSchedule.status"),
    pytest.param(ROLLOUT_SCHEMA, "spec", FlagRolloutSpec, id="FlagRollout.spec"),
    pytest.param(ROLLOUT_SCHEMA, "status", FlagRolloutStatus, id="FlagRollout.status"),
]


@pytest.mark.parametrize(("schema", "prop", "model"), PAIRS)
def test_schema_and_model_agree(schema: dict[str, Any], prop: str, model: type[BaseModel]) -> None:
    comparison = Comparison()
    comparison.object(schema["properties"][prop], model, f".{prop}")
    assert not comparison.mismatches, "schema and model disagree:\n" + "\n".join(comparison.mismatches)


def test_allow_list_has_no_stale_entries() -> None:
    comparison = Comparison()
    for param in PAIRS:
        schema, prop, model = param.values
        comparison.object(schema["properties"][prop], model, f".{prop}")
    assert set(ALLOWED) - comparison.allowed_used == set()


@pytest.mark.parametrize("schema", [FLAG_SCHEMA, SCHEDULE_SCHEMA, ROLLOUT_SCHEMA],
                         ids=["FeatureFlag", "FlagSchedule", "FlagRollout"])
def test_root_has_only_spec_and_status(schema: dict[str, Any]) -> None:
    assert schema["properties"].keys() - ROOT_IGNORED == {"spec", "status"}
    assert schema["required"] == ["spec"]


def test_status_default_is_the_models_default_status() -> None:
    default = SCHEDULE_SCHEMA["properties"]["status"]["default"]
    assert FlagScheduleStatus.model_validate(default) == FlagScheduleStatus()
    assert FlagSchedule.model_fields["status"].default_factory() == FlagScheduleStatus()  # type: ignore[call-arg,misc]


def test_walker_catches_a_field_on_one_side_only() -> None:
    schema = FLAG_SCHEMA["properties"]["spec"]
    widened = {**schema, "properties": {**schema["properties"], "owner": {"type": "string"}}}
    narrowed = {"type": "integer", "maximum": 99}
    changed = {**schema, "properties": {**schema["properties"], "rolloutPercentage": narrowed}}
    for broken in (widened, changed):
        comparison = Comparison()
        comparison.object(broken, FeatureFlagSpec, ".spec")
        assert len(comparison.mismatches) >= 1


SAMPLE = {
    "apiVersion": "flagscheduler.dev/v1alpha1",
    "kind": "FlagSchedule",
    "metadata": {"namespace": "shop", "name": "checkout-on", "uid": "u-1", "resourceVersion": "7", "generation": 2},
    "spec": {
        "flagRef": {"name": "checkout"},
        "scheduledAt": "2026-12-01T09:00:00Z",
        "updates": {"enabled": True, "rolloutPercentage": 25},
        "startingDeadlineSeconds": 300,
        "retry": {"maxRetries": 5, "backoffSeconds": 10, "maxBackoffSeconds": 600},
    },
    "status": {"phase": "Retrying", "retryCount": 1, "nextRetryAt": "2026-12-01T09:00:10Z"},
}


def test_sample_schedule_round_trips_from_body() -> None:
    schedule = FlagSchedule.from_body(SAMPLE)
    assert schedule.ref.name == "checkout-on"
    assert schedule.ref.generation == 2
    assert schedule.spec.scheduled_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert schedule.spec.updates.as_patch() == {"enabled": True, "rolloutPercentage": 25}
    assert schedule.status.phase is Phase.RETRYING
    dumped = {
        "spec": schedule.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": schedule.status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    assert dumped["spec"] == {**SAMPLE["spec"], "cancelled": False}  # the schema default, filled in
    assert dumped["status"] == {**SAMPLE["status"], "conditions": []}
    assert FlagSchedule.from_body({"metadata": SAMPLE["metadata"], **dumped}) == schedule


def test_bad_value_names_the_field() -> None:
    body = {**SAMPLE, "spec": {**SAMPLE["spec"], "updates": {"rolloutPercentage": 101}}}
    with pytest.raises(ValidationError) as raised:
        FlagSchedule.from_body(body)
    (error,) = raised.value.errors()
    assert error["loc"] == ("spec", "updates", "rolloutPercentage")
    assert error["type"] == "less_than_equal"
    assert "rolloutPercentage" in str(raised.value)
