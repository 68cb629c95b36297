"""High availability: exactly once under leader kills and an API server restart, warm followers, clean hand-over.

The operators run as separate OS processes authenticated as the ServiceAccount from ``manifests/``
(a TokenRequest token), so the RBAC we ship is the RBAC exercised here, and they elect a leader with
the Lease in ``flag-scheduler-system``. Every count below comes from the API server: the schedules'
status, the flags' final spec, and the audit log's record of each flag PATCH. How fast a new leader
takes over is measured by ``make bench`` (``failover_median_s``), not asserted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from conftest import REPO, Kubectl, install
from controlplane import ControlPlane, free_port
from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, scrape_metrics, wait_for

from .conftest import TEST_LEASES, service_account_kubeconfig

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

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, election: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_dir = log_dir
        self.election = election
        self.lease = f"chaos-{namespace}"
        self.live: dict[str, OperatorProcess] = {}
        self.dead: list[OperatorProcess] = []
        self._serial = 0

    def start_one(self, **env: str) -> OperatorProcess:
        self._serial += 1
        identity = f"replica-{self._serial}"
        op = OperatorProcess(
            self.kubeconfig, [self.namespace], self.log_dir / f"{identity}.log",
            FLAG_SCHEDULER_IDENTITY=identity,
            FLAG_SCHEDULER_LEASE_NAMESPACE=OPERATOR_NAMESPACE,
            FLAG_SCHEDULER_LEASE_NAME=self.lease,
            **self.election, **env,
        )
        self.live[identity] = op  # before start: stopped at teardown whatever happens
        return op.start()

    def lease_spec(self, leases: k8s.CoordinationV1Api) -> k8s.V1LeaseSpec | None:
        try:
            return leases.read_namespaced_lease(self.lease, OPERATOR_NAMESPACE).spec
        except k8s.ApiException:
            return None

    def holder(self, leases: k8s.CoordinationV1Api) -> str | None:
        spec = self.lease_spec(leases)
        return spec.holder_identity if spec else None

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
    group = Replicas(operator_kubeconfig, namespace, tmp_path, FAST_ELECTION)
    yield group
    group.stop()


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


def all_applied(cluster: Cluster) -> bool:
    items = cluster.custom.list_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "flagschedules")
    return all(s.get("status", {}).get("phase") == "Applied" for s in items["items"])


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


@pytest.mark.long
def test_leader_killed_every_five_seconds_applies_each_schedule_exactly_once(
    cluster: Cluster, replicas: Replicas, api_client: k8s.ApiClient
) -> None:
    leases = k8s.CoordinationV1Api(api_client)
    for _ in range(3):
        replicas.start_one()
    wait_for(lambda: replicas.holder(leases) in replicas.live, 30, what="a leader")
    start = in_seconds(12)
    per_flag = create_workload(cluster, flags=50, schedules=500, start=start, spread_s=30)

    kills: list[float] = []
    wait_for(lambda: time.time() >= start.timestamp(), 30, interval=0.05)
    while time.time() < start.timestamp() + 27:  # schedules fall due after every kill
        holder = wait_for(lambda: (h := replicas.holder(leases)) in replicas.live and h, 30, what="a live leader")
        kills.append(time.time())
        replicas.kill(holder)
        time.sleep(5)

    wait_for(lambda: all_applied(cluster), 180, interval=0.5, what="every schedule Applied")
    assert_exactly_once(cluster, per_flag)
    # After every kill a replica applied something again, and each took the Lease anew.
    changes = [parse_time(e["requestReceivedTimestamp"]).timestamp() for e in flag_patches(cluster)]
    assert all(any(c > k for c in changes) for k in kills)
    acquired = [line for line in replicas.log_lines() if line.get("event") == "leader.acquired"]
    assert len(acquired) >= len(kills) + 1


# Long enough that a hand-over by release is told apart from one by expiry.
SLOW_ELECTION = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "8",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "6",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}


def healthz(port: int) -> int:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status


def wait_healthy(port: int) -> None:
    """Wait until /healthz answers 200 (the endpoint comes up a moment after ``operator.started``)."""
    def ok() -> bool:
        try:
            return healthz(port) == 200
        except OSError:
            return False
    wait_for(ok, 30, what=f"/healthz on port {port} to answer 200")


def test_followers_stay_warm_and_ready_and_a_clean_stop_hands_the_lease_over(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path, api_client: k8s.ApiClient
) -> None:
    leases = k8s.CoordinationV1Api(api_client)
    group = Replicas(operator_kubeconfig, namespace, tmp_path, SLOW_ELECTION)
    ports = {name: {"FLAG_SCHEDULER_METRICS_PORT": str(free_port()), "FLAG_SCHEDULER_HEALTH_PORT": str(free_port())}
             for name in ("replica-1", "replica-2")}
    try:
        a = group.start_one(**ports["replica-1"])
        wait_for(lambda: group.holder(leases) == "replica-1", 30, what="replica-1 to lead")
        b = group.start_one(**ports["replica-2"])
        metrics = {name: int(env["FLAG_SCHEDULER_METRICS_PORT"]) for name, env in ports.items()}
        health = {name: int(env["FLAG_SCHEDULER_HEALTH_PORT"]) for name, env in ports.items()}
        wait_for(lambda: scrape_metrics(metrics["replica-1"])["flag_scheduler_is_leader"] == 1, 30)
        # A follower is ready (readiness reads /healthz) and says it does not lead.
        wait_healthy(health["replica-2"])
        assert scrape_metrics(metrics["replica-2"])["flag_scheduler_is_leader"] == 0

        # The follower learns of a schedule from its own watch while replica-1 leads (and claims it).
        cluster.flag("ha", enabled=False, rollout=0)
        cluster.schedule("while-frozen", "ha", in_seconds(4), {"rolloutPercentage": 10})
        wait_for(lambda: cluster.status("while-frozen").get("claimedBy") == "replica-1", 30, what="replica-1's claim")
        assert a.proc is not None and b.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)  # the leader hangs: its Lease expires, replica-2 takes over
        try:
            status = cluster.wait_phase("while-frozen", "Applied", timeout=60)
            assert status["claimedBy"] == "replica-2"
            assert scrape_metrics(metrics["replica-2"])["flag_scheduler_is_leader"] == 1
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        # replica-1 wakes up deposed: it says so, its gauge drops to 0, and it stays ready as a follower.
        wait_for(lambda: any(line.get("event") == "leader.lost" for line in a.log_lines()), 30, what="leader.lost")
        wait_for(lambda: scrape_metrics(metrics["replica-1"])["flag_scheduler_is_leader"] == 0, 30)
        assert healthz(health["replica-1"]) == 200

        # A clean stop releases the Lease: replica-1 takes over before replica-2's Lease could expire.
        renewed = group.lease_spec(leases).renew_time
        b.stop()
        assert any(line.get("event") == "leader.released" for line in b.log_lines())
        wait_for(lambda: group.holder(leases) == "replica-1", 30, what="replica-1 to lead again")
        acquired = group.lease_spec(leases).acquire_time
        assert acquired < renewed + timedelta(seconds=8), (renewed, acquired)
        cluster.schedule("after-handover", "ha", in_seconds(1), {"rolloutPercentage": 20})
        assert cluster.wait_phase("after-handover", "Applied", timeout=30)["claimedBy"] == "replica-1"
    finally:
        group.stop()


@pytest.fixture
def own_control_plane() -> Iterator[tuple[ControlPlane, Path]]:
    """A control plane for one test (one that restarts its API server): manifests applied, the SA's kubeconfig."""
    with ControlPlane(fsync=False, gogc=400) as cp:
        kubectl = Kubectl(cp)
        install(kubectl, REPO / "manifests" / "default")
        kubectl("apply", "--server-side", "-f", "-", input=TEST_LEASES)  # the replicas elect under their own Lease name
        yield cp, service_account_kubeconfig(cp, kubectl)


@pytest.mark.long
def test_apiserver_restart_mid_run_recovers_without_loss_or_double(
    own_control_plane: tuple[ControlPlane, Path], tmp_path: Path
) -> None:
    """Restarts the API server of its own control plane, so no other test runs against a restarted one."""
    cp, kubeconfig = own_control_plane
    api_client = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig()))
    Kubectl(cp)("create", "namespace", "restart")
    cluster = Cluster(api_client, cp, "restart")
    leases = k8s.CoordinationV1Api(api_client)
    replicas = Replicas(kubeconfig, "restart", tmp_path, FAST_ELECTION)
    try:
        for _ in range(3):
            replicas.start_one()
        wait_for(lambda: replicas.holder(leases) in replicas.live, 30, what="a leader")
        start = in_seconds(8)
        per_flag = create_workload(cluster, flags=20, schedules=200, start=start, spread_s=20)

        wait_for(lambda: time.time() >= start.timestamp() + 6, 30, interval=0.05)
        cp.restart_apiserver()  # etcd keeps the data; every watch and the Lease renewal break

        wait_for(lambda: all_applied(cluster), 180, interval=0.5, what="every schedule Applied after the restart")
        assert_exactly_once(cluster, per_flag)
        assert all(op.proc is not None and op.proc.poll() is None for op in replicas.live.values()), "a replica died"
    finally:
        replicas.stop()
        api_client.close()


async def test_the_lease_is_renewed_while_the_operators_event_loop_is_busy(
    operator_kubeconfig: Path, api_client: k8s.ApiClient, namespace: str
) -> None:
    """A leader whose event loop is busy (a burst of due schedules) keeps renewing its Lease.

    The election runs in this process, as the operator runs it, against the real API server, as the
    shipped ServiceAccount. The test then holds the operator's event loop with a blocking sleep, as a
    burst's CPU work does: nothing on that loop runs. The Lease must be renewed meanwhile (the
    renewals run on their own loop), which the admin sees as new ``renewTime`` values.
    """
    from kubernetes.aio import client as aio_client
    from kubernetes.aio import config as aio_config

    from flag_scheduler.config import Settings
    from flag_scheduler.scheduling.leader import Leadership

    async def lease_client() -> aio_client.ApiClient:  # as the shipped ServiceAccount
        configuration = aio_client.Configuration()
        await aio_config.load_kube_config(config_file=str(operator_kubeconfig), client_configuration=configuration)
        return aio_client.ApiClient(configuration)
    name = f"busy-{namespace}"
    settings = Settings(identity=name, lease_name=name, lease_namespace=OPERATOR_NAMESPACE,
                        lease_duration_seconds=3, renew_deadline_seconds=2.5, retry_period_seconds=1)
    led, stopped = asyncio.Event(), []

    async def on_start() -> None:
        led.set()

    async def on_stop() -> None:
        stopped.append(True)

    leadership = Leadership(settings, lease_client, on_start, on_stop)
    election = asyncio.create_task(leadership.run())
    leases = k8s.CoordinationV1Api(api_client)
    try:
        await asyncio.wait_for(led.wait(), 30)
        renewals: set[str] = set()
        for _ in range(16):  # eight seconds, on the loop and blocking it: nothing else on it runs
            spec = leases.read_namespaced_lease(name, OPERATOR_NAMESPACE).spec
            assert spec.holder_identity == name
            renewals.add(spec.renew_time.isoformat())
            time.sleep(0.5)
        # Renewed about once a second; a renewal that was in flight when the block began adds one at most.
        assert len(renewals) >= 3, f"the Lease was not renewed while the event loop was busy: {sorted(renewals)}"
        await asyncio.sleep(0)
        assert leadership.leading and not stopped
    finally:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await leadership.release()
        await leadership.close()
        leases.delete_namespaced_lease(name, OPERATOR_NAMESPACE)
