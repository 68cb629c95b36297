"""Pydantic models of the FeatureFlag and FlagSchedule custom resources (group flagscheduler.dev).

They mirror ``crds/`` field for field (``tests/unit/test_crd_models.py`` fails when they drift)
and are how the operator reads objects: ``FlagSchedule.from_body(body)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flag_scheduler.targeting import targeting_problem
from flag_scheduler.variants import MAX_VARIANT_NAME, MAX_VARIANTS, FlagType, SplitShare, Variants, replacing
from flag_scheduler.marker import (  # noqa: F401 - re-exported: the marker is part of the flag
    ANNOTATION_APPLIED_AT,
    ANNOTATION_AWAITING_STATUS,
    ANNOTATION_FENCING_TOKEN,
    ANNOTATION_FIELD_SETTERS,
    ANNOTATION_RECENT_UIDS,
    ANNOTATION_SCHEDULE,
    ANNOTATION_SCHEDULE_UID,
    ANNOTATION_SCHEDULED_AT,
    Landed,
    Marker,
    Setter,
)
from flag_scheduler.wire import exact_time, parse_time, rfc3339  # noqa: F401 - the CRDs' wire format

GROUP = "flagscheduler.dev"
VERSION = "v1alpha1"
FLAGS = "featureflags"
SCHEDULES = "flagschedules"
FIELD_MANAGER = "flag-scheduler"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Phase(StrEnum):
    """Lifecycle of a FlagSchedule; the last four are terminal."""

    PENDING = "Pending"
    RETRYING = "Retrying"
    APPLIED = "Applied"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    MISSED = "Missed"
    SUPERSEDED = "Superseded"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Phase.APPLIED, Phase.FAILED, Phase.CANCELLED, Phase.MISSED, Phase.SUPERSEDED})


class Condition(_Model):
    """The metav1.Condition shape, so ``kubectl wait --for=condition=...`` works."""

    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)


class FeatureFlagSpec(_Model):
    """The desired state of a feature flag: on/off with a rollout, or typed with variants."""

    enabled: bool
    rollout_percentage: int = Field(default=100, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)
    type: FlagType | None = None  # None: boolean
    variants: Variants | None = None
    default_variant: str | None = Field(default=None, alias="defaultVariant", min_length=1, max_length=MAX_VARIANT_NAME)
    split: list[SplitShare] | None = Field(default=None, max_length=MAX_VARIANTS)
    targeting: dict[str, Any] | None = None


class FeatureFlagStatus(_Model):
    """Conditions about the flag (the last change is recorded in annotations, see ``Marker``)."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    # The leader term that fenced the flag through its status (when the flag refused the token
    # annotation's write): see ``scheduling/landed.py``.
    fencing_token: str | None = Field(default=None, alias="fencingToken", max_length=64)


class FlagRef(_Model):
    """The FeatureFlag a schedule changes, in the schedule's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class FlagUpdates(_Model):
    """The fields of the flag's spec a schedule sets; at least one."""

    enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)
    default_variant: str | None = Field(default=None, alias="defaultVariant", min_length=1, max_length=MAX_VARIANT_NAME)
    split: list[SplitShare] | None = Field(default=None, max_length=MAX_VARIANTS)
    targeting: dict[str, Any] | None = None

    @field_validator("targeting")
    @classmethod
    def _flagd_rule(cls, rule: dict[str, Any] | None) -> dict[str, Any] | None:
        """The rule must pass flagd's schema: the flag server would not serve it otherwise."""
        problem = None if rule is None else targeting_problem(rule, "targeting")
        if problem is not None:
            raise ValueError(problem)
        return rule

    def as_patch(self, current: FeatureFlagSpec | None = None) -> dict[str, Any]:
        """The flag spec fields to merge-patch, by their API names.

        ``targeting`` replaces the flag's rule whole: a merge patch would otherwise merge the two
        rules' objects key by key, so keys of the ``current`` rule that the new one lacks are nulled.
        """
        patch = self.model_dump(by_alias=True, exclude_none=True)
        if self.targeting is not None and current is not None and current.targeting is not None:
            patch["targeting"] = replacing(current.targeting, self.targeting)
        return patch


class RetryPolicy(_Model):
    """Per-schedule overrides of the operator's retry defaults."""

    max_retries: int | None = Field(default=None, alias="maxRetries", ge=0, le=100)
    backoff_seconds: int | None = Field(default=None, alias="backoffSeconds", ge=1, le=86400)
    max_backoff_seconds: int | None = Field(default=None, alias="maxBackoffSeconds", ge=1, le=86400)


# The bounds the CRD puts on schedules, so that every value it admits is one the time logic handles.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
MAX_DEADLINE_SECONDS = 31_536_000  # a year
MAX_TTL_SECONDS = 2_147_483_647  # int32, like Job's


class FlagScheduleSpec(_Model):
    """When to change which flag, and how."""

    flag_ref: FlagRef = Field(alias="flagRef")
    scheduled_at: datetime = Field(alias="scheduledAt")
    updates: FlagUpdates
    cancelled: bool = False
    starting_deadline_seconds: int | None = Field(
        default=None, alias="startingDeadlineSeconds", ge=0, le=MAX_DEADLINE_SECONDS
    )
    retry: RetryPolicy | None = None
    ttl_seconds_after_finished: int | None = Field(
        default=None, alias="ttlSecondsAfterFinished", ge=0, le=MAX_TTL_SECONDS
    )

    @field_validator("scheduled_at")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone (Z or an offset)")
        if not EARLIEST <= value < LATEST:
            raise ValueError("must be from 2000-01-01 up to (not including) 2200-01-01, UTC")
        return value


class FlagScheduleStatus(_Model):
    """Where the schedule is in its life, written only by the operator."""

    phase: Phase = Phase.PENDING
    applied_at: datetime | None = Field(default=None, alias="appliedAt")
    retry_count: int = Field(default=0, alias="retryCount", ge=0)
    next_retry_at: datetime | None = Field(default=None, alias="nextRetryAt")
    last_error: str | None = Field(default=None, alias="lastError", max_length=4096)
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)
    finished_at: datetime | None = Field(default=None, alias="finishedAt")
    claimed_by: str | None = Field(default=None, alias="claimedBy", max_length=253)
    conditions: list[Condition] = Field(default_factory=list, max_length=16)


class ObjectRef(_Model):
    """Identity of an object as the operator tracks it."""

    namespace: str
    name: str
    uid: str = ""
    resource_version: str = Field(default="", alias="resourceVersion")
    generation: int = 0

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ObjectRef:
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            resourceVersion=meta.get("resourceVersion", ""),
            generation=meta.get("generation", 0),
        )


class FlagSchedule(_Model):
    """A FlagSchedule as read from the API server."""

    ref: ObjectRef
    spec: FlagScheduleSpec
    status: FlagScheduleStatus = Field(default_factory=FlagScheduleStatus)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)

    def owned_by(self, flag_uid: str) -> bool:
        """True if the flag with ``flag_uid`` is this schedule's only FeatureFlag owner.

        An owner with another uid is a deleted namesake of the flag (deleted and re-created):
        the garbage collector would delete the schedule through it.
        """
        owners = {o.get("uid") for o in self.owner_references if o.get("kind") == "FeatureFlag"}
        return owners == {flag_uid}

    def owner_deleted(self, flag_uid: str) -> str | None:
        """The uid of a deleted namesake of the schedule's flag that still owns it, if any.

        An owner named like ``flagRef`` with another uid than the flag's now was deleted (names
        are unique): the garbage collector deletes the schedule, which is never adopted. An owner
        of another name is the flag the schedule pointed at before it was moved to this one.
        """
        for owner in self.owner_references:
            if owner.get("kind") == "FeatureFlag" and owner.get("name") == self.spec.flag_ref.name \
                    and owner.get("uid") != flag_uid:
                return str(owner.get("uid"))
        return None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FlagSchedule:
        """Parse an API object (dict); raises ``pydantic.ValidationError`` naming the field."""
        meta = body["metadata"]
        return cls(
            ref=ObjectRef.from_meta(meta),
            spec=body["spec"],
            status=_lenient_status(body.get("status") or {}),
            owner_references=meta.get("ownerReferences") or [],
        )


def _lenient_status(raw: dict[str, Any]) -> FlagScheduleStatus:
    """The status as written; if someone wrote what the operator cannot read, only its phase.

    The status is the operator's record, not the user's intent: a garbled one must not make the
    schedule unreadable. Exactly-once never rests on it (the flag's marker does).
    """
    try:
        return FlagScheduleStatus.model_validate(raw)
    except ValidationError:
        readable = {}
        for key, value in raw.items():  # keep every field that reads on its own (the claim, the count...)
            try:
                FlagScheduleStatus.model_validate({key: value})
            except ValidationError:
                continue
            readable[key] = value
        return FlagScheduleStatus.model_validate(readable)


class FeatureFlag(_Model):
    """A FeatureFlag as read from the API server."""

    ref: ObjectRef
    spec: FeatureFlagSpec
    status: FeatureFlagStatus = Field(default_factory=FeatureFlagStatus)
    marker: Marker = Field(default_factory=Marker)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FeatureFlag:
        meta = body["metadata"]
        return cls(
            ref=ObjectRef.from_meta(meta),
            spec=body["spec"],
            status=body.get("status") or {},
            marker=Marker.from_annotations(meta.get("annotations") or {}),
        )
