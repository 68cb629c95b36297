"""Helpers for the admission-policy tests: objects, kubectl as a user, grants, refusals.

Shared by every test of the shipped policies (test_admission_policy.py and its neighbours) and by the
``policies`` fixture in conftest.py.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from conftest import Kubectl
from operator_harness import wait_for

API_VERSION = "flagscheduler.dev/v1alpha1"
SCHEDULE_POLICY = "ValidatingAdmissionPolicy 'flag-scheduler-schedules-need-flag-patch'"
MARKER_POLICY = "ValidatingAdmissionPolicy 'flag-scheduler-operator-annotations'"
MARKER_UID = "flagscheduler.dev/last-applied-schedule-uid"


def flag(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": API_VERSION, "kind": "FeatureFlag", "metadata": meta,
            "spec": {"enabled": False, "rolloutPercentage": 0}}


def schedule(name: str, flag_name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "FlagSchedule", "metadata": {"name": name},
            "spec": {"flagRef": {"name": flag_name}, "scheduledAt": "2030-01-01T09:00:00Z",
                     "updates": {"enabled": True}, **spec}}


def create(kubectl: Kubectl, namespace: str, obj: dict[str, Any], *extra: str, **kw: Any):
    return kubectl("create", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj), check=False, **kw)


def patch(kubectl: Kubectl, namespace: str, what: str, body: dict[str, Any], *extra: str, **kw: Any):
    return kubectl("patch", what, "-n", namespace, "--type=merge", "-p", json.dumps(body), *extra, check=False, **kw)


def refused(result, *fragments: str) -> str:
    assert result.returncode != 0, f"expected a refusal, got success:\n{result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in the API server's message:\n{result.stderr}"
    return result.stderr


def accepted(result) -> None:
    assert result.returncode == 0, result.stderr


def grant(kubectl: Kubectl, namespace: str, user: str, verbs: str, resource: str, names: str = "") -> None:
    """A Role in ``namespace`` with ``verbs`` on ``resource`` (optionally only ``names``), bound to ``user``."""
    role = f"{user}-{resource.split('.')[0]}-{uuid.uuid4().hex[:4]}"
    kubectl("create", "role", role, f"--verb={verbs}", f"--resource={resource}", "-n", namespace,
            *([f"--resource-name={names}"] if names else []))
    kubectl("create", "rolebinding", role, f"--role={role}", f"--user={user}", "-n", namespace)


def bind(kubectl: Kubectl, namespace: str, user: str, cluster_role: str) -> None:
    kubectl("create", "rolebinding", f"{user}-{cluster_role}", f"--clusterrole={cluster_role}", f"--user={user}",
            "-n", namespace)


def can_i(kubectl: Kubectl, namespace: str, user: str, verb: str, what: str, *extra: str) -> bool:
    """``kubectl auth can-i`` as ``user`` (a SelfSubjectAccessReview: what the authorizer says now)."""
    result = kubectl("auth", "can-i", verb, what, "-n", namespace, *extra, user=user, check=False)
    return result.stdout.strip() == "yes"


def wait_can(kubectl: Kubectl, namespace: str, user: str, verb: str, what: str) -> None:
    """Wait until the RBAC authorizer's cache has the new binding (it lags a moment behind the write).

    Polls with SubjectAccessReviews through the Python client, the question ``kubectl auth can-i
    --as`` asks, not a kubectl process per poll (about 70 ms of CPU each); tests assert with ``can_i``.
    """
    resource, _, name = what.partition("/")
    plural, _, group = resource.partition(".")
    review = k8s.V1SubjectAccessReview(spec=k8s.V1SubjectAccessReviewSpec(
        user=user, groups=["system:authenticated"],  # the control plane's users belong to no other group
        resource_attributes=k8s.V1ResourceAttributes(
            namespace=namespace, verb=verb, group=group, resource=plural, name=name or None)))
    api = _authorization(str(kubectl.cp.kubeconfig()))
    wait_for(lambda: api.create_subject_access_review(review).status.allowed, what=f"{user} may {verb} {what}")


@functools.cache
def _authorization(kubeconfig: str) -> k8s.AuthorizationV1Api:
    return k8s.AuthorizationV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
