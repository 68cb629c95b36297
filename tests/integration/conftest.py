"""Fixtures for tests that need the operator's install manifests and its ServiceAccount's identity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from conftest import REPO, Kubectl
from controlplane import ControlPlane
from operator_harness import Cluster, OperatorProcess

OPERATOR_NAMESPACE = "flag-scheduler-system"
OPERATOR_SERVICE_ACCOUNT = "flag-scheduler"


@pytest.fixture(scope="session")
def operator_manifests(kubectl: Kubectl, crds: None) -> None:
    """``manifests/default`` applied: CRDs, RBAC, the operator's namespace and Deployment.

    The control plane runs no Deployment controller, so no operator pod ever starts; what is there
    is the ServiceAccount and the permissions a deployed operator would have.
    """
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "default"))


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane, kubectl: Kubectl, operator_manifests: None) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a TokenRequest token)."""
    token = kubectl(
        "create", "token", OPERATOR_SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=2h"
    ).stdout.strip()
    return control_plane.write_token_kubeconfig("operator-sa", token)


@pytest.fixture
def cluster(api_client: k8s.ApiClient, control_plane: ControlPlane, namespace: str, crds: None) -> Cluster:
    """Flags and schedules in this test's namespace, as the admin."""
    return Cluster(api_client, control_plane, namespace)


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators for this test's namespace (env overrides as keyword arguments); stopped at the end."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: Path | None = None, log_name: str = "operator.log", **env: str) -> OperatorProcess:
        op = OperatorProcess(kubeconfig or control_plane.kubeconfig(), [namespace], tmp_path / log_name, **env)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
