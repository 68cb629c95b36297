"""Applications read the flags through the real OpenFeature SDK, against the real control plane.

The clients are the published ones: ``openfeature-sdk`` with ``openfeature-provider-flagd`` in
in-process mode pointed at the flag server's sync port, and ``openfeature-provider-ofrep`` pointed
at its OFREP port. The flag server (``flag-scheduler serve``) runs as its own process, with the
token of its shipped read-only ServiceAccount, beside the scheduler that applies the schedules. Each client is created once and kept: seeing a change means the same client's next
evaluations change, without restarting it.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from kubernetes import client as k8s
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from conftest import REPO, Kubectl
from controlplane import ControlPlane, free_port
from .conftest import flag_server_kubeconfig
from operator_harness import Cluster, FlagServerProcess, OperatorProcess, in_seconds, wait_for

KEYS = [f"user-{i}" for i in range(10_000)]


@dataclass
class Served:
    """A flag-server process serving flags on free loopback ports (beside a scheduler process)."""

    op: FlagServerProcess
    sync_port: int
    ofrep_port: int
    metrics_port: int

    def ofrep_url(self, namespace: str) -> str:
        return f"http://127.0.0.1:{self.ofrep_port}/{namespace}"

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.fixture
def cluster(api_client: k8s.ApiClient, control_plane: ControlPlane, namespace: str, crds: None) -> Cluster:
    return Cluster(api_client, control_plane, namespace)


@pytest.fixture
def served(control_plane: ControlPlane, kubectl: Kubectl, operator_manifests: None, namespace: str,
           tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    ports = {"sync_port": free_port(), "ofrep_port": free_port(), "metrics_port": free_port()}
    scheduler = OperatorProcess(control_plane.kubeconfig(), [namespace], tmp_path / "scheduler.log").start()
    server = FlagServerProcess(
        flag_server_kubeconfig(control_plane, kubectl), [namespace], tmp_path / "flag-server.log",
        FLAG_SCHEDULER_SYNC_PORT=str(ports["sync_port"]), FLAG_SCHEDULER_OFREP_PORT=str(ports["ofrep_port"]),
        FLAG_SCHEDULER_METRICS_PORT=str(ports["metrics_port"]), FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1",
    ).start()
    yield Served(server, **ports)
    server.stop()
    scheduler.stop()
    # Every change above reached the clients through the watch, not through LISTs repeated after failures.
    # A test that replaces the CRDs (exclusive) may meet the API server's 429 "Too Many Requests" on
    # a watch while it re-initializes the resource's storage: the server's answer, retried as asked.
    crd_change = request.node.get_closest_marker("exclusive") is not None
    failed = [line for line in server.log_lines() if line.get("event") == "flags.watch_failed"
              and not (crd_change and line.get("status") == 429)]
    assert failed == [], failed[:3]


@pytest.fixture
def sdk() -> Iterator[Callable[..., OpenFeatureClient]]:
    """Make OpenFeature clients, each with its own provider (SDK domain); all shut down afterwards."""
    made = 0

    def make(provider: object) -> OpenFeatureClient:
        nonlocal made
        made += 1
        api.set_provider_and_wait(provider, domain=f"client-{made}")
        return api.get_client(f"client-{made}")

    yield make
    api.shutdown()


def in_process(served: Served, namespace: str) -> FlagdProvider:
    """flagd's provider in in-process mode on the operator's sync port, selector = namespace."""
    return FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=served.sync_port, selector=namespace,
        deadline_ms=5000, retry_backoff_ms=500, retry_backoff_max_ms=1000,
    )


def value(client: OpenFeatureClient, flag: str, key: str = "user-1", default: bool = False) -> bool:
    return client.get_boolean_value(flag, default, EvaluationContext(key))


def known(client: OpenFeatureClient, *flags: str) -> None:
    """Wait until the client has the flags: one just created reaches the operator's watch a moment later."""
    for flag in flags:
        wait_for(lambda f=flag: client.get_boolean_details(f, False, EvaluationContext("u")).error_code is None,
                 timeout=20, what=f"the client to know flag {flag}")


def test_clients_of_both_protocols_see_a_scheduled_change_without_restarting(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]
) -> None:
    # Connected before the namespace has any flag: the flag created next is pushed to it.
    sync_client = sdk(in_process(served, cluster.ns))
    ofrep_client = sdk(OFREPProvider(served.ofrep_url(cluster.ns)))
    cluster.flag("checkout-v2", enabled=False, rollout=100)
    known(sync_client, "checkout-v2")
    known(ofrep_client, "checkout-v2")
    # The code default is True: False can only come from the operator.
    assert value(sync_client, "checkout-v2", default=True) is False
    assert value(ofrep_client, "checkout-v2", default=True) is False
    details = sync_client.get_boolean_details("checkout-v2", True, EvaluationContext("user-1"))
    assert (details.variant, details.reason, details.error_code) == ("off", "STATIC", None)

    cluster.schedule("go-live", "checkout-v2", in_seconds(3), {"enabled": True})
    wait_for(lambda: value(sync_client, "checkout-v2"), timeout=20, what="the sync client to see on")
    wait_for(lambda: value(ofrep_client, "checkout-v2"), timeout=20, what="the OFREP client to see on")
    # The flag is written before the schedule's status: a client can see the change first.
    cluster.wait_phase("go-live", "Applied", timeout=10)
    ofrep = ofrep_client.get_boolean_details("checkout-v2", False, EvaluationContext("user-1"))
    assert (ofrep.value, ofrep.variant, ofrep.reason) == (True, "on", "STATIC")
    assert served.metric("flag_scheduler_sync_streams") == 1


def test_a_rollout_reaches_thirty_then_sixty_percent_of_the_same_users(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]
) -> None:
    cluster.flag("new-search", enabled=True, rollout=30)
    client = sdk(in_process(served, cluster.ns))
    ofrep_client = sdk(OFREPProvider(served.ofrep_url(cluster.ns)))
    known(client, "new-search")
    on_at_30 = {k for k in KEYS if value(client, "new-search", k)}
    assert 2800 <= len(on_at_30) <= 3200
    # Both protocols run flagd's evaluator on the same definition: they agree key by key.
    sample = KEYS[:200]
    assert [value(ofrep_client, "new-search", k) for k in sample] == [k in on_at_30 for k in sample]

    cluster.schedule("grow", "new-search", in_seconds(2), {"rolloutPercentage": 60})
    wait_for(lambda: sum(value(client, "new-search", k) for k in KEYS[:300]) > len(on_at_30 & set(KEYS[:300])),
             timeout=20, what="the rollout to grow in the client")
    on_at_60 = {k for k in KEYS if value(client, "new-search", k)}
    assert 5800 <= len(on_at_60) <= 6200
    assert on_at_30 <= on_at_60, f"{len(on_at_30 - on_at_60)} users lost the feature when the rollout grew"


def test_clients_keep_evaluating_through_a_flag_server_restart_and_reconnect(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]
) -> None:
    cluster.flag("banner", enabled=True, rollout=100)
    client = sdk(in_process(served, cluster.ns))
    known(client, "banner")
    assert value(client, "banner") is True

    with grpc.insecure_channel(f"127.0.0.1:{served.sync_port}") as channel:
        stream = sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(sync_pb2.SyncFlagsRequest(selector=cluster.ns))
        assert '"banner"' in next(stream).flag_configuration
        served.op.stop()  # a clean shutdown ends every stream UNAVAILABLE, which every provider retries
        with pytest.raises(grpc.RpcError):
            list(stream)
        assert stream.code() == grpc.StatusCode.UNAVAILABLE and "reconnect" in stream.details()
    cluster.custom.patch_namespaced_custom_object(
        "flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", "banner", {"spec": {"enabled": False}}
    )
    assert value(client, "banner") is True, "with no server, the client keeps the last flags it had"
    served.op.start()
    wait_for(lambda: value(client, "banner", default=True) is False, timeout=30,
             what="the reconnected client to see the change made while the flag server was down")

    cluster.schedule("back-on", "banner", in_seconds(2), {"enabled": True})
    wait_for(lambda: value(client, "banner"), timeout=20, what="a scheduled change after the restart")
    assert served.metric("flag_scheduler_sync_streams") == 1


def test_a_deleted_flag_is_flag_not_found(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient]
) -> None:
    cluster.flag("doomed", enabled=True, rollout=100)
    cluster.flag("kept", enabled=True, rollout=100)
    sync_client = sdk(in_process(served, cluster.ns))
    ofrep_client = sdk(OFREPProvider(served.ofrep_url(cluster.ns)))
    known(sync_client, "doomed", "kept")
    assert value(sync_client, "doomed") is True and value(ofrep_client, "doomed") is True

    cluster.custom.delete_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", "doomed")
    for client in (sync_client, ofrep_client):
        details = wait_for(
            lambda c=client: (d := c.get_boolean_details("doomed", True, EvaluationContext("u"))).error_code and d,
            timeout=20, what="FLAG_NOT_FOUND",
        )
        assert (details.error_code, details.value) == (ErrorCode.FLAG_NOT_FOUND, True)
        assert value(client, "kept") is True


def test_ofrep_bulk_evaluation_answers_304_until_a_flag_changes(cluster: Cluster, served: Served) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    cluster.flag("b", enabled=True, rollout=50)
    url = served.ofrep_url(cluster.ns) + "/ofrep/v1/evaluate/flags"
    body = {"context": {"targetingKey": "user-7"}}
    wait_for(lambda: len(requests.post(url, json=body, timeout=5).json()["flags"]) == 2, what="both flags served")
    first = requests.post(url, json=body, timeout=5)
    assert first.status_code == 200
    flags = {f["key"]: f for f in first.json()["flags"]}
    assert set(flags) == {"a", "b"} and flags["a"]["value"] is True and flags["a"]["variant"] == "on"
    etag = first.headers["ETag"]
    assert requests.post(url, json=body, headers={"If-None-Match": etag}, timeout=5).status_code == 304
    other = requests.post(url, json={"context": {"targetingKey": "user-8"}}, headers={"If-None-Match": etag}, timeout=5)
    assert other.status_code == 200, "the answer depends on the context, so the ETag does too"

    cluster.custom.patch_namespaced_custom_object(
        "flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", "a", {"spec": {"enabled": False}}
    )
    changed = wait_for(lambda: (r := requests.post(url, json=body, headers={"If-None-Match": etag}, timeout=5))
                       .status_code == 200 and r, timeout=20, what="a 200 after the change")
    assert changed.headers["ETag"] != etag
    assert {f["key"]: f["value"] for f in changed.json()["flags"]}["a"] is False


def test_bad_requests_are_refused_naming_what_is_wrong(cluster: Cluster, served: Served) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    base = served.ofrep_url(cluster.ns) + "/ofrep/v1/evaluate/flags"
    wait_for(lambda: requests.post(base + "/a", json={}, timeout=5).status_code == 200, what="flag a served")
    bad_context = requests.post(base + "/a", json={"context": "user-1"}, timeout=5)
    assert bad_context.status_code == 400
    assert bad_context.json() == {"key": "a", "errorCode": "INVALID_CONTEXT", "errorDetails": "context: must be a JSON object",
                                  "metadata": {"flagSetId": cluster.ns}}
    not_json = requests.post(base, data=b"{", headers={"Content-Type": "application/json"}, timeout=5)
    assert not_json.status_code == 400 and not_json.json()["errorCode"] == "PARSE_ERROR"
    bad_namespace = requests.post(f"http://127.0.0.1:{served.ofrep_port}/Not_A_Namespace/ofrep/v1/evaluate/flags",
                                  json={}, timeout=5)
    assert bad_namespace.status_code == 400 and "not a namespace name" in bad_namespace.json()["errorDetails"]

    # The sync service, through the protocol's generated client: a selector is required.
    with grpc.insecure_channel(f"127.0.0.1:{served.sync_port}") as channel:
        stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "selector: empty" in refused.value.details()
        # The header wins over the (deprecated) request field, as in flagd.
        fetched = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="nope"), timeout=5,
                                     metadata=(("flagd-selector", cluster.ns),))
        assert '"a":' in fetched.flag_configuration
        by_flag_set = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector=f"flagSetId={cluster.ns}"), timeout=5)
        assert by_flag_set.flag_configuration == fetched.flag_configuration
        with pytest.raises(grpc.RpcError) as not_a_name:
            stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="Not_A_Namespace"), timeout=5)
        assert not_a_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a namespace name" in not_a_name.value.details()
        empty = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="no-flags-here"), timeout=5)
        assert '"flags":{}' in empty.flag_configuration


def test_a_second_process_on_a_port_in_use_stops_naming_the_setting(
    control_plane: ControlPlane, namespace: str, served: Served, tmp_path: Path
) -> None:
    second = FlagServerProcess(control_plane.kubeconfig(), [namespace], tmp_path / "second.log",
                               FLAG_SCHEDULER_SYNC_PORT=str(served.sync_port), FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1")
    proc = subprocess.run([sys.executable, "-m", "flag_scheduler", "serve"], env=second.env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert f"FLAG_SCHEDULER_SYNC_PORT: cannot listen on 127.0.0.1:{served.sync_port}" in proc.stderr


def test_the_service_and_the_network_policy_are_accepted_by_the_api_server(
    kubectl: Kubectl, operator_manifests: None
) -> None:
    service = kubectl.json("get", "service", "flag-scheduler-flags", "-n", "flag-scheduler-system")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc-sync": (8015, "sync"), "http-ofrep": (8016, "ofrep")
    }
    applied = kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                      "-k", str(REPO / "manifests" / "network-policy"))
    assert "networkpolicy.networking.k8s.io/flag-scheduler serverside-applied (server dry run)" in applied.stdout
