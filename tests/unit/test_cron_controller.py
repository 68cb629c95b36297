"""The FlagCronSchedule controller acts only while this replica leads, and never twice at once on one window."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from flag_scheduler.config import Settings
from flag_scheduler.cronschedule.controller import CronController
from flag_scheduler.scheduling.book import Book
from flag_scheduler.scheduling.context import Ctx

WINDOW = {"metadata": {"namespace": "ns", "name": "w", "uid": "u1", "resourceVersion": "5", "generation": 1},
          "spec": {"flagRef": {"name": "f"}, "timeZone": "UTC",
                   "start": {"schedule": "0 9 * * *", "updates": {"enabled": True}}}}


class Recorder:
    """Answers every request with nothing (a flag not found) after a pause, counting requests in flight."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.in_flight = self.most = 0

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)
            if name == "post_event":  # Events are posted in the background, beside the reconcile
                return
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
        return call


def controller(leading: list[bool], applies_first: Any = None) -> tuple[CronController, Recorder]:
    kube = Recorder()
    ctx = Ctx(kube=kube, book=Book(), settings=Settings(identity="me"), clock=lambda: datetime.now(UTC))  # type: ignore[arg-type]
    ctx.is_leader = lambda: leading[0]
    return (CronController(ctx) if applies_first is None else CronController(ctx, applies_first)), kube


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_a_replica_that_does_not_lead_writes_nothing() -> None:
    crons, kube = controller([True])
    crons.observe_cron(None, WINDOW)
    await settle()
    assert kube.calls == []  # watching only: no workers before lead()


async def test_a_leader_whose_renewal_is_late_writes_nothing_until_it_renews_then_catches_up() -> None:
    leading = [False]
    crons, kube = controller(leading)
    crons.lead()
    crons.observe_cron(None, WINDOW)
    await settle()
    assert kube.calls == []  # the Lease is not fresh: nothing written
    leading[0] = True  # the next renewal succeeded: the same term goes on, and the window is not forgotten
    for _ in range(300):
        if kube.calls:
            break
        await asyncio.sleep(0.01)
    assert kube.calls[:1] == ["get"]  # reads the flag, finds none: reports FlagNotFound
    await crons.follow()


async def test_events_during_a_reconcile_run_it_again_afterwards_never_alongside() -> None:
    crons, kube = controller([True])
    crons.lead()
    for version in range(6, 12):
        crons.observe_cron(None, {**WINDOW, "metadata": {**WINDOW["metadata"], "resourceVersion": str(version)}})
        await asyncio.sleep(0.004)
    await settle()
    assert kube.most == 1
    await crons.follow()


async def test_windows_wait_for_the_due_schedules_to_be_applied_first() -> None:
    """An edge applied makes its window create the next one: that waits until the burst's applies are done;
    a change of the window itself does not wait."""
    burst_over = asyncio.Event()
    waited: list[float] = []

    async def applies_first(limit: float) -> None:
        waited.append(limit)
        await burst_over.wait()

    crons, kube = controller([True], applies_first)
    crons.observe_cron(None, WINDOW)
    crons.lead()
    await settle()
    assert kube.calls[:1] == ["get"] and not waited  # taking the lead: reconciled at once
    kube.calls.clear()
    edge = {"metadata": {"namespace": "ns", "name": "w-start-203103030800", "resourceVersion": "7",
                         "labels": {"flagscheduler.dev/cron-schedule-uid": "u1"}}}
    crons.observe_schedule("MODIFIED", edge)  # the edge was applied, say
    await settle()
    assert kube.calls == [] and waited  # nothing written while due schedules are being applied
    burst_over.set()
    for _ in range(300):
        if kube.calls:
            break
        await asyncio.sleep(0.01)
    assert kube.calls[:1] == ["get"]
    await crons.follow()
