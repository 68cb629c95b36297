"""Adversarial review of issues 11 and 12 (exactly once, forward only, fencing, containment).

Each test is one scenario that broke a promise of the README; each failed on the code it was written
against, and passes since the fix. Unit tier: ``fake_kube`` (uid/resourceVersion preconditions) and
a fake clock. The deposed-leader tests give the new leader a warm book, as the Deployment's
follower has (it watched the delete or the edit); a replica that starts cold in that window cannot
know which flag to fence (see the README's High availability section).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.aio.client.exceptions import ApiException

from fake_kube import FakeKube, _error
from flag_scheduler.scheduling.apply import apply_schedule, land_change
from flag_scheduler.scheduling.context import Ctx, StandDown
from flag_scheduler.scheduling.settle import cancel_schedule
from flag_scheduler.scheduling.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.scheduling.finished import reject_unreadable
from flag_scheduler.scheduling.housekeeping import tidy_schedule
from flag_scheduler.forward import after_landing, setter_of
from flag_scheduler.models import FLAGS, SCHEDULES, FlagSchedule, Marker

NS = "ns"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOKEN = "flagscheduler.dev/fencing-token"
KEY = (NS, "f")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(identity: str = "me") -> Settings:
    return Settings(identity=identity, max_retries=0, backoff_seconds=1, max_backoff_seconds=2)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ctx(kube: FakeKube) -> Ctx:
    return Ctx(kube=kube, book=Book(), settings=settings(), clock=Clock(T0 + timedelta(seconds=1)),
               jitter=lambda: 0.0, fencing_token=lambda: "term-a")


def add_flag(kube: FakeKube, ctx: Ctx, annotations: dict[str, str] | None = None) -> dict:
    body = kube.create(FLAGS, {"metadata": {"namespace": NS, "name": "f", "annotations": annotations or {}},
                               "spec": {"enabled": False, "rolloutPercentage": 0}})
    ctx.book.put_flag(body)
    return body


def add_schedule(kube: FakeKube, ctx: Ctx, name: str = "s", at: datetime = T0, status: dict | None = None,
                 **spec: Any) -> FlagSchedule | None:
    flag_uid = kube.objects[(FLAGS, NS, "f")]["metadata"]["uid"] if (FLAGS, NS, "f") in kube.objects else "x"
    body = kube.create(SCHEDULES, {
        "metadata": {"namespace": NS, "name": name,
                     "ownerReferences": [{"kind": "FeatureFlag", "name": "f", "uid": flag_uid}]},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": at.isoformat(), "updates": {"enabled": True}, **spec},
        "status": status or {"phase": "Pending", "retryCount": 0, "claimedBy": "me"},
    })
    ctx.book.observe_schedule("ADDED", body)
    return ctx.book.schedule(body["metadata"]["uid"])


def edit(kube: FakeKube, plural: str, name: str, change: Any, spec: bool = True) -> None:
    """A user's edit on the API server: the change, a new resourceVersion and (for spec) generation."""
    obj = kube.objects[(plural, NS, name)]
    change(obj)
    obj["metadata"]["resourceVersion"] = str(next(kube._rv))
    if spec:
        obj["metadata"]["generation"] += 1


def phase(kube: FakeKube, name: str = "s") -> str:
    return kube.objects[(SCHEDULES, NS, name)]["status"]["phase"]


def flag(kube: FakeKube) -> dict:
    return kube.objects[(FLAGS, NS, "f")]


def writes(kube: FakeKube, what: str) -> int:
    return kube.calls.count(what)


def listed(kube: FakeKube) -> Book:
    """A book as a replica builds it from a LIST of the API server."""
    book = Book()
    for (plural, _, _), body in sorted(kube.objects.items()):
        if plural == FLAGS:
            book.observe_flag(None, copy.deepcopy(body))
    for (plural, _, _), body in sorted(kube.objects.items()):
        if plural == SCHEDULES:
            book.observe_schedule(None, copy.deepcopy(body))
    return book


async def take_over(kube: FakeKube, now: datetime, identity: str = "b", token: str = "term-b",
                    book: Book | None = None) -> Ctx:
    """A replica becomes leader with ``book`` (a warm follower's) or a LIST; it does all the work due at ``now``."""
    new = Ctx(kube=kube, book=book or listed(kube), settings=settings(identity), clock=Clock(now),
              jitter=lambda: 0.0, fencing_token=lambda: token)
    dispatcher = Dispatcher(new)
    dispatcher.leading.set()
    dispatcher._end_of_life(now)
    await asyncio.gather(*dispatcher._tasks)
    dispatcher.replan_all()
    for _ in range(3):
        due = [f for f, when in list(dispatcher._planned.items()) if when <= now]
        for key in due:
            del dispatcher._planned[key]
            await dispatcher._work(key)
            dispatcher.plan(key)
    await asyncio.gather(*new.background)
    return new


# --- 1. A deposed leader's in-flight PATCH: only Cancelled/Missed/Failed/Superseded fence the flag ---


async def test_a_deposed_leaders_patch_cannot_land_a_schedule_deleted_while_it_was_frozen(
    kube: FakeKube, ctx: Ctx
) -> None:
    """Leader A passes every check (apply.before-flag-patch) and freezes; the user deletes the schedule;
    B takes over and, having nothing left to do on the flag, never fences it; A wakes and its PATCH lands."""
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    leading = [True]
    ctx.is_leader = lambda: leading[0]

    follower = listed(kube)  # the second replica, watching: its book is warm

    async def frozen() -> None:
        deleted = copy.deepcopy(kube.objects[(SCHEDULES, NS, "s")])
        kube.delete(SCHEDULES, NS, "s")
        follower.observe_schedule("DELETED", deleted)
        leading[0] = False
        await take_over(kube, ctx.clock() + timedelta(seconds=20), book=follower)

    await _freeze_before_patch(kube, ctx, schedule, frozen)
    assert flag(kube)["spec"]["enabled"] is False, "a deleted schedule's change landed on the flag"


async def test_a_deposed_leaders_patch_cannot_land_a_schedule_moved_later_while_it_was_frozen(
    kube: FakeKube, ctx: Ctx
) -> None:
    """As above, but the user moves the schedule an hour later: A lands it now, and reports it Applied."""
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    leading = [True]
    ctx.is_leader = lambda: leading[0]

    follower = listed(kube)

    async def frozen() -> None:
        edit(kube, SCHEDULES, "s", lambda o: o["spec"].update(scheduledAt=(T0 + timedelta(hours=1)).isoformat()))
        follower.observe_schedule("MODIFIED", copy.deepcopy(kube.objects[(SCHEDULES, NS, "s")]))
        leading[0] = False
        await take_over(kube, ctx.clock() + timedelta(seconds=20), book=follower)

    await _freeze_before_patch(kube, ctx, schedule, frozen)
    assert flag(kube)["spec"]["enabled"] is False, "the schedule landed an hour before its (new) scheduledAt"


async def _freeze_before_patch(kube: FakeKube, ctx: Ctx, schedule: FlagSchedule, meanwhile: Any) -> None:
    """Run A's apply; at its flag PATCH, run ``meanwhile`` (the world while A is frozen), then let A go on."""
    real_patch = kube.patch_flag_spec

    async def patch_after_freeze(*args: Any) -> dict:
        await meanwhile()
        return await real_patch(*args)

    kube.patch_flag_spec = patch_after_freeze  # type: ignore[method-assign]
    with contextlib.suppress(StandDown):
        await apply_schedule(ctx, schedule)


async def test_a_throttled_fence_does_not_settle_unfenced(kube: FakeKube, ctx: Ctx) -> None:
    """429 (API Priority and Fairness) is a 4xx but not a refusal of the write: the fence is skipped, the
    schedule is Cancelled, and the deposed leader's PATCH prepared before lands afterwards."""
    add_flag(kube, ctx, annotations={TOKEN: "term-old"})
    schedule = add_schedule(kube, ctx)
    seen_by_deposed = ctx.book.flag(KEY).ref  # what the old leader read before it froze
    edit(kube, SCHEDULES, "s", lambda o: o["spec"].update(cancelled=True))
    ctx.book.observe_schedule("MODIFIED", copy.deepcopy(kube.objects[(SCHEDULES, NS, "s")]))
    kube.hooks["fence_flag"] = lambda: (_ for _ in ()).throw(_error(429, "TooManyRequests"))
    with contextlib.suppress(Exception):
        await cancel_schedule(ctx, ctx.book.schedule(schedule.ref.uid))
    with contextlib.suppress(ApiException):  # the deposed leader wakes up
        landing = after_landing(Marker(), setter_of(schedule), 1, {"enabled": True}, T0, lambda uid: False)
        await kube.patch_flag_spec(seen_by_deposed, {"enabled": True}, landing, "term-old")
    assert not (phase(kube) == "Cancelled" and flag(kube)["spec"]["enabled"] is True), \
        "Cancelled, yet the flag was changed"


# --- 2. Exactly once rests on the *last* marker only ---


async def test_a_landed_schedule_moved_later_is_not_applied_again_after_another_one_landed(
    kube: FakeKube, ctx: Ctx
) -> None:
    """s1 lands at 09:00 and the process dies before its status write (it still reads Pending, so its
    spec is editable); the user moves it to 11:00; s2 (10:00) lands; at 11:00 s1 lands a second time,
    moving the flag back to s1's value."""
    add_flag(kube, ctx)
    s1 = add_schedule(kube, ctx, "s1", T0, updates={"rolloutPercentage": 10})
    await land_change(ctx, s1)  # the flag PATCH landed; crash before the status write
    edit(kube, SCHEDULES, "s1", lambda o: o["spec"].update(scheduledAt=(T0 + timedelta(hours=2)).isoformat()))
    add_schedule(kube, ctx, "s2", T0 + timedelta(hours=1), updates={"rolloutPercentage": 50})
    await take_over(kube, T0 + timedelta(hours=1, seconds=1), identity="me")
    assert flag(kube)["spec"]["rolloutPercentage"] == 50
    await take_over(kube, T0 + timedelta(hours=2, seconds=1), identity="me")
    assert writes(kube, "patch_flag_spec") == 2, "s1's change reached the flag twice"
    assert flag(kube)["spec"]["rolloutPercentage"] == 50, "the flag moved back to s1's value"


# --- 3. Ghosts: objects gone from the API server, still in the book ---


async def test_a_deleted_flag_left_in_the_book_does_not_spin_a_superseded_schedule(
    kube: FakeKube, ctx: Ctx
) -> None:
    """The flag was deleted while the watch was away (no DELETED after a relist). Its marker (in the book)
    supersedes the schedule; the fence reads 404 and stands down, without pausing and without correcting
    the book, so the flag is worked on again at once, for ever: a GET per turn, the schedule never settles."""
    add_flag(kube, ctx, annotations={
        "flagscheduler.dev/last-applied-schedule": "z", "flagscheduler.dev/last-applied-schedule-uid": "uid-z",
        "flagscheduler.dev/last-applied-scheduled-at": (T0 + timedelta(hours=1)).isoformat(),
    })
    add_schedule(kube, ctx)
    kube.delete(FLAGS, NS, "f")
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    for _ in range(5):
        await dispatcher._work(KEY)
        dispatcher.plan(KEY)
    status = kube.objects[(SCHEDULES, NS, "s")]["status"]
    progressed = status != {"phase": "Pending", "retryCount": 0, "claimedBy": "me"}
    spinning = dispatcher._planned.get(KEY) is not None and dispatcher._planned[KEY] <= ctx.clock()
    assert progressed or not spinning, \
        f"5 turns, {kube.calls.count('get featureflags/f')} GETs, no progress, planned again for now"


async def test_an_unreadable_schedule_deleted_unseen_is_not_patched_every_turn(kube: FakeKube, ctx: Ctx) -> None:
    """An unreadable schedule (InvalidSpec) deleted during a watch gap: the 404 leaves it in the book,
    so every turn of the dispatcher loop (every wake-up, at least every 5 s) PATCHes it again, for ever."""
    body = {"metadata": {"namespace": NS, "name": "bad", "uid": "uid-bad", "resourceVersion": "7", "generation": 1},
            "spec": {"flagRef": {"name": "f"}, "scheduledAt": "0000-01-01T00:00:00Z", "updates": {"enabled": True}}}
    ctx.book.observe_schedule(None, body)  # never created in kube: deleted before the operator acted
    assert ctx.book.unreadable
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    for _ in range(3):
        dispatcher._end_of_life(ctx.clock())
        await asyncio.gather(*dispatcher._tasks)
    assert writes(kube, "patch_schedule_status") == 1, "a ghost is written to on every turn"


# --- 4. Status writes retried after a conflict re-send a body built from the stale copy ---


async def test_a_flag_found_update_after_a_conflict_keeps_the_current_phase(kube: FakeKube, ctx: Ctx) -> None:
    """The new leader's book lags behind the old leader's last write (Retrying, retry 1 at 09:00:30). The
    flag appears; first-sight housekeeping writes FlagFound=True with the phase of its stale copy, gets a
    409, re-reads, and writes the same stale body: the schedule is Pending again, its backoff ignored."""
    add_flag(kube, ctx)
    lost = {"type": "FlagFound", "status": "False", "reason": "NotFound", "message": "missing",
            "lastTransitionTime": "2026-12-01T08:00:00Z"}
    stale = add_schedule(kube, ctx, status={"phase": "Pending", "retryCount": 0, "claimedBy": "me",
                                            "conditions": [lost]})
    retrying = {"phase": "Retrying", "retryCount": 1, "nextRetryAt": "2026-12-01T09:00:30Z", "claimedBy": "me",
                "conditions": [lost, {"type": "Applied", "status": "False", "reason": "Retrying",
                                      "message": "404", "lastTransitionTime": "2026-12-01T09:00:00Z"}]}
    edit(kube, SCHEDULES, "s", lambda o: o.update(status=retrying), spec=False)  # the old leader's last write
    await tidy_schedule(ctx, stale, ctx.book.flag(KEY))
    status = kube.objects[(SCHEDULES, NS, "s")]["status"]
    assert status["phase"] == "Retrying", f"phase went back to {status['phase']} with nextRetryAt kept"
    assert any(c["type"] == "Applied" for c in status["conditions"]), "the Applied condition was dropped"


# --- 5. A status the operator cannot read ---


async def test_a_status_the_operator_cannot_read_does_not_cause_a_write_loop(kube: FakeKube, ctx: Ctx) -> None:
    """kube-openapi's date-time admits year 0000; pydantic does not. The lenient status keeps only the
    phase, so the claim looks missing; housekeeping writes it, the answer reads back unclaimed, and the
    flag is planned for now again: an endless stream of status PATCHes."""
    add_flag(kube, ctx)
    add_schedule(kube, ctx, at=T0 + timedelta(hours=1), status={
        "phase": "Pending", "retryCount": 0, "claimedBy": "me", "nextRetryAt": "0000-01-01T00:00:00Z"})
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    for _ in range(5):
        await dispatcher._work(KEY)
        dispatcher.plan(KEY)
    assert writes(kube, "patch_schedule_status") <= 1, \
        f"{writes(kube, 'patch_schedule_status')} status writes in 5 turns, planned again at once"


# --- 6. Finished schedules with a TTL ---


def test_two_finished_schedules_that_expire_at_the_same_instant_do_not_crash_the_book() -> None:
    """``Expiry(at, ref)`` in a heap: equal ``at`` compares the ObjectRefs, which have no order -> TypeError.
    With FINISHED_TTL_SECONDS set, schedules finished before ``finishedAt`` existed count from
    ``creationTimestamp`` (whole seconds): two made by one ``kubectl apply -f dir/`` tie. The error escapes
    ``Book.observe_schedule``: from ``Runtime.start``'s LIST the operator dies at every start (crash loop);
    from a watch event Kopf logs it and the expiry is lost. The same happens when one finished schedule
    with a TTL is modified (a label, an Argo CD sync): its second MODIFIED ties with its first expiry."""
    book = Book(default_ttl=3600)
    for name in ("a", "b"):
        book.observe_schedule(None, {
            "metadata": {"namespace": NS, "name": name, "uid": f"uid-{name}", "resourceVersion": "1",
                         "creationTimestamp": "2026-12-01T09:00:00Z"},
            "spec": {"flagRef": {"name": "f"}, "scheduledAt": "2026-12-01T09:00:00Z", "updates": {"enabled": True}},
            "status": {"phase": "Applied"},
        })
    assert len(book.expiries) == 2
