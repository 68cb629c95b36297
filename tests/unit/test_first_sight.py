"""First sight of a schedule whose flag the book has not seen yet: FlagNotFound only if the flag is truly missing.

Flags and schedules come through two watches, so a flag created just before its schedule (one
``kubectl apply -f dir/``) can reach the operator after the schedule. The schedule must not be
told, with a Warning Event, that an existing flag does not exist.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fake_kube import FakeKube
from flag_scheduler.config import Settings
from flag_scheduler.models import FLAGS, SCHEDULES
from flag_scheduler.scheduling.book import Book
from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.housekeeping import tidy_schedule

NS = "ns"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def new_ctx(kube: FakeKube) -> Ctx:
    return Ctx(kube=kube, book=Book(), settings=Settings(identity="me"), clock=lambda: NOW)


def new_schedule(kube: FakeKube, ctx: Ctx):  # noqa: ANN201 - a FlagSchedule from the book
    body = kube.create(SCHEDULES, {"metadata": {"namespace": NS, "name": "s"},
                                   "spec": {"flagRef": {"name": "f"}, "scheduledAt": "2027-01-01T00:00:00Z",
                                            "updates": {"enabled": True}},
                                   "status": {"phase": "Pending", "retryCount": 0}})
    return ctx.book.put_schedule(body)


def flag_found(kube: FakeKube) -> str | None:
    conditions = kube.objects[(SCHEDULES, NS, "s")].get("status", {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "FlagFound"), None)


async def test_a_flag_the_book_has_not_seen_yet_is_read_and_owns_the_schedule() -> None:
    kube = FakeKube()
    ctx = new_ctx(kube)
    flag = kube.create(FLAGS, {"metadata": {"namespace": NS, "name": "f"}, "spec": {"enabled": False}})
    schedule = new_schedule(kube, ctx)  # the flag's watch event has not arrived: not in the book
    await tidy_schedule(ctx, schedule, None)
    await asyncio.gather(*ctx.background)
    stored = kube.objects[(SCHEDULES, NS, "s")]
    assert flag_found(kube) != "False"
    assert [o["uid"] for o in stored["metadata"].get("ownerReferences", [])] == [flag["metadata"]["uid"]]
    assert ("s", "Warning", "FlagNotFound") not in kube.events


async def test_a_flag_that_does_not_exist_is_reported_once() -> None:
    kube = FakeKube()
    ctx = new_ctx(kube)
    await tidy_schedule(ctx, new_schedule(kube, ctx), None)
    await asyncio.gather(*ctx.background)
    assert flag_found(kube) == "False"
    assert kube.events == [("s", "Warning", "FlagNotFound")]
