"""The live schedules of one flag, indexed the way the dispatcher asks about them.

Planning a flag needs its head of line (the earliest live schedule not cancelled), whether any
schedule waits to be cancelled, and which ones owe first-sight housekeeping. Kept up to date as
schedules come and go, each answer costs O(1) or O(answer), never O(schedules of the flag): one
flag with a long queue stays as cheap per event as a flag with one schedule.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from datetime import datetime

from flag_scheduler.models import FeatureFlag, FlagSchedule

FLAG_FOUND = "FlagFound"


def needs_housekeeping(schedule: FlagSchedule, flag: FeatureFlag | None) -> bool:
    """True if the schedule lacks its ownerReference or a claim, or its FlagFound condition is out of date."""
    if schedule.status.phase.terminal:
        return False
    found = next((c.status for c in schedule.status.conditions if c.type == FLAG_FOUND), None)
    unclaimed = schedule.status.claimed_by is None
    if flag is None:
        return found != "False" or unclaimed
    return not schedule.owned_by(flag.ref.uid) or found == "False" or unclaimed


class FlagQueue:
    """Live schedules of one flag: all by uid, the uncancelled in order, the cancelled, the untidy."""

    def __init__(self) -> None:
        self.schedules: dict[str, FlagSchedule] = {}
        self._order: list[tuple[datetime, str, str]] = []  # (scheduledAt, name, uid), ascending
        self.cancelled: set[str] = set()
        self.untidy: set[str] = set()

    def __len__(self) -> int:
        return len(self.schedules)

    def add(self, schedule: FlagSchedule, flag: FeatureFlag | None) -> None:
        uid = schedule.ref.uid
        self.schedules[uid] = schedule
        if schedule.spec.cancelled:
            self.cancelled.add(uid)
        else:
            bisect.insort(self._order, _key(schedule))
        if needs_housekeeping(schedule, flag):
            self.untidy.add(uid)

    def remove(self, schedule: FlagSchedule) -> None:
        uid = schedule.ref.uid
        held = self.schedules.pop(uid, None)
        if held is None:
            return
        self.cancelled.discard(uid)
        self.untidy.discard(uid)
        key = _key(held)
        at = bisect.bisect_left(self._order, key)
        if at < len(self._order) and self._order[at] == key:
            del self._order[at]

    def head(self, skip: Collection[str] = frozenset()) -> FlagSchedule | None:
        """The schedule that goes next: the earliest not cancelled (``timing.head_of_line``), uids in ``skip`` passed over."""
        if not skip:
            return self.schedules[self._order[0][2]] if self._order else None
        return next((self.schedules[uid] for _, _, uid in self._order if uid not in skip), None)

    def retidy(self, flag: FeatureFlag | None) -> None:
        """The flag appeared, went, or was re-created: work out again which schedules owe housekeeping."""
        self.untidy = {uid for uid, s in self.schedules.items() if needs_housekeeping(s, flag)}


def _key(schedule: FlagSchedule) -> tuple[datetime, str, str]:
    return (schedule.spec.scheduled_at, schedule.ref.name, schedule.ref.uid)
