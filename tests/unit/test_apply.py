"""Apply, settle and fence against an in-memory API (``fake_kube``), with a fake clock: the unit tier."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubernetes.aio.client.exceptions import ApiException

from fake_kube import FakeKube
from flag_scheduler.forward import after_landing, setter_of
from flag_scheduler.scheduling.apply import apply_schedule
from flag_scheduler.scheduling.context import Ctx, StandDown
from flag_scheduler.scheduling.settle import cancel_schedule
from flag_scheduler.scheduling.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.scheduling import dispatcher as dispatcher_module
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.models import FLAGS, SCHEDULES, FlagSchedule, Marker, Phase

NS = "ns"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ctx(kube: FakeKube) -> Ctx:
    settings = Settings(identity="me", max_retries=0, backoff_seconds=1, max_backoff_seconds=2)
    return Ctx(kube=kube, book=Book(), settings=settings, clock=Clock(T0 + timedelta(seconds=1)),
               jitter=lambda: 0.0, fencing_token=lambda: "term-2")


def add_flag(kube: FakeKube, ctx: Ctx, name: str = "f", annotations: dict[str, str] | None = None) -> dict:
    body = kube.create(FLAGS, {"metadata": {"namespace": NS, "name": name, "annotations": annotations or {}},
                               "spec": {"enabled": False, "rolloutPercentage": 0}})
    ctx.book.put_flag(body)
    return body


def add_schedule(kube: FakeKube, ctx: Ctx, name: str = "s", at: datetime = T0, **spec: Any) -> FlagSchedule:
    body = kube.create(SCHEDULES, {
        "metadata": {"namespace": NS, "name": name},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": at.isoformat(), "updates": {"enabled": True}, **spec},
        "status": {"phase": "Pending", "retryCount": 0, "claimedBy": "me"},
    })
    return ctx.book.put_schedule(body)


def phase(kube: FakeKube, name: str = "s") -> str:
    return kube.objects[(SCHEDULES, NS, name)]["status"]["phase"]


def flag(kube: FakeKube, name: str = "f") -> dict:
    return kube.objects[(FLAGS, NS, name)]


async def test_a_due_schedule_lands_once_with_its_marker(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    await apply_schedule(ctx, schedule)
    assert phase(kube) == "Applied"
    notes = flag(kube)["metadata"]["annotations"]
    assert flag(kube)["spec"]["enabled"] is True
    assert notes["flagscheduler.dev/last-applied-schedule-uid"] == schedule.ref.uid
    assert notes["flagscheduler.dev/fencing-token"] == "term-2"
    writes = [c for c in kube.calls if not c.startswith("get")]
    assert writes == ["patch_flag_spec", "patch_schedule_status"]


async def test_a_lost_patch_response_makes_the_schedule_applied_not_failed(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)  # max_retries 0: a failure is final
    kube.lose_response.add("patch_flag_spec")
    await apply_schedule(ctx, schedule)
    assert flag(kube)["spec"]["enabled"] is True
    assert phase(kube) == "Applied"


async def test_a_failure_that_did_not_land_is_failed_after_the_flag_is_fenced(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx, annotations={"flagscheduler.dev/fencing-token": "term-1"})
    schedule = add_schedule(kube, ctx)
    kube.hooks["patch_flag_spec"] = lambda: (_ for _ in ()).throw(TimeoutError("no answer"))
    await apply_schedule(ctx, schedule)
    assert phase(kube) == "Failed"
    assert flag(kube)["spec"]["enabled"] is False
    assert flag(kube)["metadata"]["annotations"]["flagscheduler.dev/fencing-token"] == "term-2"


async def test_cancelling_a_change_that_landed_records_applied(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    await apply_schedule(ctx, schedule)
    # As if the status write had been lost: the schedule reads Pending again, now cancelled.
    body = kube.objects[(SCHEDULES, NS, "s")]
    body["status"] = {"phase": "Pending", "retryCount": 0, "claimedBy": "me"}
    body["spec"]["cancelled"] = True
    stale = FlagSchedule.from_body(body)
    await cancel_schedule(ctx, stale)
    assert phase(kube) == "Applied"


async def test_cancel_fences_the_flag_once_per_term(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    first = add_schedule(kube, ctx, "a", cancelled=True)
    second = add_schedule(kube, ctx, "b", cancelled=True)
    await cancel_schedule(ctx, first)
    await cancel_schedule(ctx, second)
    assert phase(kube, "a") == phase(kube, "b") == "Cancelled"
    assert kube.calls.count("fence_flag") == 1
    assert flag(kube)["spec"]["enabled"] is False


async def test_a_fence_makes_a_patch_prepared_before_it_fail(kube: FakeKube, ctx: Ctx) -> None:
    """The deposed leader read the flag and froze; a new term cancels the schedule (through the real
    ``cancel_schedule``, which fences); the frozen PATCH then fails its precondition."""
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    new_term = Ctx(kube=kube, book=Book(), settings=Settings(identity="other"), clock=ctx.clock,
                   fencing_token=lambda: "term-3")
    real_patch = kube.patch_flag_spec

    async def frozen_meanwhile(*args: Any) -> dict:
        body = kube.objects[(SCHEDULES, NS, "s")]
        body["spec"]["cancelled"] = True
        body["metadata"]["generation"] = 2
        await cancel_schedule(new_term, new_term.book.put_schedule(copy.deepcopy(body)))
        return await real_patch(*args)
    kube.patch_flag_spec = frozen_meanwhile  # type: ignore[method-assign]
    with pytest.raises(StandDown):  # 409, read again: the schedule changed and is finished
        await apply_schedule(ctx, schedule)
    assert phase(kube) == "Cancelled"
    assert flag(kube)["spec"]["enabled"] is False
    assert flag(kube)["metadata"]["annotations"]["flagscheduler.dev/fencing-token"] == "term-3"


async def test_a_patch_that_got_no_answer_cannot_commit_after_the_schedule_is_settled(kube: FakeKube, ctx: Ctx) -> None:
    """The flag already carries this term's token, but this term's own PATCH timed out: it may still
    commit, so settling Failed must fence anyway."""
    add_flag(kube, ctx, annotations={"flagscheduler.dev/fencing-token": "term-2"})
    schedule = add_schedule(kube, ctx)
    in_flight = ctx.book.flag((NS, "f")).ref
    kube.hooks["patch_flag_spec"] = lambda: (_ for _ in ()).throw(TimeoutError("no answer"))
    await apply_schedule(ctx, schedule)
    assert phase(kube) == "Failed"
    marker = after_landing(Marker(), setter_of(schedule), 1, {"enabled": True}, T0, lambda uid: False)
    with pytest.raises(ApiException) as late:  # the request without an answer reaches etcd now
        await kube.patch_flag_spec(in_flight, {"enabled": True}, marker, "term-2")
    assert late.value.status == 409
    assert flag(kube)["spec"]["enabled"] is False


async def test_a_suspect_flag_stays_suspect_until_its_fence_lands(kube: FakeKube, ctx: Ctx) -> None:
    """On takeover every suspect is fenced, and a fence that fails is tried again once its pause is
    over (2 s after the first failure) instead of being forgotten."""
    add_flag(kube, ctx, annotations={"flagscheduler.dev/fencing-token": "term-1"})
    ctx.book.suspects[(NS, "f")] = "other"
    dispatcher = Dispatcher(ctx)
    kube.hooks["fence_flag"] = lambda: (_ for _ in ()).throw(TimeoutError("no answer"))
    dispatcher._end_of_life(T0)
    await asyncio.gather(*dispatcher._tasks)
    assert (NS, "f") in ctx.book.suspects
    assert flag(kube)["metadata"]["annotations"]["flagscheduler.dev/fencing-token"] == "term-1"
    dispatcher._end_of_life(T0 + timedelta(seconds=2))
    await asyncio.gather(*dispatcher._tasks)
    assert flag(kube)["metadata"]["annotations"]["flagscheduler.dev/fencing-token"] == "term-2"
    assert not ctx.book.suspects


async def test_an_older_schedule_is_superseded_field_by_field(kube: FakeKube, ctx: Ctx) -> None:
    """"eight" arrives after "nine" landed: it sets only the field "nine" did not; "seven" sets none."""
    add_flag(kube, ctx)
    newer = add_schedule(kube, ctx, "nine", T0)
    await apply_schedule(ctx, newer)
    older = add_schedule(kube, ctx, "eight", T0 - timedelta(hours=1),
                         updates={"enabled": False, "rolloutPercentage": 5})
    await apply_schedule(ctx, older)
    oldest = add_schedule(kube, ctx, "seven", T0 - timedelta(hours=2), updates={"enabled": False})
    await apply_schedule(ctx, oldest)
    await asyncio.gather(*ctx.background)
    assert flag(kube)["spec"] == {"enabled": True, "rolloutPercentage": 5}
    assert phase(kube, "eight") == "Applied"
    skipped = next(c for c in kube.objects[(SCHEDULES, NS, "eight")]["status"]["conditions"]
                   if c["type"] == "FieldsSuperseded")
    assert skipped["status"] == "True" and skipped["message"].startswith("enabled (set by nine")
    assert phase(kube, "seven") == "Superseded"
    assert ("seven", "Warning", "Superseded") in kube.events


async def test_a_schedule_deleted_before_its_patch_is_not_applied(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    kube.delete(SCHEDULES, NS, "s")  # the book still has it (a ghost after a relist, say)
    with pytest.raises(StandDown, match="deleted"):
        await apply_schedule(ctx, schedule)
    assert flag(kube)["spec"]["enabled"] is False
    assert ctx.book.schedule(schedule.ref.uid) is None


def test_the_dispatcher_plans_each_flag_at_its_heads_due_time(kube: FakeKube, ctx: Ctx) -> None:
    body = add_flag(kube, ctx)
    owner = [{"kind": "FeatureFlag", "name": "f", "uid": body["metadata"]["uid"]}]
    for name, minutes in (("late", 30), ("early", 10)):
        ctx.book.put_schedule(kube.create(SCHEDULES, {
            "metadata": {"namespace": NS, "name": name, "ownerReferences": owner},
            "spec": {"flagRef": {"name": "f"}, "scheduledAt": (T0 + timedelta(minutes=minutes)).isoformat(),
                     "updates": {"enabled": True}},
            "status": {"phase": "Pending", "claimedBy": "me"},
        }))
    dispatcher = Dispatcher(ctx)
    dispatcher.plan((NS, "f"))
    assert dispatcher._heap == []  # a follower plans nothing: it plans everything when it takes over
    dispatcher.leading.set()
    dispatcher.replan_all()
    assert dispatcher._planned[(NS, "f")] == T0 + timedelta(minutes=10)
    # Cancelling the later one needs work now; an unclaimed one needs first-sight housekeeping now.
    body = kube.objects[(SCHEDULES, NS, "late")]
    body["spec"]["cancelled"] = True
    body["metadata"]["resourceVersion"] = "500"
    ctx.book.put_schedule(body)
    dispatcher.plan((NS, "f"))
    assert dispatcher._planned[(NS, "f")] == ctx.clock()


def test_a_flag_whose_planning_fails_is_paused_alone_with_backoff(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    add_schedule(kube, ctx)
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()

    def broken(flag: tuple[str, str]) -> None:
        raise OverflowError("date value out of range")

    dispatcher._next_time = broken  # type: ignore[method-assign]
    dispatcher.plan((NS, "f"))
    first = dispatcher._planned[(NS, "f")]
    dispatcher.plan((NS, "other"))
    second = dispatcher._planned[(NS, "f")]
    assert first == ctx.clock() + timedelta(seconds=2)
    dispatcher.plan((NS, "f"))
    assert dispatcher._planned[(NS, "f")] == ctx.clock() + timedelta(seconds=4)
    assert second == first


def test_the_heap_stays_the_size_of_the_plans(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    body = kube.objects[(SCHEDULES, NS, "s")]
    for minute in range(1, 500):  # the schedule is moved again and again: each move re-plans
        body["spec"]["scheduledAt"] = (T0 + timedelta(minutes=minute)).isoformat()
        body["metadata"]["resourceVersion"] = str(1000 + minute)
        ctx.book.put_schedule(body)
        dispatcher.plan((NS, "f"))
    assert len(dispatcher._heap) <= 2 * len(dispatcher._planned) + 64
    assert schedule.ref.uid == ctx.book.schedules_of((NS, "f"))[0].ref.uid


async def test_a_ghost_schedule_is_forgotten_at_first_sight_instead_of_retried_forever(
    kube: FakeKube, ctx: Ctx
) -> None:
    from flag_scheduler.scheduling.housekeeping import tidy_schedule

    add_flag(kube, ctx)
    ghost = add_schedule(kube, ctx)  # unowned: first sight owes it an ownerReference
    kube.delete(SCHEDULES, NS, "s")  # deleted while the operator's watch was away: no DELETED event
    await tidy_schedule(ctx, ghost, ctx.book.flag((NS, "f")))
    assert ctx.book.schedules_of((NS, "f")) == []


async def test_a_flag_frozen_by_policy_still_lets_retries_end_failed(kube: FakeKube, ctx: Ctx) -> None:
    from fake_kube import _error

    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    refuse = lambda: (_ for _ in ()).throw(_error(403, "Forbidden"))  # noqa: E731
    kube.hooks["patch_flag_spec"] = refuse
    kube.hooks["fence_flag"] = refuse
    await apply_schedule(ctx, schedule)
    assert phase(kube) == "Failed"


async def test_applied_due_waits_for_flags_started_for_a_due_schedule_only(kube: FakeKube, ctx: Ctx) -> None:
    """What the cron controller waits on before creating next edges: due work, not housekeeping."""
    add_flag(kube, ctx)
    add_flag(kube, ctx, "g")
    add_schedule(kube, ctx, "due", T0)  # due: the clock reads T0 + 1 s
    add_schedule(kube, ctx, "later", T0 + timedelta(hours=1), flagRef={"name": "g"})
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    release = asyncio.Event()

    async def slow(flag: tuple[str, str]) -> None:
        await release.wait()

    dispatcher._work_due = slow  # type: ignore[method-assign]
    dispatcher._start((NS, "g"))  # housekeeping only: its head is an hour away
    await asyncio.wait_for(dispatcher.applied_due(5), 1)
    dispatcher._start((NS, "f"))
    waiting = asyncio.create_task(dispatcher.applied_due(5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 1)


async def test_a_new_leader_claims_a_head_another_replica_claimed_ahead_of_its_due_time(kube: FakeKube, ctx: Ctx) -> None:
    """After a takeover, the claim is not left for the due time, where a burst would pay for it."""
    body = add_flag(kube, ctx)
    owner = [{"kind": "FeatureFlag", "name": "f", "uid": body["metadata"]["uid"]}]
    due = T0 + timedelta(hours=1)
    ctx.book.put_schedule(kube.create(SCHEDULES, {
        "metadata": {"namespace": NS, "name": "s", "ownerReferences": owner},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": due.isoformat(), "updates": {"enabled": True}},
        "status": {"phase": "Pending", "retryCount": 0, "claimedBy": "the-old-leader"},
    }))
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    dispatcher.replan_all()
    assert dispatcher._planned[(NS, "f")] == due - dispatcher_module.CLAIM_AHEAD
    ctx.clock.now = due - dispatcher_module.CLAIM_AHEAD
    await dispatcher._work_due((NS, "f"))
    assert kube.objects[(SCHEDULES, NS, "s")]["status"]["claimedBy"] == "me"
    assert phase(kube) == "Pending" and flag(kube)["spec"]["enabled"] is False  # claimed, not applied early
    dispatcher.plan((NS, "f"))
    assert dispatcher._planned[(NS, "f")] == due  # now it waits for its due time
