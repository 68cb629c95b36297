"""The flag server under load: memory per idle stream, OFREP throughput, propagation to 1,000 streams,
and the scheduler's lateness while readers flood the flag server.

``python bench/serving.py [--quick]``. One local control plane (etcd fsync on), the scheduler and
the flag server as two processes with their shipped ServiceAccounts. Phases:

- ``serving_streams_rss_mb_per_1k``: the flag server's RSS growth per 1,000 idle flagd sync streams
  (raw gRPC streams from client processes, one connection per 100 streams) on a 200-flag namespace.
- ``ofrep_rps``: single-flag OFREP evaluations per second per flag-server core, from an aiohttp
  client at a fixed concurrency (the figure is requests / flag-server CPU seconds).
- ``propagation_sync_1k_p99_s``: from ``scheduledAt`` until all 1,000 connected streams received
  the new flag set, over a series of schedules.
- ``flood_lateness_p99_s``: the scheduler's lateness (``status.appliedAt`` − ``scheduledAt``) of
  100 schedules due while 3,000 sync streams that never read and 300 half-sent OFREP requests are
  open against the flag server; ``quiet_lateness_p99_s`` is the same without the flood.

Writes ``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import (  # noqa: E402
    GROUP, VERSION, Cluster, ControlPlane, FlagServerProcess, OperatorProcess, flag_body, parse_time, rfc3339,
)
from controlplane import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sizes:
    flags: int = 200
    idle_streams: int = 3000
    stream_processes: int = 4
    ofrep_seconds: float = 20.0
    ofrep_concurrency: int = 32
    propagation_streams: int = 1000
    propagation_schedules: int = 20
    flood_streams: int = 3000
    flood_ofrep: int = 300
    flood_schedules: int = 100


QUICK = Sizes(idle_streams=1000, ofrep_seconds=8.0, propagation_schedules=10, flood_streams=1500, flood_ofrep=300,
              flood_schedules=50)


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))], 3)


# -- stream clients, in their own processes -----------------------------------------------------------


def _streams_worker(port: int, namespace: str, n: int, per_channel: int, read: bool, ready: Any, out: Any,
                    stop: Any) -> None:
    """Open ``n`` SyncFlags streams; with ``read``, record when each received each flag set."""
    import grpc
    from grpc import aio
    from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

    async def main() -> None:
        channels = [aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range((n + per_channel - 1) // per_channel)]
        seen: list[list[tuple[float, str]]] = [[] for _ in range(n)]

        async def follow(i: int) -> None:
            call = sync_pb2_grpc.FlagSyncServiceStub(channels[i // per_channel]).SyncFlags(
                sync_pb2.SyncFlagsRequest(selector=namespace))
            try:
                async for message in call:
                    if not read:
                        seen[i].append((time.time(), ""))
                        await asyncio.Event().wait()  # never read again
                    seen[i].append((time.time(), message.flag_configuration))
            except (grpc.RpcError, asyncio.CancelledError):
                pass

        tasks = [asyncio.create_task(follow(i)) for i in range(n)]
        while sum(1 for s in seen if s) < n:
            await asyncio.sleep(0.2)
        ready.put(n)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put([[(t, _flag_state(text)) for t, text in s] for s in seen] if read else [])
        for ch in channels:
            await ch.close()

    asyncio.run(main())


def _flag_state(configuration: str) -> str:
    """The defaultVariant of flag f-000 in a configuration (what the propagation schedules flip)."""
    if not configuration:
        return ""
    return json.loads(configuration)["flags"].get("f-000", {}).get("defaultVariant", "")


class StreamClients:
    """``n`` raw sync streams spread over ``processes`` processes."""

    def __init__(self, port: int, namespace: str, n: int, processes: int, read: bool, per_channel: int = 100) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.out, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
        self.procs = [ctx.Process(target=_streams_worker, daemon=True,
                                  args=(port, namespace, k, per_channel, read, self.ready, self.out, self.stop))
                      for k in share if k]
        for p in self.procs:
            p.start()

    def wait_connected(self, timeout: float = 300) -> None:
        for _ in self.procs:
            self.ready.get(timeout=timeout)

    def close(self) -> list[list[tuple[float, str]]]:
        self.stop.set()
        seen = [s for _ in self.procs for s in self.out.get(timeout=120)]
        for p in self.procs:
            p.join(timeout=30)
        return seen


# -- phases ------------------------------------------------------------------------------------------


async def make_flags(cluster: Cluster, ns: str, count: int) -> dict[str, str]:
    await cluster.create_namespace(ns)
    created = await cluster.create_many(ns, "featureflags", [
        {**flag_body(f"f-{i:03d}"), "spec": {"enabled": False, "rolloutPercentage": 100}} for i in range(count)])
    return {f["metadata"]["name"]: f["metadata"]["uid"] for f in created}


async def streams_rss(server: Any, port: int, ns: str, sizes: Sizes) -> dict[str, Any]:
    await asyncio.sleep(2.0)
    before = server.memory_info().rss
    clients = StreamClients(port, ns, sizes.idle_streams, sizes.stream_processes, read=False)
    await asyncio.to_thread(clients.wait_connected)
    await asyncio.sleep(3.0)
    after = server.memory_info().rss
    await asyncio.to_thread(clients.close)
    per_1k = (after - before) / 2**20 / sizes.idle_streams * 1000
    return {"streams": sizes.idle_streams, "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1), "serving_streams_rss_mb_per_1k": round(per_1k, 1)}


async def ofrep_rps(server: Any, port: int, ns: str, sizes: Sizes) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/{ns}/ofrep/v1/evaluate/flags/f-001"
    body = json.dumps({"context": {"targetingKey": "user-1"}}).encode()
    done = errors = 0
    deadline = time.monotonic() + sizes.ofrep_seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=sizes.ofrep_concurrency)) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    done, errors = done + (r.status == 200), errors + (r.status != 200)

        before, t0 = server.cpu_times(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(sizes.ofrep_concurrency)))
        after, elapsed = server.cpu_times(), time.monotonic() - t0
    cpu = (after.user + after.system) - (before.user + before.system)
    return {"client": f"aiohttp, {sizes.ofrep_concurrency} concurrent, keep-alive", "requests": done,
            "errors": errors, "seconds": round(elapsed, 1), "rps": round(done / elapsed),
            "server_cpu_percent": round(100 * cpu / elapsed), "ofrep_rps": round(done / cpu) if cpu else None}


async def schedules_due(cluster: Cluster, ns: str, owners: dict[str, str], count: int, lead: float,
                        spacing: float, flips: bool) -> list[dict[str, Any]]:
    """``count`` schedules ``spacing`` apart from ``lead`` seconds on; with ``flips``, all on f-000 alternating."""
    start = datetime.now(UTC) + timedelta(seconds=lead)
    bodies = []
    for i in range(count):
        flag = "f-000" if flips else f"f-{i % len(owners):03d}"
        bodies.append({
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule",
            "metadata": {"name": f"s-{i:03d}", "ownerReferences": [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag, "uid": owners[flag]}]},
            "spec": {"flagRef": {"name": flag}, "scheduledAt": rfc3339(start + timedelta(seconds=i * spacing)),
                     "updates": {"enabled": i % 2 == 0 if flips else True}},
        })
    return await cluster.create_many(ns, "flagschedules", bodies)


async def wait_applied(cluster: Cluster, ns: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        schedules = await cluster.list_schedules(ns)
        if sum((s.get("status") or {}).get("phase") == "Applied" for s in schedules) >= count \
                or time.monotonic() > deadline:
            return schedules
        await asyncio.sleep(0.5)


def lateness(schedules: list[dict[str, Any]]) -> list[float]:
    return [parse_time(s["status"]["appliedAt"]).timestamp() - parse_time(s["spec"]["scheduledAt"]).timestamp()
            for s in schedules if (s.get("status") or {}).get("appliedAt")]


async def propagation_1k(cluster: Cluster, port: int, sizes: Sizes) -> dict[str, Any]:
    ns = "serving-prop"
    owners = await make_flags(cluster, ns, 20)
    await asyncio.sleep(1.0)
    clients = StreamClients(port, ns, sizes.propagation_streams, sizes.stream_processes, read=True)
    await asyncio.to_thread(clients.wait_connected)
    schedules = await schedules_due(cluster, ns, owners, sizes.propagation_schedules, lead=5, spacing=1.0, flips=True)
    await wait_applied(cluster, ns, len(schedules), 60)
    await asyncio.sleep(3.0)
    seen = await asyncio.to_thread(clients.close)
    dues = [parse_time(s["spec"]["scheduledAt"]).timestamp() for s in schedules]
    all_seen, missing = [], 0
    for k, due in enumerate(dues):
        want = "on" if k % 2 == 0 else "off"
        times = []
        for stream in seen:  # the stream's first flag set at or after this change with the new value
            t = next((t for t, v in stream if t >= due - 0.5 and v == want), None)
            missing += t is None
            if t is not None:
                times.append(t)
        if len(times) == len(seen):
            all_seen.append(max(times) - due)
    return {"streams": len(seen), "schedules": len(dues), "missing_sightings": missing,
            "propagation_sync_1k_p50_s": percentile(all_seen, 50),
            "propagation_sync_1k_p99_s": percentile(all_seen, 99)}


async def flood_lateness(cluster: Cluster, server: Any, ports: dict[str, int], sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, flooded in (("quiet", False), ("flood", True)):
        ns = f"serving-{label}"
        owners = await make_flags(cluster, ns, 20)
        clients = sockets = None
        if flooded:
            clients = StreamClients(ports["sync"], "serving-rss", sizes.flood_streams, sizes.stream_processes,
                                    read=False)
            await asyncio.to_thread(clients.wait_connected)
            sockets = await asyncio.to_thread(half_sent, ports["ofrep"], sizes.flood_ofrep)
        rss = server.memory_info().rss
        schedules = await schedules_due(cluster, ns, owners, sizes.flood_schedules, lead=6, spacing=0.1, flips=False)
        applied = await wait_applied(cluster, ns, len(schedules), 60)
        values = lateness(applied)
        out[label] = {"schedules": len(schedules), "applied": len(values), "lateness_p50_s": percentile(values, 50),
                      "lateness_p99_s": percentile(values, 99), "flag_server_rss_mb": round(rss / 2**20, 1)}
        if clients is not None:
            await asyncio.to_thread(clients.close)
        for s in sockets or []:
            s.close()
    return {"flood_streams": sizes.flood_streams, "flood_half_sent_ofrep": sizes.flood_ofrep, **out,
            "quiet_lateness_p99_s": out["quiet"]["lateness_p99_s"], "flood_lateness_p99_s": out["flood"]["lateness_p99_s"]}


def half_sent(port: int, n: int) -> list[socket.socket]:
    """``n`` OFREP requests whose headers never finish (each its own connection)."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /serving-rss/ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: x\r\n")
        out.append(s)
    return out


async def run_phases(cp: ControlPlane, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    ports = {"sync": free_port(), "ofrep": free_port()}
    os.environ.update(FLAG_SCHEDULER_SYNC_PORT=str(ports["sync"]), FLAG_SCHEDULER_OFREP_PORT=str(ports["ofrep"]),
                      FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1")
    namespaces = ["serving-rss", "serving-prop", "serving-quiet", "serving-flood"]
    operator = OperatorProcess(cluster, log_dir / "serving-scheduler.log")
    flag_server = FlagServerProcess(cluster, log_dir / "serving-flag-server.log")
    out: dict[str, Any] = {}
    try:
        await make_flags(cluster, "serving-rss", sizes.flags)
        await asyncio.to_thread(operator.start, namespaces)
        server = await asyncio.to_thread(flag_server.start, namespaces)
        say(f"serving: RSS of {sizes.idle_streams} idle streams on {sizes.flags} flags")
        out["streams_rss"] = await streams_rss(server, ports["sync"], "serving-rss", sizes)
        say(f"serving: OFREP single-flag evaluations for {sizes.ofrep_seconds} s")
        out["ofrep"] = await ofrep_rps(server, ports["ofrep"], "serving-rss", sizes)
        say(f"serving: propagation to {sizes.propagation_streams} streams")
        out["propagation"] = await propagation_1k(cluster, ports["sync"], sizes)
        say(f"serving: lateness, quiet and with {sizes.flood_streams} streams + {sizes.flood_ofrep} half-sent requests")
        out["flood"] = await flood_lateness(cluster, server, ports, sizes)
    finally:
        flag_server.stop()
        operator.stop()
        await cluster.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams and schedules")
    quick = parser.parse_args().quick
    sizes = QUICK if quick else Sizes()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(UTC), time.monotonic()
    with ControlPlane(fsync=True) as cp:
        out = asyncio.run(run_phases(cp, sizes, log_dir))
    results = {
        "quick": quick, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runtime_s": round(time.monotonic() - t0, 1), "machine": {"cpus": os.cpu_count(),
                                                                  "loadavg_at_end": os.getloadavg()},
        "serving_streams_rss_mb_per_1k": out["streams_rss"]["serving_streams_rss_mb_per_1k"],
        "ofrep_rps": out["ofrep"]["ofrep_rps"],
        "propagation_sync_1k_p99_s": out["propagation"]["propagation_sync_1k_p99_s"],
        "flood_lateness_p99_s": out["flood"]["flood_lateness_p99_s"],
        "quiet_lateness_p99_s": out["flood"]["quiet_lateness_p99_s"],
        "sizes": asdict(sizes), "phases": out,
    }
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("phases", "sizes")}, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
