"""The flags served to OpenFeature SDKs: one flag set per namespace, fed by the FeatureFlag watch.

Kept apart from the scheduler's book on purpose: it holds only what is served (each flag's flagd
definition, with the last schedule's name and time as flag metadata), and it changes only when a
served definition changes, so a status write, another annotation or a new description pushes nothing.

Readers take a ``Snapshot`` of a namespace: the rendered configuration, its ETag, an evaluator
built on first use, and an event set once a newer snapshot exists. A sync stream sends a snapshot
and waits on that event; a burst of changes costs one render per reader wake-up, not per change.
Namespaces without flags keep no state (a selector is whatever a client sends): their snapshots
share one event, set whenever any namespace gets its first flag.

A flag whose spec cannot be served (it predates a CRD rule, or its targeting fails flagd's schema)
keeps its last valid definition: clients never get a broken flag set, nor lose a flag because of
an edit. One that was never valid is not served. The scheduler reports either on the flag
(condition ``InvalidSpec``); here it is a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails

from flag_scheduler.serving.flag_definitions import flag_configuration, flag_definition, render, with_change_metadata
from flag_scheduler.logs import get_logger

log = get_logger()


@dataclass
class Snapshot:
    """One namespace's flag set at one moment."""

    namespace: str
    configuration: str
    etag: str
    replaced: asyncio.Event
    keys: tuple[str, ...]
    kinds: dict[str, str] = field(default_factory=dict, repr=False)  # flag -> the resolve method's type
    _evaluator: FlagdCore | None = field(default=None, repr=False)
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, namespace: str, definitions: dict[str, dict[str, Any]], replaced: asyncio.Event) -> Snapshot:
        text = render(flag_configuration(namespace, definitions))
        etag = hashlib.sha256(text.encode()).hexdigest()[:24]
        kinds = {name: value_kind(d["variants"]) for name, d in definitions.items()}
        return cls(namespace, text, etag, replaced, tuple(sorted(definitions)), kinds)

    def evaluate(self, key: str, context: EvaluationContext) -> FlagResolutionDetails[Any]:
        """Evaluate one flag with the resolve method of its type (flagd's core checks the type)."""
        core = self.evaluator()
        kind = self.kinds.get(key, "boolean")
        if kind == "string":
            return core.resolve_string_value(key, "", context)
        if kind == "integer":
            return core.resolve_integer_value(key, 0, context)
        if kind == "float":
            return core.resolve_float_value(key, 0.0, context)
        if kind == "object":
            return core.resolve_object_value(key, {}, context)
        return core.resolve_boolean_value(key, False, context)

    def encoded(self, kind: str, encode: Callable[[str], bytes]) -> bytes:
        """The configuration encoded once per snapshot and protocol, shared by every stream that sends it."""
        data = self._encoded.get(kind)
        if data is None:
            data = self._encoded[kind] = encode(self.configuration)
        return data

    def evaluator(self) -> FlagdCore:
        """flagd's own evaluator (openfeature-flagd-core, as in the in-process providers) on this set."""
        if self._evaluator is None:
            core = FlagdCore()
            core.set_flags(self.configuration)  # from the text: the core rewrites dicts it is given
            self._evaluator = core
        return self._evaluator


@dataclass
class _Entry:
    uid: str | None
    definition: dict[str, Any]


class FlagStore:
    """Per-namespace flag definitions; ``observe`` takes FeatureFlag watch events."""

    def __init__(self) -> None:
        self._flags: dict[str, dict[str, _Entry]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._appeared = asyncio.Event()
        self.closed = False

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A FeatureFlag watch event (or a LIST item, ``event_type`` None)."""
        if event_type == "DELETED":
            self.drop(body)
        else:
            self.put(body)

    def put(self, body: dict[str, Any]) -> None:
        """Serve this flag; readers are woken only if its definition changed."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old = self._flags.get(namespace, {}).get(name)
        try:
            definition = with_change_metadata(flag_definition(body.get("spec") or {}), meta.get("annotations"))
        except ValueError as err:
            kept = old is not None and (not old.uid or old.uid == meta.get("uid"))
            log.warning("flags.invalid", namespace=namespace, flag=name, error=str(err),
                        serving="its last valid definition" if kept else "nothing")
            if old is not None and not kept:  # a namesake's definition: not this flag's
                self.drop({"metadata": {"namespace": namespace, "name": name}})
            return
        flags = self._flags.setdefault(namespace, {})
        flags[name] = _Entry(meta.get("uid"), definition)
        if old is None or old.definition != definition:
            self._changed(namespace, first=len(flags) == 1 and old is None)

    def drop(self, body: dict[str, Any]) -> None:
        """Stop serving this flag (if the stored one is the same object: identity is the uid)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        flags = self._flags.get(namespace, {})
        entry = flags.get(name)
        if entry is None or (entry.uid and meta.get("uid") and entry.uid != meta["uid"]):
            return
        del flags[name]
        if not flags:
            del self._flags[namespace]
        self._changed(namespace, first=False)

    def replace(self, bodies: Iterable[dict[str, Any]], namespace: str | None) -> None:
        """A fresh LIST of ``namespace`` (every namespace if None): serve it, drop what it no longer holds."""
        seen: set[tuple[str, str]] = set()
        for body in bodies:
            self.put(body)
            seen.add((body["metadata"]["namespace"], body["metadata"]["name"]))
        for ns in [namespace] if namespace is not None else list(self._flags):
            for name in [n for n in self._flags.get(ns, {}) if (ns, n) not in seen]:
                self.drop({"metadata": {"namespace": ns, "name": name}})

    def snapshot(self, namespace: str) -> Snapshot:
        """The namespace's current flag set (empty for a namespace with no flags)."""
        snap = self._snapshots.get(namespace)
        if snap is not None:
            return snap
        flags = self._flags.get(namespace)
        if not flags:
            return Snapshot.of(namespace, {}, self._appeared)
        event = self._events.setdefault(namespace, asyncio.Event())
        snap = Snapshot.of(namespace, {name: e.definition for name, e in flags.items()}, event)
        self._snapshots[namespace] = snap
        return snap

    def namespaces(self) -> list[str]:
        """Namespaces that have at least one served flag."""
        return sorted(self._flags)

    def close(self) -> None:
        """Wake every reader for the last time; they see ``closed`` and end their streams."""
        self.closed = True
        self._appeared.set()
        for event in self._events.values():
            event.set()

    def _changed(self, namespace: str, first: bool) -> None:
        self._snapshots.pop(namespace, None)
        event = self._events.pop(namespace, None)
        if event is not None:
            event.set()
        if first:
            self._appeared.set()
            self._appeared = asyncio.Event()


def value_kind(variants: dict[str, Any]) -> str:
    """Which of flagd's resolve methods a flag with these variants answers: its values' type."""
    values = list(variants.values())
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, dict) for v in values):
        return "object"
    return "integer" if all(isinstance(v, int) for v in values) else "float"
