"""``make bench`` at scale: the operator with a long history, and one flag with a long queue.

Two figures issue 12 asks for, measured on the real control plane with the operator as its own
process (``bench/cluster.py``):

- **history**: 100,000 finished + 10,000 pending schedules over 1,000 flags (``--quick``: 10,000 +
  1,000 over 100). A first operator run takes the pending ones through first sight and stops (a
  restart, not a fresh install); one more schedule falls due while it is down. The second run is
  measured: its RSS once settled (``scale_rss_mb``, peak and settled), the time from
  ``leader.acquired`` to that schedule's ``appliedAt`` (``scale_startup_s``), and, over
  ``RESTARTS`` restarts, process start → leading (``scale_start_to_leading_s``, the median:
  ``leader.acquired`` in the log, which the operator reaches only with its Lease held *and* every
  flag and unfinished schedule in its book; the finished ones follow, ``book.complete``), process
  start → ``/healthz`` answering (what the startupProbe must allow) and → ``/readyz`` answering 200
  (the first LISTs done).
- **one flag**: 1,000 pending schedules of one flag, due 50 ms apart; the lateness of each
  (``appliedAt`` − ``scheduledAt``, both stamped on this machine's clock) gives
  ``one_flag_1k_lateness_p99_s``.

Setting up 220,000 writes is what takes the time, so this control plane runs etcd without fsync
(the figures are the operator's, not etcd's). Writes the keys into ``results/latest.json`` (merging
with what ``run.py`` wrote) and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from kubernetes.aio.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyspy  # noqa: E402
from cluster import (  # noqa: E402
    FLAGS,
    GROUP,
    SCHEDULES,
    VERSION,
    Cluster,
    ControlPlane,
    OperatorProcess,
    flag_body,
    parse_time,
    rfc3339,
    schedule_body,
    with_retries,
)
from controlplane import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IDENTITY = {"FLAG_SCHEDULER_IDENTITY": "bench-scale"}  # the same replica before and after the restart
RESTARTS = 3  # start-up is measured this many times (the median is the figure: the machine is shared)


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] scale: {text}", flush=True)


async def _finish_all(cluster: Cluster, ns: str, names: list[str], concurrency: int = 128) -> None:
    """Mark schedules Applied (as a long history would have them), ``concurrency`` writes in flight."""
    gate = asyncio.Semaphore(concurrency)
    stamp = rfc3339(datetime.now(UTC) - timedelta(days=1))
    applied = {"type": "Applied", "status": "True", "reason": "Applied", "message": "history",
               "lastTransitionTime": stamp}
    status = {"status": {"phase": "Applied", "appliedAt": stamp, "finishedAt": stamp, "retryCount": 0,
                         "conditions": [applied]}}

    async def finish(name: str) -> None:
        async with gate:
            await with_retries(cluster.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns,
                               SCHEDULES, name, status)

    await asyncio.gather(*(finish(n) for n in names))


def _log_events(path: Path, offset: int) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace")[offset:].splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


async def _wait_phase(cluster: Cluster, ns: str, name: str, phase: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = await with_retries(cluster.custom.get_namespaced_custom_object, GROUP, VERSION, ns, SCHEDULES, name)
        if (body.get("status") or {}).get("phase") == phase:
            return body
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} not {phase} after {timeout} s")


async def _settled_rss(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """(peak, last) RSS in MB over ``seconds``."""
    samples = []
    for _ in range(int(seconds / 0.5)):
        samples.append(proc.memory_info().rss / 2**20)
        await asyncio.sleep(0.5)
    return round(max(samples), 1), round(samples[-1], 1)


async def history(cluster: Cluster, operator: OperatorProcess, finished: int, pending: int, flags: int) -> dict:
    ns = "bench-scale"
    await cluster.create_namespace(ns)
    t0 = time.monotonic()
    await cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    old = datetime.now(UTC) - timedelta(days=2)
    names = [f"done-{i:06d}" for i in range(finished)]
    for start in range(0, finished, 10_000):  # in chunks: bounded memory on the bench's side too
        chunk = names[start:start + 10_000]
        await cluster.create_many(ns, SCHEDULES, [schedule_body(n, f"flag-{i % flags}", old, 50)
                                                  for i, n in enumerate(chunk, start)], concurrency=128)
        await _finish_all(cluster, ns, chunk)
        say(f"{start + len(chunk)}/{finished} finished schedules")
    later = datetime.now(UTC) + timedelta(hours=2)
    await cluster.create_many(ns, SCHEDULES, [schedule_body(f"todo-{i:05d}", f"flag-{i % flags}", later, 60)
                                              for i in range(pending)], concurrency=128)
    setup_s = round(time.monotonic() - t0, 1)
    say(f"set up in {setup_s} s; first operator run takes the pending ones through first sight")
    offset = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    await asyncio.to_thread(operator.start, [ns], 300.0, IDENTITY)
    await _wait_claimed(cluster, ns, pending)
    operator.stop()
    probe_at = datetime.now(UTC)
    await cluster.create_many(ns, SCHEDULES, [schedule_body("probe", "flag-0", probe_at, 70)])
    say("restarting the operator with the long history")
    offset = operator.log_path.stat().st_size
    proc, first = await _restart(operator, ns)
    starts = [first]
    probe = await _wait_phase(cluster, ns, "probe", "Applied", 120)
    events = _log_events(operator.log_path, offset)
    acquired = next(parse_time(e["timestamp"]) for e in events if e.get("event") == "leader.acquired")
    peak, settled = await _settled_rss(proc, 15)
    for _ in range(RESTARTS - 1):
        starts.append((await _restart(operator, ns))[1])
    operator.stop()  # the objects stay: deleting 110,000 would cost minutes, and the control plane goes
    median = {key: round(statistics.median(s[key] for s in starts), 2) for key in starts[0]}
    say(f"start-up over {RESTARTS} restarts: {starts}")
    return {
        "finished": finished, "pending": pending, "flags": flags, "setup_s": setup_s,
        "process_start_to_leading_s": median["leading_s"], "process_start_to_healthz_s": median["healthz_s"],
        "process_start_to_ready_s": median["ready_s"], "restarts": starts,
        "startup_s": round((parse_time(probe["status"]["appliedAt"]) - acquired).total_seconds(), 3),
        "rss_peak_mb": peak, "rss_settled_mb": settled,
    }


async def _restart(operator: OperatorProcess, ns: str) -> tuple[psutil.Process, dict[str, float]]:
    """Stop and start the operator; seconds from process start to ``/healthz``, ``/readyz`` and leading."""
    operator.stop()
    health, ready = free_port(), free_port()
    env = {**IDENTITY, "FLAG_SCHEDULER_HEALTH_PORT": str(health), "FLAG_SCHEDULER_READY_PORT": str(ready)}
    started = time.monotonic()
    probes = asyncio.create_task(_first_answers(started, f"http://127.0.0.1:{health}/healthz",
                                                f"http://127.0.0.1:{ready}/readyz"))
    proc = await asyncio.to_thread(operator.start, [ns], 300.0, env)
    leading = time.monotonic() - started
    healthz, readyz = await probes
    return proc, {"leading_s": round(leading, 2), "healthz_s": round(healthz, 2), "ready_s": round(readyz, 2),
                  "loadavg_1m": round(os.getloadavg()[0], 1)}


async def _first_answers(started: float, *urls: str) -> list[float]:
    """Seconds from ``started`` until each URL first answers 200 (polled every 50 ms)."""
    async def first(url: str) -> float:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                try:
                    async with session.get(url) as answer:
                        if answer.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.05)

    return list(await asyncio.wait_for(asyncio.gather(*(first(u) for u in urls)), 300))


async def _wait_claimed(cluster: Cluster, ns: str, pending: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            todo = await _claimed_count(cluster, ns)
        except ApiException as err:
            if err.status != 410:
                raise
            continue  # the LIST outlived its continue token (a loaded machine): count again
        if todo >= pending:
            return
        await asyncio.sleep(2)
    raise RuntimeError("first sight did not finish")


async def _claimed_count(cluster: Cluster, ns: str) -> int:
    """The pending (``todo-``) schedules that have been claimed, over one paged LIST."""
    todo = 0
    token = None
    while True:
        kw = {"limit": 1000, **({"_continue": token} if token else {})}
        page = await with_retries(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, ns, SCHEDULES, **kw)
        todo += sum(1 for s in page["items"] if s["metadata"]["name"].startswith("todo-")
                    and (s.get("status") or {}).get("claimedBy"))
        token = page["metadata"].get("continue")
        if not token:
            return todo


async def one_flag(cluster: Cluster, operator: OperatorProcess, count: int, gap: float, profile: bool = False) -> dict:
    """``count`` schedules of one flag due ``gap`` apart; with ``profile``, py-spy records the due window."""
    ns = "bench-one-flag"
    await cluster.create_namespace(ns)
    proc = await asyncio.to_thread(operator.start, [ns], 120.0, IDENTITY)
    await cluster.create_many(ns, FLAGS, [flag_body("busy")])
    start = datetime.now(UTC) + timedelta(seconds=30)  # first sight of all of them comes before
    await cluster.create_many(ns, SCHEDULES, [schedule_body(f"q-{i:05d}", "busy", start + timedelta(seconds=gap * i),
                                                            i % 101) for i in range(count)], concurrency=64)
    await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds() - 1))
    spy = pyspy.Profile(proc.pid, RESULTS / "profile-one-flag.txt") if profile else None
    last = f"q-{count - 1:05d}"
    try:
        await _wait_phase(cluster, ns, last, "Applied", 30 + gap * count + 120)
    finally:
        profiled = await asyncio.to_thread(spy.stop) if spy is not None else None
    page = await with_retries(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, ns, SCHEDULES)
    late = sorted((parse_time(s["status"]["appliedAt"]) - parse_time(s["spec"]["scheduledAt"])).total_seconds()
                  for s in page["items"])
    operator.stop()
    q = statistics.quantiles(late, n=100, method="inclusive")
    return {"count": count, "gap_s": gap, "applied": len(late), "lateness_p50_s": round(q[49], 3),
            "lateness_p99_s": round(q[98], 3), "lateness_max_s": round(late[-1], 3),
            "loadavg_at_end": os.getloadavg(), "profile": profiled}


async def measure(quick: bool, only_one_flag: bool = False, profile: bool = False) -> dict[str, Any]:
    with ControlPlane(fsync=False) as cp:
        cluster = Cluster(cp)
        await asyncio.to_thread(cluster.install)
        await cluster.connect()
        operator = OperatorProcess(cluster, RESULTS / "logs" / "operator-scale.log")
        try:
            hist = None
            if not only_one_flag:
                sizes = (10_000, 1_000, 100) if quick else (100_000, 10_000, 1_000)
                hist = await history(cluster, operator, *sizes)
                say(f"history: {hist}")
            one = await one_flag(cluster, operator, 1000, 0.05, profile)
            say(f"one flag: { {k: v for k, v in one.items() if k != 'profile'} }")
        finally:
            operator.stop()
            await cluster.close()
    figures: dict[str, Any] = {"one_flag_1k_lateness_p99_s": one["lateness_p99_s"]}
    if hist is not None:
        figures.update({"scale_rss_mb": hist["rss_peak_mb"], "scale_startup_s": hist["startup_s"],
                        "scale_start_to_leading_s": hist["process_start_to_leading_s"],
                        "scale_start_to_healthz_s": hist["process_start_to_healthz_s"]})
    figures["scale"] = {"history": hist, "one_flag": one, "quick": quick}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 finished + 1,000 pending over 100 flags")
    parser.add_argument("--only", choices=["one-flag"], help="the one-flag queue alone (no long history)")
    parser.add_argument("--profile", action="store_true", help="record the operator with py-spy while the queue is due")
    args = parser.parse_args()
    if args.profile and pyspy.py_spy() is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    figures = asyncio.run(measure(args.quick, args.only == "one-flag", args.profile))
    latest = RESULTS / "latest.json"
    previous = json.loads(latest.read_text()) if latest.exists() else {}
    if figures["scale"]["history"] is None and previous.get("scale"):
        figures["scale"]["history"] = previous["scale"].get("history")  # keep the last measured history
    merged = {**previous, **figures}
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    targets = {"scale_rss_mb": ("< 250 MB", lambda v: v < 250), "scale_startup_s": ("< 30 s", lambda v: v < 30),
               "scale_start_to_leading_s": ("< 15 s", lambda v: v < 15),
               "one_flag_1k_lateness_p99_s": ("<= 0.25 s", lambda v: v <= 0.25)}
    for key, (target, check) in targets.items():
        if key in figures:
            value = figures[key]
            print(f"{key:32} {value:>10} {target:>10} {'met' if check(value) else 'MISSED'}")
    print(f"loadavg at end: {figures['scale']['one_flag']['loadavg_at_end']}")
    profiled = figures["scale"]["one_flag"].get("profile")
    if profiled:
        print(json.dumps({k: profiled[k] for k in ("samples", "inclusive_percent", "exclusive_percent")}, indent=1))
    print(f"merged into {latest}")


if __name__ == "__main__":
    main()
