"""Smoke tests proving the control plane is a real one: storage, CRDs, RBAC, GC, namespaces, audit."""

from __future__ import annotations

import json
import time

import pytest

from conftest import Kubectl
from controlplane import ControlPlane

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.example.com}
spec:
  group: smoke.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer}}}
"""


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):  # noqa: ANN001, ANN201
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def test_configmap_round_trip(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "greeting", "-n", namespace, "--from-literal=hello=world")
    cm = kubectl.json("get", "configmap", "greeting", "-n", namespace)
    assert cm["data"] == {"hello": "world"}
    assert int(cm["metadata"]["resourceVersion"]) > 0


def test_crd_becomes_established_and_served(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.example.com", "--timeout=30s")
    kubectl("apply", "-n", namespace, "-f", "-", input="apiVersion: smoke.example.com/v1\nkind: Widget\n"
            "metadata: {name: w1}\nspec: {size: 3}\n")
    assert kubectl.json("get", "widgets", "w1", "-n", namespace)["spec"] == {"size": 3}


def test_non_admin_identity_is_forbidden(kubectl: Kubectl, namespace: str) -> None:
    proc = kubectl("get", "configmaps", "-n", namespace, user="alice", check=False)
    assert proc.returncode != 0
    assert 'User "alice" cannot list resource "configmaps"' in proc.stderr
    assert "Forbidden" in proc.stderr


def test_deleting_owner_garbage_collects_dependent(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    uid = kubectl.json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(dependent))
    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0)
    assert "NotFound" in kubectl("get", "configmap", "dependent", "-n", namespace, check=False).stderr


def test_namespace_deletion_completes(kubectl: Kubectl) -> None:
    kubectl("create", "namespace", "doomed")
    kubectl("create", "configmap", "inside", "-n", "doomed")
    kubectl("delete", "namespace", "doomed", "--timeout=60s")
    assert "NotFound" in kubectl("get", "namespace", "doomed", check=False).stderr


def test_audit_log_records_a_patch(control_plane: ControlPlane, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.example.com", "--timeout=30s")
    lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: audited}\nspec: {holderIdentity: a}\n"
    kubectl("apply", "-n", namespace, "-f", "-", input=lease)
    kubectl("patch", "lease", "audited", "-n", namespace, "--type=merge", "-p", '{"spec":{"holderIdentity":"b"}}')
    entries = [json.loads(line) for line in control_plane.audit_log.read_text().splitlines()]
    patches = [
        e for e in entries
        if e["verb"] == "patch" and e["objectRef"].get("name") == "audited" and e["objectRef"]["namespace"] == namespace
    ]
    assert len(patches) == 1
    assert patches[0]["objectRef"]["resource"] == "leases"
    assert patches[0]["user"]["username"] == "admin"
    assert patches[0]["responseStatus"]["code"] == 200


def test_versions_are_read_from_the_servers(control_plane: ControlPlane) -> None:
    api, etcd = control_plane.versions()
    assert api.startswith("v1.") and etcd.startswith("v3.")


def test_second_control_plane_starts_and_stops_cleanly() -> None:
    """Teardown leaves no process or directory behind."""
    with ControlPlane(fsync=False, gogc=400) as cp:
        pids = [c.proc.pid for c in cp.components]
        tmp = cp.dir
        assert cp.versions()[0].startswith("v1.")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(pid, 0)
    assert not tmp.exists()
