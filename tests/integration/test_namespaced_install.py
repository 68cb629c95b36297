"""The namespaced install: the operator with Roles in its watched namespaces only, run as a process.

The objects come from ``kubectl kustomize manifests/namespaced`` (its ServiceAccount, its
leader-election Role and the Role of the example namespace ``team-a``), moved to this test's
namespaces: the ServiceAccount to a fresh namespace of its own, so it has no ClusterRole binding
at all, and team-a to the watched namespace. Every cluster-wide request it made would therefore be
refused with 403; the operator applies a schedule without one, writes only in its namespaces (the
audit log), and posts Events only where it watches.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from conftest import REPO, Kubectl
from controlplane import ControlPlane
from operator_harness import Cluster, OperatorProcess, in_seconds, wait_for

OVERLAY_OPERATOR_NAMESPACE = "flag-scheduler-system"
OVERLAY_WATCHED_NAMESPACE = "team-a"


@pytest.fixture
def make_namespace(kubectl: Kubectl) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def overlay_rbac(kubectl: Kubectl, moves: dict[str, str]) -> list[dict[str, Any]]:
    """The overlay's ServiceAccount, Roles and RoleBindings in ``moves``' namespaces, moved as it says."""
    rendered = yaml.safe_load_all(kubectl("kustomize", str(REPO / "manifests" / "namespaced")).stdout)
    objs = []
    for obj in rendered:
        if obj["kind"] not in ("ServiceAccount", "Role", "RoleBinding"):
            continue
        if obj["metadata"]["namespace"] not in moves:
            continue  # team-b, another watched namespace of the example
        obj["metadata"]["namespace"] = moves[obj["metadata"]["namespace"]]
        for subject in obj.get("subjects", []):
            subject["namespace"] = moves[subject["namespace"]]
        objs.append(obj)
    assert sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs) == [
        "Role/flag-scheduler-flag-reader", "Role/flag-scheduler-leader-election", "Role/flag-scheduler-operator",
        "RoleBinding/flag-scheduler-flag-reader", "RoleBinding/flag-scheduler-leader-election",
        "RoleBinding/flag-scheduler-operator", "ServiceAccount/flag-scheduler", "ServiceAccount/flag-server",
    ]
    return objs


def audit_entries(cp: ControlPlane, user: str) -> list[dict[str, Any]]:
    """The audit log's entries (writes to flagscheduler.dev and leases) made by ``user``."""
    entries = [json.loads(line) for line in cp.audit_log.read_text().splitlines()]
    return [e for e in entries if e["user"]["username"] == user]


def test_namespaced_operator_applies_and_asks_for_nothing_cluster_wide(
    kubectl: Kubectl, control_plane: ControlPlane, api_client: k8s.ApiClient, operator_manifests: None,
    make_namespace: Callable[[], str], tmp_path: Path,
) -> None:
    home, watched, unwatched = make_namespace(), make_namespace(), make_namespace()
    objs = overlay_rbac(kubectl, {OVERLAY_OPERATOR_NAMESPACE: home, OVERLAY_WATCHED_NAMESPACE: watched})
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))
    token = kubectl("create", "token", "flag-scheduler", "-n", home, "--duration=1h").stdout.strip()
    kubeconfig = control_plane.write_token_kubeconfig(f"namespaced-{home}", token)
    user = f"system:serviceaccount:{home}:flag-scheduler"

    # The control: this identity really has nothing cluster-wide, so asking would be a 403.
    for args in (["get", "featureflags", "-A"], ["get", "flagschedules", "-A"], ["get", "namespaces"]):
        result = kubectl(*args, kubeconfig=kubeconfig, check=False)
        assert "Forbidden" in result.stderr and "at the cluster scope" in result.stderr, result.stderr

    mine, theirs = Cluster(api_client, control_plane, watched), Cluster(api_client, control_plane, unwatched)
    for cluster in (mine, theirs):
        cluster.flag("checkout-v2", enabled=False, rollout=0)
    # The unwatched schedule falls due first: by the time the watched one is Applied, it was due too.
    theirs.schedule("go-live", "checkout-v2", in_seconds(2), {"enabled": True})
    mine.schedule("go-live", "checkout-v2", in_seconds(4), {"enabled": True, "rolloutPercentage": 25})

    operator = OperatorProcess(
        kubeconfig, [watched], tmp_path / "operator.log", FLAG_SCHEDULER_LEASE_NAMESPACE=home
    ).start()
    try:
        mine.wait_phase("go-live", "Applied", timeout=30)
        mine.wait_event("go-live", "Applied", "Normal")
    finally:
        operator.stop()

    assert mine.get_flag("checkout-v2")["spec"] == {"enabled": True, "rolloutPercentage": 25}
    assert theirs.get_flag("checkout-v2")["spec"] == {"enabled": False, "rolloutPercentage": 0}
    assert "claimedBy" not in theirs.status("go-live")
    for ns in (unwatched, home):
        assert kubectl.json("get", "events", "-n", ns)["items"] == [], f"Events in {ns}"

    # Not a bare "403": a timestamp's microseconds may contain it.
    forbidden = [line for line in operator.log_path.read_text().splitlines()
                 if '"status": 403' in line or "orbidden" in line]
    assert forbidden == []
    writes = audit_entries(control_plane, user)
    assert {(e["objectRef"]["resource"], e["objectRef"]["namespace"]) for e in writes} >= {
        ("featureflags", watched), ("flagschedules", watched), ("leases", home)
    }
    assert {e["objectRef"]["namespace"] for e in writes} == {watched, home}
    assert [e for e in writes if e["responseStatus"]["code"] == 403] == []


def test_a_watched_namespace_whose_binding_is_gone_is_reported_and_skipped_until_it_returns(
    kubectl: Kubectl, control_plane: ControlPlane, api_client: k8s.ApiClient, operator_manifests: None,
    make_namespace: Callable[[], str], tmp_path: Path,
) -> None:
    home, kept, broken = make_namespace(), make_namespace(), make_namespace()
    objs = overlay_rbac(kubectl, {OVERLAY_OPERATOR_NAMESPACE: home, OVERLAY_WATCHED_NAMESPACE: kept})
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))
    grants = overlay_rbac(kubectl, {OVERLAY_OPERATOR_NAMESPACE: home, OVERLAY_WATCHED_NAMESPACE: broken})
    grants = [o for o in grants if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["namespace"] == broken]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in grants))
    # The namespace's admin deletes the operator's RoleBinding there; then the operator (re)starts.
    kubectl("delete", "rolebinding", "flag-scheduler-operator", "-n", broken)
    token = kubectl("create", "token", "flag-scheduler", "-n", home, "--duration=1h").stdout.strip()
    kubeconfig = control_plane.write_token_kubeconfig(f"namespaced-{home}", token)

    mine, theirs = Cluster(api_client, control_plane, kept), Cluster(api_client, control_plane, broken)
    for cluster in (mine, theirs):
        cluster.flag("checkout-v2", enabled=False, rollout=0)
        cluster.schedule("go-live", "checkout-v2", in_seconds(3), {"enabled": True})
    operator = OperatorProcess(
        kubeconfig, [kept, broken], tmp_path / "operator.log", FLAG_SCHEDULER_LEASE_NAMESPACE=home
    ).start()
    try:
        mine.wait_phase("go-live", "Applied", timeout=30)
        report = operator.wait_log("namespace.unreadable")
        assert (report["namespace"], report["status"]) == (broken, 403)
        events = wait_for(lambda: [e for e in kubectl.json("get", "events", "-n", home)["items"]
                                   if e["reason"] == "NamespaceUnreadable"], what="the Event in the home namespace")
        assert events[0]["type"] == "Warning" and f"cannot read watched namespace {broken}" in events[0]["message"]
        skipped = theirs.status("go-live")  # untouched: not claimed, not failed
        assert "claimedBy" not in skipped and skipped.get("phase") in (None, "Pending")

        kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in grants))  # access returns
        theirs.wait_phase("go-live", "Applied", timeout=60)
        operator.wait_log("namespace.readable")
    finally:
        operator.stop()
    assert theirs.get_flag("checkout-v2")["spec"]["enabled"] is True
