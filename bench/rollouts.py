"""The rollouts phase: ``count`` FlagRollouts of 3 steps at once, each on its own flag; per-step lateness.

The rollouts start at uniform random times over ``spread`` s and hold ``hold`` s between steps (as
long as the spread, so all 1,000 are under way at once), which keeps the step rate (count × 3 /
(spread + 2 × hold)) within what one local API server with etcd fsync writes: each step costs
about six writes (the rollout's status, the schedule's create, claim and status, the flag PATCH, an
Event). A step's lateness is its
schedule's ``appliedAt`` minus its ``scheduledAt``: for the first step that is ``startAt``, for the
others the previous step's ``appliedAt`` plus the hold, so it includes the time the rollout
controller took to see the previous step land and create the next schedule. (``appliedAt`` is the
operator's clock, on the same machine as the API server.) ``python bench/run.py --only rollouts``
runs this phase alone on its own control plane.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from audit import summary
from cluster import FLAGS, GROUP, VERSION, flag_body, parse_time, rfc3339, with_retries

ROLLOUTS = "flagrollouts"
STEPS = 3


def rollout_body(name: str, flag: str, start: datetime, hold: float) -> dict[str, Any]:
    hold_text = f"{round(hold * 1000)}ms"
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagRollout", "metadata": {"name": name},
        "spec": {"flagRef": {"name": flag}, "startAt": rfc3339(start), "steps": [
            {"name": "canary", "updates": {"enabled": True, "rolloutPercentage": 10}, "hold": hold_text},
            {"name": "half", "updates": {"rolloutPercentage": 50}, "hold": hold_text},
            {"name": "full", "updates": {"rolloutPercentage": 100}},
        ]},
    }


async def _list(env: Any, ns: str, plural: str) -> list[dict[str, Any]]:
    result = await with_retries(env.cluster.custom.list_namespaced_custom_object, GROUP, VERSION, ns, plural)
    return result["items"]


async def _wait_completed(env: Any, ns: str, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline and env.operator.alive():
        items = await _list(env, ns, ROLLOUTS)
        done = sum((i.get("status") or {}).get("phase") == "Completed" for i in items)
        if done >= count:
            break
        await asyncio.sleep(2.0)
    return done


async def rollouts(env: Any, count: int, spread: float, lead: float, hold: float) -> dict[str, Any]:
    """``count`` rollouts starting over ``spread`` s from ``lead`` s ahead; per-step lateness of their schedules."""
    ns = "bench-rollouts"
    await env.begin(ns)
    rng = random.Random(25)
    await env.cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(count)])
    start = datetime.now(UTC) + timedelta(seconds=lead)
    bodies = [rollout_body(f"r-{i}", f"flag-{i}", start + timedelta(seconds=rng.uniform(0, spread)), hold)
              for i in range(count)]
    await env.cluster.create_many(ns, ROLLOUTS, bodies)
    completed = await _wait_completed(env, ns, count, timeout=lead + spread + STEPS * hold + 300)
    by_step: dict[str, list[float]] = {"1": [], "later": []}
    schedules = await _list(env, ns, "flagschedules")
    for s in schedules:
        status = s.get("status") or {}
        if status.get("phase") != "Applied":
            continue
        late = (parse_time(status["appliedAt"]) - parse_time(s["spec"]["scheduledAt"])).total_seconds()
        by_step["1" if ".1-" in s["metadata"]["name"] else "later"].append(late)
    result = {
        "count": count, "steps": STEPS, "spread_s": spread, "hold_s": hold, "completed": completed,
        "schedules": len(schedules), "applied": sum(len(v) for v in by_step.values()),
        "step_lateness_s": summary(by_step["1"] + by_step["later"]),
        "first_step_lateness_s": summary(by_step["1"]), "next_step_lateness_s": summary(by_step["later"]),
    }
    result["delete_s"] = await env.end(ns)
    return result
