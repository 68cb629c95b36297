"""Shared fixtures: one real control plane per test session, a fresh namespace per test."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
CRD_NAMES = (
    "crd/featureflags.flagscheduler.dev", "crd/flagschedules.flagscheduler.dev", "crd/flagrollouts.flagscheduler.dev"
)


class Kubectl:
    """Runs the control plane's own kubectl as a given identity."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def __call__(
        self, *args: str, user: str = "admin", kubeconfig: Path | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = kubeconfig or self.cp.kubeconfig(user)
        proc = subprocess.run(
            [str(self.cp.kubectl), f"--kubeconfig={config}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw: object) -> dict:
        """Run ``kubectl ... -o json`` and parse the output."""
        return json.loads(self(*args, "-o", "json", **kw).stdout)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> ControlPlane:
    """The session's control plane, started once collection found integration tests."""
    cp = getattr(request.config, "_flag_scheduler_cp", None)
    if cp is None:
        cp = _start_control_plane(request.config)
    return cp


def _start_control_plane(config: pytest.Config) -> ControlPlane:
    cp = ControlPlane(fsync=False).start()
    config._flag_scheduler_cp = cp
    api, etcd = cp.versions()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"control plane: kube-apiserver {api}, etcd {etcd}")
    return cp


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> k8s.ApiClient:
    """A synchronous official-client ApiClient authenticated as the admin."""
    return k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig()))


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    """The project's CRDs from ``crds/``, Established and served."""
    install(kubectl, REPO / "crds")


def install(kubectl: Kubectl, kustomization: Path) -> None:
    """``kubectl apply -k`` a tree holding the CRDs; return once their resources are served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(kustomization))
    kubectl("wait", "--for=condition=Established", *CRD_NAMES, "--timeout=60s")
    # Established comes a moment before discovery and the storage serve the new kinds.
    deadline = time.monotonic() + 60
    while kubectl("get", "featureflags,flagschedules,flagrollouts", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("the CRDs were Established but their resources were not served within 60 s")
        time.sleep(0.2)


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("integration") for item in session.items):
        _start_control_plane(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    from operator_harness import RUNNING

    for op in list(RUNNING):  # a test that lost track of its operator: stop it before its API server
        op.stop()
    cp = getattr(config, "_flag_scheduler_cp", None)
    if cp is not None:
        cp.stop()


_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "/integration/" in report.nodeid:
        _skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skips:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nintegration tests must not be skipped: {', '.join(_skips)}")
