"""The informer: LIST, WATCH from the LIST's version, LIST again on 410 (handing over what vanished), skip refusals.

A scripted stand-in for the two requests (``Kube.list_pages`` and ``Kube.watch``); the real
requests are exercised against the API server in ``tests/integration/test_startup.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import kopf
from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.kube import Page
from flag_scheduler.scheduling import informer as informer_module
from flag_scheduler.scheduling.informer import Informer


def obj(name: str, uid: str, rv: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "a", "name": name, "uid": uid, "resourceVersion": rv,
                         **({"labels": labels} if labels else {})}}


class Done(Exception):
    """Ends the scripted run."""


class ScriptedKube:
    """Answers LISTs and WATCHes from scripts, in order; records the versions watched from."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.watched_from: list[str] = []
        self.selectors: list[str | None] = []  # the field selector of each LIST, in order

    async def list_pages(self, plural: str, namespace: str | None,
                         field_selector: str | None = None) -> AsyncIterator[Page]:
        self.selectors.append(field_selector)
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        items, version, *steps = answer
        for step in steps:  # before answering: wait for an event, or call a function
            await step.wait() if isinstance(step, asyncio.Event) else step()
        yield Page(items, {"resourceVersion": version})

    async def watch(self, plural: str, namespace: str | None, version: str) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(version)
        if not self.watches:
            raise Done()
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        for event in answer:
            if isinstance(event, asyncio.Event):  # a watch that goes quiet until the event is set
                await event.wait()
            elif isinstance(event, Exception):
                raise event
            elif callable(event):
                event()
            else:
                yield event


class Access:
    def __init__(self, namespaces: list[str]) -> None:
        self.namespaces = namespaces
        self.reported: list[tuple[str, int]] = []
        self.readable_again: list[str | None] = []

    async def report(self, ns: str, err: ApiException) -> None:
        self.reported.append((ns, err.status))

    def readable(self, ns: str | None) -> None:
        self.readable_again.append(ns)


async def run(kube: ScriptedKube, access: Access) -> list[tuple[str | None, str]]:
    seen: list[tuple[str | None, str]] = []
    informer = Informer(kube, access, "flagschedules", lambda kind, body: seen.append((kind, body["metadata"]["name"])))  # type: ignore[arg-type]
    await informer.load()
    with pytest.raises(Done):
        await informer.run()
    return seen


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer_module, "RECHECK_SECONDS", 0)
    monkeypatch.setattr(informer_module, "RETRY_ERROR", 0)


async def test_the_watch_starts_at_the_list_and_resumes_where_it_ended() -> None:
    kube = ScriptedKube(lists=[([obj("s1", "u1", "5")], "7")],
                        watches=[[{"type": "ADDED", "object": obj("s2", "u2", "8")}],
                                 [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}],
                                 ConnectionResetError("dropped")])
    seen = await run(kube, Access(["a"]))
    assert seen == [(None, "s1"), ("ADDED", "s2")]
    assert kube.watched_from == ["7", "8", "12", "12"]  # a dropped connection resumes, no new LIST


async def test_gone_lists_again_and_hands_over_what_vanished_meanwhile_as_deleted() -> None:
    kube = ScriptedKube(lists=[([obj("kept", "u1", "5"), obj("edge", "u2", "5", window="w")], "7"),
                               ([obj("kept", "u1", "20"), obj("new", "u3", "21")], "30")],
                        watches=[[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}],
                                 ApiException(status=410, reason="Gone")])
    deleted: list[dict[str, Any]] = []
    informer = Informer(kube, Access(["a"]), "flagschedules",  # type: ignore[arg-type]
                        lambda kind, body: deleted.append(body) if kind == "DELETED" else None)
    await informer.load()
    kube.lists.append(([obj("kept", "u1", "20")], "40"))  # the 410 at the start of a watch: LIST again too
    with pytest.raises(Done):
        await informer.run()
    assert [b["metadata"] for b in deleted] == [
        {"uid": "u2", "namespace": "a", "name": "edge", "labels": {"window": "w"}},  # labels: for its window
        {"uid": "u3", "namespace": "a", "name": "new"}]
    assert kube.watched_from == ["7", "30", "40"]


async def test_a_refused_namespace_is_reported_and_listed_once_readable_while_others_go_on() -> None:
    refused = ApiException(status=403, reason="Forbidden")
    kube = ScriptedKube(lists=[refused, ([obj("s1", "u1", "5")], "6"), refused, ([obj("s2", "u2", "9")], "10")],
                        watches=[[], []])
    access = Access(["locked", "open"])
    informer = Informer(kube, access, "flagschedules", lambda kind, body: None)  # type: ignore[arg-type]
    await informer.load()
    assert access.reported == [("locked", 403)] and access.readable_again == ["open"]
    with pytest.raises(Done):
        await informer.run()
    assert access.reported == [("locked", 403), ("locked", 403)]
    assert access.readable_again == ["open", "locked"]


async def test_one_object_the_runtime_cannot_take_does_not_stop_the_others() -> None:
    def observe(kind: str | None, body: dict[str, Any]) -> None:
        if body["metadata"]["name"] == "odd":
            raise KeyError("spec")
        taken.append(body["metadata"]["name"])

    taken: list[str] = []
    kube = ScriptedKube(lists=[([obj("odd", "u1", "5"), obj("fine", "u2", "5")], "6")],
                        watches=[[{"type": "MODIFIED", "object": obj("odd", "u1", "7")},
                                  {"type": "MODIFIED", "object": obj("also-fine", "u3", "8")}]])
    informer = Informer(kube, Access(["a"]), "flagschedules", observe)  # type: ignore[arg-type]
    await informer.load()
    with pytest.raises(Done):
        await informer.run()
    assert taken == ["fine", "also-fine"]


def test_kopf_watches_nothing_of_its_own() -> None:
    import flag_scheduler.scheduling.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    resource_handlers = [*registry._watching.get_all_handlers(), *registry._changing.get_all_handlers(),
                         *registry._indexing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    assert resource_handlers == []  # else Kopf would LIST each kind again after the runtime's LIST


async def test_a_watch_that_ended_fails_the_liveness_probe() -> None:
    from flag_scheduler.scheduling.runtime import Runtime

    async def broken() -> None:
        raise RuntimeError("a bug")

    ended = asyncio.create_task(broken())
    with pytest.raises(RuntimeError):
        await ended
    runtime = Runtime.__new__(Runtime)
    runtime._election, runtime._watches = None, [ended]
    assert runtime.healthy() == "a watch has ended"


async def test_a_scope_listed_in_part_is_watched_at_once_and_its_history_never_undoes_the_watch() -> None:
    # load: the unfinished ones at version 7. The watch runs from 7 at once: a finished schedule
    # changed (12), another deleted, a new one. The history LIST (at 10, answered after those
    # events) hands over only what is new to the informer: not "due" (the version held), not
    # "relabelled" (older than the watch's), not "gone" (deleted): only "old".
    watched, seen = asyncio.Event(), []
    kube = ScriptedKube(
        lists=[([obj("due", "u1", "5")], "7"),
               ([obj("due", "u1", "5"), obj("relabelled", "u3", "9"), obj("gone", "u4", "8"),
                 obj("old", "u2", "3")], "10", watched)],
        watches=[[{"type": "MODIFIED", "object": obj("relabelled", "u3", "12", step="2")},
                  {"type": "DELETED", "object": obj("gone", "u4", "13")},
                  {"type": "ADDED", "object": obj("new", "u5", "14")}, watched.set]])
    informer = Informer(kube, Access(["a"]), "flagschedules",  # type: ignore[arg-type]
                        lambda kind, body: seen.append((kind, body["metadata"]["name"])), "status.phase!=Applied")
    await informer.load()
    assert seen == [(None, "due")] and not informer.complete.is_set()
    kube.watches.append([informer.complete])  # the watch stays open until the history is in
    with pytest.raises(Done):
        await asyncio.wait_for(informer.run(), 10)  # a design that lists before it watches hangs here
    assert kube.selectors == ["status.phase!=Applied", None] and kube.watched_from[0] == "7"
    assert seen[1:] == [("MODIFIED", "relabelled"), ("DELETED", "gone"), ("ADDED", "new"), (None, "old")]
    assert informer.complete.is_set()
    assert set(informer._known["a"]) == {"u1", "u2", "u3", "u5"}  # what a LIST after 410 compares with


async def test_a_410_before_the_history_is_in_lists_whole_and_hands_over_what_vanished() -> None:
    asked, never = asyncio.Event(), asyncio.Event()
    kube = ScriptedKube(lists=[([obj("due", "u1", "5"), obj("dropped", "u2", "5")], "7"),
                               ([], "10", asked.set, never),  # the history LIST: never answers, replaced
                               ([obj("due", "u1", "5"), obj("done", "u3", "3")], "20")],
                        watches=[[asked, ApiException(status=410, reason="Gone")]])
    seen: list[tuple[str | None, str]] = []
    informer = Informer(kube, Access(["a"]), "flagschedules",  # type: ignore[arg-type]
                        lambda kind, body: seen.append((kind, body["metadata"]["name"])), "status.phase!=Applied")
    await informer.load()
    with pytest.raises(Done):
        await asyncio.wait_for(informer.run(), 10)
    assert seen[2:] == [(None, "due"), (None, "done"), ("DELETED", "dropped")]
    assert kube.watched_from == ["7", "20"] and informer.complete.is_set()


async def test_a_server_that_refuses_the_selector_gets_the_whole_list_at_once() -> None:
    refused = ApiException(status=400, reason="Bad Request")  # a CRD without the selectableFields entry
    kube = ScriptedKube(lists=[refused, ([obj("due", "u1", "5"), obj("done", "u3", "3")], "9")], watches=[])
    seen: list[tuple[str | None, str]] = []
    informer = Informer(kube, Access(["a"]), "flagschedules",  # type: ignore[arg-type]
                        lambda kind, body: seen.append((kind, body["metadata"]["name"])), "status.phase!=Applied")
    await informer.load()
    assert seen == [(None, "due"), (None, "done")] and informer.complete.is_set()
    with pytest.raises(Done):
        await informer.run()
    assert kube.selectors == ["status.phase!=Applied", None]  # no second whole LIST
    assert kube.watched_from == ["9"]


async def test_a_namespace_refused_at_the_first_list_does_not_hold_up_completeness() -> None:
    refused = ApiException(status=403, reason="Forbidden")
    kube = ScriptedKube(lists=[refused, ([obj("due", "u1", "5")], "6"),
                               ([obj("due", "u1", "5"), obj("done", "u2", "3")], "8")], watches=[])
    informer = Informer(kube, Access(["locked", "open"]), "flagschedules",  # type: ignore[arg-type]
                        lambda kind, body: None, "status.phase!=Applied")
    await informer.load()
    assert not informer.complete.is_set()  # "open" was listed in part; "locked" is retried by its watch
    await informer._list_history("open")
    assert informer.complete.is_set()
