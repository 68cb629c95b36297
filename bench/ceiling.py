"""The ceiling: what a plain client gets out of the same API server for the same work, with no operator.

Per schedule it sends the two writes an apply needs, one merge PATCH of the flag (spec and the
last-applied annotations) and one merge PATCH of the schedule's status, from ``concurrency``
asyncio workers on one ``kubernetes.aio`` client. Trials at a few concurrencies pick the best.
Every trial writes new values, so no PATCH is a no-op the server could skip.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cluster import FLAGS, GROUP, MERGE, SCHEDULES, VERSION, Cluster, flag_body, rfc3339, schedule_body, with_retries

NAMESPACE = "bench-ceiling"


# appliedAt may be set once (a status rule); later rounds on the same schedules change the message.
APPLIED_AT = rfc3339(datetime.now(UTC))


def _status(now: str) -> dict[str, Any]:
    condition = {"type": "Applied", "status": "True", "reason": "Applied", "message": f"FeatureFlag updated {now}",
                 "lastTransitionTime": APPLIED_AT, "observedGeneration": 1}
    return {"status": {"phase": "Applied", "appliedAt": APPLIED_AT, "observedGeneration": 1, "retryCount": 0,
                       "nextRetryAt": None, "conditions": [condition]}}


async def _apply_all(cluster: Cluster, items: list[tuple[str, str, str]], concurrency: int, value: int) -> list[float]:
    """Apply every (schedule, flag, uid) with ``concurrency`` workers; return each one's finish time (epoch)."""
    queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    finished: list[float] = []
    custom = cluster.custom

    async def worker() -> None:
        while not queue.empty():
            name, flag, uid = queue.get_nowait()
            flag_patch = {
                "metadata": {"annotations": {f"{GROUP}/last-applied-schedule": name,
                                             f"{GROUP}/last-applied-schedule-uid": uid}},
                "spec": {"rolloutPercentage": value},
            }
            await with_retries(custom.patch_namespaced_custom_object, GROUP, VERSION, NAMESPACE, FLAGS, flag,
                               flag_patch, field_manager="bench-ceiling", _content_type=MERGE)
            await with_retries(custom.patch_namespaced_custom_object_status, GROUP, VERSION, NAMESPACE, SCHEDULES,
                               name, _status(rfc3339(datetime.now(UTC))), field_manager="bench-ceiling",
                               _content_type=MERGE)
            finished.append(time.time())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return finished


async def ceiling(cluster: Cluster, trial_count: int, full_count: int | None, flags: int,
                  concurrencies: tuple[int, ...]) -> dict[str, Any]:
    """Trials over ``trial_count`` schedules per concurrency, then the best one over ``full_count`` (if given)."""
    await cluster.create_namespace(NAMESPACE)
    made = await cluster.create_many(NAMESPACE, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    later = datetime.now(UTC) + timedelta(hours=2)
    total = max(trial_count, full_count or 0)
    bodies = [schedule_body(f"s-{i:05d}", f"flag-{i % flags}", later, 1, made[i % flags]["metadata"]["uid"])
              for i in range(total)]
    created = await cluster.create_many(NAMESPACE, SCHEDULES, bodies)
    items = [(s["metadata"]["name"], s["spec"]["flagRef"]["name"], s["metadata"]["uid"]) for s in created]
    trials: dict[int, float] = {}
    progress: dict[str, list[float]] = {}
    for round_, concurrency in enumerate(concurrencies):
        start = time.time()
        done = await _apply_all(cluster, items[:trial_count], concurrency, value=(round_ + 2) % 101)
        trials[concurrency] = round(trial_count / (max(done) - start), 1)
        progress[f"{trial_count}@{concurrency}"] = sorted(t - start for t in done)
    best = max(trials, key=trials.__getitem__)
    result: dict[str, Any] = {"trial_count": trial_count, "per_s_by_concurrency": trials, "best_concurrency": best,
                              f"per_s_{trial_count}": trials[best]}
    if full_count:
        start = time.time()
        done = await _apply_all(cluster, items[:full_count], best, value=(len(concurrencies) + 2) % 101)
        result[f"per_s_{full_count}"] = round(full_count / (max(done) - start), 1)
        result[f"seconds_{full_count}"] = round(max(done) - start, 3)
        progress[f"{full_count}@{best}"] = sorted(t - start for t in done)
    result[f"seconds_{trial_count}"] = round(trial_count / trials[best], 3)
    result["delete_s"] = round(await cluster.delete_namespace(NAMESPACE), 1)
    return {"result": result, "progress": progress}
