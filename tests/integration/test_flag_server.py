"""The flag server as a workload of its own: read-only identity, probes during start-up, no port on the
scheduler, and one unreadable namespace never stopping the others.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from kubernetes import client as k8s
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from conftest import REPO, Kubectl
from controlplane import ControlPlane, free_port
from operator_harness import Cluster, FlagServerProcess, OperatorProcess, in_seconds, wait_for

from .conftest import FLAG_SERVER_SERVICE_ACCOUNT, OPERATOR_NAMESPACE, flag_server_kubeconfig

FLAG_SERVER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{FLAG_SERVER_SERVICE_ACCOUNT}"


def fetch(port: int, namespace: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        return stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector=namespace), timeout=5).flag_configuration


def http_status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_flag_servers_service_account_may_read_flags_and_change_nothing(
    kubectl: Kubectl, control_plane: ControlPlane, cluster: Cluster, operator_manifests: None
) -> None:
    cluster.flag("checkout-v2", enabled=False, rollout=0)
    for verb in ("get", "list", "watch"):
        assert kubectl("auth", "can-i", verb, "featureflags.flagscheduler.dev", "-n", cluster.ns,
                       f"--as={FLAG_SERVER}").stdout.strip() == "yes"
    for verb, resource in (("patch", "featureflags.flagscheduler.dev"), ("update", "featureflags.flagscheduler.dev"),
                           ("delete", "featureflags.flagscheduler.dev"), ("get", "flagschedules.flagscheduler.dev"),
                           ("create", "events"), ("get", "leases.coordination.k8s.io"), ("get", "secrets")):
        answer = kubectl("auth", "can-i", verb, resource, "-n", cluster.ns, f"--as={FLAG_SERVER}", check=False)
        assert answer.stdout.strip() == "no", (verb, resource)

    # A real attempt with the ServiceAccount's own token: refused, and the flag is unchanged.
    kubeconfig = flag_server_kubeconfig(control_plane, kubectl)
    refused = kubectl("patch", "featureflag", "checkout-v2", "-n", cluster.ns, "--type=merge",
                      "-p", '{"spec":{"enabled":true}}', kubeconfig=kubeconfig, check=False)
    assert refused.returncode != 0
    assert (f'featureflags.flagscheduler.dev "checkout-v2" is forbidden: User "{FLAG_SERVER}" cannot patch'
            in refused.stderr), refused.stderr
    assert cluster.get_flag("checkout-v2")["spec"] == {"enabled": False, "rolloutPercentage": 0}


def test_the_scheduler_listens_on_no_flag_serving_port(
    cluster: Cluster, control_plane: ControlPlane, tmp_path: Path
) -> None:
    sync_port, ofrep_port = free_port(), free_port()
    scheduler = OperatorProcess(control_plane.kubeconfig(), [cluster.ns], tmp_path / "scheduler.log",
                                FLAG_SCHEDULER_SYNC_PORT=str(sync_port), FLAG_SCHEDULER_OFREP_PORT=str(ofrep_port),
                                FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1").start()
    try:
        cluster.flag("a", enabled=False)
        cluster.schedule("on", "a", in_seconds(1), {"enabled": True})
        cluster.wait_phase("on", "Applied")
        for port in (sync_port, ofrep_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        scheduler.stop()


class HeldProxy:
    """A TCP proxy to the API server that holds every connection until ``release``: a LIST that takes long."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.released = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        self.released.wait()
        upstream = socket.create_connection(self.target)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def held_proxy(control_plane: ControlPlane) -> Iterator[HeldProxy]:
    host, port = control_plane.server.removeprefix("https://").rsplit(":", 1)
    proxy = HeldProxy((host, int(port)))
    yield proxy
    proxy.released.set()
    proxy.close()


def test_healthz_answers_while_the_first_list_is_held_and_readyz_once_it_is_done(
    cluster: Cluster, control_plane: ControlPlane, held_proxy: HeldProxy, tmp_path: Path
) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    config = json.loads(control_plane.kubeconfig().read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{held_proxy.port}"
    kubeconfig = tmp_path / "held.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    health, sync_port = free_port(), free_port()
    server = FlagServerProcess(kubeconfig, [cluster.ns], tmp_path / "flag-server.log",
                               FLAG_SCHEDULER_HEALTH_PORT=str(health), FLAG_SCHEDULER_SYNC_PORT=str(sync_port),
                               FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1")
    server.started_event = "endpoints.serving"  # the LIST is held: the process is up, not serving
    server.start()
    try:
        assert http_status(f"http://127.0.0.1:{health}/healthz") == 200
        assert http_status(f"http://127.0.0.1:{health}/readyz") == 503
        with pytest.raises(ConnectionRefusedError):  # no empty flag set handed out before the LIST
            socket.create_connection(("127.0.0.1", sync_port), timeout=5).close()
        held_proxy.released.set()
        server.wait_log("flag_server.started")
        assert http_status(f"http://127.0.0.1:{health}/readyz") == 200
        assert '"a"' in fetch(sync_port, cluster.ns)
    finally:
        server.stop()


# -- one namespace that cannot be read --------------------------------------------------------------


@pytest.fixture
def two_namespaces(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    names = (f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}")
    for name in names:
        kubectl("create", "namespace", name)
    yield names
    kubectl("delete", "namespace", *names, "--wait=false", check=False)


def reader_rbac(kubectl: Kubectl, home: str, namespace: str) -> str:
    """The namespaced overlay's flag-reader Role and RoleBinding in ``namespace``, bound to ``home``'s account."""
    docs = [d for d in yaml.safe_load_all(
        kubectl("kustomize", str(REPO / "manifests" / "namespaced" / "watched-namespace")).stdout) if d]
    out = []
    for doc in docs:
        if doc["metadata"]["name"] != "flag-scheduler-flag-reader":
            continue
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = home
        out.append(json.dumps(doc))
    assert len(out) == 2
    return "\n---\n".join(out)


def test_a_namespace_whose_binding_is_gone_is_reported_and_skipped_and_comes_back(
    kubectl: Kubectl, control_plane: ControlPlane, api_client: k8s.ApiClient, crds: None,
    namespace: str, two_namespaces: tuple[str, str], tmp_path: Path,
) -> None:
    home = namespace
    kept, broken = two_namespaces
    kubectl("create", "serviceaccount", FLAG_SERVER_SERVICE_ACCOUNT, "-n", home)
    for ns in (kept, broken):
        kubectl("apply", "-f", "-", input=reader_rbac(kubectl, home, ns))
        Cluster(api_client, control_plane, ns).flag(f"flag-in-{ns}", enabled=True, rollout=100)
    # A namespace admin deletes the flag server's RoleBinding in their namespace; then it restarts.
    kubectl("delete", "rolebinding", "flag-scheduler-flag-reader", "-n", broken)
    token = kubectl("create", "token", FLAG_SERVER_SERVICE_ACCOUNT, "-n", home, "--duration=1h").stdout.strip()
    kubeconfig = control_plane.write_token_kubeconfig(f"flag-server-{home}", token)
    sync_port, metrics_port = free_port(), free_port()
    server = FlagServerProcess(kubeconfig, [kept, broken], tmp_path / "flag-server.log",
                               FLAG_SCHEDULER_SYNC_PORT=str(sync_port), FLAG_SCHEDULER_METRICS_PORT=str(metrics_port),
                               FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1").start()
    try:
        assert f'"flag-in-{kept}"' in fetch(sync_port, kept)
        assert '"flags":{}' in fetch(sync_port, broken)
        report = server.wait_log("flags.namespace_unreadable")
        assert (report["namespace"], report["status"]) == (broken, 403)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert f'flag_scheduler_namespace_readable{{namespace="{broken}"}} 0.0' in metrics
        assert f'flag_scheduler_namespace_readable{{namespace="{kept}"}} 1.0' in metrics

        kubectl("apply", "-f", "-", input=reader_rbac(kubectl, home, broken))  # access returns
        wait_for(lambda: f'"flag-in-{broken}"' in fetch(sync_port, broken), timeout=30,
                 what="the namespace to be served again without a restart")
    finally:
        server.stop()


def test_the_schedulers_healthz_answers_while_its_start_up_requests_are_held(
    cluster: Cluster, control_plane: ControlPlane, held_proxy: HeldProxy, tmp_path: Path
) -> None:
    config = json.loads(control_plane.kubeconfig().read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{held_proxy.port}"
    kubeconfig = tmp_path / "held.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    health = free_port()
    scheduler = OperatorProcess(kubeconfig, [cluster.ns], tmp_path / "scheduler.log",
                                FLAG_SCHEDULER_HEALTH_PORT=str(health))
    scheduler.started_event = "endpoints.serving"  # its LIST is held: up, not started
    scheduler.start()
    try:
        assert http_status(f"http://127.0.0.1:{health}/healthz") == 200
        assert "operator.started" not in [line.get("event") for line in scheduler.log_lines()]
        held_proxy.released.set()
        scheduler.wait_log("operator.started")
        assert http_status(f"http://127.0.0.1:{health}/healthz") == 200
    finally:
        scheduler.stop()


def test_the_schedulers_metrics_endpoint_drops_a_request_that_never_completes(
    cluster: Cluster, control_plane: ControlPlane, tmp_path: Path
) -> None:
    metrics = free_port()
    scheduler = OperatorProcess(control_plane.kubeconfig(), [cluster.ns], tmp_path / "scheduler.log",
                                FLAG_SCHEDULER_METRICS_PORT=str(metrics),
                                FLAG_SCHEDULER_HTTP_KEEPALIVE_TIMEOUT_SECONDS="1").start()
    try:
        with socket.create_connection(("127.0.0.1", metrics), timeout=20) as conn:
            conn.sendall(b"GET /metr")  # and nothing more
            assert conn.recv(1024) == b""  # closed by the scheduler, well before the client's 20 s
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert "flag_scheduler_is_leader" in text
    finally:
        scheduler.stop()
