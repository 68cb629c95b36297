"""The bench's cluster: control plane, install manifests, the operator's own identity, bulk creation, the operator.

The operator runs exactly as deployed: ``manifests/default`` is applied (CRDs, namespace, RBAC) and
the operator authenticates with a TokenRequest token of the shipped ServiceAccount, so it has the
shipped permissions and nothing more. The bench itself runs as ``admin``, so the audit log's
``user.username`` tells the operator's writes from the bench's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack" / "controlplane")]

from controlplane import ControlPlane  # noqa: E402

GROUP, VERSION = "flagscheduler.dev", "v1alpha1"
FLAGS, SCHEDULES = "featureflags", "flagschedules"
LEASE_NAMESPACE = "flag-scheduler-system"  # where the deployed operator keeps its leader-election Lease
SERVICE_ACCOUNT = "flag-scheduler"
OPERATOR_USER = f"system:serviceaccount:{LEASE_NAMESPACE}:{SERVICE_ACCOUNT}"
MERGE = "application/merge-patch+json"
# Log events that say the operator is up and applying (it elects a leader if it has the code to).
READY = ("operator.started",) + (("leader.acquired",) if any((REPO / "operator/flag_scheduler").rglob("leader.py")) else ())
RETRYABLE = (429, 500, 502, 503, 504)
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 with milliseconds and ``Z``, as schedules carry it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def flag_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"enabled": False, "rolloutPercentage": 0},
    }


def schedule_body(name: str, flag: str, at: datetime, rollout: int, owner_uid: str | None = None) -> dict[str, Any]:
    """A FlagSchedule; with ``owner_uid`` it is created already owned by its flag (no first-sight write)."""
    meta: dict[str, Any] = {"name": name}
    if owner_uid:
        meta["ownerReferences"] = [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag, "uid": owner_uid}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FlagSchedule",
        "metadata": meta,
        "spec": {"flagRef": {"name": flag}, "scheduledAt": rfc3339(at), "updates": {"rolloutPercentage": rollout}},
    }


async def with_retries(call, *args: Any, attempts: int = 60, **kwargs: Any) -> Any:
    """Await ``call`` again while the server says "not now" (429/5xx, connection trouble)."""
    for attempt in range(attempts):
        try:
            return await call(*args, **kwargs)
        except ApiException as err:
            if err.status not in RETRYABLE or attempt == attempts - 1:
                raise
        except TRANSPORT_ERRORS:
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise AssertionError("unreachable")


class Cluster:
    """A running control plane with the CRDs installed, and an async admin client."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.api: client.ApiClient | None = None
        self.custom: client.CustomObjectsApi | None = None
        self.deleted: list[str] = []  # namespaces deleted so far
        self.operator_kubeconfig: Path | None = None  # set by install()
        self.flag_server_kubeconfig: Path | None = None  # set by install()

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.cp.kubectl), f"--kubeconfig={self.cp.kubeconfig()}", *args],
            capture_output=True, text=True, check=check, timeout=120,
        )

    def install(self) -> None:
        """Apply ``manifests/default`` (CRDs, namespace, RBAC), wait until the CRDs are served, and
        write a kubeconfig with the operator's ServiceAccount token (``operator_kubeconfig``)."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "default"))
        self.kubectl("wait", "--for=condition=Established", "crd", f"{FLAGS}.{GROUP}", f"{SCHEDULES}.{GROUP}",
                     f"flagrollouts.{GROUP}", "--timeout=60s")
        deadline = time.monotonic() + 60
        while self.kubectl("get", f"{FLAGS},{SCHEDULES},flagrollouts", "-A", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("CRDs Established but not served within 60 s")
            time.sleep(0.2)
        # The shipped Role covers only the Lease `flag-scheduler`; the failover phase elects with its own.
        self.kubectl("create", "role", "bench-failover-lease", "--verb=get,update", "--resource=leases",
                     "--resource-name=bench-failover", "-n", LEASE_NAMESPACE, check=False)
        self.kubectl("create", "rolebinding", "bench-failover-lease", "--role=bench-failover-lease",
                     f"--serviceaccount={LEASE_NAMESPACE}:{SERVICE_ACCOUNT}", "-n", LEASE_NAMESPACE, check=False)
        token = self.kubectl("create", "token", SERVICE_ACCOUNT, "-n", LEASE_NAMESPACE, "--duration=6h").stdout
        self.operator_kubeconfig = self.cp.write_token_kubeconfig("operator-sa", token.strip())
        token = self.kubectl("create", "token", "flag-server", "-n", LEASE_NAMESPACE, "--duration=6h").stdout
        self.flag_server_kubeconfig = self.cp.write_token_kubeconfig("flag-server-sa", token.strip())

    async def connect(self, pool: int = 256) -> None:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(self.cp.kubeconfig()), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()

    async def create_namespace(self, name: str) -> None:
        core = client.CoreV1Api(self.api)
        await with_retries(core.create_namespace, {"metadata": {"name": name}})

    async def delete_namespace(self, name: str, timeout: float = 300.0) -> float:
        """Delete the namespace's flags and schedules (synchronously) and the namespace; return seconds taken.

        The namespace itself goes away a few seconds later; ``wait_namespaces_gone`` waits for that.
        """
        start = time.monotonic()
        for plural in (SCHEDULES, FLAGS):
            await with_retries(self.custom.delete_collection_namespaced_custom_object, GROUP, VERSION, name, plural,
                               _request_timeout=timeout)
        await with_retries(client.CoreV1Api(self.api).delete_namespace, name)
        self.deleted.append(name)
        return time.monotonic() - start

    async def wait_namespaces_gone(self, timeout: float = 120.0) -> None:
        """Wait until the namespace controller has finished with the deleted namespaces (it reads every kind)."""
        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + timeout
        for name in self.deleted:
            while time.monotonic() < deadline:
                try:
                    await core.read_namespace(name)
                except ApiException as err:
                    if err.status == 404:
                        break
                    raise
                await asyncio.sleep(0.25)

    async def create_many(self, namespace: str, plural: str, bodies: Iterable[dict[str, Any]],
                          concurrency: int = 64) -> list[dict[str, Any]]:
        """Create objects with ``concurrency`` requests in flight; return the created objects in order."""
        gate = asyncio.Semaphore(concurrency)

        async def create(body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                try:
                    return await with_retries(self.custom.create_namespaced_custom_object, GROUP, VERSION,
                                              namespace, plural, body)
                except ApiException as err:
                    if err.status != 409:  # a retried create that had landed
                        raise
                    return await self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, plural, body["metadata"]["name"])

        return list(await asyncio.gather(*(create(b) for b in bodies)))

    async def list_schedules(self, namespace: str) -> list[dict[str, Any]]:
        result = await with_retries(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, SCHEDULES)
        return result["items"]

    async def request_counts(self) -> dict[str, float]:
        """``apiserver_request_total`` of every client, summed by "VERB group resource", for the groups the operator uses."""
        text = (await asyncio.to_thread(self.kubectl, "get", "--raw", "/metrics")).stdout
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
            fields = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
            fields = {k: v.strip('"') for k, v in fields.items()}
            if fields.get("group") in (GROUP, "coordination.k8s.io") or fields.get("resource") == "events":
                key = f"{fields.get('verb')} {fields.get('group') or 'core'} {fields.get('resource')}"
                counts[key] = counts.get(key, 0.0) + float(value)
        return counts


class OperatorProcess:
    """``python -m flag_scheduler`` as its own process, as the ServiceAccount, watching the given namespaces."""

    args: tuple[str, ...] = ()

    def __init__(self, cluster: Cluster, log_path: Path) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, namespaces: list[str], timeout: float = 60.0, extra_env: dict[str, str] | None = None,
              lead: bool = True) -> psutil.Process:
        """Start it and wait until it has started (and leads, with ``lead``); return its psutil handle."""
        self.stop()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")])),
            "KUBECONFIG": str(self._kubeconfig()),
            "FLAG_SCHEDULER_NAMESPACES": json.dumps(namespaces),
            "FLAG_SCHEDULER_LEASE_NAMESPACE": LEASE_NAMESPACE,
            "FLAG_SCHEDULER_LOG_FORMAT": "json",
            "FLAG_SCHEDULER_HEALTH_PORT": "0",
            "FLAG_SCHEDULER_READY_PORT": "0",
            "FLAG_SCHEDULER_METRICS_PORT": "0",
            **(extra_env or {}),
        }
        ready = self._ready(lead)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "flag_scheduler", *self.args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not all(mark in self.log_path.read_text(errors="replace")[offset:] for mark in ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"operator did not start:\n{tail}")
            time.sleep(0.1)
        return psutil.Process(self.proc.pid)

    def _kubeconfig(self) -> Path | None:
        return self.cluster.operator_kubeconfig

    def _ready(self, lead: bool) -> tuple[str, ...]:
        return READY if lead else ("operator.started",)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class FlagServerProcess(OperatorProcess):
    """``python -m flag_scheduler serve``: the flag server, as its own read-only ServiceAccount."""

    args = ("serve",)

    def _kubeconfig(self) -> Path | None:
        return self.cluster.flag_server_kubeconfig

    def _ready(self, lead: bool) -> tuple[str, ...]:
        return ("flag_server.started",)


class MachineLoad:
    """CPU used by processes outside this bench run (other people's tests share the machine), sampled in a thread."""

    def __init__(self, interval: float = 2.0) -> None:
        self.samples: list[tuple[float, float]] = []  # (epoch, % of one core)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        me = os.getpid()
        seen: dict[int, psutil.Process] = {}
        while not self._stop.wait(interval):
            foreign = 0.0
            ours = {me, *(p.pid for p in psutil.Process(me).children(recursive=True))}
            for proc in psutil.process_iter():
                if proc.pid in ours or proc.pid in (0, 1):
                    continue
                proc = seen.setdefault(proc.pid, proc)
                try:
                    foreign += proc.cpu_percent(None)
                except psutil.Error:
                    seen.pop(proc.pid, None)
            self.samples.append((time.time(), foreign))

    def mean(self, start: float, end: float) -> float | None:
        """Mean foreign CPU (% of one core) between two epoch times."""
        window = [v for t, v in self.samples if start <= t <= end]
        return round(sum(window) / len(window), 1) if window else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
