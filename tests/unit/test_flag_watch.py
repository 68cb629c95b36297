"""The flag server's watch reader: events of any size split at newlines, a 410 means LIST again."""

from __future__ import annotations

import json

import aiohttp
import pytest

from flag_scheduler.kube import MAX_LINE, watch_events
from flag_scheduler.serving.flag_store import FlagStore
from flag_scheduler.serving.flag_watch import FlagWatch, Gone


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def iter_any(self):  # noqa: ANN201 - aiohttp.StreamReader's
        for chunk in self.chunks:
            yield chunk


async def collect(*chunks: bytes) -> list[dict]:
    return [event async for event in watch_events(Chunks(*chunks))]  # type: ignore[arg-type]


async def test_events_are_split_at_newlines_whatever_the_chunks() -> None:
    big = {"type": "ADDED", "object": {"metadata": {"annotations": {"x": "y" * 300_000}}}}
    text = (json.dumps(big) + "\n" + json.dumps({"type": "BOOKMARK", "object": {}}) + "\n").encode()
    pieces = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    events = await collect(*pieces)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert len(events[0]["object"]["metadata"]["annotations"]["x"]) == 300_000


async def test_an_endless_line_is_refused() -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await collect(*[b"x" * (1 << 20)] * (MAX_LINE // (1 << 20) + 2))


def test_a_gone_resource_version_means_list_again_and_other_events_reach_the_store() -> None:
    watch = FlagWatch.__new__(FlagWatch)
    watch.store = FlagStore()
    body = {"metadata": {"namespace": "a", "name": "f", "uid": "1", "resourceVersion": "7"},
            "spec": {"enabled": True}}
    assert watch._apply({"type": "ADDED", "object": body}, "5") == "7"
    assert watch._apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}, "7") == "9"
    assert '"f"' in watch.store.snapshot("a").configuration
    with pytest.raises(Gone):
        watch._apply({"type": "ERROR", "object": {"code": 410, "message": "too old"}}, "9")
