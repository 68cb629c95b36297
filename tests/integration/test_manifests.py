"""The install manifests as kustomize renders them: the pod's network surface, its disruption budget,
a digest-pinned image, and the namespaced overlay's permissions (no cluster-wide grant for the operator).

What the objects do at run time is tested elsewhere (the policies in test_admission_policy.py, the
namespaced operator in test_namespaced_install.py); here: what is shipped, and that the API server
accepts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, Kubectl

MANIFESTS = REPO / "manifests"
OPERATOR_LABELS = {"app.kubernetes.io/name": "flag-scheduler", "app.kubernetes.io/component": "operator"}
FLAG_SERVER_LABELS = {"app.kubernetes.io/name": "flag-scheduler", "app.kubernetes.io/component": "flag-server"}
# The scheduler: health, ready, metrics. The flag server: also flagd sync (gRPC), OFREP (HTTP).
SERVED_PORTS = {"flag-scheduler": {8080, 8081, 9090}, "flag-server": {8080, 9090, 8015, 8016}}
DIGEST = "sha256:" + "0123456789abcdef" * 4


def render(kubectl: Kubectl, directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of a directory, as a list of objects."""
    return [d for d in yaml.safe_load_all(kubectl("kustomize", str(directory)).stdout) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objs
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} rendered"
    return found[0]


@pytest.fixture(scope="module")
def default(kubectl: Kubectl) -> list[dict[str, Any]]:
    return render(kubectl, MANIFESTS / "default")


@pytest.fixture(scope="module")
def namespaced(kubectl: Kubectl) -> list[dict[str, Any]]:
    return render(kubectl, MANIFESTS / "namespaced")


def _container(objs: list[dict[str, Any]], name: str = "flag-scheduler") -> dict[str, Any]:
    deployment = one(objs, "Deployment", name, "flag-scheduler-system")
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("workload", ["flag-scheduler", "flag-server"])
def test_network_policy_admits_only_the_served_ports(default: list[dict[str, Any]], workload: str) -> None:
    policy = one(default, "NetworkPolicy", workload, "flag-scheduler-system")
    deployment = one(default, "Deployment", workload, "flag-scheduler-system")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert len(rules) == 1 and "from" not in rules[0]  # any source, these ports only
    declared = {p["name"]: p["containerPort"] for p in _container(default, workload)["ports"]}
    admitted = {declared.get(p["port"], p["port"]) for p in rules[0]["ports"]}
    assert {p["protocol"] for p in rules[0]["ports"]} == {"TCP"}
    assert admitted == set(declared.values()) == SERVED_PORTS[workload]


def test_network_policy_overlay_replaces_the_default_policies(kubectl: Kubectl) -> None:
    """Policies add up: the narrowing overlay must leave one policy per workload, not add more that open less."""
    objs = render(kubectl, MANIFESTS / "network-policy")
    ingress = [o for o in objs if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"]["policyTypes"]]
    assert sorted(o["metadata"]["name"] for o in ingress) == ["flag-scheduler", "flag-server"]
    anyone, readers, scrapers = one(objs, "NetworkPolicy", "flag-server", "flag-scheduler-system")["spec"]["ingress"]
    assert "from" not in anyone and {p["port"] for p in anyone["ports"]} == {"health"}
    assert {p["port"] for p in readers["ports"]} == {"sync", "ofrep"}
    assert readers["from"] == [{"namespaceSelector": {"matchLabels": {"flagscheduler.dev/read-flags": "true"}}}]
    assert {p["port"] for p in scrapers["ports"]} == {"metrics"}
    health, metrics = one(objs, "NetworkPolicy", "flag-scheduler", "flag-scheduler-system")["spec"]["ingress"]
    assert {p["port"] for p in health["ports"]} == {"health", "ready"} and "from" not in health  # the probes
    assert metrics["from"] == scrapers["from"]


@pytest.mark.parametrize(("workload", "labels"), [("flag-scheduler", OPERATOR_LABELS),
                                                  ("flag-server", FLAG_SERVER_LABELS)])
def test_disruption_budget_keeps_one_of_two_replicas(
    default: list[dict[str, Any]], workload: str, labels: dict[str, str]
) -> None:
    budget = one(default, "PodDisruptionBudget", workload, "flag-scheduler-system")
    deployment = one(default, "Deployment", workload, "flag-scheduler-system")
    assert budget["spec"]["minAvailable"] == 1
    assert deployment["spec"]["replicas"] == 2
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"] == labels


def test_default_install_creates_the_policy_objects(kubectl: Kubectl, operator_manifests: None) -> None:
    """Applied (by the operator_manifests fixture): the API server stored every shipped object."""
    for args in (
        ["networkpolicy/flag-scheduler", "networkpolicy/flag-server", "-n", "flag-scheduler-system"],
        ["poddisruptionbudget/flag-scheduler", "poddisruptionbudget/flag-server", "-n", "flag-scheduler-system"],
        ["deployment/flag-server", "service/flag-scheduler-flags", "serviceaccount/flag-server",
         "-n", "flag-scheduler-system"],
        ["clusterrole/flag-scheduler-flag-reader", "clusterrolebinding/flag-scheduler-flag-reader"],
        ["validatingadmissionpolicy/flag-scheduler-schedules-need-flag-patch"],
        ["validatingadmissionpolicy/flag-scheduler-operator-annotations"],
        ["validatingadmissionpolicybinding/flag-scheduler-schedules-need-flag-patch"],
        ["validatingadmissionpolicybinding/flag-scheduler-operator-annotations"],
        ["validatingadmissionpolicy/flag-scheduler-schedule-warnings"],
        ["validatingadmissionpolicybinding/flag-scheduler-schedule-warnings"],
        ["networkpolicy/flag-scheduler-egress", "-n", "flag-scheduler-system"],
        ["validatingadmissionpolicy/flag-scheduler-cron-schedules-need-flag-patch"],
        ["validatingadmissionpolicybinding/flag-scheduler-cron-schedules-need-flag-patch"],
    ):
        kubectl("get", *args)


def test_image_can_be_pinned_by_digest(kubectl: Kubectl, tmp_path: Path) -> None:
    overlay = {
        "resources": [os.path.relpath(MANIFESTS / "default", tmp_path)],
        "images": [{"name": "flag-scheduler", "newName": "registry.example.com/flag-scheduler", "digest": DIGEST}],
    }
    (tmp_path / "kustomization.yaml").write_text(json.dumps(overlay))
    assert _container(render(kubectl, tmp_path))["image"] == f"registry.example.com/flag-scheduler@{DIGEST}"


# -- the namespaced overlay ------------------------------------------------------------------


def test_namespaced_overlay_grants_the_operator_only_reading_admission_policies_cluster_wide(
    namespaced: list[dict[str, Any]]
) -> None:
    """Policies are cluster-scoped: reading them (the fail-closed check) is the one cluster-wide grant."""
    bindings = [o for o in namespaced if o["kind"] == "ClusterRoleBinding"]
    assert [(o["metadata"]["name"], o["roleRef"]["name"]) for o in bindings] == [
        ("flag-scheduler-admission-reader", "flag-scheduler-admission-reader")]
    reader = one(namespaced, "ClusterRole", "flag-scheduler-admission-reader")
    assert reader["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
                                "verbs": ["get", "list"]}]
    people = [o for o in namespaced if o["kind"] == "ClusterRole" and o is not reader]
    # The people's roles remain, each aggregated into a built-in role (bound by admins, per namespace).
    assert {o["metadata"]["name"] for o in people} == {
        "flag-scheduler-admin", "flag-scheduler-editor", "flag-scheduler-viewer"
    }
    for role in people:
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])
    subjects = [
        s for o in namespaced if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in o["subjects"] if s["kind"] == "ServiceAccount"
    ]
    assert subjects and all(s["kind"] == "ServiceAccount" and s["name"] in ("flag-scheduler", "flag-server")
                            and s["namespace"] == "flag-scheduler-system" for s in subjects)


@pytest.mark.parametrize(("workload", "role"), [("flag-scheduler", "flag-scheduler-operator"),
                                                ("flag-server", "flag-scheduler-flag-reader")])
def test_namespaced_overlay_watches_exactly_the_namespaces_it_grants(
    namespaced: list[dict[str, Any]], workload: str, role: str
) -> None:
    env = {e["name"]: e.get("value") for e in _container(namespaced, workload)["env"]}
    watched = json.loads(env["FLAG_SCHEDULER_NAMESPACES"])
    granted = [
        o["metadata"]["namespace"] for o in namespaced
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role
    ]
    assert sorted(watched) == sorted(granted) == ["team-a", "team-b"]


def test_namespaced_role_grants_what_the_cluster_role_grants(
    default: list[dict[str, Any]], namespaced: list[dict[str, Any]]
) -> None:
    for name in ("flag-scheduler-operator", "flag-scheduler-flag-reader"):
        cluster_role = one(default, "ClusterRole", name)
        for ns in ("team-a", "team-b"):
            assert one(namespaced, "Role", name, ns)["rules"] == cluster_role["rules"]


@pytest.fixture
def example_namespaces(kubectl: Kubectl) -> Iterator[None]:
    """The overlay's example namespaces team-a and team-b, which must exist before it is applied."""
    for ns in ("team-a", "team-b"):
        kubectl("create", "namespace", ns)
    yield
    kubectl("delete", "namespace", "team-a", "team-b", "--wait=false")


def test_namespaced_overlay_passes_server_dry_run(
    kubectl: Kubectl, operator_manifests: None, example_namespaces: None
) -> None:
    result = kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                     "-k", str(MANIFESTS / "namespaced"))
    assert "role.rbac.authorization.k8s.io/flag-scheduler-operator serverside-applied (server dry run)" in result.stdout
    assert "deployment.apps/flag-scheduler serverside-applied (server dry run)" in result.stdout
    assert "Warning" not in result.stderr, result.stderr
