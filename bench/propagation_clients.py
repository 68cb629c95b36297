"""The SDK clients of the propagation bench, and what each of them saw when.

Every client records, per flag, the wall-clock times at which the flag's value changed as that
client sees it. Flags only ever alternate false → true → false, one schedule per change, so the
k-th change a client sees of a flag is the k-th schedule of that flag.

- ``SyncClients``: the real SDK, ``openfeature-provider-flagd`` in in-process mode on the
  operator's sync port; a client sees a change when its provider reports the configuration changed
  and an evaluation returns the new value. ``ProcessSyncClients`` spreads them over processes.
- ``OfrepClients``: poll OFREP's bulk endpoint with ``If-None-Match`` every ``interval`` seconds,
  as OFREP's static-context (client-side) providers do; the Python provider evaluates one flag per
  call and has no poll of its own.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from typing import Any

import requests
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent


class Seen:
    """One client's view: per flag, its last value and the times it saw each change."""

    def __init__(self, flags: list[str]) -> None:
        self.lock = threading.Lock()
        self.value = dict.fromkeys(flags, False)
        self.changes: dict[str, list[float]] = {f: [] for f in flags}

    def saw(self, flag: str, value: bool, at: float) -> None:
        with self.lock:
            if flag in self.value and self.value[flag] != value:
                self.value[flag] = value
                self.changes[flag].append(at)

    def count(self) -> int:
        with self.lock:
            return sum(len(times) for times in self.changes.values())


class SyncClients:
    """``n`` in-process flagd providers, each its own SDK domain and its own TCP connection."""

    def __init__(self, n: int, port: int, namespace: str, flags: list[str], offset: int = 0) -> None:
        self.seen = [Seen(flags) for _ in range(n)]
        self.context = EvaluationContext("bench-user")
        for i, seen in enumerate(self.seen, start=offset):
            # A distinct authority keeps gRPC from sharing one connection between the clients:
            # each is a separate application with its own connection, as in production.
            provider = FlagdProvider(
                resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=port, selector=namespace,
                deadline_ms=30_000, default_authority=f"bench-client-{i}",
            )
            domain = f"{namespace}-{i}"
            api.set_provider_and_wait(provider, domain=domain)
            client = api.get_client(domain)
            client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self._handler(client, seen))

    def _handler(self, client, seen: Seen):  # noqa: ANN001, ANN202
        def on_change(details: EventDetails) -> None:
            for flag in details.flags_changed or ():
                value = client.get_boolean_value(flag, False, self.context)
                seen.saw(flag, value, time.time())

        return on_change

    def close(self) -> None:
        api.shutdown()


class OfrepClients:
    """``n`` threads polling ``POST <base>/ofrep/v1/evaluate/flags`` with ``If-None-Match``."""

    def __init__(self, n: int, base_url: str, flags: list[str], interval: float) -> None:
        self.seen = [Seen(flags) for _ in range(n)]
        self.url = base_url.rstrip("/") + "/ofrep/v1/evaluate/flags"
        self.interval = interval
        self.stop = threading.Event()
        self.requests = 0
        self.not_modified = 0
        self.threads = [threading.Thread(target=self._poll, args=(i, s), daemon=True) for i, s in enumerate(self.seen)]
        for thread in self.threads:
            thread.start()

    def _poll(self, i: int, seen: Seen) -> None:
        session, etag = requests.Session(), None
        body = {"context": {"targetingKey": f"bench-user-{i}"}}
        next_at = time.monotonic() + random.uniform(0, self.interval)  # not all in step
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            try:
                reply = session.post(self.url, json=body, headers={"If-None-Match": etag} if etag else {}, timeout=5)
            except requests.RequestException:
                continue
            at = time.time()
            self.requests += 1
            if reply.status_code == 304:
                self.not_modified += 1
                continue
            if reply.status_code == 200:
                etag = reply.headers.get("ETag")
                for item in reply.json()["flags"]:
                    seen.saw(item["key"], item.get("value") is True, at)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


class _Remote:
    """The part of ``Seen`` the figures read, rebuilt from a worker's report."""

    def __init__(self, changes: dict[str, list[float]]) -> None:
        self.changes = changes

    def count(self) -> int:
        return sum(len(times) for times in self.changes.values())


def _sync_worker(n: int, port: int, namespace: str, flags: list[str], offset: int, least: Any, slot: int,
                 stop: Any, out: Any) -> None:
    """A process of ``n`` sync clients: publish the fewest changes any of them saw; report all at stop."""
    clients = SyncClients(n, port, namespace, flags, offset)
    least[slot] = 0
    while not stop.wait(0.2):
        least[slot] = min(seen.count() for seen in clients.seen)
    out.put((slot, [seen.changes for seen in clients.seen]))
    clients.close()


class ProcessSyncClients:
    """Sync clients spread over ``procs`` processes: 100 applications are not one Python process."""

    def __init__(self, n: int, port: int, namespace: str, flags: list[str], procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.least = ctx.Array("i", [-1] * procs)  # -1: that worker's clients are not all connected yet
        sizes = [n // procs + (i < n % procs) for i in range(procs)]
        self.workers = [
            ctx.Process(target=_sync_worker, daemon=True,
                        args=(size, port, namespace, flags, sum(sizes[:i]), self.least, i, self.stop, self.out))
            for i, size in enumerate(sizes)
        ]
        for worker in self.workers:
            worker.start()
        self.seen: list[_Remote] = []

    def wait_connected(self, timeout: float = 120.0) -> None:
        """Block until every worker's clients are connected and have their first flag set."""
        deadline = time.monotonic() + timeout
        while min(self.least[:]) < 0:
            if time.monotonic() > deadline or not all(w.is_alive() for w in self.workers):
                raise RuntimeError("sync client workers did not connect")
            time.sleep(0.1)

    def all_saw(self, expected: int) -> bool:
        return all(count >= expected for count in self.least[:])

    def close(self) -> None:
        """Stop the workers and collect what every client saw (``self.seen``); once."""
        if self.stop.is_set():
            return
        self.stop.set()
        reports = dict(self.out.get(timeout=60) for _ in self.workers)
        self.seen = [_Remote(changes) for slot in sorted(reports) for changes in reports[slot]]
        for worker in self.workers:
            worker.join(timeout=30)
