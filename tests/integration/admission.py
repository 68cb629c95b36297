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


# The admin's set-up and reads go through the Python client: a kubectl process costs about 80 ms of
# CPU, and the suite ran over a thousand of them on two cores. What a user is shown (a refusal, an
# acceptance, ``kubectl auth can-i``) still comes from kubectl run as that user.
PLURALS = {"FeatureFlag": "featureflags", "FlagSchedule": "flagschedules", "FlagCronSchedule": "flagcronschedules",
           "FlagRollout": "flagrollouts"}
SHORT_NAMES = {"ff": "featureflags", "fs": "flagschedules"}  # the CRDs' short names the tests use


def admin_create(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Create ``obj`` as the admin (set-up: it must be accepted)."""
    group, version = obj["apiVersion"].split("/")
    return _custom(str(kubectl.cp.kubeconfig())).create_namespaced_custom_object(
        group, version, namespace, PLURALS[obj["kind"]], obj)


def admin_get(kubectl: Kubectl, namespace: str, what: str) -> dict[str, Any]:
    """The object as stored, read as the admin: ``what`` is ``fs/go-live`` or ``flagrollouts/search-v2`` (plural)."""
    resource, _, name = what.partition("/")
    group, version = API_VERSION.split("/")
    return _custom(str(kubectl.cp.kubeconfig())).get_namespaced_custom_object(
        group, version, namespace, SHORT_NAMES.get(resource, resource), name)


def admin_patch_status(kubectl: Kubectl, namespace: str, what: str, status: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch the status subresource as the admin, as the operator writes it (set-up: it must be accepted)."""
    resource, _, name = what.partition("/")
    group, version = API_VERSION.split("/")
    return _custom(str(kubectl.cp.kubeconfig())).patch_namespaced_custom_object_status(
        group, version, namespace, SHORT_NAMES.get(resource, resource), name, {"status": status})


def admin_exists(kubectl: Kubectl, namespace: str, what: str) -> bool:
    try:
        admin_get(kubectl, namespace, what)
    except k8s.ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


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
    """A Role in ``namespace`` with ``verbs`` on ``resource`` (``plural.group``, optionally only ``names``),
    bound to ``user``: what ``kubectl create role`` and ``kubectl create rolebinding`` make."""
    plural, _, group = resource.partition(".")
    role = f"{user}-{plural}-{uuid.uuid4().hex[:4]}"
    rbac = _rbac(str(kubectl.cp.kubeconfig()))
    rbac.create_namespaced_role(namespace, k8s.V1Role(
        metadata=k8s.V1ObjectMeta(name=role),
        rules=[k8s.V1PolicyRule(api_groups=[group], resources=[plural], verbs=verbs.split(","),
                                resource_names=names.split(",") if names else None)]))
    rbac.create_namespaced_role_binding(namespace, k8s.V1RoleBinding(
        metadata=k8s.V1ObjectMeta(name=role),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
        subjects=[k8s.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name=user)]))


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
def _client(kubeconfig: str) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=kubeconfig)


def _authorization(kubeconfig: str) -> k8s.AuthorizationV1Api:
    return k8s.AuthorizationV1Api(_client(kubeconfig))


def _rbac(kubeconfig: str) -> k8s.RbacAuthorizationV1Api:
    return k8s.RbacAuthorizationV1Api(_client(kubeconfig))


def _custom(kubeconfig: str) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(_client(kubeconfig))
