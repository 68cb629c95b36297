"""The flag server's limits, each refusing with its documented status, against the real process.

Every limit is a ``FLAG_SCHEDULER_*`` setting (README, "Bounded serving"); the tests set small
values so that a handful of connections reach them. Clients are the real ones: gRPC's generated
stubs for flagd sync, ``requests`` and raw sockets for OFREP (a half-sent request is something
only a raw socket can send).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from controlplane import ControlPlane, free_port
from operator_harness import Cluster, FlagServerProcess, wait_for


@dataclass
class FlagServer:
    op: FlagServerProcess
    sync_port: int
    ofrep_port: int

    def ofrep(self, namespace: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ofrep_port}/{namespace}/ofrep/v1/evaluate/flags{path}"

    def channel(self) -> grpc.Channel:
        """A channel with a connection of its own (gRPC would otherwise share one per target)."""
        return grpc.insecure_channel(f"127.0.0.1:{self.sync_port}", options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
def flag_server(control_plane: ControlPlane, namespace: str, crds: None,
                tmp_path: Path) -> Iterator[Callable[..., FlagServer]]:
    started: list[FlagServerProcess] = []

    def start(**limits: str) -> FlagServer:
        sync_port, ofrep_port = free_port(), free_port()
        env = {f"FLAG_SCHEDULER_{k.upper()}": v for k, v in limits.items()}
        op = FlagServerProcess(control_plane.kubeconfig(), [namespace], tmp_path / f"flag-server-{len(started)}.log",
                               FLAG_SCHEDULER_SYNC_PORT=str(sync_port), FLAG_SCHEDULER_OFREP_PORT=str(ofrep_port),
                               FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1", **env)
        started.append(op)
        return FlagServer(op.start(), sync_port, ofrep_port)

    yield start
    for op in started:
        op.stop()


def sync_stream(channel: grpc.Channel, namespace: str, timeout: float | None = None):  # noqa: ANN201
    return sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(
        sync_pb2.SyncFlagsRequest(selector=namespace), timeout=timeout)


def test_a_replica_at_its_stream_cap_answers_resource_exhausted(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    server = flag_server(sync_max_streams="2")
    with server.channel() as one, server.channel() as two, server.channel() as three:
        first, second = sync_stream(one, cluster.ns), sync_stream(two, cluster.ns)
        assert '"a"' in next(first).flag_configuration and '"a"' in next(second).flag_configuration
        with pytest.raises(grpc.RpcError) as refused:
            next(sync_stream(three, cluster.ns, timeout=10))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        # A slot freed is a slot a new client gets.
        wait_for(lambda: _first_message(three, cluster.ns), timeout=10, what="a stream once one was closed")


def _first_message(channel: grpc.Channel, namespace: str) -> bool:
    try:
        return '"a"' in next(sync_stream(channel, namespace, timeout=5)).flag_configuration
    except grpc.RpcError:
        return False


def test_one_connection_gets_no_more_streams_than_its_cap_while_another_connection_is_served(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    server = flag_server(sync_max_streams_per_connection="2")
    with server.channel() as greedy, server.channel() as other:
        streams = [sync_stream(greedy, cluster.ns) for _ in range(2)]
        assert all('"a"' in next(s).flag_configuration for s in streams)
        # HTTP/2 MAX_CONCURRENT_STREAMS: the client holds the third stream back; it never reaches
        # the server, and ends at its own deadline.
        with pytest.raises(grpc.RpcError) as held:
            next(sync_stream(greedy, cluster.ns, timeout=2))
        assert held.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert '"a"' in next(sync_stream(other, cluster.ns, timeout=10)).flag_configuration


def test_a_connection_past_its_maximum_age_is_closed_so_the_client_reconnects(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    server = flag_server(sync_max_connection_age_seconds="2", sync_max_connection_age_grace_seconds="1")
    with server.channel() as channel:
        stream = sync_stream(channel, cluster.ns)
        assert '"a"' in next(stream).flag_configuration
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)  # no flag changes: only the age limit ends it
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        # The same channel connects again (a provider retries the same way) and is served.
        assert '"a"' in next(sync_stream(channel, cluster.ns, timeout=10)).flag_configuration


def test_a_request_over_the_size_limit_is_refused_by_the_protocol(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    server = flag_server()
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as refused:
            next(sync_pb2_grpc.FlagSyncServiceStub(channel).SyncFlags(
                sync_pb2.SyncFlagsRequest(selector=cluster.ns, provider_id="p" * 4_000_000), timeout=10))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "pppppppppp" not in server.op.log_path.read_text()


# -- OFREP ---------------------------------------------------------------------------------------


def test_ofrep_refuses_a_deeply_nested_body_with_400_and_its_error_body(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    server = flag_server()
    for path in ("", "/a"):
        answer = requests.post(server.ofrep(cluster.ns, path), data=b"[" * 65_000, timeout=10)
        assert answer.status_code == 400
        assert answer.json()["errorCode"] == "PARSE_ERROR"
        assert answer.json()["errorDetails"] == "body: JSON nested too deeply"
    assert "Traceback" not in server.op.log_path.read_text()


def test_ofrep_refuses_a_body_over_the_limit_with_413(cluster: Cluster, flag_server: Callable[..., FlagServer]) -> None:
    server = flag_server(ofrep_max_body_bytes="2048")
    answer = requests.post(server.ofrep(cluster.ns), json={"context": {"x": "y" * 3000}}, timeout=10)
    assert answer.status_code == 413
    assert answer.json() == {"errorCode": "GENERAL", "errorDetails": "body: larger than 2048 bytes",
                             "metadata": {"flagSetId": cluster.ns}}  # every OFREP body carries metadata


def test_ofrep_answers_408_to_a_body_not_sent_in_time(cluster: Cluster, flag_server: Callable[..., FlagServer]) -> None:
    server = flag_server(ofrep_read_timeout_seconds="1")
    with socket.create_connection(("127.0.0.1", server.ofrep_port), timeout=20) as conn:
        conn.sendall(f"POST /{cluster.ns}/ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        answer = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"errorDetails": "body: not sent within 1 s"' in answer


def test_ofrep_closes_a_connection_whose_request_never_completes(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    server = flag_server(http_keepalive_timeout_seconds="1")
    with socket.create_connection(("127.0.0.1", server.ofrep_port), timeout=20) as conn:
        conn.sendall(f"POST /{cluster.ns}/ofrep/v1/eval".encode())  # headers never finished
        assert _read_all(conn) == b""  # closed by the server, before the client's 20 s


def test_ofrep_answers_503_to_a_connection_over_the_cap(cluster: Cluster, flag_server: Callable[..., FlagServer]) -> None:
    cluster.flag("a", enabled=True, rollout=100)
    server = flag_server(ofrep_max_connections="3")
    held = [socket.create_connection(("127.0.0.1", server.ofrep_port), timeout=20) for _ in range(3)]
    try:
        for conn in held:  # each connection is accepted and served before the next one is counted
            conn.sendall(f"POST /{cluster.ns}/ofrep/v1/evaluate/flags/a HTTP/1.1\r\nHost: x\r\n"
                         "Content-Length: 2\r\n\r\n{}".encode())
            assert conn.recv(12) == b"HTTP/1.1 200"
        with socket.create_connection(("127.0.0.1", server.ofrep_port), timeout=20) as extra:
            assert _read_all(extra).startswith(b"HTTP/1.1 503 ")
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: requests.post(server.ofrep(cluster.ns, "/a"), json={}, timeout=5).status_code == 200,
             what="a new connection served once the others closed")


def test_ofrep_echoes_at_most_a_short_prefix_of_what_the_client_sent(
    cluster: Cluster, flag_server: Callable[..., FlagServer]
) -> None:
    server = flag_server()
    key = "k" * 5000
    answer = requests.post(server.ofrep(cluster.ns, "/" + key), json={}, timeout=10)
    assert answer.status_code == 404 and answer.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert len(answer.text) < 1000, answer.text
    assert answer.json()["key"].endswith("... (5000 chars)")


def _read_all(conn: socket.socket) -> bytes:
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    return out


# -- a flood of readers against the flag server, while the scheduler works ---------------------------

FLOOD_STREAMS = 600  # over 6 connections (the per-connection cap is 100)
FLOOD_HALF_SENT = 100
MEMORY_LIMIT_MB = 512  # the flag-server Deployment's limit


def streams_open(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("flag_scheduler_sync_streams "))


def rss_mb(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_a_flood_of_readers_neither_delays_the_scheduler_nor_stops_the_flag_server_serving(
    cluster: Cluster, control_plane: ControlPlane, flag_server: Callable[..., FlagServer], tmp_path: Path
) -> None:
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext

    from operator_harness import OperatorProcess, in_seconds

    for i in range(20):
        cluster.flag(f"f-{i:02d}", enabled=False, rollout=100)
    scheduler = OperatorProcess(control_plane.kubeconfig(), [cluster.ns], tmp_path / "scheduler.log").start()
    metrics_port = free_port()
    server = flag_server(metrics_port=str(metrics_port))
    # A well-behaved application, connected before the flood.
    api.set_provider_and_wait(FlagdProvider(
        resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=server.sync_port, selector=cluster.ns,
        deadline_ms=5000, retry_backoff_ms=500, retry_backoff_max_ms=1000), domain="well-behaved")
    app = api.get_client("well-behaved")
    channels = [server.channel() for _ in range(FLOOD_STREAMS // 100)]
    half_sent: list[socket.socket] = []
    try:
        # Streams whose client never reads a message, and requests whose headers never finish.
        streams = [sync_stream(channels[i % len(channels)], cluster.ns) for i in range(FLOOD_STREAMS)]
        for _ in range(FLOOD_HALF_SENT):
            conn = socket.create_connection(("127.0.0.1", server.ofrep_port), timeout=20)
            conn.sendall(f"POST /{cluster.ns}/ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: x\r\n".encode())
            half_sent.append(conn)
        wait_for(lambda: streams_open(metrics_port) >= FLOOD_STREAMS + 1, timeout=60,
                 what="every flood stream open on the flag server")
        for i in range(5):
            cluster.schedule(f"on-{i}", f"f-{i:02d}", in_seconds(3 + i * 0.2), {"enabled": True})
        for i in range(5):
            cluster.wait_phase(f"on-{i}", "Applied", timeout=30)
        # The application sees every change; a new OFREP client is served; memory stays in bounds.
        wait_for(lambda: all(app.get_boolean_value(f"f-{i:02d}", False, EvaluationContext("u")) for i in range(5)),
                 timeout=20, what="the well-behaved client to see the scheduled changes")
        assert requests.post(server.ofrep(cluster.ns, "/f-00"), json={}, timeout=10).json()["value"] is True
        assert rss_mb(server.op.proc.pid) < MEMORY_LIMIT_MB
        assert streams_open(metrics_port) >= FLOOD_STREAMS + 1, "the flood was still on"
        assert all(s.running() for s in streams)
    finally:
        for conn in half_sent:
            conn.close()
        for channel in channels:
            channel.close()
        api.shutdown()
        scheduler.stop()
    events = [line.get("event") for line in scheduler.log_lines()]
    assert "leader.acquired" in events and "leader.lost" not in events
