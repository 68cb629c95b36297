"""The README's own commands, run as a new user runs them: make cluster-up, install, run, deploy, cluster-down.

Each test starts its own control plane with ``make cluster-up`` (state file in the test's temporary
directory, so a developer's own ``.cluster`` is never touched) and ends it with ``make
cluster-down``, which must leave no process of that control plane behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from conftest import REPO
from controlplane import _die_with_parent, free_port
from operator_harness import wait_for

README = (REPO / "README.md").read_text()
KUBECTL_LINE = re.compile(r"^(KUBECONFIG|KUBECTL)=(.+)$", re.M)


class LocalCluster:
    """A control plane from ``make cluster-up``, and ``make`` with its KUBECONFIG and KUBECTL set."""

    def __init__(self, state_dir: Path) -> None:
        self.state_file = state_dir / "state.json"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "FLAG_SCHEDULER_"))}
        self.env["FLAG_SCHEDULER_CLUSTER_STATE"] = str(self.state_file)
        self.env["MAKEFLAGS"] = ""  # never inherit -j or -n from an outer make

    def make(self, *targets: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["make", "-s", *targets], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"make {' '.join(targets)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self) -> None:
        out = self.make("cluster-up").stdout
        self.env.update(dict(KUBECTL_LINE.findall(out)))
        assert {"KUBECONFIG", "KUBECTL"} <= self.env.keys(), out

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.env["KUBECTL"], *args], env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def processes(self) -> list[int]:
        """Every live process of this control plane: serve, its children, anything using its directory."""
        state = self.state()
        pids = {state["pid"], *state.get("components", [])}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if state.get("dir", "\0") in (proc / "cmdline").read_bytes().decode(errors="replace"):
                        pids.add(int(proc.name))
                except OSError:
                    continue
        return sorted(p for p in pids if _running(p))


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path)
    yield cluster
    if cluster.state_file.exists():  # the test failed before its own cluster-down
        cluster.make("cluster-down", check=False)


def assert_down_leaves_nothing(cluster: LocalCluster, expect: str) -> str:
    """``make cluster-down``: says ``expect`` ("stopped"/"killed"), and no process, file or directory remains."""
    state = cluster.state()
    before = cluster.processes()
    assert state["pid"] in before and len(before) >= 4, f"serve and three components should run: {before}"
    out = cluster.make("cluster-down").stdout
    assert f"control plane {expect}" in out, out
    left = [p for p in before if _running(p)]
    assert not left, f"cluster-down left processes running: {left}"
    assert not cluster.state_file.exists()
    assert not Path(state["dir"]).exists()
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def readme_manifest(due: datetime) -> str:
    """The README's "Using it" manifest (flag + schedule), its scheduledAt moved to ``due``."""
    block = README.split("## Using it", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert "kind: FlagSchedule" in block and "scheduledAt:" in block
    return re.sub(r'scheduledAt: "[^"]+"', f'scheduledAt: "{due:%Y-%m-%dT%H:%M:%SZ}"', block)


@pytest.mark.long
def test_a_new_user_runs_the_readme_commands_against_a_fresh_cluster(local_cluster: LocalCluster) -> None:
    c = local_cluster
    c.up()
    assert "serverside-applied" in c.make("install").stdout
    c.kubectl("get", "crd", "featureflags.flagscheduler.dev", "flagschedules.flagscheduler.dev")

    # Its ports are free ones: other runs on this machine may hold the defaults.
    ports = {f"FLAG_SCHEDULER_{p}_PORT": str(free_port()) for p in ("HEALTH", "READY", "METRICS", "SYNC", "OFREP")}
    # Without its Lease namespace the operator stops at once and says what to do.
    bare = subprocess.run([str(REPO / ".venv/bin/flag-scheduler")], env={**c.env, **ports}, capture_output=True,
                          text=True, timeout=60)
    assert bare.returncode != 0
    assert "the Lease namespace 'flag-scheduler-system' does not exist: create it" in bare.stderr, bare.stderr
    assert "FLAG_SCHEDULER_LEASE_NAMESPACE" in bare.stderr

    # `make run` creates that namespace and runs the operator; the README's manifest is applied on time.
    log = Path(c.state_file.parent / "run.log")
    with open(log, "wb") as out:
        run = subprocess.Popen(["make", "-s", "run"], cwd=REPO, env={**c.env, **ports}, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait_for(lambda: "leader.acquired" in log.read_text() or run.poll() is not None, 60,
                 what="make run to start leading")
        assert run.poll() is None, log.read_text()
        c.kubectl("apply", "-f", "-", stdin=readme_manifest(datetime.now(UTC) + timedelta(seconds=3)))
        c.kubectl("wait", "fs/checkout-v2-go-live", "--for=condition=Applied", "--timeout=60s")
        table = c.kubectl("get", "ff,fs").stdout
        assert re.search(r"checkout-v2\s+true\s+25\s", table), table
        assert re.search(r"checkout-v2-go-live\s+checkout-v2\s+\S+\s+Applied\s", table), table
        # `make run` started the flag server too: an SDK's sync request gets the changed flag.
        with grpc.insecure_channel(f"127.0.0.1:{ports['FLAG_SCHEDULER_SYNC_PORT']}") as channel:
            served = wait_for(lambda: json.loads(sync_pb2_grpc.FlagSyncServiceStub(channel).FetchAllFlags(
                sync_pb2.FetchAllFlagsRequest(selector="default"), timeout=5).flag_configuration)["flags"]
                .get("checkout-v2", {}).get("targeting"), 30, what="the flag server to serve the 25 % rollout")
        assert served["fractional"][0] == ["on", 25]
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=30)
        # make itself ends at once; the scheduler and the flag server it started finish their clean stop.
        wait_for(lambda: not _group_alive(run.pid), 30, what="every process of make run to stop")
    assert "leader.released" in log.read_text()  # a clean stop hands the Lease back

    # `make deploy` renders manifests/default and applies it on top (no operator pod runs here).
    assert "deployment.apps/flag-scheduler serverside-applied" in c.make("deploy").stdout
    deployment = json.loads(c.kubectl("get", "deployment", "flag-scheduler", "-n", "flag-scheduler-system",
                                      "-o", "json").stdout)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "flag-scheduler"
    assert pod["containers"][0]["image"] == "flag-scheduler:0.1.0"
    c.kubectl("get", "serviceaccount/flag-scheduler", "role/flag-scheduler-leader-election",
              "-n", "flag-scheduler-system")
    c.kubectl("get", "clusterrole/flag-scheduler-operator", "clusterrolebinding/flag-scheduler-operator")
    server = json.loads(c.kubectl("get", "deployment", "flag-server", "-n", "flag-scheduler-system",
                                  "-o", "json").stdout)["spec"]["template"]["spec"]
    assert server["serviceAccountName"] == "flag-server" and server["containers"][0]["args"] == ["serve"]

    assert_down_leaves_nothing(c, "stopped")
    assert "no control plane running" in c.make("cluster-down").stdout


def _load(server: str, token: str, ca: Path, stop: threading.Event) -> None:
    """Keep the API server busy: open watches and a stream of writes until ``stop`` (errors ignored)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    n = 0
    while not stop.is_set():
        n += 1
        for req in (
            urllib.request.Request(f"{server}/api/v1/configmaps?watch=1&timeoutSeconds=300", headers=headers),
            urllib.request.Request(f"{server}/api/v1/namespaces/default/configmaps", method="POST", headers=headers,
                                   data=json.dumps({"metadata": {"name": f"load-{threading.get_ident()}-{n}"}}).encode()),
        ):
            try:
                urllib.request.urlopen(req, timeout=0.5, context=ctx).read(1)
            except Exception:  # noqa: BLE001, S110 - load only; a timeout leaves the watch open server-side
                pass


def test_cluster_down_stops_a_busy_control_plane_and_leaves_nothing(local_cluster: LocalCluster) -> None:
    c = local_cluster
    c.up()
    config = json.loads(c.kubectl("config", "view", "--raw", "-o", "json").stdout)
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"]["token"]
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(server, token, Path(c.state()["dir"]) / "ca.crt", stop),
                                daemon=True) for _ in range(8)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: int(c.kubectl("get", "configmaps", "-n", "default", "--no-headers").stdout.count("\n"))
                 >= 20, 60, what="the load to be under way")
        assert_down_leaves_nothing(c, "stopped")
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)


def test_cluster_down_kills_a_control_plane_that_does_not_stop(local_cluster: LocalCluster) -> None:
    c = local_cluster
    c.up()
    c.env["FLAG_SCHEDULER_CLUSTER_STOP_GRACE"] = "2"
    os.kill(c.state()["pid"], signal.SIGSTOP)  # serve hangs: it never acts on SIGTERM
    assert_down_leaves_nothing(c, "killed")
