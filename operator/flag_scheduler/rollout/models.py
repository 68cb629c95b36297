"""Pydantic models of the FlagRollout custom resource; they mirror ``crds/flagrollouts.flagscheduler.dev.yaml``.

A rollout's status is the controller's record of where the ramp is: which step's schedule is the
live one, when the next step is due (or how much hold is left while paused), the flag's values
before the first step (``baseline``). The controller writes it before it creates or cancels a
schedule, so a restarted controller finds every intent it had.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, field_validator

from flag_scheduler.models import EARLIEST, LATEST, Condition, FlagRef, ObjectRef, _Model, parse_time

ROLLOUTS = "flagrollouts"
KIND = "FlagRollout"
LABEL_ROLLOUT = "flagscheduler.dev/rollout"  # on every schedule a rollout creates: its name
LABEL_STEP = "flagscheduler.dev/rollout-step"  # the step's name, or "restore" for the abort's restore
MAX_STEPS = 20
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Go-style durations in whole h, m, s or ms (``90m``, ``1h30m``, ``2s``, ``0``).
DURATION = r"^(0|([0-9]{1,7}(h|m|s|ms))+)$"
MAX_HOLD = "720h"  # 30 days


class RolloutPhase(StrEnum):
    """Where a rollout is; Completed, Aborted and Failed are final."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    AWAITING_APPROVAL = "AwaitingApproval"
    COMPLETED = "Completed"
    ABORTED = "Aborted"
    FAILED = "Failed"


FINAL = frozenset({RolloutPhase.COMPLETED, RolloutPhase.ABORTED, RolloutPhase.FAILED})


class OnAbort(StrEnum):
    RESTORE_BASELINE = "RestoreBaseline"
    HOLD = "Hold"


class StepUpdates(_Model):
    """The fields a step sets: a ramp moves a flag's on/off state and percentage.

    Typed flags' ``defaultVariant``, ``split`` and ``targeting`` are not steps of a ramp (a split is
    its own ramp); schedule them with a FlagSchedule. The baseline holds exactly these fields.
    """

    enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)

    def as_patch(self) -> dict[str, Any]:
        """The flag spec fields to merge-patch, by their API names."""
        return self.model_dump(by_alias=True, exclude_none=True)


class RolloutStep(_Model):
    """One step: the flag fields it sets, then how long to hold before the next one."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    updates: StepUpdates
    hold: str = Field(default="0", min_length=1, max_length=32, pattern=DURATION)
    requires_approval: bool = Field(default=False, alias="requiresApproval")


class FlagRolloutSpec(_Model):
    """The ramp, and the controls people (or Git) change: pause, approve, abort."""

    flag_ref: FlagRef = Field(alias="flagRef")
    start_at: datetime | None = Field(default=None, alias="startAt")
    steps: list[RolloutStep] = Field(min_length=1, max_length=MAX_STEPS)
    paused: bool = False
    approved_steps: list[str] = Field(default_factory=list, alias="approvedSteps", max_length=MAX_STEPS)
    abort: bool = False
    on_abort: OnAbort = Field(default=OnAbort.RESTORE_BASELINE, alias="onAbort")

    @field_validator("start_at")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None and (value.tzinfo is None or not EARLIEST <= value < LATEST):
            raise ValueError("must carry a time zone and be from 2000-01-01 up to (not including) 2200-01-01")
        return value


class FlagValues(_Model):
    """The flag fields a rollout manages, as they were (baseline) or should be."""

    enabled: bool | None = None
    rollout_percentage: int | None = Field(default=None, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)


class StepStatus(_Model):
    """A step the rollout has reached: its current schedule and what became of it."""

    name: str = Field(max_length=63)
    schedule: str = Field(max_length=253)
    attempt: int = Field(default=0, ge=0)
    phase: str | None = Field(default=None, max_length=32)
    scheduled_at: datetime | None = Field(default=None, alias="scheduledAt")
    applied_at: datetime | None = Field(default=None, alias="appliedAt")


class RestoreStatus(_Model):
    """The schedule that puts the baseline back after an abort."""

    schedule: str = Field(max_length=253)
    phase: str | None = Field(default=None, max_length=32)


class FlagRolloutStatus(_Model):
    """Written only by the operator."""

    phase: RolloutPhase = RolloutPhase.PENDING
    current_step: str | None = Field(default=None, alias="currentStep", max_length=128)
    steps_applied: int = Field(default=0, alias="stepsApplied", ge=0)
    next_step_at: datetime | None = Field(default=None, alias="nextStepAt")
    remaining_hold: str | None = Field(default=None, alias="remainingHold", max_length=32)
    waiting_for: str | None = Field(default=None, alias="waitingFor", max_length=1024)
    last_error: str | None = Field(default=None, alias="lastError", max_length=4096)
    started_at: datetime | None = Field(default=None, alias="startedAt")
    baseline: FlagValues | None = None
    steps: list[StepStatus] = Field(default_factory=list, max_length=MAX_STEPS)
    restore: RestoreStatus | None = None
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=16)


class FlagRollout(_Model):
    """A FlagRollout as read from the API server."""

    ref: ObjectRef
    spec: FlagRolloutSpec
    status: FlagRolloutStatus = Field(default_factory=FlagRolloutStatus)
    created_at: str = ""
    owner_references: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FlagRollout:
        """Parse an API object; a status the operator cannot read counts as none (it is rebuilt)."""
        meta = body["metadata"]
        try:
            status = FlagRolloutStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = FlagRolloutStatus()
        return cls(
            ref=ObjectRef.from_meta(meta), spec=body["spec"], status=status,
            created_at=meta.get("creationTimestamp", ""), owner_references=meta.get("ownerReferences") or [],
        )


class StepSchedule(_Model):
    """What a rollout needs to know about one of its FlagSchedules."""

    name: str
    uid: str = ""
    phase: str = "Pending"
    cancelled: bool = False
    scheduled_at: datetime | None = None
    applied_at: datetime | None = None
    last_error: str | None = None

    @property
    def final(self) -> bool:
        return self.phase in ("Applied", "Failed", "Cancelled", "Missed", "Superseded")

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StepSchedule:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        return cls(
            name=body["metadata"]["name"], uid=body["metadata"].get("uid", ""),
            phase=status.get("phase") or "Pending", cancelled=bool(spec.get("cancelled")),
            scheduled_at=parse_time(spec.get("scheduledAt")), applied_at=parse_time(status.get("appliedAt")),
            last_error=status.get("lastError"),
        )
