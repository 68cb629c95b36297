"""The operator's in-memory view of flags and schedules, fed by watch events and its own writes.

The cluster stays the only source of truth: the book is rebuilt from a LIST at start and from the
watch stream. It never goes backwards: an object older (by resourceVersion) than the one held is
ignored, so a late watch event cannot undo what the operator just wrote.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pydantic

from flag_scheduler.logs import get_logger
from flag_scheduler.models import FeatureFlag, FlagSchedule

Key = tuple[str, str]  # (namespace, name)
log = get_logger()


def _newer(new_rv: str, old_rv: str) -> bool:
    """resourceVersions are opaque, but etcd-backed ones are increasing integers; compare those."""
    if new_rv.isdigit() and old_rv.isdigit():
        return int(new_rv) >= int(old_rv)
    return True


class Book:
    """Schedules and flags by (namespace, name), and the schedules of each flag."""

    def __init__(self) -> None:
        self.schedules: dict[Key, FlagSchedule] = {}
        self.flags: dict[Key, FeatureFlag] = {}
        self._by_flag: dict[Key, set[Key]] = defaultdict(set)

    @staticmethod
    def flag_key(schedule: FlagSchedule) -> Key:
        return (schedule.ref.namespace, schedule.spec.flag_ref.name)

    def put_schedule(self, body: dict[str, Any]) -> Key | None:
        """Record a schedule; return its flag's key, or None if nothing changed or it is malformed."""
        try:
            schedule = FlagSchedule.from_body(body)
        except pydantic.ValidationError as err:
            meta = body.get("metadata", {})
            log.warning("schedule.malformed", namespace=meta.get("namespace"), schedule=meta.get("name"), error=str(err))
            return None
        key = (schedule.ref.namespace, schedule.ref.name)
        old = self.schedules.get(key)
        if old is not None:
            if old.ref.uid == schedule.ref.uid and not _newer(schedule.ref.resource_version, old.ref.resource_version):
                return None
            if self.flag_key(old) != self.flag_key(schedule):
                self._by_flag[self.flag_key(old)].discard(key)
        self.schedules[key] = schedule
        self._by_flag[self.flag_key(schedule)].add(key)
        return self.flag_key(schedule)

    def drop_schedule(self, namespace: str, name: str) -> Key | None:
        """Forget a deleted schedule; return its flag's key."""
        schedule = self.schedules.pop((namespace, name), None)
        if schedule is None:
            return None
        flag = self.flag_key(schedule)
        self._by_flag[flag].discard((namespace, name))
        if not self._by_flag[flag]:
            del self._by_flag[flag]
        return flag

    def put_flag(self, body: dict[str, Any]) -> Key | None:
        """Record a flag; return its key, or None if nothing changed or it is malformed."""
        try:
            flag = FeatureFlag.from_body(body)
        except pydantic.ValidationError as err:
            meta = body.get("metadata", {})
            log.warning("flag.malformed", namespace=meta.get("namespace"), flag=meta.get("name"), error=str(err))
            return None
        key = (flag.ref.namespace, flag.ref.name)
        old = self.flags.get(key)
        if old is not None and old.ref.uid == flag.ref.uid:
            if not _newer(flag.ref.resource_version, old.ref.resource_version):
                return None
        self.flags[key] = flag
        return key

    def drop_flag(self, namespace: str, name: str) -> Key:
        self.flags.pop((namespace, name), None)
        return (namespace, name)

    def flag(self, key: Key) -> FeatureFlag | None:
        return self.flags.get(key)

    def schedules_of(self, flag: Key) -> list[FlagSchedule]:
        return [self.schedules[k] for k in self._by_flag.get(flag, ())]

    def flag_keys(self) -> list[Key]:
        """Every flag that has schedules (whether or not the flag itself exists)."""
        return list(self._by_flag)

    def pending_count(self) -> int:
        return sum(1 for s in self.schedules.values() if not s.status.phase.terminal)
