"""Hand-over: how soon connected SDK clients of each runtime follow a flag server replaced under them.

``python bench/handover.py [--quick]`` (also ``make bench-handover``, ``bench/run.py --only handover``
and the end of ``make bench``). One control plane (etcd fsync on); per runtime (Python, JS, Java)
``clients`` in-process flagd providers with their **default** retry settings, started by the
existing client programs (``propagation_clients.ProcessSyncClients``; ``tests/clients/js/watch.mjs``,
``tests/clients/java/Watch.java``), connected to one flag server. Each round then does what a
rolling update does to that server on one address: SIGTERM (it ends every stream ``UNAVAILABLE``,
then gRPC's ``GOAWAY``) and wait for it to exit; start the replacement on the same port and wait
until it serves; flip a flag of its own (``h-<round>``, false to true, so an SDK's code default
cannot pass for the change); wait until every client saw it. Per client and round: the time from
the change (the PATCH returned), from the new server being ready (its ``flag_server.started`` log
line) and from the SIGTERM, until the client saw the new value. Writes ``results/handover.json``
and merges ``handover_s_<runtime>`` (max, change to seen), ``handover_p50_s_<runtime>`` and the
detail ``handover`` into ``results/latest.json``.

OFREP clients are left out: they hold no stream, so there is nothing to hand over; a polling
client sees the change at its next successful poll after the new server is ready (at most one
``pollInterval`` later), and the browser's OFREP provider does not poll at all by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from cluster import (  # noqa: E402
    FLAGS, GROUP, MERGE, VERSION, Cluster, ControlPlane, FlagServerProcess, MachineLoad, flag_body, with_retries,
)
from clients.install import JAVA, JS, install_all, java_classpath  # noqa: E402
from controlplane import free_port  # noqa: E402
from propagation import RESULTS, percentile, say, wait_all_seen  # noqa: E402
from propagation_clients import ProcessSyncClients  # noqa: E402
from propagation_runtimes import client_process  # noqa: E402

RUNTIMES = ("python", "js", "java")
SEEN_WITHIN = 120.0  # after the change; a client slower than this counts as missing
P99_FROM = 100  # samples: with fewer, a p99 is only the max again


@dataclass(frozen=True)
class Sizes:
    clients: int = 20
    rounds: int = 3
    python_processes: int = 4  # the Python clients, like the propagation bench's, spread over processes


QUICK = Sizes(clients=10, rounds=1, python_processes=2)


def server_env(port: int) -> dict[str, str]:
    return {"FLAG_SCHEDULER_SYNC_PORT": str(port), "FLAG_SCHEDULER_OFREP_PORT": "0",
            "FLAG_SCHEDULER_SERVE_ADDRESS": "127.0.0.1"}


def started_at(log: Path, offset: int) -> float:
    """The epoch time of the last ``flag_server.started`` line written after ``offset`` (the ports are open)."""
    with open(log, "rb") as text:
        text.seek(offset)
        lines = [json.loads(line) for line in text if b'"flag_server.started"' in line]
    return datetime.fromisoformat(lines[-1]["timestamp"].replace("Z", "+00:00")).timestamp()


async def start_server(server: FlagServerProcess, ns: str, port: int) -> float:
    """Start the flag server on ``port``; return when it began to serve (from its own log)."""
    offset = server.log_path.stat().st_size if server.log_path.exists() else 0
    await asyncio.to_thread(server.start, [ns], 120.0, server_env(port))
    return started_at(server.log_path, offset)


async def connect(runtime: str, port: int, ns: str, flags: list[str], sizes: Sizes, log_dir: Path) -> Any:
    """``sizes.clients`` providers of the runtime, each with the flags of every round; once all have them."""
    if runtime == "python":
        clients: Any = ProcessSyncClients(sizes.clients, port, ns, flags, sizes.python_processes)
        await asyncio.to_thread(clients.wait_connected, 180)
        return clients
    job = {"host": "127.0.0.1", "syncPort": port, "namespace": ns, "flags": flags, "count": sizes.clients}
    clients = client_process(runtime, job, log_dir / f"handover-{runtime}.log")
    if not await asyncio.to_thread(clients.ready.wait, 180):
        clients.close()
        raise RuntimeError(f"{runtime}: the clients did not all connect within 180 s")
    return clients


async def replace_server(cluster: Cluster, server: FlagServerProcess, ns: str, port: int,
                         flag: str) -> dict[str, float]:
    """One round: SIGTERM, the replacement on the same port, then the change; the moments of each."""
    stopped = time.time()
    await asyncio.to_thread(server.stop)  # SIGTERM, then waits for the process to exit
    exited = time.time()
    ready = await start_server(server, ns, port)
    await with_retries(cluster.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, FLAGS, flag,
                       {"spec": {"enabled": True}}, field_manager="bench-handover", _content_type=MERGE)
    return {"stopped": stopped, "exited": exited, "ready": ready, "changed": time.time()}


async def runtime_phase(cluster: Cluster, runtime: str, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    ns = f"handover-{runtime}"
    flags = [f"h-{r}" for r in range(sizes.rounds)]
    await cluster.create_namespace(ns)
    await cluster.create_many(ns, FLAGS, [{**flag_body(f), "spec": {"enabled": False, "rolloutPercentage": 100}}
                                          for f in flags])
    port = free_port()
    server = FlagServerProcess(cluster, log_dir / f"handover-{runtime}-flag-server.log")
    await start_server(server, ns, port)
    clients = await connect(runtime, port, ns, flags, sizes, log_dir)
    rounds = []
    try:
        for r, flag in enumerate(flags):
            moments = await replace_server(cluster, server, ns, port, flag)
            moments["complete"] = await wait_all_seen(clients, r + 1, moments["changed"] + SEEN_WITHIN)
            rounds.append(moments)
            say(f"handover: {runtime} round {r + 1}/{sizes.rounds}: server ready "
                f"{moments['ready'] - moments['stopped']:.1f} s after SIGTERM, all clients saw the change: "
                f"{moments['complete']}")
    finally:
        await asyncio.to_thread(clients.close)  # Python's workers report what they saw here
        await asyncio.to_thread(server.stop)
    return figures(rounds, [seen.changes for seen in clients.seen], flags)


def figures(rounds: list[dict[str, Any]], changes: list[dict[str, list[float]]], flags: list[str]) -> dict[str, Any]:
    """Per client and round, seconds until it saw the change: from the change, the new server's ready, the SIGTERM."""
    samples: dict[str, list[float]] = {"from_change_s": [], "from_ready_s": [], "from_stop_s": []}
    missing = 0
    for moments, flag in zip(rounds, flags, strict=False):
        for client in changes:
            if not client[flag]:
                missing += 1
                continue
            seen = client[flag][0]
            for key, start in (("from_change_s", "changed"), ("from_ready_s", "ready"), ("from_stop_s", "stopped")):
                samples[key].append(seen - moments[start])
    out: dict[str, Any] = {"clients": len(changes), "rounds": len(rounds), "samples": len(samples["from_change_s"]),
                           "missing": missing}
    for key, values in samples.items():
        out[key] = {"p50": percentile(values, 50), "p99": percentile(values, 99) if len(values) >= P99_FROM else None,
                    "max": percentile(values, 100)}
    out["server_down_s"] = [round(m["ready"] - m["stopped"], 3) for m in rounds]
    out["samples_from_change_s"] = [round(v, 4) for v in samples["from_change_s"]]
    return out


def versions() -> dict[str, dict[str, str]]:
    """The SDK, provider and gRPC versions each runtime ran (installed packages, resolved jars)."""
    js = {name: json.loads((JS / "node_modules" / name / "package.json").read_text())["version"]
          for name in ("@openfeature/server-sdk", "@openfeature/flagd-provider", "@grpc/grpc-js")}
    js["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    jars = {"dev/openfeature/sdk/": "dev.openfeature:sdk",
            "providers/flagd/": "dev.openfeature.contrib.providers:flagd", "io/grpc/grpc-core/": "io.grpc:grpc-core"}
    java = {name: Path(jar).parent.name for jar in java_classpath().split(os.pathsep)
            for part, name in jars.items() if part in jar}
    release = subprocess.run(["java", "--version"], capture_output=True, text=True, timeout=60).stdout
    java["java"] = release.splitlines()[0] if release else "unknown"
    python = {name: version(name) for name in ("openfeature-sdk", "openfeature-provider-flagd", "grpcio")}
    return {"python": python, "js": js, "java": java}


async def run_phases(cp: ControlPlane, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    load = MachineLoad()
    out: dict[str, Any] = {}
    try:
        for runtime in RUNTIMES:
            say(f"handover: {runtime}, {sizes.clients} providers, {sizes.rounds} server replacement(s)")
            start, loadavg = time.time(), os.getloadavg()
            out[runtime] = await runtime_phase(cluster, runtime, sizes, log_dir)
            out[runtime].update(foreign_cpu_percent=load.mean(start, time.time()),
                                loadavg_start=[round(v, 2) for v in loadavg],
                                loadavg_end=[round(v, 2) for v in os.getloadavg()])
    finally:
        load.stop()
        await cluster.close()
    return out


def headline(out: dict[str, Any]) -> dict[str, Any]:
    """The flat keys: per runtime the max and the median from the change until a client saw it."""
    keys: dict[str, Any] = {}
    for runtime, result in out.items():
        keys[f"handover_s_{runtime}"] = result["from_change_s"]["max"]
        keys[f"handover_p50_s_{runtime}"] = result["from_change_s"]["p50"]
    return keys


def table(out: dict[str, Any]) -> str:
    lines = [f"{'hand-over, seconds until a client saw the change':<50} {'p50 / max':>16} "
             f"{'from ready p50 / max':>22} {'from SIGTERM p50 / max':>24}  server down  missing"]
    for runtime, r in out.items():
        cells = [f"{r[k]['p50']} / {r[k]['max']}" for k in ("from_change_s", "from_ready_s", "from_stop_s")]
        label = f"{runtime}: {r['clients']} clients x {r['rounds']} round(s)"
        lines.append(f"{label:<50} {cells[0]:>16} {cells[1]:>22} {cells[2]:>24}  "
                     f"{', '.join(f'{v:.1f}' for v in r['server_down_s']):>11}  {r['missing']:>7}")
    return "\n".join(lines)


def run(quick: bool) -> dict[str, Any]:
    """Every runtime; merges the keys into ``results/latest.json``, returns them."""
    sizes = QUICK if quick else Sizes()
    install_all()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("handover-*.log"):
        old.unlink()
    started, t0, loadavg = datetime.now(UTC), time.monotonic(), os.getloadavg()
    say(f"{'quick' if quick else 'full'} hand-over bench: starting the control plane (etcd fsync on)")
    with ControlPlane(fsync=True) as cp:
        out = asyncio.run(run_phases(cp, sizes, log_dir))
    detail = {"quick": quick, "sizes": asdict(sizes), "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "runtime_s": round(time.monotonic() - t0, 1), "versions": versions(),
              "machine": {"cpus": os.cpu_count(), "loadavg_at_start": loadavg, "loadavg_at_end": os.getloadavg()},
              "runtimes": out}
    keys = {**headline(out), "handover": detail}
    (RESULTS / "handover.json").write_text(json.dumps(keys, indent=2) + "\n")
    latest = RESULTS / "latest.json"
    merged = {**(json.loads(latest.read_text()) if latest.exists() else {}), **keys}
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    print(table(out))
    print(f"load average at start / end: {loadavg} / {os.getloadavg()}")
    print(f"wrote {RESULTS / 'handover.json'}, merged into {latest}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 clients per runtime, one replacement (else 20, three)")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
