"""FlagCronSchedule on the real control plane: windows open and close, suspend, downtime, bad input, history.

Cron is minute-granular, so the operator runs with ``FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS`` (tests
only, off by default): its clock is put a few seconds before an edge on a fixed future day
(Monday 3 March 2031, Europe/Berlin = UTC+1). Schedules carry those instants; the scheduler applies
them when the operator's clock reaches them, so an edge is seconds away instead of a minute.
"""

from __future__ import annotations

import json

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import tzdata
from kubernetes.client.exceptions import ApiException

from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, rfc3339, wait_for

LEAD = 4.0  # seconds between the operator's start and the edge it is put before


def utc(hour: int, minute: int, day: int = 3) -> datetime:
    return datetime(2031, 3, day, hour, minute, tzinfo=UTC)


def clock_before(edge: datetime, lead: float = LEAD) -> str:
    """FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS that puts the operator's clock ``lead`` seconds before ``edge``."""
    return str((edge - datetime.now(UTC)).total_seconds() - lead)


TRACKING = {"app.kubernetes.io/instance": "promo"}  # what Argo CD puts on what it syncs


def cron(cluster: Cluster, name: str, flag: str, start: str, end: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FlagCronSchedule",
        "metadata": {"name": name, "labels": TRACKING, "annotations": {"argocd.argoproj.io/tracking-id": "x"}},
        "spec": {"flagRef": {"name": flag}, "timeZone": "Europe/Berlin",
                 "start": {"schedule": start, "updates": {"enabled": True}}, **spec},
    }
    if end is not None:
        body["spec"]["end"] = {"schedule": end, "updates": {"enabled": False}}
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagcronschedules", body)


def cron_status(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagcronschedules", name)
    return body.get("status") or {}


def wait_cron(cluster: Cluster, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    return wait_for(lambda: (s := cron_status(cluster, name)) and check(s) and s, timeout=30, what=what)


def wait_edge(cluster: Cluster, name: str, phase: str) -> dict[str, Any]:
    """Wait until the edge schedule ``name`` exists with ``phase``; return its status."""
    def seen() -> dict[str, Any] | None:
        body = edge_schedules(cluster).get(name)
        status = (body or {}).get("status") or {}
        return status if status.get("phase") == phase else None
    return wait_for(seen, timeout=30, what=f"{name} phase {phase}")


def edge_schedules(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules")["items"]
    return {s["metadata"]["name"]: s for s in items}


def test_a_window_opens_at_its_start_and_closes_at_its_end(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("promo", enabled=False)
    cron(cluster, "hours", "promo", "0 9 * * 1-5", "1 9 * * 1-5")
    op = start_operator(FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(8, 0)))
    started = next(line for line in op.log_lines() if line.get("event") == "operator.started")
    assert started["tzdata"] == tzdata.IANA_VERSION  # the pinned package's tz database, logged at start
    wait_edge(cluster, "hours-start-203103030800", "Applied")
    assert cluster.get_flag("promo")["spec"]["enabled"] is True
    status = wait_cron(cluster, "hours", lambda s: s.get("phase") == "InWindow", "phase InWindow")
    assert status["lastEdge"]["kind"] == "start" and status["lastEdge"]["schedule"] == "hours-start-203103030800"
    assert status["nextEdgeAt"].startswith("2031-03-03T08:01:00")
    # Only the next edge exists ahead of time, owned by the window and by the flag.
    end = cluster.get_schedule("hours-end-203103030801")
    assert {o["kind"] for o in end["metadata"]["ownerReferences"]} == {"FlagCronSchedule", "FeatureFlag"}
    assert end["spec"]["scheduledAt"].startswith("2031-03-03T08:01:00")
    # Argo CD's tracking label and annotation are not copied: it would prune the edges as its own.
    assert set(end["metadata"]["labels"]) == {"flagscheduler.dev/cron-schedule-uid", "flagscheduler.dev/edge"}
    assert "argocd.argoproj.io/tracking-id" not in (end["metadata"].get("annotations") or {})
    assert not any(name.startswith("hours-start-20310304") for name in edge_schedules(cluster))

    op.stop()  # the end is a minute later: come back just before it
    start_operator(log_name="second.log", FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(8, 1)))
    wait_edge(cluster, "hours-end-203103030801", "Applied")
    assert cluster.get_flag("promo")["spec"]["enabled"] is False
    status = wait_cron(cluster, "hours", lambda s: s.get("phase") == "OutOfWindow", "phase OutOfWindow")
    assert status["nextEdgeAt"].startswith("2031-03-04T08:00:00")
    assert status.get("missedEdges", 0) == 0


@pytest.mark.long
def test_an_operator_down_across_edges_applies_only_the_latest_and_counts_the_missed_one(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Down from 08:50 to 18:30: the 09:00 start is never applied, the 18:00 end is, once."""
    cluster.flag("promo", enabled=True)
    cron(cluster, "hours", "promo", "0 9 * * 1-5", "0 18 * * 1-5")
    op = start_operator(FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(7, 50), lead=0))
    # 08:50: the window is closed (Friday's 18:00 end applies) and the 09:00 start waits.
    wait_edge(cluster, "hours-end-203102281700", "Applied")
    wait_cron(cluster, "hours", lambda s: s.get("nextEdgeAt", "").startswith("2031-03-03T08:00:00"), "next edge")
    assert cluster.get_schedule("hours-start-203103030800")["status"]["phase"] == "Pending"
    op.stop()

    start_operator(log_name="second.log", FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(17, 30), lead=0))
    status = wait_cron(cluster, "hours", lambda s: s.get("missedEdges") == 1, "one missed edge")
    end = wait_edge(cluster, "hours-end-203103031700", "Applied")
    assert wait_edge(cluster, "hours-start-203103030800", "Missed")
    assert status["phase"] == "OutOfWindow"
    assert status["lastEdge"] == {"kind": "end", "at": status["lastEdge"]["at"], "schedule": "hours-end-203103031700"}
    flag = cluster.get_flag("promo")
    assert flag["spec"]["enabled"] is False
    notes = flag["metadata"]["annotations"]
    missed_uid = cluster.get_schedule("hours-start-203103030800")["metadata"]["uid"]
    assert notes["flagscheduler.dev/last-applied-schedule"] == "hours-end-203103031700"
    setters = json.loads(notes["flagscheduler.dev/field-setters"])  # who set each field: never the missed edge
    assert missed_uid not in json.dumps(setters) and missed_uid not in notes.get("flagscheduler.dev/landed-awaiting-status", "")
    assert end["appliedAt"]
    event = cluster.wait_event("hours", "EdgesMissed", "Warning")
    assert event["message"].startswith("1 edge(s) after 2031-02-28T17:00:00Z were not applied")


def test_suspend_withdraws_the_pending_edge_and_resume_brings_it_back(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("promo", enabled=False)
    cron(cluster, "hours", "promo", "0 9 * * 1-5", "0 18 * * 1-5")
    start_operator(FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(7, 0)))
    wait_cron(cluster, "hours", lambda s: s.get("nextEdgeAt", "").startswith("2031-03-03T08:00"), "next edge")
    assert "hours-start-203103030800" in edge_schedules(cluster)

    patch = {"spec": {"suspend": True}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagcronschedules", "hours", patch)
    status = wait_cron(cluster, "hours", lambda s: s.get("phase") == "Suspended", "phase Suspended")
    assert "nextEdgeAt" not in status
    wait_for(lambda: "hours-start-203103030800" not in edge_schedules(cluster), what="the pending edge withdrawn")

    patch = {"spec": {"suspend": False}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagcronschedules", "hours", patch)
    wait_cron(cluster, "hours", lambda s: s.get("phase") == "OutOfWindow", "phase OutOfWindow")
    assert "hours-start-203103030800" in edge_schedules(cluster)

    # The window is owned by its flag: deleting the flag deletes the window and its edges.
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, "featureflags", "promo")
    windows = lambda: cluster.custom.list_namespaced_custom_object(  # noqa: E731
        GROUP, VERSION, cluster.ns, "flagcronschedules")["items"]
    wait_for(lambda: not windows() and not edge_schedules(cluster), what="the window and its edges collected")


def test_an_unknown_zone_is_reported_and_the_operator_carries_on(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("promo", enabled=False)
    start_operator()
    cron(cluster, "mars", "promo", "0 9 * * *", timeZone="Mars/Olympus_Mons")
    status = wait_cron(cluster, "mars", lambda s: bool(s.get("conditions")), "a condition")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.timeZone: unknown time zone 'Mars/Olympus_Mons'" in ready["message"]
    cluster.wait_event("mars", "InvalidSpec", "Warning")
    assert edge_schedules(cluster) == {}
    # The same operator still serves a valid window next to it.
    cron(cluster, "fine", "promo", "0 9 * * *", timeZone="UTC")
    wait_cron(cluster, "fine", lambda s: "nextEdgeAt" in s, "the valid window scheduled")


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("CRON_TZ=UTC 0 9 * *", None, "TZ= and CRON_TZ= are not allowed in the expression; set spec.timeZone"),
        ("0 9 * * * *", None, "must be a 5-field cron expression"),
        ("0 9 * * 1-5", "0  9 * * 1-5", "spec.end.schedule must differ from spec.start.schedule"),
    ],
)
def test_the_api_server_refuses_what_cel_can_tell(cluster: Cluster, start: str, end: str | None, message: str) -> None:
    with pytest.raises(ApiException) as refused:
        cron(cluster, "bad", "promo", start, end)
    assert refused.value.status == 422 and message in refused.value.body


def test_history_limits_delete_the_oldest_finished_edge_schedules(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    """Three past edges applied (as if over three days) with successfulSchedulesHistoryLimit 1: two go."""
    cluster.flag("promo", enabled=False)
    owner = cron(cluster, "daily", "promo", "0 9 * * *", successfulSchedulesHistoryLimit=1)
    uid = owner["metadata"]["uid"]
    for day in (1, 2):  # edges of earlier days, made the way the controller makes them
        name = f"daily-start-2031030{day}0800"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagSchedule",
            "metadata": {"name": name, "labels": {"flagscheduler.dev/cron-schedule-uid": uid,
                                                  "flagscheduler.dev/edge": "start"},
                         "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlagCronSchedule",
                                              "name": "daily", "uid": uid, "controller": True}]},
            "spec": {"flagRef": {"name": "promo"}, "scheduledAt": rfc3339(utc(8, 0, day)),
                     "updates": {"enabled": True}},
        }
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "flagschedules", body)
    start_operator(FLAG_SCHEDULER_CLOCK_OFFSET_SECONDS=clock_before(utc(8, 0), lead=-2))
    wait_edge(cluster, "daily-start-203103030800", "Applied")
    wait_for(lambda: set(edge_schedules(cluster)) == {"daily-start-203103030800", "daily-start-203103040800"},
             what="only the newest finished edge and the next one left")


def test_get_prints_the_window_columns(cluster: Cluster, kubectl: Any) -> None:
    cluster.flag("promo")
    cron(cluster, "hours", "promo", "0 9 * * 1-5", "0 18 * * 1-5")
    out = kubectl("get", "fcs", "-n", cluster.ns).stdout.splitlines()
    assert out[0].split() == ["NAME", "FLAG", "START", "END", "TZ", "PHASE", "NEXT-EDGE", "AGE"]
    assert out[1].split()[:12] == ["hours", "promo", "0", "9", "*", "*", "1-5", "0", "18", "*", "*", "1-5"]
    assert "Europe/Berlin" in out[1]
