"""Containment without a cluster: bounded requests and Events, health, leadership callbacks that fail."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fake_kube import FakeKube
from flag_scheduler.scheduling import dispatcher as dispatcher_module
from flag_scheduler import metrics
from flag_scheduler.scheduling import leader
from flag_scheduler.scheduling.context import EVENT_BACKLOG, Ctx
from flag_scheduler.scheduling.book import Book
from flag_scheduler.config import Settings
from flag_scheduler.http_server import endpoints_app
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.kube import REQUEST_TIMEOUT, WATCH_SECONDS, Kube
from flag_scheduler.models import ObjectRef


class Answer(dict):
    """An answer, as a body and as the raw response the ``*_without_preload_content`` methods give."""

    status, reason = 201, "Created"

    def release(self) -> None:
        pass

    async def read(self) -> bytes:  # a LIST page's body
        return json.dumps(self).encode()

    @property
    def content(self) -> Any:  # a watch's body: one bookmark
        async def iter_any() -> Any:
            yield b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "2"}}}\n'
        return SimpleNamespace(iter_any=iter_any)


class Recorder:
    """Stands in for a generated API class: records the keyword arguments of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
            self.calls.append((name, kwargs))
            return Answer({"items": [], "metadata": {}})
        return call


async def test_every_request_of_the_operator_has_a_timeout() -> None:
    kube = Kube.__new__(Kube)
    kube.custom, kube.core, kube.identity, kube.timeout = Recorder(), Recorder(), "me", REQUEST_TIMEOUT
    kube.admission, kube.api = Recorder(), SimpleNamespace(sanitize_for_serialization=lambda body: body)
    ref = ObjectRef(namespace="ns", name="n", uid="u", resourceVersion="1")
    schedule_body = {"metadata": {"namespace": "ns", "name": "s", "uid": "u"},
                     "spec": {"flagRef": {"name": "f"}, "scheduledAt": "2026-12-01T09:00:00Z",
                              "updates": {"enabled": True}}}
    from flag_scheduler.models import FlagSchedule, Marker
    schedule = FlagSchedule.from_body(schedule_body)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    public = [name for name, member in inspect.getmembers(Kube)
              if (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
              and not name.startswith("_") and name not in ("connect", "close")]
    await kube.get("flagschedules", "ns", "n")
    from flag_scheduler.forward import after_landing, setter_of
    marker = after_landing(Marker(), setter_of(schedule), 1, {"enabled": True}, now, lambda uid: False)
    await kube.patch_flag_spec(ref, {"enabled": True}, marker, "t")
    await kube.fence_flag(ref, "t")
    await kube.fence_flag_status(ref, "t")
    await kube.patch_schedule_status(ref, {})
    await kube.patch_flag_status(ref, {})
    await kube.set_owner(ref, [])
    await kube.delete_schedule(ref)
    await kube.post_event(ref, "FlagSchedule", "Normal", "R", "m", now)
    await kube.post_operator_event("home", "flag-scheduler", "R", "m", now)
    async for _ in kube.list_pages("flagschedules", None):
        pass
    assert [e["type"] async for e in kube.watch("flagschedules", "ns", "1")] == ["BOOKMARK"]
    await kube.list_admission_policies()
    await kube.create("flagschedules", "ns", {})
    await kube.patch_status("flagcronschedules", ref, {})
    await kube.set_owners("flagcronschedules", ref, [])
    await kube.patch_status("flagrollouts", ref, {}, unchanged=True)
    await kube.cancel_schedule("ns", "s", "u")
    assert sorted(public) == sorted(["get", "patch_flag_spec", "fence_flag", "fence_flag_status", "patch_schedule_status",
                                     "patch_flag_status", "set_owner", "delete_schedule", "post_event",
                                     "post_operator_event", "list_pages", "watch", "list_admission_policies", "create",
                                     "patch_status", "set_owners", "cancel_schedule"]), "a new request: test it here"
    calls = kube.custom.calls + kube.core.calls + kube.admission.calls
    assert len(calls) == len(public) + 2  # list_admission_policies makes two requests; patch_status is called twice
    watches = [kwargs for _, kwargs in calls if kwargs.get("watch")]
    assert watches == [{**watches[0], "timeout_seconds": WATCH_SECONDS, "_request_timeout": WATCH_SECONDS + 30}]
    assert all(kwargs.get("_request_timeout") == REQUEST_TIMEOUT for _, kwargs in calls if not kwargs.get("watch"))


async def test_events_are_posted_a_few_at_a_time_and_dropped_past_the_backlog() -> None:
    kube = FakeKube()
    running, most = 0, 0
    release = asyncio.Event()

    async def slow_post(*args: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    kube.post_event = slow_post  # type: ignore[method-assign]
    ctx = Ctx(kube=kube, book=Book(), settings=Settings(identity="me"), clock=lambda: datetime.now(UTC))
    ref = ObjectRef(namespace="ns", name="n")
    dropped = metrics.EVENTS_DROPPED._value.get()
    for _ in range(EVENT_BACKLOG + 5):
        ctx.event_about(ref, "FlagSchedule", "Normal", "R", "m")
    await asyncio.sleep(0.05)
    assert len(ctx.background) == EVENT_BACKLOG
    assert metrics.EVENTS_DROPPED._value.get() - dropped == 5
    assert most == 8
    release.set()
    await asyncio.gather(*ctx.background)


def test_a_leader_whose_loop_stopped_turning_is_unhealthy() -> None:
    ctx = Ctx(kube=FakeKube(), book=Book(), settings=Settings(identity="me"), clock=lambda: datetime.now(UTC))
    dispatcher = Dispatcher(ctx)
    dispatcher.turned_at = time.monotonic() - dispatcher_module.STALL_LIMIT - 1
    assert dispatcher.healthy()  # a follower's loop waits for leadership: healthy
    dispatcher.leading.set()
    assert not dispatcher.healthy()
    dispatcher.turned_at = time.monotonic()
    assert dispatcher.healthy()


async def test_the_liveness_probe_fails_with_the_reason() -> None:
    problem: list[str] = []
    async with TestClient(TestServer(endpoints_app(health=lambda: problem[0] if problem else None))) as client:
        healthy = await client.get("/healthz")
        assert (healthy.status, await healthy.text()) == (200, "ok")
        problem.append("this replica leads but its dispatcher loop has stopped turning")
        sick = await client.get("/healthz")
        assert (sick.status, await sick.text()) == (500, problem[0])


async def test_a_failing_leadership_callback_ends_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    monkeypatch.setattr(leader.os, "_exit", codes.append)

    async def broken() -> None:
        raise OverflowError("date value out of range")

    await leader._or_exit(broken(), "start")
    assert codes == [70]
