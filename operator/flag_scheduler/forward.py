"""Forward only, field by field: which of a schedule's updates may still move its flag.

Each field of a flag takes a scheduled value only if no schedule ordered later, by
(``scheduledAt``, name), has already set that field. The flag's marker records, per field, the
schedule that set it last (``Marker.setters``), so the rule is decided from the flag alone:

- the fields whose setter orders before the schedule (or that no schedule set) are applied;
- a schedule left with no field to set is ``Superseded``;
- a schedule that landed (its uid awaits its status on the flag) is not applied again.

Because a field's setter only ever moves to a schedule ordered later, every field ends with the
value of the latest-ordered schedule that sets it, whatever order the schedules arrive, are
retried or survive restarts in. Nothing here names a field: the rule runs over whatever keys
``FlagUpdates.as_patch()`` yields, so a field added to the updates model joins it as it is.

Pure: no Kopf, no Kubernetes, no clock (``now`` is a parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flag_scheduler.models import FlagSchedule, Landed, Marker, Setter


class Verdict(StrEnum):
    """What a flag's marker says about a schedule that is about to change it."""

    GO = "go"  # some fields move the flag forward: set them
    LANDED = "landed"  # this very schedule (by uid) already changed the flag
    SUPERSEDED = "superseded"  # every field it sets was set by a schedule ordered at or after it


@dataclass(frozen=True)
class Decision:
    """The verdict, the fields to set (GO), the fields left alone and who set them, how it landed (LANDED)."""

    verdict: Verdict
    fields: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Setter] = field(default_factory=dict)
    landing: Landed | None = None


def decide_fields(uid: str, order: tuple[datetime, str], wanted: Mapping[str, Any], marker: Marker) -> Decision:
    """The rule on plain values: ``wanted`` is field -> value, ``order`` the schedule's (scheduledAt, name).

    A field whose setter orders at or after the schedule is left alone; equal order means a
    re-created namesake (same name and time, new uid), whose change is already on the flag.
    """
    landing = marker.landing(uid)
    if landing is not None:
        return Decision(Verdict.LANDED, landing=landing)
    skipped = {}
    for name in wanted:
        setter = marker.setter(name)
        if setter is not None and setter.order >= order:
            skipped[name] = setter
    fields = {name: value for name, value in wanted.items() if name not in skipped}
    return Decision(Verdict.GO if fields else Verdict.SUPERSEDED, fields, skipped)


def decide(schedule: FlagSchedule, marker: Marker) -> Decision:
    """What applying ``schedule`` may change on a flag carrying ``marker``."""
    order = (schedule.spec.scheduled_at, schedule.ref.name)
    return decide_fields(schedule.ref.uid, order, schedule.spec.updates.as_patch(), marker)


def after_landing(
    marker: Marker,
    setter: Setter,
    generation: int,
    fields: Mapping[str, Any],
    now: datetime,
    still_awaiting: Callable[[str], bool],
    skipped: Mapping[str, Setter] | None = None,
) -> Marker:
    """The marker once ``setter``'s schedule (at ``generation``) set ``fields``, landing at ``now``.

    ``skipped`` (the fields it left to later schedules) stays with its landing until its status is
    written, so a status written after a crash still says which fields were not its to set.

    Entries of other schedules awaiting their status stay while ``still_awaiting(uid)`` says so
    (the schedule is live and unfinished): there is no fixed number of them to fall out of.
    """
    setters = {**(marker.setters or {}), **{name: setter for name in fields}}
    awaiting = {uid: a for uid, a in marker.awaiting.items() if uid != setter.uid and still_awaiting(uid)}
    for uid in marker.recent:  # an earlier version's list: kept as entries while their schedules wait
        if uid != setter.uid and still_awaiting(uid):
            awaiting.setdefault(uid, Landed())
    awaiting[setter.uid] = Landed(generation=generation, appliedAt=now, skipped=dict(skipped or {}))
    return marker.model_copy(update={
        "uid": setter.uid, "name": setter.name, "scheduled_at": setter.scheduled_at, "applied_at": now,
        "setters": setters, "awaiting": awaiting, "recent": (),
    })


def setter_of(schedule: FlagSchedule) -> Setter:
    """The schedule as a field's setter."""
    return Setter(name=schedule.ref.name, uid=schedule.ref.uid, scheduledAt=schedule.spec.scheduled_at)


def describe_skipped(skipped: Mapping[str, Setter]) -> str:
    """``rolloutPercentage (set by b, scheduledAt ...)``, for conditions and Events."""
    return ", ".join(f"{name} (set by {s.name}, scheduledAt {s.scheduled_at.isoformat()})"
                     for name, s in sorted(skipped.items()))
