"""The operator's workloads: schedules spread over time (lateness), all due at once (burst), far ahead (idle).

Each phase has its own namespace and its own operator process watching only that namespace; the
phase deletes its objects at the end so the next one starts on a quiet server.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from audit import AuditLog, Due, apply_breakdown, applied_times, flag_patch_lateness, summary, writes_per_schedule
from cluster import FLAGS, GROUP, REPO, SCHEDULES, Cluster, OperatorProcess, flag_body, parse_time, schedule_body
from pyspy import Profile


@dataclass
class Env:
    """What every phase uses: the cluster, the audit log, the operator process, where logs go."""

    cluster: Cluster
    audit: AuditLog
    operator: OperatorProcess
    log_dir: Path
    first_sight_writes_per_s: float = 100.0  # the operator's first-sight writes per second; measured by lateness()
    profile: bool = False  # record the operator with py-spy during bursts

    def start_profile(self, pid: int, name: str) -> Profile | None:
        return Profile(pid, self.log_dir.parent / f"profile-{name}.txt") if self.profile else None

    async def begin(self, namespace: str) -> psutil.Process:
        """A fresh namespace with the operator (re)started to watch it."""
        await self.cluster.create_namespace(namespace)
        return await asyncio.to_thread(self.operator.start, [namespace])

    async def end(self, namespace: str) -> float:
        """Stop the operator, delete the namespace's objects; return the seconds the deletion took."""
        self.operator.stop()
        return round(await self.cluster.delete_namespace(namespace), 1)


class Sampler:
    """Samples a process's CPU % (of one core) and RSS every ``interval`` seconds, in the background."""

    def __init__(self, proc: psutil.Process, interval: float = 0.5) -> None:
        self.proc, self.interval = proc, interval
        self.samples: list[tuple[float, float, float]] = []  # (epoch, cpu %, rss MB)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last_t, last_cpu = time.time(), sum(self.proc.cpu_times()[:2])
        while True:
            await asyncio.sleep(self.interval)
            try:
                now, cpu, rss = time.time(), sum(self.proc.cpu_times()[:2]), self.proc.memory_info().rss
            except psutil.Error:
                return
            self.samples.append((now, 100 * (cpu - last_cpu) / (now - last_t), rss / 2**20))
            last_t, last_cpu = now, cpu

    def stop(self) -> dict[str, float | None]:
        self._task.cancel()
        cpu = [s[1] for s in self.samples]
        return {"operator_cpu_percent_max": round(max(cpu), 1) if cpu else None,
                "operator_cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                "operator_rss_mb_max": round(max(s[2] for s in self.samples), 1) if self.samples else None}


def _dues(created: list[dict[str, Any]]) -> list[Due]:
    return [Due(s["metadata"]["name"], s["spec"]["flagRef"]["name"], parse_time(s["spec"]["scheduledAt"]).timestamp())
            for s in created]


async def _wait_applied(env: Env, namespace: str, dues: list[Due], timeout: float) -> list[float]:
    """Wait until every schedule is Applied; return the sorted times the audit log says they became so.

    Progress is read from the audit log (no load on the server); only when it shows a status write
    after the due time for every schedule does one LIST confirm the phases.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and env.operator.alive():
        done = applied_times(env.audit.by_operator(namespace), dues)
        if len(done) >= len(dues):
            items = await env.cluster.list_schedules(namespace)
            if all((i.get("status") or {}).get("phase") == "Applied" for i in items):
                return sorted(done.values())
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.25)
    return sorted(applied_times(env.audit.by_operator(namespace), dues).values())


async def _wait_quiet(env: Env, namespace: str, want: int, quiet: float = 2.0, timeout: float = 300.0) -> float:
    """Wait until the operator has made ``want`` writes here and then none for ``quiet`` s; return the last's time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writes = env.audit.by_operator(namespace)
        last = max((w.done for w in writes), default=0.0)
        if len(writes) >= want and time.time() - last > quiet:
            return last
        await asyncio.sleep(0.25)
    return max((w.done for w in env.audit.by_operator(namespace)), default=0.0)


async def lateness(env: Env, count: int, spread: float, flags: int, lead: float) -> dict[str, Any]:
    """``count`` schedules at uniform random times over ``spread`` s, starting ``lead`` s from now."""
    ns = "bench-lateness"
    proc = await env.begin(ns)
    sampler = Sampler(proc)
    rng = random.Random(6)
    start = datetime.now(UTC) + timedelta(seconds=lead)
    await env.cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    bodies = [schedule_body(f"s-{i}", f"flag-{i % flags}", start + timedelta(seconds=rng.uniform(0, spread)), i % 101)
              for i in range(count)]
    t0 = time.time()
    dues = _dues(await env.cluster.create_many(ns, SCHEDULES, bodies))
    env.audit.require_created(ns, SCHEDULES, [d.name for d in dues])
    first_sight_done = await _wait_quiet(env, ns, count, quiet=1.0, timeout=lead)
    env.first_sight_writes_per_s = len(env.audit.by_operator(ns)) / max(0.1, first_sight_done - t0)
    done = await _wait_applied(env, ns, dues, timeout=lead + spread + 120)
    await asyncio.sleep(1.0)  # trailing Events
    writes = env.audit.by_operator(ns)
    late = flag_patch_lateness(writes, dues)
    result = {
        "count": count, "spread_s": spread, "flags": flags, "applied": len(done),
        "first_sight_finished_before_first_due": first_sight_done < min(d.at for d in dues),
        "lateness_done_s": summary(late["done"]), "lateness_received_s": summary(late["received"]),
        "writes": writes_per_schedule(writes, dues),
        **sampler.stop(),
    }
    result["delete_s"] = await env.end(ns)
    first = min(d.at for d in dues)
    return {"result": result, "lateness": late["done"], "due": [d.at - first for d in dues]}


async def burst(env: Env, count: int, flags: int) -> dict[str, Any]:
    """``count`` schedules across ``flags`` flags, all due at one instant; time until all are Applied.

    The schedules are created already owned by their flag, so the operator has nothing to write
    before the due instant (first-sight writes are measured in the lateness and idle phases).
    """
    ns = f"bench-burst-{count}"
    await env.begin(ns)
    t0 = time.monotonic()
    made = await env.cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    rate = flags / (time.monotonic() - t0)
    # First sight of an owned schedule is one write (the claim): done while the rest are still being created.
    due = datetime.now(UTC) + timedelta(seconds=10 + 1.5 * (count / rate + count / env.first_sight_writes_per_s))
    at = due.timestamp()
    uids = [f["metadata"]["uid"] for f in made]
    bodies = [schedule_body(f"s-{i:05d}", f"flag-{i % flags}", due, i % 101, uids[i % flags]) for i in range(count)]
    dues = _dues(await env.cluster.create_many(ns, SCHEDULES, bodies))
    env.audit.require_created(ns, SCHEDULES, [d.name for d in dues])
    first_sight_done = await _wait_quiet(env, ns, count, quiet=1.0, timeout=max(0.0, at - time.time() - 0.5))
    slack = at - time.time()
    proc = psutil.Process(env.operator.proc.pid)
    await asyncio.sleep(max(0.0, slack - 1.0))
    sampler, spy = Sampler(proc), env.start_profile(proc.pid, f"burst-{count // 1000}k")
    done = await _wait_applied(env, ns, dues, timeout=max(0.0, slack) + 900)
    await asyncio.sleep(1.0)
    stats = sampler.stop()
    if spy is not None:
        stats["profile"] = await asyncio.to_thread(spy.stop)
    writes = env.audit.by_operator(ns)
    items = await env.cluster.list_schedules(ns)
    phases = sorted({(i.get("status") or {}).get("phase", "") for i in items})
    elapsed = max(done) - at if len(done) == count else None
    result = {
        "count": count, "flags": flags, "setup_slack_s": round(slack, 1),
        # Each schedule's claim (one write) should be in before the due instant, or the burst pays for it.
        "first_sight_writes_before_due": sum(1 for w in writes if w.received < at),
        "first_sight_finished_before_due": first_sight_done < at and sum(1 for w in writes if w.received < at) >= count,
        "applied": sum(1 for i in items if (i.get("status") or {}).get("phase") == "Applied"), "phases_seen": phases,
        "seconds": round(elapsed, 3) if elapsed is not None else None,
        "per_s": round(count / elapsed, 1) if elapsed else None,
        "first_write_after_due_s": round(min((w.received for w in writes if w.received >= at), default=at) - at, 3),
        "writes": writes_per_schedule(writes, dues),
        "time_split": apply_breakdown(writes, dues, at),
        **stats,
    }
    result["delete_s"] = await env.end(ns)
    return {"result": result, "progress": [t - at for t in done]}


def kopf_server_timeout() -> float:
    """The watch server timeout the operator asks for (``WATCH_SECONDS`` in kube.py), in seconds."""
    source = (REPO / "operator" / "flag_scheduler" / "kube.py").read_text()
    return float(re.search(r"^WATCH_SECONDS = (\d+)", source, re.M).group(1))


async def idle(env: Env, count: int, flags: int, window: float) -> dict[str, Any]:
    """``count`` schedules due in an hour; the operator's CPU, RSS and API requests over ``window`` s."""
    ns = "bench-idle"
    proc = await env.begin(ns)
    due = datetime.now(UTC) + timedelta(hours=1)
    await env.cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    t0 = time.time()
    bodies = [schedule_body(f"s-{i:05d}", f"flag-{i % flags}", due, i % 101) for i in range(count)]
    await env.cluster.create_many(ns, SCHEDULES, bodies)
    env.audit.require_created(ns, SCHEDULES, [b["metadata"]["name"] for b in bodies])
    last_first_sight = await _wait_quiet(env, ns, count, quiet=3.0)
    await env.cluster.wait_namespaces_gone()
    first_sight = env.audit.by_operator(ns)
    before_reads = await env.cluster.request_counts()
    cpu0, w0 = sum(proc.cpu_times()[:2]), time.time()
    sampler = Sampler(proc, interval=1.0)
    await asyncio.sleep(window)
    cpu1, w1 = sum(proc.cpu_times()[:2]), time.time()
    stats = sampler.stop()
    after_reads = await env.cluster.request_counts()
    writes = [w for w in env.audit.by_operator() if w0 <= w.received < w1]
    reads = {k: v - before_reads.get(k, 0.0) for k, v in after_reads.items() if v - before_reads.get(k, 0.0) > 0}
    result = {
        "count": count, "flags": flags, "window_s": round(w1 - w0, 1),
        "first_sight_writes": len(first_sight),
        "first_sight_schedules_per_s": round(count / max(0.001, last_first_sight - t0), 1),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (w1 - w0), 2),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "operator_writes_per_s": round(len(writes) / (w1 - w0), 3),
        # Beyond the Lease, and apart from watch re-opens (reported below): writes, GETs and LISTs.
        "operator_non_lease_requests_per_s": round((sum(1 for w in writes if w.resource != "leases") + sum(
            v for k, v in reads.items() if k.split()[1] == GROUP and k.split()[0] != "WATCH")) / (w1 - w0), 3),
        # A watch is counted when it ends; the operator re-opens each at once, every server_timeout seconds.
        "watch_reopens_in_window": sum(v for k, v in reads.items() if k.split()[:2] == ["WATCH", GROUP]),
        "watch_reopen_every_s": kopf_server_timeout(),
        "watches": 2,  # flags and schedules, in the one watched namespace
        # apiserver_request_total deltas of every client (the bench sends none in the window);
        # only the operator reads flagscheduler.dev then, so those reads are its own.
        "all_requests_in_window": reads,
        # Lease GETs count as the operator's: the API server's own identity Lease is renewed from its cache.
        "operator_reads_per_s": round(sum(v for k, v in reads.items() if k.split()[0] in ("GET", "LIST", "WATCH")
                                          and k.split()[1] in (GROUP, "coordination.k8s.io")) / (w1 - w0), 3),
        **stats,
    }
    result["delete_s"] = await env.end(ns)
    return {"result": result}
