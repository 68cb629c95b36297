"""The parts of a typed FeatureFlag (variants by type, split shares) and the bounds the CRD puts on them.

Mirrored by ``crds/`` like the rest of ``models`` (``tests/unit/test_crd_models.py``); the rules
across fields (one type, defaultVariant and split among the variants) are the API server's CEL,
checked again where flags are served (``serving/flag_definitions.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


# Bounds on typed flags (the CRD's, mirrored): no flag can blow up the flag set every client gets.
MAX_VARIANTS = 32
MAX_VARIANT_NAME = 63
MAX_STRING_VALUE = 1024
MAX_WEIGHT = 1_000_000  # 32 of them stay below flagd's limit on a split's total (2^31 - 1)
FlagType = Literal["boolean", "string", "number", "object"]


class Variants(_Model):
    """flagd's ``variants`` of a typed flag, under the name of their type (exactly one is set)."""

    boolean: dict[str, bool] | None = Field(default=None, max_length=MAX_VARIANTS)
    string: dict[str, Annotated[str, Field(max_length=MAX_STRING_VALUE)]] | None = Field(
        default=None, max_length=MAX_VARIANTS
    )
    number: dict[str, float] | None = Field(default=None, max_length=MAX_VARIANTS)
    object: dict[str, dict[str, Any]] | None = Field(default=None, max_length=MAX_VARIANTS)


class SplitShare(_Model):
    """One variant's weight in a split (flagd's ``fractional`` on the targeting key)."""

    variant: str = Field(min_length=1, max_length=MAX_VARIANT_NAME)
    weight: int = Field(ge=0, le=MAX_WEIGHT)


def replacing(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``, when both are objects."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        patch[key] = replacing(old[key], value) if key in old else value
    return patch
