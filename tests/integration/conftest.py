"""Fixtures: the operator's install manifests and ServiceAccount identity, an operator per test, refusals."""

from __future__ import annotations

import json
import uuid

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from conftest import REPO, Kubectl
from controlplane import ControlPlane
from operator_harness import Cluster, FlagServerProcess, OperatorProcess, wait_for

from .admission import (
    MARKER_POLICY,
    MARKER_UID,
    SCHEDULE_POLICY,
    admin_create,
    create,
    flag,
    grant,
    patch,
    schedule,
    wait_can,
)

OPERATOR_NAMESPACE = "flag-scheduler-system"
OPERATOR_SERVICE_ACCOUNT = "flag-scheduler"
TEST_LEASE_ROLE = "tests-own-lease-names"
FLAG_SERVER_SERVICE_ACCOUNT = "flag-server"


@pytest.fixture(scope="session")
def operator_manifests(kubectl: Kubectl, crds: None) -> None:
    """``manifests/default`` applied: CRDs, RBAC, the operator's namespace and Deployment.

    The control plane runs no Deployment controller, so no operator pod ever starts; what is there
    is the ServiceAccount and the permissions a deployed operator would have.
    """
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "default"))
    kubectl("apply", "--server-side", "-f", "-", input=TEST_LEASES)


# The shipped Role lets the ServiceAccount read and renew only the Lease `flag-scheduler`; tests that
# run several operators as that ServiceAccount side by side give each its own Lease name.
TEST_LEASES = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {TEST_LEASE_ROLE}, namespace: {OPERATOR_NAMESPACE}}}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {TEST_LEASE_ROLE}, namespace: {OPERATOR_NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {TEST_LEASE_ROLE}}}
subjects: [{{kind: ServiceAccount, name: {OPERATOR_SERVICE_ACCOUNT}, namespace: {OPERATOR_NAMESPACE}}}]
"""


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane, kubectl: Kubectl, operator_manifests: None) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a TokenRequest token)."""
    return service_account_kubeconfig(control_plane, kubectl)


def service_account_kubeconfig(cp: ControlPlane, kubectl: Kubectl, account: str = OPERATOR_SERVICE_ACCOUNT) -> Path:
    """A kubeconfig with a TokenRequest token of a shipped ServiceAccount (``manifests/`` applied)."""
    token = kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=2h").stdout.strip()
    return cp.write_token_kubeconfig("operator-sa" if account == OPERATOR_SERVICE_ACCOUNT else account, token)


def flag_server_kubeconfig(cp: ControlPlane, kubectl: Kubectl) -> Path:
    """A kubeconfig as the flag server's read-only ServiceAccount (``manifests/default`` applied)."""
    return service_account_kubeconfig(cp, kubectl, FLAG_SERVER_SERVICE_ACCOUNT)


# -- an operator per test, and ways to make the API server refuse or stall its writes -------------

DENY_POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
    resourceRules:
      - apiGroups: ["flagscheduler.dev"]
        apiVersions: ["*"]
        operations: ["UPDATE"]
        resources: {resources}
  validations:
    - expression: "object.metadata.name != '{flag}' || !({when})"
      message: "{message}"
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
"""


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

    def start(kubeconfig: Path | None = None, log_name: str = "operator.log", flag_server: bool = False,
              **env: str) -> OperatorProcess:
        kind = FlagServerProcess if flag_server else OperatorProcess  # `flag-scheduler serve` or the scheduler
        op = kind(kubeconfig or control_plane.kubeconfig(), [namespace], tmp_path / log_name, **env)
        started.append(op)  # before start: stopped at teardown even if it never logs operator.started
        return op.start()

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def deny_updates(kubectl: Kubectl, namespace: str) -> Iterator[Callable[..., Callable[[], None]]]:
    """Make the API server refuse updates of one flag, for real (ValidatingAdmissionPolicy).

    ``when`` (CEL on the updated ``object``) narrows the refusal, e.g. to one schedule's change;
    ``probe`` is a merge patch that the policy refuses, used to wait until it takes effect;
    ``resources`` are the ones the policy matches (``featureflags/status`` is not matched by default,
    as a policy guarding flags usually is written).
    Returns a function that lifts the policy again.
    """
    names: list[str] = []

    def refused(flag: str, probe: str) -> bool:
        out = kubectl("patch", "featureflag", flag, "-n", namespace, "--type=merge", "-p", probe,
                      "--dry-run=server", check=False)
        return "frozen by policy" in out.stderr

    def deny(flag: str, when: str = "true", probe: str = '{"metadata":{"annotations":{"probe":"1"}}}',
             resources: tuple[str, ...] = ("featureflags",)):
        name = f"deny-{namespace}-{flag}"
        kubectl("apply", "-f", "-", input=DENY_POLICY.format(
            name=name, ns=namespace, resources=json.dumps(list(resources)), flag=flag, when=when,
            message=f"flag {flag} is frozen by policy"))
        names.append(name)
        wait_for(lambda: refused(flag, probe), what="the deny policy to take effect")

        def lift() -> None:
            kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)
            wait_for(lambda: not refused(flag, probe), what="the deny policy to be lifted")

        return lift

    yield deny
    for name in names:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--ignore-not-found")


@pytest.fixture(scope="session")
def policies(kubectl: Kubectl, operator_manifests: None) -> None:
    """The shipped policies in force: they load asynchronously, so probe with dry-run requests until refused.

    Defined here, once, so each worker probes once (a fixture imported into several test modules is
    a separate session fixture in each).
    """
    probe = f"policy-probe-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", probe)
    try:
        admin_create(kubectl, probe, flag("probe"))
        grant(kubectl, probe, "carol", "create", "flagschedules.flagscheduler.dev")
        grant(kubectl, probe, "carol", "get,patch", "featureflags.flagscheduler.dev", names="probe")
        wait_can(kubectl, probe, "carol", "patch", "featureflags.flagscheduler.dev/probe")
        wait_can(kubectl, probe, "carol", "create", "flagschedules.flagscheduler.dev")
        wait_for(lambda: SCHEDULE_POLICY in create(
            kubectl, probe, schedule("probe", "not-carols"), "--dry-run=server", user="carol").stderr,
            what="the schedule policy to take effect")
        wait_for(lambda: MARKER_POLICY in patch(
            kubectl, probe, "featureflag/probe", {"metadata": {"annotations": {MARKER_UID: "x"}}}, "--dry-run=server",
            user="carol").stderr, what="the marker policy to take effect")
    finally:
        kubectl("delete", "namespace", probe, "--wait=false")
