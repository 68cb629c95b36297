"""The flag's marker: annotations the operator writes in the same PATCH as a schedule's change.

They say who changed the flag last (for people and Argo CD), who set each field (forward only,
``forward.py``), which schedules landed while their status does not say so yet (exactly once),
and which leader term wrote the flag last (fencing). Only the operator may write them (an
admission policy).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flag_scheduler.wire import exact_time, parse_time, rfc3339

PREFIX = "flagscheduler.dev/"  # the API group: only the operator writes annotations under it
# Set on the flag in the same PATCH as the change: the exactly-once and forward-only marker.
ANNOTATION_SCHEDULE = f"{PREFIX}last-applied-schedule"
ANNOTATION_SCHEDULE_UID = f"{PREFIX}last-applied-schedule-uid"
ANNOTATION_SCHEDULED_AT = f"{PREFIX}last-applied-scheduled-at"
ANNOTATION_APPLIED_AT = f"{PREFIX}last-applied-at"
# The leader term that last wrote the flag: a new leader writes it before it settles a schedule
# without changing the flag, so a deposed leader's in-flight PATCH fails its precondition.
ANNOTATION_FENCING_TOKEN = f"{PREFIX}fencing-token"
# Per field of the flag's spec, the schedule that set it last (JSON: field -> name, uid, scheduledAt):
# forward only is decided field by field against it (``forward.decide``).
ANNOTATION_FIELD_SETTERS = f"{PREFIX}field-setters"
# The schedules whose change landed and whose status did not yet say so (JSON: uid -> generation,
# appliedAt). An entry stays until its schedule is seen finished, however many others land meanwhile.
ANNOTATION_AWAITING_STATUS = f"{PREFIX}landed-awaiting-status"
# Written by earlier versions (the last 16 uids that landed); still read, so an upgrade loses nothing.
ANNOTATION_RECENT_UIDS = f"{PREFIX}recent-schedule-uids"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


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
    # The fields it left to a later schedule, and who set them: its status says so after a crash too.
    skipped: dict[str, Setter] = Field(default_factory=dict)


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
        setters = {f: _setter(s) for f, s in sorted((self.setters or {}).items())}
        awaiting = {u: {"generation": a.generation, **({"appliedAt": rfc3339(a.applied_at)} if a.applied_at else {}),
                        **({"skipped": {f: _setter(s) for f, s in sorted(a.skipped.items())}} if a.skipped else {})}
                    for u, a in self.awaiting.items()}
        return {ANNOTATION_FIELD_SETTERS: json.dumps(setters, separators=(",", ":")),
                ANNOTATION_AWAITING_STATUS: json.dumps(awaiting, separators=(",", ":")),
                ANNOTATION_RECENT_UIDS: ",".join(self.recent) or None}  # None: a merge patch removes it


def _setter(setter: Setter) -> dict[str, str]:
    return {"name": setter.name, "uid": setter.uid, "scheduledAt": exact_time(setter.scheduled_at)}


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
