"""The dispatcher: one task that sleeps until the earliest due time, then works on the flags that are due.

There is no per-object timer and no polling. Each flag with schedules has one planned wake-up time
(the head of line's due time from the book's per-flag index, ``queues.FlagQueue``, or now when a cancellation
or first-sight housekeeping is owed) in a heap; every watch event
or write re-plans that one flag and wakes the dispatcher if the new time is earlier than its sleep.
Work on one flag runs in one task at a time (order per flag); different flags run in parallel up to
``max_concurrency`` (isolation: a failing flag holds one slot for one attempt, never the queue).
Fairness: a slot is held for one step (one schedule's outcome, one first-sight write) and a freed
slot goes to the namespaces in turn (``FairSlots``), so one namespace's burst of due schedules
delays another namespace's due schedule by one turn, not by the whole burst.

Containment: an error while planning or working on one flag pauses that flag alone, with
exponential backoff (``ERROR_PAUSE`` doubling up to ``MAX_ERROR_PAUSE``), a log line, a metric and,
when a status write failed, a Warning Event on the schedule. The loop also turns at least every
``HEARTBEAT`` while leading (TTL deletions and unreadable schedules ride on that turn), and
``healthy()`` reports a leader whose loop stopped turning, which the liveness probe reads.
Only the leader plans: followers keep the book warm and plan everything when they take over.

Claim ahead: a head of line claimed by another replica (a leader before a restart or a failover)
is claimed again ``CLAIM_AHEAD`` before it is due, not at its due time, so a burst due soon after
a takeover does not pay one status write per schedule on its hot path. The claim is the same
preconditioned status write the due time would make (``apply.claim``).

Fail closed: while ``ctx.holding()`` gives a reason (the admission policies are not in force, see
``admission_gate``), a flag whose head of line is due is held: not applied, not planned again, its
schedule told once with a Warning Event, until ``release_held`` (the policies are back).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from datetime import datetime, timedelta
from typing import Any

from flag_scheduler import metrics
from flag_scheduler.scheduling.apply import apply_schedule, claim
from flag_scheduler.scheduling.context import Ctx, StandDown, StatusWriteFailed
from flag_scheduler.scheduling.fair_slots import FairSlots
from flag_scheduler.scheduling.landed import FenceRefused, fence
from flag_scheduler.scheduling.settle import cancel_schedule, miss_schedule
from flag_scheduler.scheduling.finished import delete_expired, reject_unreadable
from flag_scheduler.scheduling.book import Key
from flag_scheduler.scheduling.housekeeping import tidy_schedule
from flag_scheduler.kube import describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import rfc3339
from flag_scheduler.timing import Action, action, due_at

# After an unexpected error (API server down, 5xx on a status write) a flag is looked at again after
# this, doubling with each further error in a row, up to the maximum.
ERROR_PAUSE = timedelta(seconds=2)
MAX_ERROR_PAUSE = timedelta(minutes=5)
# The loop turns at least this often while leading; a leader whose loop has not turned for
# STALL_LIMIT is unhealthy.
HEARTBEAT = 5.0
STALL_LIMIT = 60.0
# A head claimed by another replica is claimed again this long before it is due.
CLAIM_AHEAD = timedelta(seconds=30)
# While the leader's last renewal is older than the renew deadline, look again this often (seconds).
STALE_LEASE_PAUSE = 0.1
log = get_logger()


class Dispatcher:
    """Plans a wake-up per flag and runs due work; active only while ``leading`` is set."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.leading = asyncio.Event()
        self._heap: list[tuple[datetime, int, Key]] = []
        self._planned: dict[Key, datetime] = {}
        self._running: set[Key] = set()
        self._paused_until: dict[Key, datetime] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = FairSlots(ctx.settings.max_concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._errors: dict[Key, int] = {}
        self._rejecting: set[str] = set()
        self._retry_after: dict[str, datetime] = {}
        self._tries: dict[str, int] = {}
        self._held: set[Key] = set()
        self._told: set[str] = set()
        self._fencing: set[Key] = set()
        self._fence_after: dict[Key, datetime] = {}  # a suspect whose fence failed: not before then
        self._fence_tries: dict[Key, int] = {}
        self._due: set[Key] = set()  # flags started because their head of line was due
        self._none_due = asyncio.Event()
        self._none_due.set()
        self.turned_at = time.monotonic()

    def healthy(self) -> bool:
        """False if this replica leads and its loop has not turned for ``STALL_LIMIT`` seconds."""
        return not self.leading.is_set() or time.monotonic() - self.turned_at < STALL_LIMIT

    def plan(self, flag: Key) -> None:
        """Recompute when ``flag`` next needs work; call after anything about it changed."""
        if flag in self._running or not self.leading.is_set():
            return  # the running task plans the flag again when it ends; a new leader plans all
        try:
            when = self._next_time(flag)
        except Exception as err:  # noqa: BLE001 - one flag's bad data must not stop the others
            log.exception("flag.plan_failed", namespace=flag[0], flag=flag[1], error=describe(err))
            when = self._pause(flag, "plan")
        if when is None:
            self._planned.pop(flag, None)
            return
        if self._planned.get(flag) == when:
            return
        self._planned[flag] = when
        heapq.heappush(self._heap, (when, next(self._seq), flag))
        if len(self._heap) > 2 * len(self._planned) + 64:
            self._compact()
        if self._heap[0][2] == flag:
            self._wakeup.set()

    def _compact(self) -> None:
        """Drop heap entries superseded by a later plan, so the heap stays the size of the plans."""
        self._heap = [entry for entry in self._heap if self._planned.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)

    def _pause(self, flag: Key, stage: str) -> datetime:
        """Back off on one flag after an error: 2 s, 4 s, ... up to 5 min; returns when to look again."""
        errors = self._errors[flag] = self._errors.get(flag, 0) + 1
        metrics.ERRORS.labels(stage).inc()
        pause = min(MAX_ERROR_PAUSE, ERROR_PAUSE * 2 ** min(errors - 1, 20))
        until = self._paused_until[flag] = self.ctx.clock() + pause
        return until

    def _next_time(self, flag: Key) -> datetime | None:
        """Now for cancellations and first-sight housekeeping, else the head's due time; never during a pause."""
        book, now = self.ctx.book, self.ctx.clock()
        head = book.head(flag)
        if book.cancelled_of(flag) or book.untidy_of(flag):
            when: datetime | None = now
        else:
            when = None if head is None or flag in self._held else due_at(head)
            if when is not None and self._claimed_elsewhere(head):
                when = min(when, max(now, when - CLAIM_AHEAD))
        paused = self._paused_until.get(flag)
        if when is not None and paused is not None:
            when = max(when, paused)
        return when

    async def run(self) -> None:
        """Forever: wait to lead, sleep until the earliest planned time, start the due flags."""
        while True:
            await self.leading.wait()
            self.turned_at = time.monotonic()
            now = self.ctx.clock()
            fresh = self.ctx.is_leader()
            if fresh:
                self._end_of_life(now)
            while self._heap and self._heap[0][0] <= now and self.leading.is_set() and fresh:
                when, _, flag = heapq.heappop(self._heap)
                if self._planned.get(flag) != when:
                    continue  # superseded by a later plan
                del self._planned[flag]
                self._start(flag)
            self._wakeup.clear()
            timeout = min(HEARTBEAT, (self._heap[0][0] - now).total_seconds()) if self._heap else HEARTBEAT
            if not fresh:
                timeout = STALE_LEASE_PAUSE  # renewal overdue: wait for it (or for leadership to end)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
            metrics.PENDING.set(self.ctx.book.pending_count())

    def _end_of_life(self, now: datetime) -> None:
        """Fence suspect flags; delete finished schedules whose TTL ran out; fail unreadable ones."""
        book, me = self.ctx.book, self.ctx.settings.identity
        # A suspect leaves only once fenced (a failed fence is tried again later, backing off: a flag
        # that refuses every fencing write refuses it until someone lifts the policy). A claim
        # of this replica's needs none (its own work re-reads the schedule before the PATCH) unless a
        # PATCH of its on that flag got no answer (``Ctx.unanswered``): that one may still commit.
        for key, claimant in list(book.suspects.items()):
            if claimant == me and key not in self.ctx.unanswered:
                book.suspects.pop(key, None)
            elif key not in self._fencing and self._fence_after.get(key, now) <= now:
                self._fencing.add(key)
                self._spawn(key[0], self._fence_suspect(key), "fence", lambda k=key: self._fencing.discard(k),
                            lambda k=key: self._fence_later(k, now))
        for expiry in book.pop_expired(now):
            self._spawn(expiry.ref.namespace, delete_expired(self.ctx, expiry), "ttl")
        for uid, item in list(book.unreadable.items()):
            if uid not in self._rejecting and self._retry_after.get(uid, now) <= now:
                self._rejecting.add(uid)
                self._spawn(item.ref.namespace, reject_unreadable(self.ctx, item), "invalid",
                            lambda u=uid: self._rejecting.discard(u), lambda u=uid: self._later(u, now))

    async def _fence_suspect(self, key: Key) -> None:
        """Fence a flag a deposed leader may still be patching; it stays a suspect until that lands."""
        await fence(self.ctx, key)
        self.ctx.book.suspects.pop(key, None)
        self._fence_after.pop(key, None)
        self._fence_tries.pop(key, None)

    def _fence_later(self, key: Key, now: datetime) -> None:
        """A suspect flag's fence failed: try again after 2 s, 4 s, ... up to 5 min."""
        tries = self._fence_tries[key] = self._fence_tries.get(key, 0) + 1
        self._fence_after[key] = now + min(MAX_ERROR_PAUSE, ERROR_PAUSE * 2 ** min(tries - 1, 20))

    def _later(self, uid: str, now: datetime) -> None:
        """An unreadable schedule could not be marked Failed: try again later, backing off."""
        tries = self._tries[uid] = self._tries.get(uid, 0) + 1
        self._retry_after[uid] = now + min(MAX_ERROR_PAUSE, ERROR_PAUSE * 2 ** min(tries, 20))

    def _spawn(self, namespace: str, work: Any, stage: str, then: Any = None, failed: Any = None) -> None:
        async def bounded() -> None:
            try:
                async with self._slots.slot(namespace):
                    await work
            except Exception as err:  # noqa: BLE001 - logged and counted; the next turn tries again
                metrics.ERRORS.labels(stage).inc()
                log.warning(f"{stage}.error", error=describe(err))
                if failed is not None:
                    failed()
            finally:
                if then is not None:
                    then()
        task = asyncio.create_task(bounded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def applied_due(self, limit: float) -> None:
        """Return once no flag started for a due schedule is still working, or after ``limit`` seconds.

        Controllers that create schedules for later (the next cron edge) wait on this, so their
        writes never compete with the due schedules of a burst.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_due.wait(), limit)

    def _start(self, flag: Key) -> None:
        self._running.add(flag)
        head = self.ctx.book.head(flag)
        if head is not None and due_at(head) <= self.ctx.clock():
            self._due.add(flag)
            self._none_due.clear()
        task = asyncio.create_task(self._work(flag), name=f"flag {flag[0]}/{flag[1]}")
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(flag, done))

    def _finished(self, flag: Key, task: asyncio.Task) -> None:
        # A done callback, not a ``finally``: a task cancelled before it ever ran skips its finally
        # blocks, and the flag would stay "running" (never planned again) for the rest of the process.
        self._tasks.discard(task)
        self._running.discard(flag)
        self._due.discard(flag)
        if not self._due:
            self._none_due.set()
        self.plan(flag)

    async def _work(self, flag: Key) -> None:
        try:
            await self._work_due(flag)
            self._paused_until.pop(flag, None)
            self._errors.pop(flag, None)
        except asyncio.CancelledError:
            raise
        except StandDown as why:
            self._errors.pop(flag, None)
            log.info("flag.stand_down", namespace=flag[0], flag=flag[1], reason=str(why))
        except StatusWriteFailed as failed:
            until = self._pause(flag, "status")
            schedule = failed.schedule
            message = f"Could not write the status, trying again at {rfc3339(until)}: {failed}"
            self.ctx.event(schedule, "Warning", "StatusWriteFailed", message)
            log.warning("schedule.status_failed", namespace=flag[0], flag=flag[1], schedule=schedule.ref.name,
                        error=str(failed), next_attempt_at=rfc3339(until))
        except Exception as err:  # noqa: BLE001 - isolate: log, pause this flag, keep the others going
            until = self._pause(flag, "work")
            log.exception("flag.error", namespace=flag[0], flag=flag[1], error=describe(err),
                          next_attempt_at=rfc3339(until))

    async def _work_due(self, flag: Key) -> None:
        """Everything due on one flag now: cancellations, the head of line (repeatedly), housekeeping.

        Each step takes a slot and gives it back, so a flag with a long due queue (a burst on one
        flag, or schedules arriving while it works) takes turns with the other namespaces instead of
        holding a slot until its queue is empty.
        """
        ctx = self.ctx
        # An outcome the flag's refused fence holds up (``FenceRefused``: a cancellation, or the head's
        # Missed/Failed/Superseded) must not hold up the flag's other work: a due schedule's PATCH is
        # itself a write of this term, which fences. That schedule is passed over for this round
        # (``held``), and the refusal raised at the end so the flag is looked at again with backoff.
        held: dict[str, FenceRefused] = {}
        while self.leading.is_set() and ctx.is_leader() and self._work_left(flag, held):
            async with self._slots.slot(flag[0]):
                if not (self.leading.is_set() and ctx.is_leader()) or await self._step(flag, held):
                    break
        owner = ctx.book.flag(flag)
        for schedule in ctx.book.untidy_of(flag):
            if self.leading.is_set():
                async with self._slots.slot(flag[0]):
                    await tidy_schedule(ctx, schedule, owner)
        if held:
            raise next(iter(held.values()))

    def _work_left(self, flag: Key, held: dict[str, FenceRefused] | None = None) -> bool:
        """A cancellation, a due head of line or a claim ahead of its due time is owed now (no slot needed to ask).

        Schedules in ``held`` (by uid: their outcome waits for a refused fence) are passed over.
        """
        book, now, held = self.ctx.book, self.ctx.clock(), held or {}
        head = book.head(flag, held.keys())
        if any(s.ref.uid not in held for s in book.cancelled_of(flag)):
            return True
        if head is None:
            return False
        return action(head, now) is not Action.WAIT or (
            self._claimed_elsewhere(head) and due_at(head) - now <= CLAIM_AHEAD)

    async def _step(self, flag: Key, held: dict[str, FenceRefused] | None = None) -> bool:
        """Cancellations, then the head of line's outcome (or its claim ahead); True once nothing more is due.

        An outcome that waits for a refused fence (``FenceRefused``) puts its schedule in ``held``.
        """
        ctx = self.ctx
        now = ctx.clock()
        held = {} if held is None else held
        for schedule in ctx.book.cancelled_of(flag):
            if schedule.ref.uid in held:
                continue
            try:
                await cancel_schedule(ctx, schedule)
            except FenceRefused as refused:
                held[schedule.ref.uid] = refused
        head = ctx.book.head(flag, held.keys())
        todo = Action.WAIT if head is None else action(head, now)
        if todo is Action.APPLY and (why := ctx.holding()) is not None:
            self._hold(flag, head, why)
            return True
        if todo in (Action.APPLY, Action.MISS):
            try:
                await (apply_schedule if todo is Action.APPLY else miss_schedule)(ctx, head)
            except FenceRefused as refused:
                held[head.ref.uid] = refused
        else:
            if head is not None and self._claimed_elsewhere(head) and due_at(head) - now <= CLAIM_AHEAD:
                await claim(ctx, head)
            return True
        return False

    def _claimed_elsewhere(self, schedule: Any) -> bool:
        """The schedule is live and claimed by another replica (this one took over since)."""
        claimant = schedule.status.claimed_by
        return claimant is not None and claimant != self.ctx.settings.identity and not schedule.status.phase.terminal

    def _hold(self, flag: Key, schedule: Any, why: str) -> None:
        """Keep a due schedule back while the admission policies are not in force; say so once."""
        self._held.add(flag)
        if schedule.ref.uid not in self._told:
            self._told.add(schedule.ref.uid)
            self.ctx.event(schedule, "Warning", "AdmissionPoliciesMissing", why)
            log.warning("schedule.held", namespace=flag[0], flag=flag[1], schedule=schedule.ref.name, reason=why)

    def release_held(self) -> None:
        """The admission policies are in force again: plan the held flags (they are due: at once)."""
        held, self._held = self._held, set()
        self._told.clear()
        for flag in held:
            self.plan(flag)

    async def stop(self) -> None:
        """Cancel in-flight work and forget the plans (at shutdown and when leadership is lost)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._heap.clear()
        self._planned.clear()
        self._paused_until.clear()
        self._fence_after.clear()  # a new term fences its suspects at once
        self._fence_tries.clear()
        self._errors.clear()
        self._held.clear()
        self._due.clear()
        self._none_due.set()

    def replan_all(self) -> None:
        """Plan every flag that has schedules (after the initial listing, or on becoming leader)."""
        for flag in self.ctx.book.flag_keys():
            self.plan(flag)
