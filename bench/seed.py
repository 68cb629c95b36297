"""The seed's algorithm on the same server, measured per batch; its lateness and burst time computed.

The seed ran a cron job every ``PERIOD`` seconds that took up to ``BATCH`` due rows (oldest first)
and applied them one after another. Here one batch is: LIST the schedules, keep the due Pending
ones, sort by scheduledAt, take 100, and for each send the same two writes as the ceiling (flag
PATCH, status PATCH), sequentially. A few batches run back to back (without waiting the period) to
measure the cost of one; lateness and burst time then follow from the period, the cap and that cost.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from audit import percentile
from ceiling import _status
from cluster import FLAGS, GROUP, MERGE, SCHEDULES, VERSION, Cluster, flag_body, parse_time, rfc3339, schedule_body

NAMESPACE = "bench-seed"
PERIOD = 60.0
BATCH = 100


async def _run_batch(cluster: Cluster) -> tuple[float, float, int]:
    """One cron run; return (seconds for the LIST, seconds for the whole batch, schedules applied)."""
    custom = cluster.custom
    start = time.monotonic()
    items = (await custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES))["items"]
    listed = time.monotonic()
    now = datetime.now(UTC)
    due = [s for s in items if (s.get("status") or {}).get("phase", "Pending") == "Pending"
           and parse_time(s["spec"]["scheduledAt"]) <= now]
    due.sort(key=lambda s: (s["spec"]["scheduledAt"], s["metadata"]["name"]))
    for s in due[:BATCH]:
        name, flag = s["metadata"]["name"], s["spec"]["flagRef"]["name"]
        patch = {"metadata": {"annotations": {f"{GROUP}/last-applied-schedule": name,
                                              f"{GROUP}/last-applied-schedule-uid": s["metadata"]["uid"]}},
                 "spec": s["spec"]["updates"]}
        await custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, FLAGS, flag, patch,
                                                    field_manager="seed", _content_type=MERGE)
        await custom.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, SCHEDULES, name,
                                                           _status(rfc3339(datetime.now(UTC))),
                                                           field_manager="seed", _content_type=MERGE)
    return listed - start, time.monotonic() - start, len(due[:BATCH])


async def measure(cluster: Cluster, batches: int, flags: int) -> dict[str, Any]:
    """Run ``batches`` full batches back to back over schedules that are all due; return their costs."""
    await cluster.create_namespace(NAMESPACE)
    await cluster.create_many(NAMESPACE, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    past = datetime.now(UTC) - timedelta(seconds=1)
    count = batches * BATCH + BATCH // 2  # a backlog, so every measured batch is full
    await cluster.create_many(NAMESPACE, SCHEDULES, [schedule_body(f"s-{i:05d}", f"flag-{i % flags}",
                                                                   past + timedelta(milliseconds=i), i % 101)
                                                     for i in range(count)])
    runs = [await _run_batch(cluster) for _ in range(batches)]
    costs = sorted(r[1] for r in runs)
    return {
        "batches": batches, "schedules_listed": count, "applied_per_batch": [r[2] for r in runs],
        "batch_cost_s": [round(r[1], 3) for r in runs], "list_cost_s": [round(r[0], 3) for r in runs],
        "batch_cost_median_s": round(costs[len(costs) // 2], 3),
        "list_cost_median_s": round(sorted(r[0] for r in runs)[len(runs) // 2], 3),
        "delete_s": round(await cluster.delete_namespace(NAMESPACE), 1),
    }


def simulate(due: list[float], batch_cost: float, list_cost: float, phase: float) -> list[float]:
    """Apply times of schedules due at ``due`` (seconds) under cron ticks at ``phase + k·PERIOD``.

    Each tick takes the oldest ``BATCH`` due and unapplied schedules; the j-th is done after the
    LIST plus j+1 shares of the batch's patch time. Returns the apply time of each, in due order.
    """
    per_item = max(0.0, batch_cost - list_cost) / BATCH
    pending = sorted(due)
    applied: list[float] = []
    tick = phase
    while len(applied) < len(pending):
        ready = [d for d in pending[len(applied):len(applied) + BATCH] if d <= tick]
        applied += [tick + list_cost + (j + 1) * per_item for j in range(len(ready))]
        tick += PERIOD
    return applied


def computed(due: list[float], batch_cost: float, list_cost: float, burst_size: int = 10_000) -> dict[str, Any]:
    """Lateness for ``due`` pooled over 120 evenly spread cron phases, and the burst times (mean phase)."""
    lateness: list[float] = []
    even = [PERIOD * i / BATCH for i in range(BATCH)]  # the seed's comfort zone: 100 due per period
    for k in range(120):
        applied = simulate(due, batch_cost, list_cost, PERIOD * k / 120)
        lateness += [a - d for a, d in zip(applied, sorted(due), strict=True)]

    def burst_seconds(n: int) -> float:
        return PERIOD / 2 + (math.ceil(n / BATCH) - 1) * PERIOD + batch_cost

    return {
        "label": "computed from the measured batch cost, a 60 s period and the 100-per-run cap",
        "lateness_p50_s": round(percentile(lateness, 50), 1), "lateness_p99_s": round(percentile(lateness, 99), 1),
        "lateness_max_s": round(max(lateness), 1),
        "burst_1k_s": round(burst_seconds(1000), 1), f"burst_{burst_size // 1000}k_s": round(burst_seconds(burst_size), 1),
        "lateness": lateness[:: max(1, len(lateness) // 20000)],
        "lateness_p99_s_at_100_per_min": round(percentile(
            [a - d for k in range(120) for a, d in zip(simulate(even, batch_cost, list_cost, PERIOD * k / 120), even,
                                                       strict=True)], 99), 1),
        "burst_curve_1k": simulate([0.0] * 1000, batch_cost, list_cost, PERIOD / 2),
        "burst_curve_10k": simulate([0.0] * burst_size, batch_cost, list_cost, PERIOD / 2),
    }
