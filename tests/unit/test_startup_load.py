"""Start-up's LIST runs with the cyclic garbage collector paused, and the collector is back afterwards.

At 110,000 schedules the collections that the LIST's decoded pages triggered took about half of the
operator's CPU of taking the LIST in (each scanned the whole growing heap); see ``Runtime._load_book``.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from flag_scheduler.scheduling.runtime import Runtime


class Kind:
    """An informer whose LIST notes whether the collector was running meanwhile."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.collector_on: bool | None = None

    async def load(self) -> None:
        self.collector_on = gc.isenabled()
        if self.fails:
            raise RuntimeError("the LIST failed")


@pytest.fixture(autouse=True)
def collector_restored() -> None:
    yield
    gc.enable()
    gc.unfreeze()


async def test_every_kind_is_listed_with_the_collector_paused_and_it_runs_again_after() -> None:
    kinds = [Kind(), Kind()]
    await Runtime._load_book(SimpleNamespace(informers=kinds))  # type: ignore[arg-type]
    assert [k.collector_on for k in kinds] == [False, False]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what start-up built is out of the collector's way


async def test_a_failed_list_leaves_the_collector_running() -> None:
    with pytest.raises(RuntimeError):
        await Runtime._load_book(SimpleNamespace(informers=[Kind(fails=True)]))  # type: ignore[arg-type]
    assert gc.isenabled()


async def test_the_history_is_listed_with_the_collector_paused_and_then_the_controllers_may_lead() -> None:
    import asyncio

    led: list[str] = []
    collector_on: list[bool] = []
    complete = asyncio.Event()
    runtime = SimpleNamespace(
        schedules=SimpleNamespace(complete=complete), dispatcher=SimpleNamespace(leading=asyncio.Event()),
        crons=SimpleNamespace(lead=lambda: led.append("crons")), rollouts=SimpleNamespace(lead=lambda: led.append("rollouts")),
        book=SimpleNamespace(complete=False, pending_count=lambda: 1, finished_count=lambda: 2))
    runtime._lead_controllers = lambda: Runtime._lead_controllers(runtime)  # type: ignore[arg-type]
    runtime.dispatcher.leading.set()  # leading already: the controllers wait for the history alone
    completing = asyncio.create_task(Runtime._complete_book(runtime))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    collector_on.append(gc.isenabled())
    runtime._lead_controllers()  # what _lead does when the Lease is acquired meanwhile
    assert led == [] and collector_on == [False] and runtime.book.complete is False
    complete.set()
    await completing
    assert led == ["crons", "rollouts"] and gc.isenabled() and runtime.book.complete is True


def test_a_follower_with_a_complete_book_leads_its_controllers_only_once_it_leads() -> None:
    import asyncio

    led: list[str] = []
    runtime = SimpleNamespace(schedules=SimpleNamespace(complete=asyncio.Event()),
                              dispatcher=SimpleNamespace(leading=asyncio.Event()),
                              crons=SimpleNamespace(lead=lambda: led.append("crons")),
                              rollouts=SimpleNamespace(lead=lambda: led.append("rollouts")))
    runtime.schedules.complete.set()
    Runtime._lead_controllers(runtime)  # type: ignore[arg-type]
    assert led == []
    runtime.dispatcher.leading.set()
    Runtime._lead_controllers(runtime)  # type: ignore[arg-type]
    assert led == ["crons", "rollouts"]
