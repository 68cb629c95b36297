"""Propagation: from a schedule's ``scheduledAt`` to the moment N SDK clients see the new value.

``python bench/propagation.py [--quick]`` (or ``bench/run.py --only propagation``). One local
control plane (etcd fsync on), the scheduler and the flag server as two processes (as deployed), and four phases, each in its own
namespace: flagd sync with 1 and with 100 connected clients, OFREP with 1 and with 100 polling
clients. Each phase runs ``schedules`` schedules, ``spacing`` seconds apart, over ``flags`` flags
(schedule i flips flag i mod flags; each flag changes every flags × spacing seconds, well apart
from the poll interval). A schedule's figure is the time until *all* N clients saw its value. After
the sync phase with 100 clients, the flag server's CPU is measured with those 100 streams idle and
again with none. Prints a table, writes ``bench/results/propagation.json`` and ``propagation.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import (  # noqa: E402
    GROUP, VERSION, Cluster, ControlPlane, FlagServerProcess, OperatorProcess, flag_body, parse_time, rfc3339,
)
from controlplane import free_port  # noqa: E402
from propagation_clients import OfrepClients, ProcessSyncClients, SyncClients  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = (("sync", 1), ("sync", 100), ("ofrep", 1), ("ofrep", 100))


@dataclass(frozen=True)
class Sizes:
    schedules: int = 200
    flags: int = 20
    spacing: float = 0.1
    lead: float = 8.0  # first sight of every schedule (owner reference, claim) is over before the first is due
    ofrep_interval: float = 0.5
    client_processes: int = 4  # sync clients beyond one run in this many processes
    idle_window: float = 30.0


QUICK = Sizes(idle_window=10.0)


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, rounded to the millisecond."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))], 3)


async def create_schedules(cluster: Cluster, ns: str, sizes: Sizes, owners: dict[str, str]) -> list[dict[str, Any]]:
    """Schedule i flips flag i mod flags (true on even rounds, false on odd), ``spacing`` apart."""
    start = datetime.now(UTC) + timedelta(seconds=sizes.lead)
    bodies = []
    for i in range(sizes.schedules):
        flag, rnd = f"f-{i % sizes.flags:02d}", i // sizes.flags
        bodies.append({
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule",
            "metadata": {"name": f"s-{i:03d}", "ownerReferences": [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag, "uid": owners[flag]}]},
            "spec": {"flagRef": {"name": flag}, "scheduledAt": rfc3339(start + timedelta(seconds=i * sizes.spacing)),
                     "updates": {"enabled": rnd % 2 == 0}},
        })
    return await cluster.create_many(ns, "flagschedules", bodies)


async def wait_all_seen(clients: Any, expected: int, deadline: float) -> bool:
    while time.time() < deadline:
        if clients.all_saw(expected) if isinstance(clients, ProcessSyncClients) else \
                all(seen.count() >= expected for seen in clients.seen):
            return True
        await asyncio.sleep(0.25)
    return False


def figures(schedules: list[dict[str, Any]], clients: Any, sizes: Sizes) -> dict[str, Any]:
    """Per schedule: time until every client saw it, and the operator's own lateness."""
    all_seen, first_seen, lateness, missing = [], [], [], 0
    for i, s in enumerate(schedules):
        due = parse_time(s["spec"]["scheduledAt"]).timestamp()
        flag, rnd = s["spec"]["flagRef"]["name"], i // sizes.flags
        times = [seen.changes[flag][rnd] for seen in clients.seen if len(seen.changes[flag]) > rnd]
        missing += len(clients.seen) - len(times)
        if len(times) == len(clients.seen):
            all_seen.append(max(times) - due)
            first_seen.append(min(times) - due)
        applied = (s.get("status") or {}).get("appliedAt")
        if applied:
            lateness.append(parse_time(applied).timestamp() - due)
    out = {"clients": len(clients.seen), "schedules": len(schedules), "missing_sightings": missing}
    for name, values in (("all_clients", all_seen), ("first_client", first_seen), ("operator_lateness", lateness)):
        out[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": percentile(values, 100)}
    out["all_clients_samples"] = [round(v, 4) for v in all_seen]
    return out


async def phase(cluster: Cluster, ports: dict[str, int], protocol: str, n: int, sizes: Sizes,
                op: Any) -> dict[str, Any]:
    ns = f"prop-{protocol}-{n}"
    names = [f"f-{i:02d}" for i in range(sizes.flags)]
    created = await cluster.create_many(ns, "featureflags", [
        {**flag_body(name), "spec": {"enabled": False, "rolloutPercentage": 100}} for name in names])
    owners = {f["metadata"]["name"]: f["metadata"]["uid"] for f in created}
    await asyncio.sleep(1.0)  # the operator's watch has the flags before clients connect
    if protocol == "sync" and n > 1:
        clients: Any = ProcessSyncClients(n, ports["sync"], ns, names, sizes.client_processes)
        await asyncio.to_thread(clients.wait_connected)
    elif protocol == "sync":
        clients = await asyncio.to_thread(SyncClients, n, ports["sync"], ns, names)
    else:
        clients = OfrepClients(n, f"http://127.0.0.1:{ports['ofrep']}/{ns}", names, sizes.ofrep_interval)
    try:
        schedules = await create_schedules(cluster, ns, sizes, owners)
        last_due = parse_time(schedules[-1]["spec"]["scheduledAt"]).timestamp()
        complete = await wait_all_seen(clients, sizes.schedules, last_due + 30)
        idle = await idle_cpu(op, sizes.idle_window) if protocol == "sync" and n == 100 else None
        if isinstance(clients, ProcessSyncClients):
            await asyncio.to_thread(clients.close)  # collects what the workers' clients saw
        result = figures(await cluster.list_schedules(ns), clients, sizes)
        result["complete"] = complete
        if protocol == "ofrep":
            result.update(poll_interval_s=sizes.ofrep_interval, requests=clients.requests,
                          not_modified=clients.not_modified)
        if idle is not None:
            result["idle_cpu_percent_100_streams"] = idle
    finally:
        await asyncio.to_thread(clients.close)
    if protocol == "sync" and n == 100:
        await asyncio.sleep(2.0)
        result["idle_cpu_percent_no_streams"] = await idle_cpu(op, sizes.idle_window)
    return result


async def idle_cpu(proc: Any, window: float) -> float:
    """The flag server's CPU (% of one core) over ``window`` seconds of nothing happening."""
    await asyncio.sleep(2.0)
    before, start = proc.cpu_times(), time.monotonic()
    await asyncio.sleep(window)
    after = proc.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    return round(100 * used / (time.monotonic() - start), 2)


async def run_phases(cp: ControlPlane, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    ports = {"sync": free_port(), "ofrep": free_port()}
    # cluster.OperatorProcess passes our environment on: the serving ports and address go that way.
    os.environ.update(FLAG_SCHEDULER_SYNC_PORT=str(ports["sync"]), FLAG_SCHEDULER_OFREP_PORT=str(ports["ofrep"]),
                      FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1")
    operator = OperatorProcess(cluster, log_dir / "propagation-operator.log")
    flag_server = FlagServerProcess(cluster, log_dir / "propagation-flag-server.log")
    out: dict[str, Any] = {}
    try:
        for protocol, n in PHASES:
            await cluster.create_namespace(f"prop-{protocol}-{n}")
        namespaces = [f"prop-{p}-{n}" for p, n in PHASES]
        await asyncio.to_thread(operator.start, namespaces)
        proc = await asyncio.to_thread(flag_server.start, namespaces)  # its CPU is what the idle figures measure
        for protocol, n in PHASES:
            say(f"propagation: {protocol}, {n} client(s), {sizes.schedules} schedules {sizes.spacing} s apart")
            out[f"{protocol}_{n}"] = await phase(cluster, ports, protocol, n, sizes, proc)
    finally:
        flag_server.stop()
        operator.stop()
        await cluster.close()
    return out


def headline(out: dict[str, Any], sizes: Sizes, quick: bool) -> dict[str, Any]:
    s1, s100, o1, o100 = (out[f"{p}_{n}"] for p, n in PHASES)
    return {
        "quick": quick, "sync_clients": s100["clients"], "ofrep_clients": o100["clients"],
        "propagation_sync_p50_s": s100["all_clients"]["p50"], "propagation_sync_p99_s": s100["all_clients"]["p99"],
        "propagation_sync_1_p50_s": s1["all_clients"]["p50"], "propagation_sync_1_p99_s": s1["all_clients"]["p99"],
        "propagation_ofrep_p50_s": o100["all_clients"]["p50"], "propagation_ofrep_p99_s": o100["all_clients"]["p99"],
        "propagation_ofrep_1_p50_s": o1["all_clients"]["p50"], "propagation_ofrep_1_p99_s": o1["all_clients"]["p99"],
        "ofrep_poll_interval_s": sizes.ofrep_interval,
        "operator_lateness_p99_s": s100["operator_lateness"]["p99"],
        "sync_idle_cpu_percent_100_streams": s100["idle_cpu_percent_100_streams"],
        "sync_idle_cpu_percent_no_streams": s100["idle_cpu_percent_no_streams"],
        "missing_sightings": sum(out[k]["missing_sightings"] for k in out),
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        ("flagd sync, 100 clients: p50 / p99", "propagation_sync_p50_s", "propagation_sync_p99_s", "p99 <= 0.3 s"),
        ("flagd sync, 1 client: p50 / p99", "propagation_sync_1_p50_s", "propagation_sync_1_p99_s", ""),
        ("OFREP, 100 clients: p50 / p99", "propagation_ofrep_p50_s", "propagation_ofrep_p99_s", ""),
        ("OFREP, 1 client: p50 / p99", "propagation_ofrep_1_p50_s", "propagation_ofrep_1_p99_s", ""),
    ]
    lines = [f"{'propagation (scheduledAt -> all clients see it)':<52} {'value':<18} target"]
    for label, p50, p99, target in rows:
        lines.append(f"{label:<52} {f'{results[p50]} / {results[p99]} s':<18} {target}")
    lines.append(f"{'OFREP poll interval':<52} {results['ofrep_poll_interval_s']} s")
    lines.append(f"{'operator lateness p99 (same schedules, sync 100)':<52} {results['operator_lateness_p99_s']} s")
    lines.append(f"{'flag-server CPU, 100 idle sync streams / none':<52} "
                 f"{results['sync_idle_cpu_percent_100_streams']} / {results['sync_idle_cpu_percent_no_streams']} %")
    lines.append(f"{'sightings missing (a client never saw a change)':<52} {results['missing_sightings']}")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, result in out.items():
        values = sorted(result["all_clients_samples"])
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=key.replace("_", ", ") + " client(s)")
    ax.set(xlabel="seconds from scheduledAt until every client saw the value", ylabel="share of schedules",
           title="Propagation to OpenFeature SDK clients")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(quick: bool) -> dict[str, Any]:
    """The whole propagation bench; returns the headline figures (also written to results/)."""
    sizes = QUICK if quick else Sizes()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "propagation-operator.log").unlink(missing_ok=True)
    started, t0 = datetime.now(UTC), time.monotonic()
    say(f"{'quick' if quick else 'full'} propagation bench: starting the control plane (etcd fsync on)")
    with ControlPlane(fsync=True) as cp:
        out = asyncio.run(run_phases(cp, sizes, log_dir))
    results = headline(out, sizes, quick)
    results.update(started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"), runtime_s=round(time.monotonic() - t0, 1),
                   machine={"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}, sizes=asdict(sizes), phases=out)
    (RESULTS / "propagation.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(out, RESULTS / "propagation.png")
    print(table(results))
    print(f"wrote {RESULTS / 'propagation.json'} and {RESULTS / 'propagation.png'}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter idle-CPU window")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
