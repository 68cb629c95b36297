"""Pydantic models of the FeatureFlag and FlagSchedule custom resources (group flagscheduler.dev).

They mirror ``crds/`` field for field (``tests/unit/test_crd_models.py`` fails when they drift)
and are how the operator reads objects: ``FlagSchedule.from_body(body)``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "flagscheduler.dev"
VERSION = "v1alpha1"
FLAGS = "featureflags"
SCHEDULES = "flagschedules"
# Set on the flag in the same PATCH as the change: the exactly-once marker.
ANNOTATION_SCHEDULE = f"{GROUP}/last-applied-schedule"
ANNOTATION_SCHEDULE_UID = f"{GROUP}/last-applied-schedule-uid"
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

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Phase.APPLIED, Phase.FAILED, Phase.CANCELLED, Phase.MISSED})


class Condition(_Model):
    """The metav1.Condition shape, so ``kubectl wait --for=condition=...`` works."""

    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)


class FeatureFlagSpec(_Model):
    """The desired state of a feature flag."""

    enabled: bool
    rollout_percentage: int = Field(default=100, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)


class FeatureFlagStatus(_Model):
    """What the operator last did to the flag."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)
    last_applied_schedule: str | None = Field(default=None, alias="lastAppliedSchedule", max_length=253)
    last_applied_at: datetime | None = Field(default=None, alias="lastAppliedAt")
    conditions: list[Condition] = Field(default_factory=list, max_length=16)


class FlagRef(_Model):
    """The FeatureFlag a schedule changes, in the schedule's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class FlagUpdates(_Model):
    """The fields of the flag's spec a schedule sets; at least one."""

    enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)

    def as_patch(self) -> dict[str, Any]:
        """The flag spec fields to merge-patch, by their API names."""
        return self.model_dump(by_alias=True, exclude_none=True)


class RetryPolicy(_Model):
    """Per-schedule overrides of the operator's retry defaults."""

    max_retries: int | None = Field(default=None, alias="maxRetries", ge=0, le=100)
    backoff_seconds: int | None = Field(default=None, alias="backoffSeconds", ge=1, le=86400)
    max_backoff_seconds: int | None = Field(default=None, alias="maxBackoffSeconds", ge=1, le=86400)


class FlagScheduleSpec(_Model):
    """When to change which flag, and how."""

    flag_ref: FlagRef = Field(alias="flagRef")
    scheduled_at: datetime = Field(alias="scheduledAt")
    updates: FlagUpdates
    cancelled: bool = False
    starting_deadline_seconds: int | None = Field(default=None, alias="startingDeadlineSeconds", ge=0)
    retry: RetryPolicy | None = None


class FlagScheduleStatus(_Model):
    """Where the schedule is in its life, written only by the operator."""

    phase: Phase = Phase.PENDING
    applied_at: datetime | None = Field(default=None, alias="appliedAt")
    retry_count: int = Field(default=0, alias="retryCount", ge=0)
    next_retry_at: datetime | None = Field(default=None, alias="nextRetryAt")
    last_error: str | None = Field(default=None, alias="lastError", max_length=4096)
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)
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

    @property
    def owned(self) -> bool:
        """True once the schedule has its FeatureFlag as an owner (so deleting the flag removes it)."""
        return any(o.get("kind") == "FeatureFlag" for o in self.owner_references)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FlagSchedule:
        """Parse an API object (dict); raises ``pydantic.ValidationError`` naming the field."""
        meta = body["metadata"]
        return cls(
            ref=ObjectRef.from_meta(meta),
            spec=body["spec"],
            status=body.get("status") or {},
            owner_references=meta.get("ownerReferences") or [],
        )


class FeatureFlag(_Model):
    """A FeatureFlag as read from the API server."""

    ref: ObjectRef
    spec: FeatureFlagSpec
    status: FeatureFlagStatus = Field(default_factory=FeatureFlagStatus)
    applied_schedule_uid: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FeatureFlag:
        meta = body["metadata"]
        marker = (meta.get("annotations") or {}).get(ANNOTATION_SCHEDULE_UID)
        return cls(
            ref=ObjectRef.from_meta(meta),
            spec=body["spec"],
            status=body.get("status") or {},
            applied_schedule_uid=marker,
        )
