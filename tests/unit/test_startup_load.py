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
