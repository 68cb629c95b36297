"""The bench's bookkeeping: the audit log reader refuses to undercount, and the README's table is rendered, not typed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import readme_table  # noqa: E402
from audit import AuditIncomplete, AuditLog  # noqa: E402


def record(verb: str, resource: str, name: str, code: int, namespace: str = "ns") -> str:
    return json.dumps({
        "stage": "ResponseComplete", "verb": verb, "requestURI": f"/apis/x/{resource}",
        "objectRef": {"resource": resource, "namespace": namespace, "name": name},
        "user": {"username": "admin"}, "responseStatus": {"code": code},
        "requestReceivedTimestamp": "2026-11-25T10:00:00.000000Z", "stageTimestamp": "2026-11-25T10:00:00.010000Z",
    }) + "\n"


def test_audit_reader_follows_appends_and_stops_on_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(record("create", "flagschedules", "a", 201))
    log = AuditLog(path)
    assert [w.name for w in log.refresh()] == ["a"]
    with open(path, "a") as f:
        f.write(record("create", "flagschedules", "b", 201))
    assert [w.name for w in log.refresh()] == ["a", "b"]
    path.rename(tmp_path / "audit-1.log")  # what the API server's log writer does when it rotates
    path.write_text(record("create", "flagschedules", "c", 201))
    with pytest.raises(AuditIncomplete, match="rotated or truncated"):
        log.refresh()


def test_audit_reader_stops_when_a_created_schedule_has_no_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(record("create", "flagschedules", "a", 201) + record("create", "flagschedules", "b", 409))
    log = AuditLog(path)
    log.require_created("ns", "flagschedules", ["a"])
    with pytest.raises(AuditIncomplete, match="1 of 2 flagschedules created in ns have no audit record"):
        log.require_created("ns", "flagschedules", ["a", "b"])


def test_readme_performance_table_is_rendered_from_the_published_run() -> None:
    published = json.loads(readme_table.PUBLISHED.read_text())
    readme = readme_table.README.read_text()
    assert readme_table.readme_with(readme_table.render(published), readme) == readme, \
        "README's Performance table differs from bench/published.json: run bench/readme_table.py"


def test_a_phase_the_run_skipped_reads_not_run() -> None:
    published = json.loads(readme_table.PUBLISHED.read_text())
    skipped = {**published, "burst_10k_s": None, "burst_10k_per_s": None, "failover_median_s": None}
    table = readme_table.render(skipped)
    assert "| not run (quick) |" in table and "not run / " in table


def test_handover_figures_time_each_client_from_the_change_the_ready_server_and_the_sigterm() -> None:
    import handover

    rounds = [{"stopped": 100.0, "exited": 101.0, "ready": 104.0, "changed": 104.5},
              {"stopped": 200.0, "exited": 201.0, "ready": 203.0, "changed": 203.5}]
    changes = [{"h-0": [105.0], "h-1": [205.5]}, {"h-0": [109.5], "h-1": []}]  # the second missed round 2
    out = handover.figures(rounds, changes, ["h-0", "h-1"])
    assert (out["clients"], out["rounds"], out["samples"], out["missing"]) == (2, 2, 3, 1)
    assert out["from_change_s"] == {"p50": 2.0, "p99": None, "max": 5.0}  # 0.5, 2.0, 5.0: too few for a p99
    assert out["from_ready_s"] == {"p50": 2.5, "p99": None, "max": 5.5}
    assert out["from_stop_s"] == {"p50": 5.5, "p99": None, "max": 9.5}
    assert out["server_down_s"] == [4.0, 3.0]
    assert handover.headline({"js": out}) == {"handover_s_js": 5.0, "handover_p50_s_js": 2.0}


def test_handover_rows_name_the_provider_version_and_both_figures() -> None:
    published = json.loads(readme_table.PUBLISHED.read_text())
    figures = {"clients": 20, "rounds": 3, "from_change_s": {"p50": 4.2, "max": 6.0},
               "from_ready_s": {"p50": 1.1, "max": 2.9}}
    run = {**published, "handover_s_java": 6.0, "handover": {
        "versions": {"java": {"dev.openfeature.contrib.providers:flagd": "0.11.15"}}, "runtimes": {"java": figures}}}
    assert ("| hand-over, java (dev.openfeature.contrib.providers:flagd 0.11.15, default settings), 20 providers, "
            "server replaced 3×: change → seen, median / max (from the new server ready) | 4.20 / 6.00 s "
            "(1.10 / 2.90 s) |  |") in readme_table.render(run)


def test_the_fairness_row_gives_the_figure_the_load_average_and_the_verdict() -> None:
    published = json.loads(readme_table.PUBLISHED.read_text())
    assert "fairness:" not in readme_table.render(published)  # a run without the phase has no row
    run = {**published, "fairness_other_ns_lateness_s": 1.4,
           "targets": {**published["targets"], "fairness_other_ns_lateness_s": False},
           "fairness": {"count": 20000, "probes_during_burst": 12, "other_ns_lateness_p50_s": 0.31,
                        "loadavg_at_end": [3.2, 2.0, 1.5]}}
    assert ("| fairness: lateness of another namespace's schedules while one creates 20,000 due at once "
            "(max / p50 of 12; load average 3.2) | 1.400 / 0.310 s | ≤ 1 s: missed |") in readme_table.render(run)
