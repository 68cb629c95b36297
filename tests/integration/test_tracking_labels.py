"""Nothing the operator writes carries Argo CD's tracking labels or annotations.

Argo CD decides which Application a resource belongs to by ``app.kubernetes.io/instance`` (label
tracking) or ``argocd.argoproj.io/tracking-id`` (annotation tracking), and reads other
``argocd.argoproj.io/*`` annotations as per-resource instructions. If the operator copied them
from a flag or schedule onto something it writes (an Event, the other kind), Argo CD would adopt
or prune that object, or move it between Applications. The flag and the schedules here belong to
two different Applications, so a copy in either direction would show.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from argocd_sync import owned
from conftest import Kubectl
from operator_harness import GROUP, VERSION, Cluster, OperatorProcess, in_seconds, rfc3339, wait_for

INSTANCE = "app.kubernetes.io/instance"
OPERATOR_NAMESPACE = "flag-scheduler-system"


def is_tracking(key: str) -> bool:
    return key == INSTANCE or key.startswith("argocd.argoproj.io/")


def tracked(app: str, kind: str, ns: str, name: str) -> dict[str, Any]:
    """Metadata as Argo CD leaves it on a resource of Application ``app``."""
    return {
        "name": name,
        "labels": {INSTANCE: app},
        "annotations": {
            "argocd.argoproj.io/tracking-id": f"{app}:{GROUP}/{kind}:{ns}/{name}",
            "argocd.argoproj.io/sync-options": "Prune=false",
            "argocd.argoproj.io/compare-options": "IgnoreExtraneous",
        },
    }


def test_nothing_the_operator_writes_copies_tracking_metadata(
    cluster: Cluster, kubectl: Kubectl, operator_kubeconfig: Path, start_operator: Callable[..., OperatorProcess]
) -> None:
    # As deployed: the shipped ServiceAccount's rights, its Lease where the Role allows it.
    start_operator(kubeconfig=operator_kubeconfig, FLAG_SCHEDULER_LEASE_NAMESPACE=OPERATOR_NAMESPACE,
                   FLAG_SCHEDULER_LEASE_NAME=f"tracking-{uuid.uuid4().hex[:8]}")
    _create_tracked_objects(cluster)
    cluster.wait_phase("go-live", "Applied", timeout=30)
    cluster.wait_phase("never", "Cancelled", timeout=30)
    cluster.wait_phase("orphan", "Failed", timeout=30)
    ns = cluster.ns
    reasons = {"Applied", "Cancelled", "FlagNotFound", "Retrying", "Failed"}
    events = wait_for(
        lambda: (e := kubectl.json("get", "events", "-n", ns)["items"]) and reasons <= {x["reason"] for x in e} and e,
        timeout=15, what=f"Events {reasons}",
    )
    for event in events:
        meta = event["metadata"]
        copied = [k for k in {**meta.get("labels", {}), **meta.get("annotations", {})} if is_tracking(k)]
        assert not copied, f"Event {event['reason']} carries {copied}"

    flag = kubectl.json("get", "featureflag", "checkout", "-n", ns, "--show-managed-fields")
    assert flag["spec"]["enabled"] is True
    expected = tracked("flags-app", "FeatureFlag", ns, "checkout")
    assert flag["metadata"]["labels"] == expected["labels"]
    assert {k: v for k, v in flag["metadata"]["annotations"].items() if is_tracking(k)} == expected["annotations"]
    _assert_owns_no_tracking_field(flag)
    for name in ("go-live", "never", "orphan"):
        schedule = kubectl.json("get", "flagschedule", name, "-n", ns, "--show-managed-fields")
        expected = tracked("schedules-app", "FlagSchedule", ns, name)
        assert schedule["metadata"]["labels"] == expected["labels"]
        assert schedule["metadata"]["annotations"] == expected["annotations"]
        _assert_owns_no_tracking_field(schedule)


def _create_tracked_objects(cluster: Cluster) -> None:
    """A flag of Application flags-app; schedules of schedules-app: applied, cancelled, failing."""

    def create(plural: str, kind: str, name: str, app: str, spec: dict[str, Any]) -> None:
        metadata = tracked(app, kind, cluster.ns, name)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": metadata, "spec": spec}
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, plural, body)

    due, later = rfc3339(in_seconds(2)), rfc3339(in_seconds(3600))
    create("featureflags", "FeatureFlag", "checkout", "flags-app", {"enabled": False, "rolloutPercentage": 0})
    create("flagschedules", "FlagSchedule", "go-live", "schedules-app",
           {"flagRef": {"name": "checkout"}, "scheduledAt": due, "updates": {"enabled": True}})
    create("flagschedules", "FlagSchedule", "never", "schedules-app",
           {"flagRef": {"name": "checkout"}, "scheduledAt": later, "updates": {"enabled": False}, "cancelled": True})
    create("flagschedules", "FlagSchedule", "orphan", "schedules-app",
           {"flagRef": {"name": "missing"}, "scheduledAt": due, "updates": {"enabled": True},
            "retry": {"maxRetries": 1, "backoffSeconds": 1}})


def _assert_owns_no_tracking_field(obj: dict[str, Any]) -> None:
    """The API server's record of what the operator's requests set holds no tracking key."""
    paths = owned(obj, "flag-scheduler") | owned(obj, "flag-scheduler", subresource="status")
    assert paths, f"{obj['metadata']['name']}: the operator wrote nothing?"
    copied = [p for p in paths if p[:2] in (("metadata", "labels"), ("metadata", "annotations")) and is_tracking(p[2])]
    assert not copied, f"{obj['kind']} {obj['metadata']['name']}: flag-scheduler set {copied}"
