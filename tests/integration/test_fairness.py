"""One namespace's burst does not hold up another namespace's due schedule (issue 22, fairness).

The operator starts with a burst already due in one namespace (a restore, an Argo CD sync of a
folder while it was down) and one schedule due in another namespace, listed after the burst. With
``FLAG_SCHEDULER_MAX_CONCURRENCY=1`` one flag changes at a time, so the order the schedules were
applied in (``status.appliedAt``) shows who waited for whom: the other namespace's schedule takes
its turn after one or two of the burst's flags instead of after all of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import kubernetes.client as k8s
import pytest

from conftest import Kubectl
from controlplane import ControlPlane
from operator_harness import Cluster, OperatorProcess, parse_time, rfc3339, wait_for

BURST = 40


@pytest.fixture
def other_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def applied_at(cluster: Cluster, kubectl: Kubectl) -> dict[str, datetime]:
    """When each Applied schedule of the namespace was applied, as ``kubectl get fs -o json`` shows it."""
    items = kubectl.json("get", "flagschedules", "-n", cluster.ns)["items"]
    return {s["metadata"]["name"]: parse_time(s["status"]["appliedAt"])
            for s in items if (s.get("status") or {}).get("phase") == "Applied"}


def test_a_due_schedule_in_another_namespace_applies_while_a_burst_is_still_draining(
    kubectl: Kubectl, control_plane: ControlPlane, api_client: k8s.ApiClient, crds: None, namespace: str,
    other_namespace: str, tmp_path: Path,
) -> None:
    burst, other = Cluster(api_client, control_plane, namespace), Cluster(api_client, control_plane, other_namespace)
    now = datetime.now(UTC)
    manifests = []
    for i in range(BURST):
        burst.flag(f"flag-{i:02d}")
        manifests.append({"apiVersion": "flagscheduler.dev/v1alpha1", "kind": "FlagSchedule",
                          "metadata": {"name": f"burst-{i:02d}"},
                          "spec": {"flagRef": {"name": f"flag-{i:02d}"}, "scheduledAt": rfc3339(now),
                                   "updates": {"enabled": True}}})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": manifests}))
    other.flag("checkout")
    other.schedule("go-live", "checkout", now, {"enabled": True})

    # The burst's namespace is listed (and planned) first: one slot, queued in that order.
    operator = OperatorProcess(control_plane.kubeconfig(), [namespace, other_namespace], tmp_path / "operator.log",
                               FLAG_SCHEDULER_MAX_CONCURRENCY="1").start()
    try:
        other.wait_phase("go-live", "Applied", timeout=60)
        other.wait_event("go-live", "Applied", "Normal")
        wait_for(lambda: len(applied_at(burst, kubectl)) == BURST, 120, interval=0.5,
                 what="the whole burst to be Applied")
    finally:
        operator.stop()

    assert other.get_flag("checkout")["spec"]["enabled"] is True
    go_live = parse_time(other.status("go-live")["appliedAt"])
    after = sorted(name for name, at in applied_at(burst, kubectl).items() if at > go_live)
    # Waiting in line behind the burst, "go-live" would come after all 40; it comes after a turn or two.
    assert len(after) >= BURST - 3, f"only {after} of the burst were applied after the other namespace's schedule"
