"""The shipped admission policies and roles, with the control plane's real users alice, bob and carol.

1. Scheduling is no back door: creating a FlagSchedule, or changing any of its spec, needs the right
   to patch the FeatureFlag it names (manifests/policy/schedules_need_flag_patch.yaml; every field,
   the flag before and after, and deletes: test_schedule_intent_policy.py).
2. The exactly-once marker cannot be forged: only the operator (whoever is granted update on the
   virtual featureflags/markers) writes a flag's flagscheduler.dev/ annotations
   (manifests/policy/operator_annotations.yaml).
3. Status belongs to the operator: no role for people writes it.

Every user starts with no rights; each test grants them in its own namespace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from conftest import Kubectl
from operator_harness import wait_for

from .admission import (
    API_VERSION,
    MARKER_POLICY,
    MARKER_UID,
    SCHEDULE_POLICY,
    accepted,
    admin_create,
    admin_exists,
    admin_get,
    bind,
    can_i,
    create,
    flag,
    grant,
    patch,
    refused,
    schedule,
    wait_can,
)
from .conftest import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
MARKERS = {
    "flagscheduler.dev/last-applied-schedule": "go-live",
    MARKER_UID: "3f1c0d5e-0000-4000-8000-000000000001",
    "flagscheduler.dev/last-applied-scheduled-at": "2030-01-01T09:00:00Z",
    "flagscheduler.dev/last-applied-at": "2030-01-01T09:00:00.012Z",
    "flagscheduler.dev/fencing-token": "7",
}


# -- 1. scheduling requires the right to change the flag --------------------------------------


@pytest.fixture
def flags(kubectl: Kubectl, namespace: str, policies: None) -> str:
    """Two flags, checkout-v2 and pricing, in the test's namespace."""
    for name in ("checkout-v2", "pricing"):
        admin_create(kubectl, namespace, flag(name))
    return namespace


def test_schedules_only_user_is_refused_naming_the_missing_permission(kubectl: Kubectl, flags: str) -> None:
    grant(kubectl, flags, "alice", "create,get,update,patch", "flagschedules.flagscheduler.dev")
    wait_can(kubectl, flags, "alice", "create", "flagschedules.flagscheduler.dev")

    refused(
        create(kubectl, flags, schedule("go-live", "checkout-v2"), user="alice"),
        f'flagschedules.flagscheduler.dev "go-live" is forbidden: {SCHEDULE_POLICY}',
        f'user "alice" may not patch featureflags.flagscheduler.dev "checkout-v2" in namespace "{flags}": creating a'
        " FlagSchedule or changing its spec (flagRef, updates, scheduledAt, cancelled, retry, startingDeadlineSeconds,"
        " ttlSecondsAfterFinished) needs the permission to patch the flag it names",
    )
    assert not admin_exists(kubectl, flags, "fs/go-live")


def test_patch_on_that_one_flag_allows_scheduling_it_and_only_it(kubectl: Kubectl, flags: str) -> None:
    grant(kubectl, flags, "bob", "create,get,update,patch", "flagschedules.flagscheduler.dev")
    grant(kubectl, flags, "bob", "patch", "featureflags.flagscheduler.dev", names="checkout-v2")
    wait_can(kubectl, flags, "bob", "patch", "featureflags.flagscheduler.dev/checkout-v2")
    assert not can_i(kubectl, flags, "bob", "patch", "featureflags.flagscheduler.dev/pricing")

    accepted(create(kubectl, flags, schedule("go-live", "checkout-v2"), user="bob"))
    accepted(patch(kubectl, flags, "fs/go-live", {"spec": {"updates": {"rolloutPercentage": 50}}}, user="bob"))
    refused(
        create(kubectl, flags, schedule("pricing-on", "pricing"), user="bob"),
        SCHEDULE_POLICY, 'user "bob" may not patch featureflags.flagscheduler.dev "pricing"',
    )
    # Re-pointing an allowed schedule at another flag is the same back door.
    refused(
        patch(kubectl, flags, "fs/go-live", {"spec": {"flagRef": {"name": "pricing"}}}, user="bob"),
        SCHEDULE_POLICY, 'user "bob" may not patch featureflags.flagscheduler.dev "pricing"',
    )
    stored = admin_get(kubectl, flags, "fs/go-live")["spec"]
    assert stored["flagRef"] == {"name": "checkout-v2"}
    assert stored["updates"] == {"enabled": True, "rolloutPercentage": 50}


def test_changing_the_updates_of_someone_elses_schedule_needs_the_flag_too(kubectl: Kubectl, flags: str) -> None:
    """Every other field of the spec too: test_schedule_intent_policy.py."""
    admin_create(kubectl, flags, schedule("go-live", "checkout-v2"))
    grant(kubectl, flags, "carol", "get,update,patch", "flagschedules.flagscheduler.dev")
    wait_can(kubectl, flags, "carol", "patch", "flagschedules.flagscheduler.dev")

    refused(
        patch(kubectl, flags, "fs/go-live", {"spec": {"updates": {"enabled": False}}}, user="carol"),
        SCHEDULE_POLICY, 'user "carol" may not patch featureflags.flagscheduler.dev "checkout-v2"',
    )
    assert admin_get(kubectl, flags, "fs/go-live")["spec"]["updates"] == {"enabled": True}


def test_changing_anything_inside_a_scheduled_targeting_rule_needs_the_flag(kubectl: Kubectl, flags: str) -> None:
    """The policy sees the whole rule: swapping one operator for another of the same size is a change."""
    rule = {"in": [{"var": "tenant"}, ["acme"]]}
    admin_create(kubectl, flags, schedule("rule", "checkout-v2", updates={"targeting": rule}))
    grant(kubectl, flags, "carol", "get,update,patch", "flagschedules.flagscheduler.dev")
    wait_can(kubectl, flags, "carol", "patch", "flagschedules.flagscheduler.dev")
    swapped = {"targeting": {"in": None, "==": [{"var": "tenant"}, ["acme"]]}}
    refused(patch(kubectl, flags, "fs/rule", {"spec": {"updates": swapped}}, user="carol"),
            SCHEDULE_POLICY, 'user "carol" may not patch featureflags.flagscheduler.dev "checkout-v2"')
    assert admin_get(kubectl, flags, "fs/rule")["spec"]["updates"]["targeting"] == rule


@pytest.mark.parametrize("who", ["cluster-admin", "namespace-admin", "namespace-editor"])
def test_users_who_may_patch_every_flag_schedule_freely(kubectl: Kubectl, flags: str, who: str) -> None:
    user = {"cluster-admin": "admin", "namespace-admin": "alice", "namespace-editor": "bob"}[who]
    if who != "cluster-admin":
        bind(kubectl, flags, user, "admin" if who == "namespace-admin" else "edit")  # built-in, aggregated roles
        wait_can(kubectl, flags, user, "create", "flagschedules.flagscheduler.dev")
    accepted(create(kubectl, flags, schedule("go-live", "checkout-v2"), user=user))
    accepted(create(kubectl, flags, schedule("pricing-on", "pricing"), user=user))


def test_operator_writes_to_schedules_are_not_checked(
    kubectl: Kubectl, flags: str, operator_kubeconfig: Path
) -> None:
    """The operator's ownerReference (main resource) and status writes pass, sent as it sends them."""
    admin_create(kubectl, flags, schedule("go-live", "checkout-v2"))
    uid = admin_get(kubectl, flags, "ff/checkout-v2")["metadata"]["uid"]
    owner = {"apiVersion": API_VERSION, "kind": "FeatureFlag", "name": "checkout-v2", "uid": uid}
    api = k8s_config.new_client_from_config(config_file=str(operator_kubeconfig))
    try:
        crd = k8s.CustomObjectsApi(api)
        group, version = API_VERSION.split("/")
        crd.patch_namespaced_custom_object(group, version, flags, "flagschedules", "go-live",
                                           {"metadata": {"ownerReferences": [owner]}})
        crd.patch_namespaced_custom_object_status(group, version, flags, "flagschedules", "go-live",
                                                  {"status": {"claimedBy": "replica-1"}})
    finally:
        api.close()
    stored = admin_get(kubectl, flags, "fs/go-live")
    assert stored["metadata"]["ownerReferences"][0]["uid"] == uid
    assert stored["status"]["claimedBy"] == "replica-1"


# -- 2. only the operator writes its annotations ----------------------------------------------


@pytest.fixture
def editor(kubectl: Kubectl, namespace: str, policies: None) -> str:
    """bob edits flags in the test's namespace (the built-in edit role, which aggregates the editor role)."""
    bind(kubectl, namespace, "bob", "edit")
    wait_can(kubectl, namespace, "bob", "patch", "featureflags.flagscheduler.dev")
    return "bob"


def named_annotations(message: str) -> list[str]:
    """The annotations a refusal names, sorted (the policy lists them in the map's own order)."""
    return sorted(message.split("the annotations ", 1)[1].split(": only", 1)[0].split(", "))


def _annotations(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str]:
    return admin_get(kubectl, namespace, f"ff/{name}")["metadata"].get("annotations", {})


def test_an_editor_cannot_forge_the_marker_of_a_pending_schedule(
    kubectl: Kubectl, namespace: str, editor: str
) -> None:
    """The forgery the marker invites: the operator would mark the schedule Applied and skip the change."""
    accepted(create(kubectl, namespace, flag("checkout-v2"), user=editor))
    accepted(create(kubectl, namespace, schedule("go-live", "checkout-v2"), user=editor))
    uid = admin_get(kubectl, namespace, "fs/go-live")["metadata"]["uid"]

    forged = {"flagscheduler.dev/last-applied-schedule": "go-live", MARKER_UID: uid}
    result = patch(kubectl, namespace, "ff/checkout-v2", {"metadata": {"annotations": forged}}, user=editor)
    message = refused(
        result,
        f'featureflags.flagscheduler.dev "checkout-v2" is forbidden: {MARKER_POLICY}',
        f'user "{editor}" may not set, change or remove the annotations ',
        ": only the flag-scheduler operator writes them"
        " (it is granted update on featureflags/markers in API group flagscheduler.dev)",
    )
    assert named_annotations(message) == sorted(forged)
    assert _annotations(kubectl, namespace, "checkout-v2") == {}


# (id, what the editor's merge patch does to the annotations of a flag the operator has marked)
FORGERIES = [
    ("alter-the-uid", {MARKER_UID: "3f1c0d5e-0000-4000-8000-000000000002"}),
    ("alter-the-fencing-token", {"flagscheduler.dev/fencing-token": "8"}),
    ("remove-the-uid", {MARKER_UID: None}),
    ("remove-all", dict.fromkeys(MARKERS)),
    ("add-another", {"flagscheduler.dev/anything": "x"}),
]


@pytest.mark.parametrize("annotations", [f[1] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_an_editor_cannot_alter_remove_or_add_the_operators_annotations(
    kubectl: Kubectl, namespace: str, editor: str, annotations: dict[str, str | None]
) -> None:
    admin_create(kubectl, namespace, flag("checkout-v2", MARKERS))
    result = patch(kubectl, namespace, "ff/checkout-v2", {"metadata": {"annotations": annotations}}, user=editor)
    message = refused(result, MARKER_POLICY, f'user "{editor}" may not set, change or remove the annotations ')
    assert named_annotations(message) == sorted(annotations)
    assert _annotations(kubectl, namespace, "checkout-v2") == MARKERS


def test_an_editor_cannot_create_a_flag_with_the_operators_annotations(
    kubectl: Kubectl, namespace: str, editor: str
) -> None:
    refused(create(kubectl, namespace, flag("checkout-v2", MARKERS), user=editor), MARKER_POLICY)
    assert not admin_exists(kubectl, namespace, "ff/checkout-v2")


def test_an_editor_still_edits_the_flag_and_its_own_annotations(kubectl: Kubectl, namespace: str, editor: str) -> None:
    """The control for the refusals above: only the operator's annotations are guarded."""
    accepted(create(kubectl, namespace, flag("checkout-v2", MARKERS), user="admin"))
    body = {"metadata": {"annotations": {"team": "checkout"}}, "spec": {"enabled": True}}
    accepted(patch(kubectl, namespace, "ff/checkout-v2", body, user=editor))
    stored = admin_get(kubectl, namespace, "ff/checkout-v2")
    assert stored["spec"]["enabled"] is True
    assert stored["metadata"]["annotations"] == {**MARKERS, "team": "checkout"}


def test_a_namespace_admin_cannot_forge_them_either(kubectl: Kubectl, namespace: str, policies: None) -> None:
    bind(kubectl, namespace, "carol", "admin")
    wait_can(kubectl, namespace, "carol", "patch", "featureflags.flagscheduler.dev")
    admin_create(kubectl, namespace, flag("checkout-v2"))
    refused(patch(kubectl, namespace, "ff/checkout-v2", {"metadata": {"annotations": {MARKER_UID: "x"}}},
                  user="carol"), MARKER_POLICY, 'user "carol"')
    assert not can_i(kubectl, namespace, "carol", "update", "featureflags.flagscheduler.dev", "--subresource=markers")


def test_the_operator_service_account_sets_alters_and_removes_them(
    kubectl: Kubectl, namespace: str, policies: None, operator_kubeconfig: Path
) -> None:
    admin_create(kubectl, namespace, flag("checkout-v2"))
    # As the operator sends it: the change and the markers in one merge PATCH.
    expected: dict[str, str] = {}
    for annotations in (MARKERS, {MARKER_UID: "3f1c0d5e-0000-4000-8000-000000000002"}, dict.fromkeys(MARKERS)):
        body = {"metadata": {"annotations": annotations}, "spec": {"enabled": True}}
        accepted(patch(kubectl, namespace, "ff/checkout-v2", body, kubeconfig=operator_kubeconfig))
        expected = {k: v for k, v in {**expected, **annotations}.items() if v is not None}
        assert _annotations(kubectl, namespace, "checkout-v2") == expected
    assert expected == {}


def test_a_cluster_admin_may_repair_them(kubectl: Kubectl, namespace: str, policies: None) -> None:
    """system:masters passes every authorizer check: the break-glass for a restore from backup."""
    admin_create(kubectl, namespace, flag("checkout-v2", MARKERS))
    accepted(patch(kubectl, namespace, "ff/checkout-v2", {"metadata": {"annotations": {MARKER_UID: None}}}))
    assert MARKER_UID not in _annotations(kubectl, namespace, "checkout-v2")


# -- 3. status belongs to the operator --------------------------------------------------------


@pytest.mark.parametrize("builtin", ["admin", "edit"])
def test_no_role_for_people_writes_status(kubectl: Kubectl, namespace: str, policies: None, builtin: str) -> None:
    admin_create(kubectl, namespace, flag("checkout-v2"))
    admin_create(kubectl, namespace, schedule("go-live", "checkout-v2"))
    bind(kubectl, namespace, "alice", builtin)
    wait_can(kubectl, namespace, "alice", "get", "flagschedules.flagscheduler.dev")
    for kind, obj, status in (("flagschedules", "fs/go-live", {"claimedBy": "alice"}),
                              ("featureflags", "ff/checkout-v2", {"lastAppliedSchedule": "go-live"})):
        assert can_i(kubectl, namespace, "alice", "get", f"{kind}.flagscheduler.dev", "--subresource=status")
        result = patch(kubectl, namespace, obj, {"status": status}, "--subresource=status", user="alice")
        refused(result, f'User "alice" cannot patch resource "{kind}/status" in API group "flagscheduler.dev"')
        assert list(status)[0] not in (admin_get(kubectl, namespace, obj).get("status") or {})

