"""``make bench`` for recurring windows: 1,000 FlagCronSchedules whose edges fall at the same minute.

Issue 26's figure ``cron_edge_lateness_p99_s``: 1,000 flags, each with a FlagCronSchedule
``0 8 * * *`` (UTC) that turns it on. Cron is minute-granular, so the operator runs with
``FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS``: a first run, an hour before 08:00 of a future day,
converges every window (yesterday's edge, applied at once) and creates the next edge's
FlagSchedule; a second run starts 20 s before 08:00, and all 1,000 edges fall due at one instant. The lateness of an edge is when
the API server finished its flag PATCH (audit log) minus the edge's instant, on the host's clock.
etcd runs without fsync (the figure is the operator's). Merges the keys into ``results/latest.json``.

The floor: after the operator has stopped, a plain client (the bench's admin, no operator) sends
the same 1,000 flag PATCHes, all "due" at one instant, at the best of a few concurrencies; the
p99 of its finish times is what the API server allows any design that writes each flag
(``cron_edge_floor_p99_s``). Compare the operator's p99 with that, not only with 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyspy  # noqa: E402
from audit import AuditLog, summary  # noqa: E402
from cluster import (  # noqa: E402
    FLAGS, GROUP, MERGE, VERSION, Cluster, ControlPlane, OperatorProcess, flag_body, with_retries,
)

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench-cron"
EDGE = datetime(2031, 3, 3, 8, 0, tzinfo=UTC)  # a Monday; every window's next edge
FLOOR_CONCURRENCIES = (16, 64, 128)
QUIET = {"FLAG_SCHEDULER_SYNC_PORT": "0", "FLAG_SCHEDULER_OFREP_PORT": "0"}  # no flag serving: not measured here


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


def window(i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagCronSchedule", "metadata": {"name": f"w-{i}"},
            "spec": {"flagRef": {"name": f"flag-{i}"}, "timeZone": "UTC",
                     "start": {"schedule": "0 8 * * *", "updates": {"enabled": True, "rolloutPercentage": i % 101}}}}


async def _edges_ready(cluster: Cluster, count: int, timeout: float) -> float:
    """Wait until all ``count`` next-edge schedules exist; return when (epoch), or raise."""
    suffix = f"-start-{EDGE:%Y%m%d%H%M}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = await cluster.list_schedules(NAMESPACE)
        if sum(1 for s in items if s["metadata"]["name"].endswith(suffix)) >= count:
            return time.time()
        await asyncio.sleep(1.0)
    raise RuntimeError(f"the next edges were not all created within {timeout} s")


async def _lateness(audit: AuditLog, due: float, count: int, timeout: float) -> list[float]:
    """Per flag, its first successful operator PATCH at or after the edge, minus the edge (seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        first: dict[str, float] = {}
        for w in audit.by_operator(NAMESPACE):
            if w.resource == FLAGS and w.verb == "patch" and w.code == 200 and w.received >= due - 0.001:
                first[w.name] = min(first.get(w.name, w.done), w.done)
        if len(first) >= count or time.monotonic() > deadline:
            return sorted(t - due for t in first.values())
        await asyncio.sleep(0.5)


def _writes(audit: AuditLog, start: float, end: float) -> dict[str, int]:
    """The operator's writes received in [start, end), by "verb resource" (core Events included)."""
    counts: dict[str, int] = {}
    for w in audit.by_operator(NAMESPACE):
        if start <= w.received < end:
            key = f"{w.verb} {w.resource}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


async def _floor(cluster: Cluster, count: int) -> dict[str, Any]:
    """A plain client's 1,000 flag PATCHes due at one instant: p99 of finish minus start, best concurrency."""
    trials: dict[int, dict[str, Any]] = {}
    for round_, concurrency in enumerate(FLOOR_CONCURRENCIES):
        queue = list(range(count))
        finished: list[float] = []

        async def worker(value: int) -> None:
            while queue:
                i = queue.pop()
                patch = {"spec": {"rolloutPercentage": value}}
                await with_retries(cluster.custom.patch_namespaced_custom_object, GROUP, VERSION, NAMESPACE, FLAGS,
                                   f"flag-{i}", patch, field_manager="bench-floor", _content_type=MERGE)
                finished.append(time.time())

        start = time.time()
        await asyncio.gather(*(worker((round_ * 37 + 1) % 101) for _ in range(concurrency)))
        stats = summary(sorted(t - start for t in finished))
        trials[concurrency] = {"lateness_s": stats, "per_s": round(count / (max(finished) - start), 1)}
    best = min(trials, key=lambda c: trials[c]["lateness_s"]["p99"])
    return {"best_concurrency": best, **trials[best], "by_concurrency": {c: t["per_s"] for c, t in trials.items()}}


async def measure(count: int, lead: float, profile: bool = False) -> dict[str, Any]:
    with ControlPlane(fsync=False) as cp:
        cluster = Cluster(cp)
        await asyncio.to_thread(cluster.install)
        await cluster.connect()
        operator = OperatorProcess(cluster, RESULTS / "logs" / "operator-cron.log")
        try:
            await cluster.create_namespace(NAMESPACE)
            await cluster.create_many(NAMESPACE, FLAGS, [flag_body(f"flag-{i}") for i in range(count)])
            await cluster.create_many(NAMESPACE, "flagcronschedules", [window(i) for i in range(count)])
            # First run, an hour before the edge: converge every window (yesterday's edge) and create
            # its next edge. Then a restart a few seconds before the edge, as after a rolling update.
            started = time.time()
            await asyncio.to_thread(operator.start, [NAMESPACE], 60.0,
                                    {**QUIET, "FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS": str(EDGE.timestamp() - 3600 - started)})
            ready = await _edges_ready(cluster, count, timeout=900)
            say(f"{count} windows converged and their next edges created in {ready - started:.1f} s")
            due = time.time() + lead  # the host's time at which the operator's clock reads EDGE
            proc = await asyncio.to_thread(operator.start, [NAMESPACE], 60.0,
                                           {**QUIET, "FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS": str(EDGE.timestamp() - due)})
            recording = pyspy.Profile(proc.pid, RESULTS / "profile-cron.txt") if profile else None
            say(f"restarted; {count} edges due in {due - time.time():.1f} s")
            load_at_edge = os.getloadavg()
            audit = AuditLog(cp.audit_log)
            late = await _lateness(audit, due, count, timeout=lead + 120)
            # What the operator wrote while the edges were applied, and in the lead before them:
            # each write in the burst competes with the flag PATCHes that are the edges.
            burst_end = due + (max(late) if late else 0.0)
            in_burst, in_lead = _writes(audit, due, burst_end), _writes(audit, due - lead, due)
            profiled = recording.stop() if recording is not None else None
            operator.stop()
            say(f"operator stopped; the floor: a plain client's {count} flag PATCHes at once")
            floor = await _floor(cluster, count)
        finally:
            operator.stop()
            await cluster.close()
    stats = summary(late)
    return {"cron_edge_lateness_p99_s": stats["p99"], "cron_edge_floor_p99_s": floor["lateness_s"]["p99"],
            "cron": {"windows": count, "applied": len(late), "lateness_s": stats, "floor": floor,
                     "loadavg_at_edge": load_at_edge, "writes_in_burst": in_burst,
                     "writes_in_burst_per_edge": round(sum(in_burst.values()) / max(1, len(late)), 2),
                     "writes_in_lead": in_lead, "profile": profiled, "loadavg_at_end": os.getloadavg(),
                     "converge_s": round(ready - started, 1), "lead_s": lead, "etcd_fsync": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same 1,000 windows (the phase is short)")
    parser.add_argument("--profile", action="store_true", help="record the second operator run with py-spy")
    args = parser.parse_args()
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    figures = asyncio.run(measure(1000, lead=20.0, profile=args.profile))
    latest = RESULTS / "latest.json"
    merged = {**(json.loads(latest.read_text()) if latest.exists() else {}), **figures}
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    p99 = figures["cron_edge_lateness_p99_s"]
    met = p99 is not None and p99 <= 0.25 and figures["cron"]["applied"] == 1000
    print(f"{'cron_edge_lateness_p99_s':32} {p99!s:>10} {'<= 0.25 s':>10} {'met' if met else 'MISSED'}")
    print(f"{'cron_edge_floor_p99_s':32} {figures['cron_edge_floor_p99_s']!s:>10} (a plain client, same PATCHes)")
    print(f"{json.dumps(figures['cron'])}\nmerged into {latest}")


if __name__ == "__main__":
    main()
