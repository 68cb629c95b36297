"""The bench's output: the table on stdout, ``results/latest.json`` (plus a timestamped copy), the plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# key -> (label, unit, target check or None, target text)
ROWS: list[tuple[str, str, str, Any, str]] = [
    ("lateness_p50_s", "lateness p50", "s", None, ""),
    ("lateness_p90_s", "lateness p90", "s", None, ""),
    ("lateness_p99_s", "lateness p99", "s", lambda v: v <= 1.0, "<= 1 s (goal 0.25 s)"),
    ("lateness_max_s", "lateness max", "s", None, ""),
    ("burst_1k_s", "burst 1k: all Applied after", "s", None, ""),
    ("burst_1k_per_s", "burst 1k rate", "/s", None, ""),
    ("burst_10k_s", "burst 10k: all Applied after", "s", None, ""),
    ("burst_10k_per_s", "burst 10k rate", "/s", None, ""),
    ("ceiling_per_s", "ceiling (plain client, same N)", "/s", None, ""),
    ("burst_ratio_to_ceiling", "burst rate / ceiling", "", lambda v: v >= 0.5, ">= 0.5"),
    # DESIGN §3.6: flag PATCH + schedule status + the Normal Event at the due time; first sight adds 2.
    ("writes_hot_path", "writes per schedule at due time", "", lambda v: v <= 3, "<= 3"),
    ("writes_lifetime", "writes per schedule over its life", "", lambda v: v <= 5, "<= 5"),
    ("idle_cpu_percent", "idle CPU", "%", lambda v: v < 2, "< 2 %"),
    ("idle_rss_mb", "idle RSS", "MB", lambda v: v < 250, "< 250 MB"),
    ("idle_requests_per_s", "idle API requests (lease incl.)", "/s", None, ""),
    ("idle_non_lease_requests_per_s", "idle requests beyond Lease, watches", "/s", lambda v: v == 0, "0 (lease only)"),
    ("idle_watch_reopens_in_window", "idle watch re-opens in the window", "", None, ""),
    ("idle_watch_reopen_every_s", "each watch re-opened every", "s", None, ""),
    ("failover_median_s", "failover: kill -9 -> next applied, p50", "s", None, ""),
    ("failover_max_s", "failover: kill -9 -> next applied, max", "s", None, ""),
    ("failover_doubled", "failover: changes doubled", "", lambda v: v == 0, "0"),
    ("failover_lost", "failover: changes lost", "", lambda v: v == 0, "0"),
    ("rollout_step_lateness_p99_s", "rollouts: step lateness p99 (1k concurrent)", "s", lambda v: v <= 0.25,
     "<= 0.25 s"),
    ("fairness_other_ns_lateness_s", "fairness: other namespace's lateness, max", "s", lambda v: v <= 1.0,
     "<= 1 s"),
    ("seed_batch_cost_s", "seed: one batch of 100 (measured)", "s", None, ""),
    ("seed_lateness_p99_s", "seed lateness p99 (computed)", "s", None, ""),
    ("seed_burst_10k_s", "seed burst 10k (computed)", "s", None, ""),
]


def targets(results: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: met (True), missed (False) or not measured in this run (None)."""
    out = {}
    for key, _, _, check, _ in ROWS:
        if check is not None:
            value = results.get(key)
            out[key] = None if value is None else bool(check(value))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """A plain-text table of the headline figures, with the target and whether it was met."""
    met = results.get("targets", {})
    lines = [f"{'metric':<38} {'value':>12} {'unit':<4}  {'target':<22} {'met':<4}", "-" * 86]
    for key, label, unit, _, target in ROWS:
        verdict = {True: "yes", False: "NO", None: "-"}[met.get(key)] if key in met else ""
        lines.append(f"{label:<38} {_fmt(results.get(key)):>12} {unit:<4}  {target:<22} {verdict:<4}")
    lines.append("-" * 86)
    lines.append(f"mode: {'quick' if results.get('quick') else 'full'}; runtime {results.get('runtime_s')} s; "
                 f"seed figures are computed from its measured batch cost")
    foreign = {k: v.get("foreign_cpu_percent") for k, v in results.get("phases", {}).items()}
    busy = {k: v for k, v in foreign.items() if v is not None and v > 20}
    if busy:
        lines.append(f"warning: other processes on this machine used CPU during phases (% of one core): {busy}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], out_dir: Path) -> Path:
    """Write ``latest.json`` and a copy named after the run's start time; return the latest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = out_dir / "latest.json"
    latest.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(latest, out_dir / f"{results['started_at'].replace(':', '')}.json")
    return latest


def _cdf(ax: Any, values: list[float], label: str, color: str) -> None:
    if values:
        ordered = sorted(values)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label, color=color)


def plot(curves: dict[str, Any], results: dict[str, Any], out_dir: Path) -> Path:
    """Lateness (histogram, CDF against the seed) and burst progress (operator, ceiling, seed)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    hist, cdf, b1k, b10k = axes.flat
    late_ms = [v * 1000 for v in curves["lateness"]]
    hist.hist(late_ms, bins=50, color="tab:blue")
    hist.set(title=f"Operator lateness, {len(late_ms)} schedules (audit log)", xlabel="flag PATCH − scheduledAt (ms)",
             ylabel="schedules")
    _cdf(cdf, [max(v, 1e-3) for v in curves["lateness"]], "operator (measured)", "tab:blue")
    _cdf(cdf, [max(v, 1e-3) for v in curves["seed_lateness"]], "seed cron (computed)", "tab:green")
    cdf.set(title="Lateness CDF", xscale="log", xlabel="seconds late (log)", ylabel="fraction applied")
    for ax, size in ((b1k, "1k"), (b10k, "10k")):
        for label, key, color in (("operator", f"burst_{size}", "tab:blue"),
                                  ("ceiling (plain client)", f"ceiling_{size}", "tab:orange"),
                                  ("seed cron (computed)", f"seed_{size}", "tab:green")):
            times = curves.get(key) or []
            if times:
                ax.plot([max(t, 1e-3) for t in times], range(1, len(times) + 1), label=label, color=color)
        ax.set(title=f"Burst of {size} due at t=0: applied over time", xscale="log", xlabel="seconds after due (log)",
               ylabel="schedules applied")
        if not curves.get(f"burst_{size}"):
            ax.text(0.5, 0.5, "operator and ceiling not run (quick mode)", transform=ax.transAxes, ha="center")
    for ax in (cdf, b1k, b10k):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"flag-scheduler bench ({'quick' if results.get('quick') else 'full'}), {results['started_at']}")
    fig.tight_layout()
    path = out_dir / "latest.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
