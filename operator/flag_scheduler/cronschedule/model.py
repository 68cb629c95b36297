"""Pydantic model of the FlagCronSchedule custom resource; mirrors ``crds/flagcronschedules...yaml``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flag_scheduler.models import GROUP, Condition, FlagRef, FlagUpdates, ObjectRef

CRON_SCHEDULES = "flagcronschedules"
KIND = "FlagCronSchedule"
# On every edge schedule: which FlagCronSchedule (by uid: names are reused) and which edge it carries.
LABEL_CRON_UID = f"{GROUP}/cron-schedule-uid"
LABEL_EDGE = f"{GROUP}/edge"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class CronPhase(StrEnum):
    IN_WINDOW = "InWindow"
    OUT_OF_WINDOW = "OutOfWindow"
    SUSPENDED = "Suspended"


class EdgeSpec(_Model):
    """One edge of the window: a cron expression and the flag fields it sets."""

    schedule: str = Field(min_length=9, max_length=256)
    updates: FlagUpdates


class FlagCronScheduleSpec(_Model):
    """Which flag, when (cron in a time zone), and what each edge sets."""

    flag_ref: FlagRef = Field(alias="flagRef")
    time_zone: str = Field(alias="timeZone", min_length=1, max_length=64,
                           pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
    start: EdgeSpec
    end: EdgeSpec | None = None
    suspend: bool = False
    successful_schedules_history_limit: int = Field(default=3, alias="successfulSchedulesHistoryLimit", ge=0, le=100)
    failed_schedules_history_limit: int = Field(default=1, alias="failedSchedulesHistoryLimit", ge=0, le=100)


class LastEdge(_Model):
    """The latest edge the operator created a FlagSchedule for."""

    kind: Literal["start", "end"]
    at: datetime
    schedule: str = Field(max_length=253)


class FlagCronScheduleStatus(_Model):
    """Written only by the operator."""

    phase: CronPhase | None = None
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)
    last_edge: LastEdge | None = Field(default=None, alias="lastEdge")
    next_edge_at: datetime | None = Field(default=None, alias="nextEdgeAt")
    missed_edges: int = Field(default=0, alias="missedEdges", ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=16)


class FlagCronSchedule(_Model):
    """A FlagCronSchedule as read from the API server."""

    ref: ObjectRef
    spec: FlagCronScheduleSpec
    status: FlagCronScheduleStatus = Field(default_factory=FlagCronScheduleStatus)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FlagCronSchedule:
        """Parse an API object; raises ``pydantic.ValidationError`` naming the field."""
        meta = body["metadata"]
        try:
            status = FlagCronScheduleStatus.model_validate(body.get("status") or {})
        except ValidationError:  # the operator's own record, garbled: start it again
            status = FlagCronScheduleStatus()
        return cls(ref=ObjectRef.from_meta(meta), spec=body["spec"], status=status,
                   owner_references=meta.get("ownerReferences") or [])
