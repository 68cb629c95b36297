"""Pydantic models of the FeatureFlag and FlagSchedule custom resources (group flagscheduler.dev).

They mirror ``crds/`` field for field (``tests/unit/test_crd_models.py`` fails when they drift)
and are how the operator reads objects: ``FlagSchedule.from_body(body)``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GROUP = "flagscheduler.dev"
VERSION = "v1alpha1"
FLAGS = "featureflags"
SCHEDULES = "flagschedules"
# Set on the flag in the same PATCH as the change: the exactly-once and forward-only marker.
ANNOTATION_SCHEDULE = f"{GROUP}/last-applied-schedule"
ANNOTATION_SCHEDULE_UID = f"{GROUP}/last-applied-schedule-uid"
ANNOTATION_SCHEDULED_AT = f"{GROUP}/last-applied-scheduled-at"
ANNOTATION_APPLIED_AT = f"{GROUP}/last-applied-at"
# The leader term that last wrote the flag: a new leader writes it before it settles a schedule
# without changing the flag, so a deposed leader's in-flight PATCH fails its precondition.
ANNOTATION_FENCING_TOKEN = f"{GROUP}/fencing-token"
# Per field of the flag's spec, the schedule that set it last (JSON: field -> name, uid, scheduledAt):
# forward only is decided field by field against it (``forward.decide``).
ANNOTATION_FIELD_SETTERS = f"{GROUP}/field-setters"
# The schedules whose change landed and whose status did not yet say so (JSON: uid -> generation,
# appliedAt). An entry stays until its schedule is seen finished, however many others land meanwhile.
ANNOTATION_AWAITING_STATUS = f"{GROUP}/landed-awaiting-status"
# Written by earlier versions (the last 16 uids that landed); still read, so an upgrade loses nothing.
ANNOTATION_RECENT_UIDS = f"{GROUP}/recent-schedule-uids"
FIELD_MANAGER = "flag-scheduler"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def rfc3339(moment: datetime) -> str:
    """Format a timestamp the way Kubernetes prints them (UTC, milliseconds): the CRDs' wire format."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp, or None if absent or unreadable (annotations are free text)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


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
    """The desired state of a feature flag."""

    enabled: bool
    rollout_percentage: int = Field(default=100, alias="rolloutPercentage", ge=0, le=100)
    description: str | None = Field(default=None, max_length=1024)


class FeatureFlagStatus(_Model):
    """Conditions about the flag (the last change is recorded in annotations, see ``Marker``)."""

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


class Setter(_Model):
    """The schedule that set one field of a flag: what forward only compares against."""

    name: str
    uid: str
    scheduled_at: datetime = Field(alias="scheduledAt")

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.scheduled_at, self.name)


class Landed(_Model):
    """A schedule whose change is on the flag while its status does not say so yet."""

    generation: int | None = None  # the schedule's generation that landed (None: written by an old version)
    applied_at: datetime | None = Field(default=None, alias="appliedAt")


class Marker(_Model):
    """What the flag's annotations say about the schedules that changed it."""

    uid: str | None = None  # the last one (for people and Argo CD: the LAST-SCHEDULE column)
    name: str | None = None
    scheduled_at: datetime | None = None
    applied_at: datetime | None = None
    fencing_token: str | None = None
    setters: dict[str, Setter] | None = None  # per field; None on a flag no per-field marker was written to
    awaiting: dict[str, Landed] = Field(default_factory=dict)  # uid -> landing, until its status is written
    recent: tuple[str, ...] = ()  # uids from an earlier version's bounded list

    @classmethod
    def from_annotations(cls, notes: dict[str, str]) -> Marker:
        return cls(
            uid=notes.get(ANNOTATION_SCHEDULE_UID),
            name=notes.get(ANNOTATION_SCHEDULE),
            scheduled_at=parse_time(notes.get(ANNOTATION_SCHEDULED_AT)),
            applied_at=parse_time(notes.get(ANNOTATION_APPLIED_AT)),
            fencing_token=notes.get(ANNOTATION_FENCING_TOKEN),
            setters=_json_entries(notes.get(ANNOTATION_FIELD_SETTERS), Setter),
            awaiting=_json_entries(notes.get(ANNOTATION_AWAITING_STATUS), Landed) or {},
            recent=tuple(u for u in (notes.get(ANNOTATION_RECENT_UIDS) or "").split(",") if u),
        )

    def landing(self, uid: str) -> Landed | None:
        """How the schedule with this uid landed on the flag, if its status may not say so yet."""
        if not uid:
            return None
        if uid in self.awaiting:
            return self.awaiting[uid]
        if uid == self.uid or uid in self.recent:
            return Landed(appliedAt=self.applied_at if uid == self.uid else None)
        return None

    def landed(self, uid: str) -> bool:
        """True if the schedule with this uid changed the flag and may not have recorded it yet."""
        return self.landing(uid) is not None

    def setter(self, field: str) -> Setter | None:
        """Who set ``field`` last; on a flag marked by an earlier version, its last schedule set every field."""
        if self.setters is not None:
            return self.setters.get(field)
        if self.uid and self.name and self.scheduled_at is not None:
            return Setter(name=self.name, uid=self.uid, scheduledAt=self.scheduled_at)
        return None

    def notes(self) -> dict[str, str | None]:
        """The per-field and awaiting-status annotations, as written to the flag."""
        setters = {f: {"name": s.name, "uid": s.uid, "scheduledAt": exact_time(s.scheduled_at)}
                   for f, s in sorted((self.setters or {}).items())}
        awaiting = {u: {"generation": a.generation, **({"appliedAt": rfc3339(a.applied_at)} if a.applied_at else {})}
                    for u, a in self.awaiting.items()}
        return {ANNOTATION_FIELD_SETTERS: json.dumps(setters, separators=(",", ":")),
                ANNOTATION_AWAITING_STATUS: json.dumps(awaiting, separators=(",", ":")),
                ANNOTATION_RECENT_UIDS: ",".join(self.recent) or None}  # None: a merge patch removes it


def exact_time(moment: datetime) -> str:
    """A timestamp in UTC with all its digits, so a marker's ``scheduledAt`` compares exactly."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_entries(text: str | None, model: type[_Model]) -> dict[str, Any] | None:
    """A JSON object of entries; None if absent or unreadable, entries that do not read are left out."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    entries = {}
    for key, value in raw.items():
        try:
            entries[str(key)] = model.model_validate(value)
        except ValidationError:
            continue
    return entries


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
