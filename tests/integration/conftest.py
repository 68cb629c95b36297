"""Fixtures for tests that need the operator's install manifests and its ServiceAccount's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, Kubectl
from controlplane import ControlPlane

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
