"""Propagation to the JS and Java SDKs: from ``scheduledAt`` until 100 in-process providers saw it.

``python bench/propagation_runtimes.py [--quick]``: quick figures beside ``bench/propagation.py``
(whose phases and figures it reuses). One control plane, the scheduler and the flag server
(serving flagd sync) as two processes, and per runtime one client process
(``tests/clients/<runtime>/watch.mjs`` / ``Watch.java``) holding ``clients`` in-process flagd
providers, each its own OpenFeature domain, with default settings. A schedule's figure is the time
until all of them saw its value; schedules are 0.5 s apart (20 flags, so each flag changes every
10 s). Writes ``bench/results/propagation_runtimes.json`` with ``propagation_js_p99_s`` and
``propagation_java_p99_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from cluster import Cluster, ControlPlane, FlagServerProcess, OperatorProcess, flag_body  # noqa: E402
from clients.install import JAVA, JS, install_all, java_classpath  # noqa: E402
from controlplane import free_port  # noqa: E402
from propagation import RESULTS, Sizes, create_schedules, figures, say, wait_all_seen  # noqa: E402
from propagation_clients import Seen  # noqa: E402

CLIENTS = 100


class RuntimeClients:
    """One client process of a runtime holding ``n`` providers; its change lines feed ``seen``."""

    def __init__(self, argv: list[str], cwd: Path, n: int, flags: list[str], log: Path) -> None:
        self.seen = [Seen(flags) for _ in range(n)]
        self.ready = threading.Event()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=open(log, "wb"),  # noqa: SIM115
                                     stdin=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if "ready" in event:
                self.ready.set()
            else:
                self.seen[event["c"]].saw(event["f"], event["v"], event["t"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def client_process(runtime: str, job: dict[str, Any], log: Path) -> RuntimeClients:
    if runtime == "js":
        argv, cwd = ["node", "watch.mjs", json.dumps(job)], JS
    else:
        argv, cwd = ["java", "-cp", java_classpath(), "Watch.java", json.dumps(job)], JAVA
    return RuntimeClients(argv, cwd, job["count"], job["flags"], log)


async def phase(cluster: Cluster, sync_port: int, runtime: str, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    ns = f"prop-{runtime}-{CLIENTS}"
    names = [f"f-{i:02d}" for i in range(sizes.flags)]
    created = await cluster.create_many(ns, "featureflags", [
        {**flag_body(name), "spec": {"enabled": False, "rolloutPercentage": 100}} for name in names])
    owners = {f["metadata"]["name"]: f["metadata"]["uid"] for f in created}
    await asyncio.sleep(1.0)  # the operator's watch has the flags before clients connect
    job = {"host": "127.0.0.1", "syncPort": sync_port, "namespace": ns, "flags": names, "count": CLIENTS}
    clients = client_process(runtime, job, log_dir / f"propagation-{runtime}.log")
    try:
        if not await asyncio.to_thread(clients.ready.wait, 180):
            raise RuntimeError(f"{runtime}: the clients did not all connect within 180 s")
        schedules = await create_schedules(cluster, ns, sizes, owners)
        last_due = datetime.fromisoformat(schedules[-1]["spec"]["scheduledAt"].replace("Z", "+00:00")).timestamp()
        complete = await wait_all_seen(clients, sizes.schedules, last_due + 30)
        result = figures(await cluster.list_schedules(ns), clients, sizes)
        result["complete"] = complete
    finally:
        clients.close()
    return result


async def run_phases(cp: ControlPlane, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    sync_port = free_port()
    os.environ.update(FLAG_SCHEDULER_SYNC_PORT=str(sync_port), FLAG_SCHEDULER_OFREP_PORT="0",
                      FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1")
    operator = OperatorProcess(cluster, log_dir / "propagation-runtimes-operator.log")
    flag_server = FlagServerProcess(cluster, log_dir / "propagation-runtimes-flag-server.log")
    out: dict[str, Any] = {}
    try:
        namespaces = [f"prop-{r}-{CLIENTS}" for r in ("js", "java")]
        for namespace in namespaces:
            await cluster.create_namespace(namespace)
        await asyncio.to_thread(operator.start, namespaces)
        # The scheduler serves no flags since the flag server became its own workload.
        await asyncio.to_thread(flag_server.start, namespaces)
        for runtime in ("js", "java"):
            say(f"propagation: {runtime}, {CLIENTS} in-process providers, {sizes.schedules} schedules")
            out[runtime] = await phase(cluster, sync_port, runtime, sizes, log_dir)
    finally:
        flag_server.stop()
        operator.stop()
        await cluster.close()
    return out


def run(quick: bool) -> dict[str, Any]:
    """Both runtimes; returns the headline figures (also written to results/)."""
    # Half a second apart (the Python bench: 0.1 s): 100 providers share one process here, and each
    # change costs every provider a parse of the whole flag set; the figure is latency, not that load.
    sizes = replace(Sizes(), spacing=0.5, schedules=40 if quick else 200)
    install_all()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(UTC), time.monotonic()
    with ControlPlane(fsync=True) as cp:
        out = asyncio.run(run_phases(cp, sizes, log_dir))
    results = {
        "propagation_js_p99_s": out["js"]["all_clients"]["p99"], "propagation_js_p50_s": out["js"]["all_clients"]["p50"],
        "propagation_java_p99_s": out["java"]["all_clients"]["p99"],
        "propagation_java_p50_s": out["java"]["all_clients"]["p50"],
        "clients_per_runtime": CLIENTS, "quick": quick, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runtime_s": round(time.monotonic() - t0, 1), "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "phases": out,
    }
    (RESULTS / "propagation_runtimes.json").write_text(json.dumps(results, indent=2) + "\n")
    for runtime in ("js", "java"):
        figure = out[runtime]["all_clients"]
        print(f"{runtime}, {CLIENTS} in-process providers: p50 / p99 / max {figure['p50']} / {figure['p99']} / "
              f"{figure['max']} s (complete: {out[runtime]['complete']}, missing sightings: "
              f"{out[runtime]['missing_sightings']})")
    print(f"wrote {RESULTS / 'propagation_runtimes.json'}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 schedules instead of 200")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
