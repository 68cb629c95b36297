"""Exactly once under failover: three operator processes as deployed, the leader killed again and again.

The operators run as separate OS processes authenticated as the ServiceAccount from ``manifests/``
(a TokenRequest token), so the RBAC we ship is the RBAC exercised here, and they elect a leader with
the Lease in ``flag-scheduler-system``. Every count below comes from the API server: the schedules'
status, the flags' final spec, and the audit log's record of each flag PATCH.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from controlplane import ControlPlane
from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, wait_for

OPERATOR_NAMESPACE = "flag-scheduler-system"
OPERATOR_USER = "system:serviceaccount:flag-scheduler-system:flag-scheduler"
# Short, but in the relations client-go requires: a killed leader is replaced after about 3-4 s.
FAST_ELECTION = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}


class Replicas:
    """Operator processes sharing one Lease; replaces any replica that is killed."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_dir = log_dir
        self.lease = f"chaos-{namespace}"
        self.live: dict[str, OperatorProcess] = {}
        self.dead: list[OperatorProcess] = []
        self._serial = 0

    def start_one(self) -> OperatorProcess:
        self._serial += 1
        identity = f"replica-{self._serial}"
        op = OperatorProcess(
            self.kubeconfig, [self.namespace], self.log_dir / f"{identity}.log",
            FLAG_SCHEDULER_IDENTITY=identity,
            FLAG_SCHEDULER_LEASE_NAMESPACE=OPERATOR_NAMESPACE,
            FLAG_SCHEDULER_LEASE_NAME=self.lease,
            **FAST_ELECTION,
        ).start()
        self.live[identity] = op
        return op

    def holder(self, leases: k8s.CoordinationV1Api) -> str | None:
        try:
            lease = leases.read_namespaced_lease(self.lease, OPERATOR_NAMESPACE)
        except k8s.ApiException:
            return None
        return lease.spec.holder_identity

    def kill(self, identity: str) -> None:
        """``kill -9`` one replica (no cleanup, no Lease release) and start a fresh one."""
        op = self.live.pop(identity)
        assert op.proc is not None
        os.kill(op.proc.pid, signal.SIGKILL)
        op.proc.wait()
        self.dead.append(op)
        self.start_one()

    def stop(self) -> None:
        for op in self.live.values():
            op.stop()

    def log_lines(self) -> list[dict[str, Any]]:
        return [line for op in [*self.live.values(), *self.dead] for line in op.log_lines()]


@pytest.fixture
def replicas(operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Replicas]:
    group = Replicas(operator_kubeconfig, namespace, tmp_path)
    yield group
    group.stop()


@pytest.fixture
def cluster(api_client: k8s.ApiClient, control_plane: ControlPlane, namespace: str, crds: None) -> Cluster:
    return Cluster(api_client, control_plane, namespace)


def create_workload(cluster: Cluster, flags: int, schedules: int, start: datetime, spread_s: float) -> dict[str, list]:
    """``schedules`` schedules over ``spread_s`` seconds from ``start``, round-robin over ``flags`` flags.

    Schedule i sets rolloutPercentage to its position among its flag's schedules (1, 2, ...), so a
    flag's final rollout says how many of its schedules ran last-in-order.
    """
    per_flag: dict[str, list] = {f"flag-{f:02d}": [] for f in range(flags)}
    for f in per_flag:
        cluster.flag(f, enabled=False, rollout=0)
    for i in range(schedules):
        flag = f"flag-{i % flags:02d}"
        at = start + timedelta(seconds=spread_s * i / schedules)
        name = f"s-{i:03d}"
        per_flag[flag].append((at, name))
        cluster.schedule(name, flag, at, {"enabled": True, "rolloutPercentage": len(per_flag[flag])})
    return per_flag


def flag_patches(cluster: Cluster, codes: tuple[int, ...] = (200,)) -> list[dict[str, Any]]:
    """The operator's flag PATCHes answered with one of ``codes``, from the API server's audit log.

    A replica killed with its PATCH in flight leaves a 504 in the log although etcd may have taken
    the change; such a PATCH is neither a success nor a failure from the log alone.
    """
    return [
        e for e in cluster.audit("featureflags", "patch")
        if e["user"]["username"] == OPERATOR_USER and e.get("responseStatus", {}).get("code") in codes
    ]


def assert_exactly_once(cluster: Cluster, per_flag: dict[str, list]) -> dict[str, int]:
    """Every schedule Applied, each change on its flag once, the flags in their last state, in order.

    Each schedule of a flag sets a different rolloutPercentage, so every landed change bumps the
    flag's metadata.generation: generation - 1 is the number of changes that reached the flag.
    Accepted (200) PATCHes above the schedule count would be doubles even if they changed nothing.
    """
    items = cluster.custom.list_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "flagschedules")
    phases = Counter(s.get("status", {}).get("phase") for s in items["items"])
    total = sum(len(v) for v in per_flag.values())
    assert phases == {"Applied": total}, f"phases: {dict(phases)}"
    accepted = Counter(e["objectRef"]["name"] for e in flag_patches(cluster))
    by_name = {s["metadata"]["name"]: s for s in items["items"]}
    doubled = lost = 0
    for flag, schedules in per_flag.items():
        body = cluster.get_flag(flag)
        changes = body["metadata"]["generation"] - 1
        doubled += max(0, changes - len(schedules)) + max(0, accepted[flag] - len(schedules))
        lost += max(0, len(schedules) - changes)
        assert body["spec"]["rolloutPercentage"] == len(schedules), flag
        last = max(schedules)[1]
        assert body["metadata"]["annotations"]["flagscheduler.dev/last-applied-schedule"] == last
        applied = [parse_time(by_name[name]["status"]["appliedAt"]) for _, name in sorted(schedules)]
        assert applied == sorted(applied), f"{flag}: schedules applied out of order"
    assert (doubled, lost) == (0, 0), f"{doubled} doubled, {lost} lost of {total}"
    return {"doubled": doubled, "lost": lost, "in_flight_at_kill": len(flag_patches(cluster, (504,)))}


def test_leader_killed_every_five_seconds_applies_each_schedule_exactly_once(
    cluster: Cluster, replicas: Replicas, api_client: k8s.ApiClient, record_property: Any
) -> None:
    leases = k8s.CoordinationV1Api(api_client)
    for _ in range(3):
        replicas.start_one()
    wait_for(lambda: replicas.holder(leases) in replicas.live, 20, what="a leader")
    start = in_seconds(12)
    per_flag = create_workload(cluster, flags=50, schedules=500, start=start, spread_s=30)

    kills: list[float] = []
    wait_for(lambda: time.time() >= start.timestamp(), 20, interval=0.05)
    while time.time() < start.timestamp() + 30:
        holder = wait_for(lambda: (h := replicas.holder(leases)) in replicas.live and h, 15, what="a live leader")
        kills.append(time.time())
        replicas.kill(holder)
        time.sleep(5)

    wait_for(
        lambda: all(s.get("status", {}).get("phase") == "Applied" for s in cluster.custom.list_namespaced_custom_object(
            "flagscheduler.dev", "v1alpha1", cluster.ns, "flagschedules")["items"]),
        120, interval=0.5, what="every schedule Applied",
    )
    counts = assert_exactly_once(cluster, per_flag)

    # Failover time: a kill until the next flag change any replica makes.
    changes = sorted(parse_time(e["requestReceivedTimestamp"]).timestamp() for e in flag_patches(cluster))
    failovers = [next(c for c in changes if c > k) - k for k in kills if any(c > k for c in changes)]
    assert len(kills) >= 4 and len(failovers) == len(kills)
    median = statistics.median(failovers)
    record_property("failover_median_s", round(median, 2))
    print(f"\nfailover: {len(kills)} leader kills, leader killed -> next schedule applied: "
          f"median {median:.2f} s, max {max(failovers):.2f} s; {counts}")
    acquired = [line for line in replicas.log_lines() if line.get("event") == "leader.acquired"]
    assert len(acquired) >= len(kills) + 1


def test_apiserver_restart_mid_run_recovers_without_loss_or_double(
    cluster: Cluster, replicas: Replicas, api_client: k8s.ApiClient, control_plane: ControlPlane
) -> None:
    leases = k8s.CoordinationV1Api(api_client)
    for _ in range(3):
        replicas.start_one()
    wait_for(lambda: replicas.holder(leases) in replicas.live, 20, what="a leader")
    start = in_seconds(8)
    per_flag = create_workload(cluster, flags=20, schedules=200, start=start, spread_s=20)

    wait_for(lambda: time.time() >= start.timestamp() + 6, 30, interval=0.05)
    control_plane.restart_apiserver()  # etcd keeps the data; every watch and the Lease renewal break

    wait_for(
        lambda: all(s.get("status", {}).get("phase") == "Applied" for s in cluster.custom.list_namespaced_custom_object(
            "flagscheduler.dev", "v1alpha1", cluster.ns, "flagschedules")["items"]),
        120, interval=0.5, what="every schedule Applied after the restart",
    )
    assert_exactly_once(cluster, per_flag)
    assert all(op.proc is not None and op.proc.poll() is None for op in replicas.live.values()), "a replica died"
