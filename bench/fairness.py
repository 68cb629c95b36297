"""Fairness between namespaces: the lateness of another namespace's schedules while one namespace bursts.

Namespace A creates ``count`` schedules over ``flags`` flags, all due at the instant they are
created (not owned yet: each costs its first-sight writes as well as its change). Namespace B has
``probes`` schedules, each on its own flag, due every ``spacing`` seconds from that instant, created
(and seen) before the burst. One operator watches both. Once B's schedules are done the phase ends,
whether or not A's burst has drained. A probe counts when A still had schedules to apply after it
(pending then, or applied later); ``fairness_other_ns_lateness_s`` is the largest lateness
(``appliedAt`` − ``scheduledAt``, both on this machine's clock) of those. Without fairness a probe
waits for every A schedule queued before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from audit import Due, writes_per_schedule
from cluster import FLAGS, SCHEDULES, flag_body, parse_time, schedule_body
from workloads import Env, Sampler

A, B = "bench-fair-burst", "bench-fair-other"
# A's schedules of one flag arrive in any order while they are due: a later one may land first and
# supersede an earlier one. Either way the schedule is done.
DONE = ('"schedule.applied"', '"schedule.superseded"', '"schedule.failed"', '"schedule.missed"')
LEASE_TROUBLE = ('"leader.renew_failed"', '"leader.lost"')


def _done_in_log(env: Env, offset: int) -> dict[str, int]:
    """Schedules finished (applied, superseded, failed, missed) per namespace, from the operator's log since ``offset``."""
    counts: dict[str, int] = {}
    for line in env.operator.log_path.read_text(errors="replace")[offset:].splitlines():
        if not any(event in line for event in DONE):
            continue
        try:
            namespace = json.loads(line).get("namespace", "")
        except ValueError:
            continue
        counts[namespace] = counts.get(namespace, 0) + 1
    return counts


TERMINAL = {"Applied", "Superseded", "Failed", "Missed", "Cancelled"}


async def _all_done(env: Env, namespace: str, want: int) -> bool:
    items = await env.cluster.list_schedules(namespace)
    return len(items) >= want and all((i.get("status") or {}).get("phase") in TERMINAL for i in items)


async def _wait_done(env: Env, offset: int, want: dict[str, int], timeout: float) -> bool:
    """Wait until every schedule of each namespace is finished: progress from the log, the end from a LIST.

    The log is cheap to follow but may miss a schedule (a status write answered by a conflict that
    shows it already finished logs nothing), so a LIST decides, once the log says all are done or
    has been quiet for 5 s.
    """
    deadline, last, quiet_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline and env.operator.alive():
        counts = _done_in_log(env, offset)
        if counts != last:
            last, quiet_since = counts, time.monotonic()
        if all(counts.get(ns, 0) >= n for ns, n in want.items()) or time.monotonic() - quiet_since > 5:
            if all([await _all_done(env, ns, n) for ns, n in want.items()]):
                return True
            quiet_since = time.monotonic()
        await asyncio.sleep(0.5)
    return False


def _applied_at(items: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """name -> (scheduledAt, appliedAt) as epoch seconds, for the Applied ones."""
    return {i["metadata"]["name"]: (parse_time(i["spec"]["scheduledAt"]).timestamp(),
                                    parse_time(i["status"]["appliedAt"]).timestamp())
            for i in items if (i.get("status") or {}).get("phase") == "Applied"}


async def fairness(env: Env, count: int, flags: int, probes: int, spacing: float) -> dict[str, Any]:
    """A's burst of ``count`` due now; B's ``probes`` due every ``spacing`` s meanwhile; B's lateness."""
    cluster = env.cluster
    for ns in (A, B):
        await cluster.create_namespace(ns)
    offset = env.operator.log_path.stat().st_size if env.operator.log_path.exists() else 0
    proc = await asyncio.to_thread(env.operator.start, [A, B])
    await cluster.create_many(A, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    await cluster.create_many(B, FLAGS, [flag_body(f"probe-{i}") for i in range(probes)])
    burst_at = datetime.now(UTC) + timedelta(seconds=5)
    made = await cluster.create_many(B, SCHEDULES, [schedule_body(f"probe-{i:03d}", f"probe-{i}",
                                                                  burst_at + timedelta(seconds=spacing * (i + 1)), 50)
                                                    for i in range(probes)])
    dues = [Due(s["metadata"]["name"], s["spec"]["flagRef"]["name"], parse_time(s["spec"]["scheduledAt"]).timestamp())
            for s in made]
    await asyncio.sleep(max(0.0, (burst_at - datetime.now(UTC)).total_seconds()))
    sampler = Sampler(proc)
    spy = env.start_profile(proc.pid, "fairness")
    started = time.time()
    bodies = [schedule_body(f"s-{i:05d}", f"flag-{i % flags}", burst_at, i % 101) for i in range(count)]
    await cluster.create_many(A, SCHEDULES, bodies)
    created_s = time.time() - started
    # The burst need not drain (20,000 take many minutes on a small machine): B's schedules are done.
    finished = await _wait_done(env, offset, {B: probes}, timeout=900)
    stats = sampler.stop()
    if spy is not None:
        stats["profile"] = await asyncio.to_thread(spy.stop)
    log = env.operator.log_path.read_text(errors="replace")[offset:]
    burst_items = await cluster.list_schedules(A)
    burst = _applied_at(burst_items)
    other = _applied_at(await cluster.list_schedules(B))
    # A probe counts if some of A's schedules were still to be applied when it was applied, and then
    # it overtook them all: the ones still pending now and the ones applied after it.
    pending = count - len(burst)
    overtaken = {name: pending + sum(1 for _, a in burst.values() if a > applied)
                 for name, (_, applied) in other.items()}
    during = {name: applied - due for name, (due, applied) in other.items() if overtaken[name] > 0}
    lateness = sorted(during.values())
    result = {
        "count": count, "flags": flags, "probes": probes, "spacing_s": spacing, "finished": finished,
        "burst_created_s": round(created_s, 1), "burst_applied_when_probes_done": len(burst),
        "burst_superseded": sum(1 for i in burst_items if (i.get("status") or {}).get("phase") == "Superseded"),
        "probes_applied": len(other), "probes_during_burst": len(during),
        "other_ns_lateness_s": round(lateness[-1], 3) if lateness else None,
        "other_ns_lateness_p50_s": round(statistics.median(lateness), 3) if lateness else None,
        "other_ns_lateness_all_s": [round(v, 3) for v in lateness],
        # How many of A's schedules each probe overtook (the fewest): the probes did not wait for the burst.
        "burst_overtaken_by_probe_min": min((overtaken[n] for n in during), default=None),
        # B's schedules were created ahead: at their due time each should cost 3 writes, 5 over its life.
        "other_ns_writes": writes_per_schedule(env.audit.by_operator(B), dues),
        # A leader whose renewal is late applies nothing (fencing): on a starved machine that, not the
        # burst, can be what a probe waited for.
        "lease_trouble": {e.strip('"'): log.count(e) for e in LEASE_TROUBLE},
        "loadavg_at_end": os.getloadavg(),
        **stats,
    }
    env.operator.stop()
    for ns in (A, B):
        await cluster.delete_namespace(ns)
    return {"result": result}
