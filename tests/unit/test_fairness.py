"""Fairness between namespaces without a cluster: slots taken in turn, the Event backlog shared.

The integration test (``tests/integration/test_fairness.py``) shows the same on the real control
plane; these pin the exact order, which only a fake API can make deterministic.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fake_kube import FakeKube
from flag_scheduler import metrics
from flag_scheduler.config import Settings
from flag_scheduler.models import FLAGS, SCHEDULES, ObjectRef
from flag_scheduler.scheduling.book import Book
from flag_scheduler.scheduling.context import EVENT_BACKLOG, EVENT_POSTS, Ctx
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.scheduling.fair_slots import FairSlots, within_share

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


async def take_in_order(slots: FairSlots, arrivals: list[str]) -> list[str]:
    """Each arrival (its namespace) waits for a slot, holds it for one loop turn; the order they got one."""
    served: list[str] = []

    async def hold(namespace: str) -> None:
        async with slots.slot(namespace):
            served.append(namespace)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(hold(namespace)) for namespace in arrivals]
    await asyncio.gather(*tasks)
    return served


async def test_a_freed_slot_goes_to_the_namespaces_in_turn() -> None:
    served = await take_in_order(FairSlots(1), ["a"] * 5 + ["b", "c"])
    assert served == ["a", "a", "b", "c", "a", "a", "a"]


async def test_one_namespace_alone_is_served_first_come_first_served() -> None:
    slots = FairSlots(1)
    order: list[int] = []

    async def hold(i: int) -> None:
        async with slots.slot("a"):
            order.append(i)
            await asyncio.sleep(0)

    await asyncio.gather(*(hold(i) for i in range(6)))
    assert order == list(range(6))


async def test_never_more_holders_than_slots() -> None:
    slots, holding, most = FairSlots(3), 0, 0

    async def hold(namespace: str) -> None:
        nonlocal holding, most
        async with slots.slot(namespace):
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0)
            holding -= 1

    await asyncio.gather(*(hold(ns) for ns in ["a"] * 20 + ["b"] * 5))
    assert most == 3
    assert slots.waiting() == 0


async def test_a_waiter_cancelled_in_line_or_after_its_grant_does_not_lose_a_slot() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    in_line = asyncio.create_task(slots.acquire("b"))
    granted_then_cancelled = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    assert slots.waiting() == 2
    in_line.cancel()
    await asyncio.sleep(0)
    assert slots.waiting("b") == 0
    slots.release()  # goes to "c", which is cancelled before it runs: the slot must come back
    granted_then_cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted_then_cancelled
    await asyncio.wait_for(slots.acquire("d"), 1)


@pytest.mark.parametrize(("queued", "namespace", "admitted"), [
    ({}, "a", True),
    ({"a": 9}, "a", True),
    ({"a": 10}, "a", False),  # alone: the whole backlog
    ({"a": 10}, "b", True),  # a newcomer always gets its share
    ({"a": 10, "b": 4}, "b", True),
    ({"a": 10, "b": 5}, "b", False),  # two: half each
    ({"a": 10, "b": 5}, "a", False),
    ({"a": 10, "b": 5, "c": 0}, "a", False),  # an empty line is no share
    ({"a": 10, "b": 5, "c": 3}, "d", True),
    ({"a": 10, "b": 5, "c": 3, "d": 2}, "e", False),  # the total stops at twice the backlog
])
def test_the_event_backlog_is_shared_equally_between_namespaces(
    queued: dict[str, int], namespace: str, admitted: bool
) -> None:
    assert within_share(queued, namespace, 10) is admitted


async def test_a_burst_of_events_in_one_namespace_neither_crowds_out_nor_delays_another() -> None:
    kube, release, posted = FakeKube(), asyncio.Event(), []

    async def slow_post(ref: ObjectRef, *args: Any) -> None:
        posted.append(ref.namespace)
        await release.wait()

    kube.post_event = slow_post  # type: ignore[method-assign]
    ctx = Ctx(kube=kube, book=Book(), settings=Settings(identity="me"), clock=lambda: T0)
    dropped = metrics.EVENTS_DROPPED._value.get()
    for i in range(EVENT_BACKLOG + 1):
        ctx.event_about(ObjectRef(namespace="a", name=f"s{i}"), "FlagSchedule", "Normal", "Applied", "m")
    assert metrics.EVENTS_DROPPED._value.get() - dropped == 1  # "a" alone fills the whole backlog
    for i in range(3):
        ctx.event_about(ObjectRef(namespace="b", name=f"s{i}"), "FlagSchedule", "Normal", "Applied", "m")
    assert metrics.EVENTS_DROPPED._value.get() - dropped == 1  # "b" still has its share
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*ctx.background)
    assert len(posted) == EVENT_BACKLOG + 3
    # After the posts already in flight, "b" goes every other turn instead of after a's backlog.
    assert [i for i, namespace in enumerate(posted) if namespace == "b"] == [EVENT_POSTS + 1, EVENT_POSTS + 3,
                                                                             EVENT_POSTS + 5]


def due_flag(kube: FakeKube, book: Book, namespace: str, name: str, schedules: int = 1) -> None:
    """A flag with ``schedules`` claimed, owned schedules that are due."""
    flag = kube.create(FLAGS, {"metadata": {"namespace": namespace, "name": name},
                               "spec": {"enabled": False, "rolloutPercentage": 0}})
    book.put_flag(flag)
    owner = [{"kind": "FeatureFlag", "name": name, "uid": flag["metadata"]["uid"]}]
    for i in range(schedules):
        book.put_schedule(kube.create(SCHEDULES, {
            "metadata": {"namespace": namespace, "name": f"{name}-{i}", "ownerReferences": owner},
            "spec": {"flagRef": {"name": name}, "scheduledAt": (T0 + timedelta(milliseconds=i)).isoformat(),
                     "updates": {"rolloutPercentage": i}},
            "status": {"phase": "Pending", "retryCount": 0, "claimedBy": "me"},
        }))


def one_slot_dispatcher(kube: FakeKube, book: Book, patched: list[str]) -> Dispatcher:
    """A leading dispatcher with one slot; each flag PATCH records its namespace and takes a loop turn."""
    real_patch = kube.patch_flag_spec

    async def patch(flag: ObjectRef, *args: Any) -> dict:
        patched.append(flag.namespace)
        await asyncio.sleep(0)  # an answer takes a while: the other flags queue for the slot meanwhile
        return await real_patch(flag, *args)

    kube.patch_flag_spec = patch  # type: ignore[method-assign]
    ctx = Ctx(kube=kube, book=book, settings=Settings(identity="me", max_concurrency=1),
              clock=lambda: T0 + timedelta(seconds=1), fencing_token=lambda: "term-1")
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    return dispatcher


async def test_a_due_schedule_of_another_namespace_is_applied_next_turn_not_after_a_burst() -> None:
    """Namespace "a" has 20 flags due and "b" one, planned last; with one slot, "b" goes third."""
    kube, book = FakeKube(), Book()
    for i in range(20):
        due_flag(kube, book, "a", f"burst-{i:02d}")
    due_flag(kube, book, "b", "other")
    patched: list[str] = []
    dispatcher = one_slot_dispatcher(kube, book, patched)
    for i in range(20):
        dispatcher._start(("a", f"burst-{i:02d}"))
    dispatcher._start(("b", "other"))
    await asyncio.gather(*list(dispatcher._tasks))
    assert patched == ["a", "a", "b"] + ["a"] * 18
    assert all(kube.objects[(SCHEDULES, ns, n)]["status"]["phase"] == "Applied"
               for (plural, ns, n) in kube.objects if plural == SCHEDULES)
    await asyncio.gather(*dispatcher.ctx.background)


async def test_a_flag_with_a_long_due_queue_gives_its_slot_back_after_each_schedule() -> None:
    """One flag of "a" has 6 schedules due, "b" one: "b" goes second, and "a" keeps its order."""
    kube, book = FakeKube(), Book()
    due_flag(kube, book, "a", "busy", schedules=6)
    due_flag(kube, book, "b", "other")
    patched: list[str] = []
    dispatcher = one_slot_dispatcher(kube, book, patched)
    dispatcher._start(("a", "busy"))
    dispatcher._start(("b", "other"))
    await asyncio.gather(*list(dispatcher._tasks))
    assert patched == ["a", "b"] + ["a"] * 5
    assert kube.objects[(FLAGS, "a", "busy")]["spec"]["rolloutPercentage"] == 5
    # All Applied, none Superseded: applied in their order (an earlier one after a later is Superseded).
    assert [kube.objects[(SCHEDULES, "a", f"busy-{i}")]["status"]["phase"] for i in range(6)] == ["Applied"] * 6
    await asyncio.gather(*dispatcher.ctx.background)
