"""The operator's in-memory view of flags and schedules, fed by watch events and its own writes.

The cluster stays the only source of truth: the book is rebuilt from a LIST at start and from the
watch stream. Identity is the uid, never the name: a schedule deleted and re-created under the
same name is another schedule, and a late event about the old one never touches the new one.

The book never goes backwards: an object older (by resourceVersion) than the one held is ignored,
so a late watch event cannot undo what the operator just wrote. Only live (not yet terminal)
schedules are kept whole; a finished schedule is remembered by uid and resourceVersion alone
(nothing orders after it: the flag's marker does that), and deleted ones in a bounded list.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pydantic

from flag_scheduler.kube import version_number
from flag_scheduler.logs import get_logger
from flag_scheduler.models import TERMINAL, FeatureFlag, FlagSchedule, ObjectRef, parse_time
from flag_scheduler.scheduling.queues import FlagQueue

Key = tuple[str, str]  # (namespace, name)
TERMINAL_NAMES = frozenset(p.value for p in TERMINAL)
# The schedules that are not finished, as a field selector (the CRD's selectableFields has status.phase).
UNFINISHED = ",".join(f"status.phase!={name}" for name in sorted(TERMINAL_NAMES))
# Deleted uids remembered, so that a late write response cannot bring a deleted schedule back.
GONE_MEMORY = 10_000
log = get_logger()


def _version(body_or_rv: dict[str, Any] | str) -> int:
    """The resourceVersion of an object (or that string) as a number (``kube.version_number``)."""
    rv = body_or_rv if isinstance(body_or_rv, str) else body_or_rv.get("metadata", {}).get("resourceVersion", "")
    return version_number(rv)


def flag_key(schedule: FlagSchedule) -> Key:
    """The (namespace, name) of the flag a schedule changes."""
    return (schedule.ref.namespace, schedule.spec.flag_ref.name)


class Expiry(NamedTuple):
    """A finished schedule due for deletion (``ttlSecondsAfterFinished``); ``seq`` orders ties."""

    at: datetime
    seq: int
    ref: ObjectRef


class Unreadable(NamedTuple):
    """A schedule the API server accepted but the operator cannot interpret."""

    ref: ObjectRef
    error: str
    # The flag of the readable version it replaced, if that one was claimed: the claimant may still
    # have a PATCH in flight there, so that flag is fenced before ``Failed`` (the flag untouched).
    fence: Key | None = None


class Book:
    """Live schedules by uid (and by flag), finished and deleted ones by uid, flags by name.

    ``default_ttl`` is the operator's ``FINISHED_TTL_SECONDS`` (None: keep finished schedules).
    """

    def __init__(self, default_ttl: int | None = None) -> None:
        self.default_ttl = default_ttl
        # Every schedule listed, the finished ones too (the runtime sets it once their LIST is in).
        self.complete = True
        self.expiries: list[Expiry] = []  # a heap, earliest first; stale entries are skipped
        self._expiry_seq: dict[str, int] = {}  # uid -> seq of its current expiry
        self._seq = itertools.count()
        # Flags a deposed leader might still be patching: a schedule claimed by some replica was
        # deleted or had its spec changed. flag -> that replica. The next leader fences them.
        self.suspects: OrderedDict[Key, str] = OrderedDict()
        self.unreadable: dict[str, Unreadable] = {}  # by uid, until the operator marks them Failed
        self._live: dict[str, FlagSchedule] = {}
        self._uid_by_name: dict[Key, str] = {}
        self._queues: dict[Key, FlagQueue] = defaultdict(FlagQueue)
        self._finished: dict[str, int] = {}  # uid -> resourceVersion
        self._gone: OrderedDict[str, None] = OrderedDict()
        self.flags: dict[Key, FeatureFlag] = {}
        # uid -> the flag whose marker says that schedule's change landed and awaits its status:
        # a schedule pointed at another flag after its change landed is recognised as landed.
        self._awaiting_on: dict[str, Key] = {}

    # Schedules

    def put_schedule(self, body: dict[str, Any]) -> FlagSchedule | None:
        """Record a schedule the operator read or wrote; return its model (None if malformed)."""
        schedule = _parse(FlagSchedule, body, "schedule")
        if schedule is not None:
            if schedule.status.phase.terminal:
                self._record_finished(body)
            else:
                self._record(schedule)
        return schedule

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> list[Key]:
        """A watch event (or a LIST item): update the book; return the flags whose plans may have changed.

        A finished schedule is recorded without parsing it whole: at start there may be many.
        """
        meta = body.get("metadata", {})
        uid = meta.get("uid", "")
        if event_type == "DELETED":
            self.unreadable.pop(uid, None)
            return self.drop_schedule(uid)
        held = self._live.get(uid)
        if held is not None and held.ref.resource_version == meta.get("resourceVersion"):
            return []  # the version held (the whole LIST after the first one): nothing to parse again
        if ((body.get("status") or {}).get("phase")) in TERMINAL_NAMES:
            self.unreadable.pop(uid, None)
            return self._record_finished(body)
        schedule = _parse(FlagSchedule, body, "schedule")
        if schedule is None:
            return self._record_unreadable(body)
        self.unreadable.pop(uid, None)
        return self._record(schedule)

    def _record_unreadable(self, body: dict[str, Any]) -> list[Key]:
        """Keep the schedule for the leader to mark Failed (InvalidSpec); forget any older readable copy."""
        try:
            ref = ObjectRef.from_meta(body["metadata"])
        except (KeyError, TypeError, ValueError):
            return []
        if ref.uid in self._gone:
            return []
        try:
            FlagSchedule.from_body(body)
            error = "unreadable"
        except Exception as err:  # noqa: BLE001 - the message is what the user reads
            error = _first_error(err)
        held = self._live.get(ref.uid)
        touched = [] if held is None or _version(held.ref.resource_version) >= _version(ref.resource_version) \
            else self.drop_schedule(ref.uid, forget=False)
        earlier = self.unreadable.get(ref.uid)
        fence = earlier.fence if earlier is not None else _claimed_flag(body, ref)
        if touched and held is not None and held.status.claimed_by:
            self._suspect(held)  # changed like any claimed schedule whose spec moved on
            fence = flag_key(held)
        self.unreadable[ref.uid] = Unreadable(ref, error, fence)
        return touched

    def _record_finished(self, body: dict[str, Any]) -> list[Key]:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        uid, version = meta.get("uid", ""), _version(body)
        if uid in self._gone or self._finished.get(uid, -2) >= version:
            return []
        touched = []
        held = self._live.get(uid)
        if held is not None:
            if _version(held.ref.resource_version) >= version:
                return []
            touched = self.drop_schedule(uid, forget=False)
        self._finished[uid] = version
        ttl = spec.get("ttlSecondsAfterFinished", self.default_ttl)
        # Schedules finished before status.finishedAt existed count from when they were applied.
        finished_at = next(filter(None, (parse_time(status.get(k)) for k in ("finishedAt", "appliedAt"))),
                           None) or parse_time(meta.get("creationTimestamp"))
        if isinstance(ttl, int) and finished_at is not None:
            try:
                at = finished_at + timedelta(seconds=ttl)
            except OverflowError:
                return touched  # past the year 9999: never
            seq = self._expiry_seq[uid] = next(self._seq)
            heapq.heappush(self.expiries, Expiry(at, seq, ObjectRef.from_meta(meta)))
        return touched

    def pop_expired(self, now: datetime) -> list[Expiry]:
        """Finished schedules whose TTL ran out by ``now`` (each once, the latest version of each)."""
        due = []
        while self.expiries and self.expiries[0].at <= now:
            expiry = heapq.heappop(self.expiries)
            if self._expiry_seq.get(expiry.ref.uid) == expiry.seq:
                del self._expiry_seq[expiry.ref.uid]
                due.append(expiry)
        return due

    def _suspect(self, schedule: FlagSchedule) -> None:
        """A claimed schedule was deleted or changed: whoever claimed it may have a PATCH in flight."""
        if schedule.status.claimed_by:
            key = flag_key(schedule)
            self.suspects.pop(key, None)
            self.suspects[key] = schedule.status.claimed_by
            while len(self.suspects) > GONE_MEMORY:
                self.suspects.popitem(last=False)

    def _record(self, schedule: FlagSchedule) -> list[Key]:
        uid, version = schedule.ref.uid, _version(schedule.ref.resource_version)
        if uid in self._gone or self._finished.get(uid, -2) >= version:
            return []
        name = (schedule.ref.namespace, schedule.ref.name)
        held_uid = self._uid_by_name.get(name)
        held = self._live.get(held_uid) if held_uid else None
        if held is not None and _version(held.ref.resource_version) >= version:
            return []  # a late copy, of this object or of a deleted namesake
        touched = self.drop_schedule(held_uid) if held is not None and held_uid != uid else []
        if held is not None and held_uid == uid:
            if held.ref.generation != schedule.ref.generation:
                self._suspect(held)
            self._unlink(held)
        self._live[uid] = schedule
        self._uid_by_name[name] = uid
        key = flag_key(schedule)
        self._queues[key].add(schedule, self.flags.get(key))
        return [*touched, *([flag_key(held)] if held is not None else []), flag_key(schedule)]

    def _unlink(self, schedule: FlagSchedule) -> None:
        """Take a live schedule out of every index (it finished, moved, or was replaced)."""
        uid = schedule.ref.uid
        self._live.pop(uid, None)
        name = (schedule.ref.namespace, schedule.ref.name)
        if self._uid_by_name.get(name) == uid:
            del self._uid_by_name[name]
        flag = flag_key(schedule)
        queue = self._queues.get(flag)
        if queue is not None:
            queue.remove(schedule)
            if not queue:
                del self._queues[flag]

    def drop_schedule(self, uid: str, forget: bool = True) -> list[Key]:
        """Take a schedule out of the live set (by uid); ``forget``: it was deleted. Return its flag."""
        if forget:
            self._gone[uid] = None
            while len(self._gone) > GONE_MEMORY:
                self._gone.popitem(last=False)
            self._finished.pop(uid, None)
            self._expiry_seq.pop(uid, None)
        schedule = self._live.get(uid)
        if schedule is None:
            return []
        if forget:
            self._suspect(schedule)
        self._unlink(schedule)
        return [flag_key(schedule)]

    def schedule(self, uid: str) -> FlagSchedule | None:
        """The live schedule with this uid."""
        return self._live.get(uid)

    def schedules_of(self, flag: Key) -> list[FlagSchedule]:
        """The live schedules of a flag."""
        queue = self._queues.get(flag)
        return [] if queue is None else list(queue.schedules.values())

    def head(self, flag: Key, skip: Collection[str] = frozenset()) -> FlagSchedule | None:
        """The flag's schedule that goes next: the earliest live one not cancelled (nor in ``skip``, by uid)."""
        queue = self._queues.get(flag)
        return None if queue is None else queue.head(skip)

    def cancelled_of(self, flag: Key) -> list[FlagSchedule]:
        """The flag's live schedules with ``spec.cancelled`` (to be marked Cancelled now)."""
        queue = self._queues.get(flag)
        return [] if queue is None else [queue.schedules[uid] for uid in queue.cancelled]

    def untidy_of(self, flag: Key) -> list[FlagSchedule]:
        """The flag's live schedules that owe first-sight housekeeping (owner, claim, FlagFound)."""
        queue = self._queues.get(flag)
        return [] if queue is None else [queue.schedules[uid] for uid in queue.untidy]

    def flag_keys(self) -> list[Key]:
        """Every flag that has live schedules (whether or not the flag itself exists)."""
        return list(self._queues)

    def pending_count(self) -> int:
        return len(self._live)

    def finished_count(self) -> int:
        return len(self._finished)

    # Flags

    def put_flag(self, body: dict[str, Any]) -> FeatureFlag | None:
        """Record a flag the operator read or wrote; return its model (None if malformed)."""
        flag = _parse(FeatureFlag, body, "flag")
        if flag is not None:
            self._record_flag(flag)
        return flag

    def observe_flag(self, event_type: str | None, body: dict[str, Any]) -> Key | None:
        """A watch event: update the book; return the flag's key if anything changed."""
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            return self.drop_flag(key, meta.get("uid", ""))
        flag = _parse(FeatureFlag, body, "flag")
        return None if flag is None or not self._record_flag(flag) else key

    def _record_flag(self, flag: FeatureFlag) -> bool:
        key = (flag.ref.namespace, flag.ref.name)
        held = self.flags.get(key)
        if held is not None and _version(held.ref.resource_version) >= _version(flag.ref.resource_version):
            return False
        self.flags[key] = flag
        self._index_awaiting(key, held, flag)
        if (held is None or held.ref.uid != flag.ref.uid) and key in self._queues:
            self._queues[key].retidy(flag)
        return True

    def drop_flag(self, key: Key, uid: str) -> Key | None:
        """Forget a deleted flag, unless the name already belongs to a re-created one."""
        held = self.flags.get(key)
        if held is None or held.ref.uid != uid:
            return None
        del self.flags[key]
        self._index_awaiting(key, held, None)
        if key in self._queues:
            self._queues[key].retidy(None)
        return key

    def flag(self, key: Key) -> FeatureFlag | None:
        return self.flags.get(key)

    def _index_awaiting(self, key: Key, old: FeatureFlag | None, new: FeatureFlag | None) -> None:
        for uid in _awaiting_uids(old):
            if self._awaiting_on.get(uid) == key:
                del self._awaiting_on[uid]
        for uid in _awaiting_uids(new):
            self._awaiting_on[uid] = key

    def landed_on(self, uid: str) -> Key | None:
        """The flag whose marker says the schedule with ``uid`` landed there and awaits its status."""
        return self._awaiting_on.get(uid)

    def awaits_status(self, uid: str) -> bool:
        """True while a schedule may still need its flag's record that it landed: live and unfinished.

        A schedule this replica never saw (deleted before it started, or not yet seen) counts as
        finished once the book is ``complete``; before (the finished schedules not listed yet), only
        one seen finished or deleted does. One seen unreadable still waits.
        """
        if uid in self._live or uid in self.unreadable:
            return True
        return not self.complete and uid not in self._finished and uid not in self._gone


def _claimed_flag(body: dict[str, Any], ref: ObjectRef) -> Key | None:
    """The flag an unreadable schedule names, if its status says a replica claimed it (seen cold, from a LIST).

    A replica that saw the readable version it replaced knows that version's flag (``flag_key``); one
    that starts cold knows only the flag this version names, which is the same unless the edit moved it.
    """
    status, spec = body.get("status") or {}, body.get("spec") or {}
    name = (spec.get("flagRef") or {}).get("name") if isinstance(spec.get("flagRef"), dict) else None
    if not status.get("claimedBy") or not isinstance(name, str) or not name:
        return None
    return (ref.namespace, name)


def _awaiting_uids(flag: FeatureFlag | None) -> list[str]:
    if flag is None:
        return []
    marker = flag.marker
    return [*marker.awaiting, *marker.recent, *([marker.uid] if marker.uid else [])]


def _first_error(err: Exception) -> str:
    """The field and message of a validation error, the way a user would look for it."""
    if isinstance(err, pydantic.ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']} (value {first.get('input')!r})"[:1000]
    return f"{type(err).__name__}: {err}"[:1000]


def _parse(model: type[FlagSchedule] | type[FeatureFlag], body: dict[str, Any], what: str) -> Any:
    try:
        return model.from_body(body)
    except (pydantic.ValidationError, KeyError, TypeError) as err:
        meta = body.get("metadata", {})
        log.warning(f"{what}.malformed", namespace=meta.get("namespace"), name=meta.get("name"), error=str(err))
        return None
