"""``make bench``: the operator's lateness, burst rate against the API server's ceiling, writes and idle cost.

One run, one local control plane (etcd with fsync on), the operator as its own process under its
own identity. Phases, each in its own namespace: lateness, burst 1k, burst 10k, fairness (another
namespace's schedules while one namespace bursts), the ceiling (plain client, operator stopped), the
seed's cron algorithm (measured per batch, figures computed), idle.
``--quick`` uses smaller N and skips the 10k burst (its keys are null). Prints a table, writes
``bench/results/latest.json`` (and a timestamped copy) and ``bench/results/latest.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling  # noqa: E402
import failover  # noqa: E402
import fairness  # noqa: E402
import pyspy  # noqa: E402
import report  # noqa: E402
import rollouts  # noqa: E402
import seed  # noqa: E402
import workloads  # noqa: E402
from audit import AuditLog  # noqa: E402
from cluster import Cluster, ControlPlane, MachineLoad, OperatorProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROLLOUT_LEAD = 60.0  # creating 1,000 flags and rollouts takes a while: no step is due before all exist


@dataclass(frozen=True)
class Sizes:
    """How big each phase is; ``quick`` keeps the whole run under three minutes."""

    late_count: int = 1000
    late_spread: float = 60.0
    late_flags: int = 100
    late_lead: float = 20.0
    burst_flags: int = 1000
    burst_big: int | None = 10_000
    concurrencies: tuple[int, ...] = (16, 64, 128)
    seed_batches: int = 3
    idle_count: int = 10_000
    idle_flags: int = 1000
    idle_window: float = 60.0
    failover_kills: int = 8
    failover_every: float = 5.0
    rollout_count: int = 1000
    rollout_spread: float = 120.0
    rollout_hold: float = 120.0
    fair_count: int = 20_000  # namespace A's burst, due at once
    fair_flags: int = 1000
    fair_probes: int = 20  # namespace B's schedules, one every fair_spacing seconds meanwhile
    fair_spacing: float = 3.0


QUICK = Sizes(late_count=200, late_spread=20.0, late_lead=6.0, burst_big=None, idle_count=1000, idle_flags=100,
              idle_window=15.0, failover_kills=3, rollout_spread=60.0, rollout_hold=60.0, fair_count=2000,
              fair_flags=200, fair_probes=10, fair_spacing=1.0)


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


async def phases(cp: ControlPlane, sizes: Sizes, log_dir: Path, profile: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run every phase in order; return (per-phase results, curves for the plot)."""
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    env = workloads.Env(cluster, AuditLog(cp.audit_log), OperatorProcess(cluster, log_dir / "operator.log"), log_dir,
                        profile=profile)
    out: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    load = MachineLoad()

    async def phase(name: str, what: str, work: Any) -> dict[str, Any]:
        say(f"{name}: {what}")
        start = time.time()
        got = await work
        result = got["result"] if "result" in got else got
        result["phase_s"] = round(time.time() - start, 1)
        result["foreign_cpu_percent"] = load.mean(start, time.time())  # other processes on this machine
        out[name] = result
        return got

    try:
        late = await phase("lateness", f"{sizes.late_count} schedules over {sizes.late_spread:.0f} s",
                           workloads.lateness(env, sizes.late_count, sizes.late_spread, sizes.late_flags,
                                              sizes.late_lead))
        curves["lateness"], curves["lateness_due"] = late["lateness"], late["due"]
        for count in filter(None, (1000, sizes.burst_big)):
            burst = await phase(f"burst_{count // 1000}k", f"{count} schedules due at once",
                                workloads.burst(env, count, sizes.burst_flags))
            curves[f"burst_{count // 1000}k"] = burst["progress"]
        await fairness_phase(phase, env, sizes)
        ceil = await phase("ceiling", "plain client, operator stopped",
                           ceiling.ceiling(cluster, 1000, sizes.burst_big, sizes.burst_flags, sizes.concurrencies))
        best = ceil["result"]["best_concurrency"]
        curves["ceiling_1k"] = ceil["progress"][f"1000@{best}"]
        curves["ceiling_10k"] = ceil["progress"].get(f"{sizes.burst_big}@{best}")
        await phase("seed", f"{sizes.seed_batches} cron batches back to back",
                    asyncio.wait_for(seed.measure(cluster, sizes.seed_batches, 100), 300))
        await phase("idle", f"{sizes.idle_count} schedules due in an hour, {sizes.idle_window:.0f} s window",
                    workloads.idle(env, sizes.idle_count, sizes.idle_flags, sizes.idle_window))
        await phase("failover", f"3 replicas, the leader killed {sizes.failover_kills} times",
                    failover.failover(env, sizes.failover_kills, sizes.failover_every))
        await rollouts_phase(phase, env, sizes)
    finally:
        env.operator.stop()
        load.stop()
        await cluster.close()
    return out, curves


async def fairness_phase(phase: Any, env: workloads.Env, sizes: Sizes) -> None:
    await phase("fairness", f"{sizes.fair_count} schedules due at once in one namespace, "
                f"{sizes.fair_probes} due in another meanwhile",
                fairness.fairness(env, sizes.fair_count, sizes.fair_flags, sizes.fair_probes, sizes.fair_spacing))


async def only_fairness(cp: ControlPlane, sizes: Sizes, log_dir: Path, profile: bool) -> dict[str, Any]:
    """The fairness phase alone (``--only fairness``)."""
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    env = workloads.Env(cluster, AuditLog(cp.audit_log), OperatorProcess(cluster, log_dir / "operator.log"), log_dir,
                        profile=profile)
    try:
        return (await fairness.fairness(env, sizes.fair_count, sizes.fair_flags, sizes.fair_probes,
                                        sizes.fair_spacing))["result"]
    finally:
        env.operator.stop()
        await cluster.close()


async def rollouts_phase(phase: Any, env: workloads.Env, sizes: Sizes) -> None:
    await phase("rollouts", f"{sizes.rollout_count} FlagRollouts of 3 steps over {sizes.rollout_spread:.0f} s",
                rollouts.rollouts(env, sizes.rollout_count, sizes.rollout_spread, ROLLOUT_LEAD, sizes.rollout_hold))


async def only_rollouts(cp: ControlPlane, sizes: Sizes, log_dir: Path) -> dict[str, Any]:
    """The rollouts phase alone (``--only rollouts``)."""
    cluster = Cluster(cp)
    await asyncio.to_thread(cluster.install)
    await cluster.connect()
    env = workloads.Env(cluster, AuditLog(cp.audit_log), OperatorProcess(cluster, log_dir / "operator.log"), log_dir)
    try:
        return await rollouts.rollouts(env, sizes.rollout_count, sizes.rollout_spread, ROLLOUT_LEAD,
                                       sizes.rollout_hold)
    finally:
        env.operator.stop()
        await cluster.close()


def headline(out: dict[str, Any], sizes: Sizes, quick: bool) -> dict[str, Any]:
    """The flat keys issue 6 asks for, from the per-phase results."""
    late = out["lateness"]["lateness_done_s"]
    b1k, b10k = out.get("burst_1k", {}), out.get("burst_10k", {})
    ceil = out["ceiling"]
    ceiling_per_s = ceil.get(f"per_s_{sizes.burst_big}") if sizes.burst_big else ceil["per_s_1000"]
    burst_per_s = b10k.get("per_s") if sizes.burst_big else b1k.get("per_s")
    writes = out["lateness"]["writes"]
    return {
        "quick": quick,
        "lateness_p50_s": late["p50"], "lateness_p90_s": late["p90"], "lateness_p99_s": late["p99"],
        "lateness_max_s": late["max"],
        "burst_1k_s": b1k.get("seconds"), "burst_1k_per_s": b1k.get("per_s"),
        "burst_10k_s": b10k.get("seconds"), "burst_10k_per_s": b10k.get("per_s"),
        "ceiling_per_s": ceiling_per_s, "ceiling_1k_per_s": ceil["per_s_1000"],
        "ceiling_best_concurrency": ceil["best_concurrency"],
        "burst_ratio_to_ceiling": round(burst_per_s / ceiling_per_s, 3) if burst_per_s and ceiling_per_s else None,
        "burst_1k_ratio_to_ceiling": round(b1k["per_s"] / ceil["per_s_1000"], 3) if b1k.get("per_s") else None,
        "writes_hot_path": writes["hot_path"], "writes_lifetime": writes["lifetime"],
        "idle_cpu_percent": out["idle"]["cpu_percent"], "idle_rss_mb": out["idle"]["rss_mb"],
        "idle_requests_per_s": round(out["idle"]["operator_writes_per_s"] + out["idle"]["operator_reads_per_s"], 3),
        "idle_non_lease_requests_per_s": out["idle"]["operator_non_lease_requests_per_s"],
        "idle_watch_reopens_in_window": out["idle"]["watch_reopens_in_window"],
        "idle_watch_reopen_every_s": out["idle"]["watch_reopen_every_s"],
        "failover_median_s": out["failover"]["failover_median_s"], "failover_max_s": out["failover"]["failover_max_s"],
        "failover_doubled": out["failover"]["doubled"], "failover_lost": out["failover"]["lost"],
        "rollout_step_lateness_p99_s": out.get("rollouts", {}).get("step_lateness_s", {}).get("p99"),
        "fairness_other_ns_lateness_s": out.get("fairness", {}).get("other_ns_lateness_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller N, no 10k burst: under three minutes")
    parser.add_argument("--profile", action="store_true", help="record the operator with py-spy during bursts")
    parser.add_argument("--only", choices=["propagation", "rollouts", "handover", "fairness"],
                        help="run one section alone (its own control plane)")
    args = parser.parse_args()
    if args.only == "propagation":
        import propagation

        propagation.run(args.quick)
        return
    if args.only == "handover":
        import handover

        handover.run(args.quick)
        return
    sizes = QUICK if args.quick else Sizes()
    if args.only == "rollouts":
        (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
        with ControlPlane(fsync=True) as cp:
            result = asyncio.run(only_rollouts(cp, sizes, RESULTS / "logs"))
        print(json.dumps({"quick": args.quick, "rollout_step_lateness_p99_s": result["step_lateness_s"]["p99"],
                          "rollouts": result}, indent=2))
        return
    if args.profile and pyspy.py_spy() is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    if args.only == "fairness":
        only_fairness_run(sizes, args.quick, args.profile)
        return
    started, t0 = datetime.now(UTC), time.monotonic()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "operator.log").unlink(missing_ok=True)
    say(f"{'quick' if args.quick else 'full'} bench: starting the control plane (etcd fsync on)")
    with ControlPlane(fsync=True) as cp:
        versions = cp.versions()
        out, curves = asyncio.run(phases(cp, sizes, log_dir, args.profile))
    results = headline(out, sizes, args.quick)
    computed = seed.computed(curves["lateness_due"], out["seed"]["batch_cost_median_s"],
                             out["seed"]["list_cost_median_s"])
    curves["seed_lateness"] = computed.pop("lateness")
    curves["seed_1k"], curves["seed_10k"] = computed.pop("burst_curve_1k"), computed.pop("burst_curve_10k")
    results.update({
        "seed_batch_cost_s": out["seed"]["batch_cost_median_s"],
        "seed_lateness_p99_s": computed["lateness_p99_s"], "seed_burst_10k_s": computed["burst_10k_s"],
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "runtime_s": round(time.monotonic() - t0, 1),
        "control_plane": {"kube_apiserver": versions[0], "etcd": versions[1], "etcd_fsync": True},
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}, "sizes": sizes.__dict__, "seed_computed": computed, "phases": out,
    })
    results["targets"] = report.targets(results)
    report.write_json(results, RESULTS)
    report.plot(curves, results, RESULTS)
    print(report.table(results))
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.png'}")


def only_fairness_run(sizes: Sizes, quick: bool, profile: bool) -> None:
    """Run the fairness phase on its own control plane; merge its key into ``results/latest.json``."""
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    with ControlPlane(fsync=True) as cp:
        result = asyncio.run(only_fairness(cp, sizes, RESULTS / "logs", profile))
    latest = RESULTS / "latest.json"
    merged = json.loads(latest.read_text()) if latest.exists() else {}
    merged["fairness_other_ns_lateness_s"] = result["other_ns_lateness_s"]
    merged.setdefault("phases", {})["fairness"] = {**result, "quick": quick}
    merged["targets"] = report.targets(merged)
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k != "profile"}
    print(json.dumps({"quick": quick, "fairness_other_ns_lateness_s": result["other_ns_lateness_s"],
                      "fairness": shown}, indent=2))
    if result.get("profile"):
        print(json.dumps(result["profile"], indent=1))


if __name__ == "__main__":
    main()
