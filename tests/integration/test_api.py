"""The API as a user meets it, with no operator running: install manifests, printer columns, the
refusals of bad input (schema, strict field validation, CEL), RBAC with real identities, Pod Security.

Every refusal is asserted by the message the API server gives, which must name the offending field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from conftest import REPO, Kubectl
from operator_harness import wait_for

from .conftest import OPERATOR_NAMESPACE
from .admission import PLURALS, admin_exists

API_VERSION = "flagscheduler.dev/v1alpha1"
SAMPLES = REPO / "manifests" / "samples"
MISSING = object()

FLAG_SPEC: dict[str, Any] = {"enabled": False, "rolloutPercentage": 0}
SCHEDULE_SPEC: dict[str, Any] = {
    "flagRef": {"name": "checkout-v2"},
    "scheduledAt": "2030-01-01T09:00:00Z",
    "updates": {"enabled": True, "rolloutPercentage": 25},
}
TERMINAL_PHASES = ["Applied", "Failed", "Cancelled", "Missed"]


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def flag(name: str = "checkout-v2", **spec: Any) -> dict[str, Any]:
    return resource("FeatureFlag", name, {**FLAG_SPEC, **spec})


def schedule(name: str, flag_name: str = "checkout-v2", **spec: Any) -> dict[str, Any]:
    return resource("FlagSchedule", name, {**copy.deepcopy(SCHEDULE_SPEC), "flagRef": {"name": flag_name}, **spec})


def with_field(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with the dotted ``path`` set to ``value`` (or removed, for MISSING)."""
    obj = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is MISSING:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return obj


def apply(kubectl: Kubectl, namespace: str, *objs: dict[str, Any], args: tuple[str, ...] = (), **kw: Any):
    """``kubectl apply`` the objects into ``namespace``; the caller checks the result."""
    # A YAML stream, not a v1 List: for a List, kubectl validates client-side and the API server
    # never sees the object.
    stream = "\n---\n".join(json.dumps(obj) for obj in objs)
    return kubectl("apply", "-n", namespace, *args, "-f", "-", input=stream, check=False, **kw)


def table(text: str) -> list[dict[str, str]]:
    """Parse one kubectl table into rows keyed by column header (empty cells stay empty)."""
    header, *lines = text.splitlines()
    names = header.split()
    starts = [header.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    bounds = list(zip(starts, [*starts[1:], None]))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds)} for line in lines if line.strip()]


def refused(result, *fragments: str) -> str:
    """Assert a kubectl command was refused with every fragment in its message; return the message."""
    assert result.returncode != 0, f"expected a refusal, got success:\n{result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in the API server's message:\n{result.stderr}"
    return result.stderr


# -- install ---------------------------------------------------------------------------------


@pytest.mark.parametrize("crd", ["featureflags.flagscheduler.dev", "flagschedules.flagscheduler.dev"])
def test_crds_are_established(kubectl: Kubectl, crds: None, crd: str) -> None:
    conditions = {c["type"]: c["status"] for c in kubectl.json("get", "crd", crd)["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"


def test_default_install_passes_server_dry_run(kubectl: Kubectl, operator_manifests: None) -> None:
    result = kubectl("apply", "--server-side", "--dry-run=server", "-k", str(REPO / "manifests" / "default"))
    assert "deployment.apps/flag-scheduler serverside-applied (server dry run)" in result.stdout
    # The namespace enforces Pod Security "restricted" and warns too: no warning means compliant.
    assert "Warning" not in result.stderr, result.stderr


def test_samples_apply(kubectl: Kubectl, crds: None, namespace: str) -> None:
    kubectl("apply", "-k", str(SAMPLES), "-n", namespace)
    schedules = {s["metadata"]["name"]: s["spec"] for s in kubectl.json("get", "fs", "-n", namespace)["items"]}
    assert set(schedules) == {"checkout-v2-go-live", "checkout-v2-full-rollout", "checkout-v2-switch-off",
                              "checkout-theme-green"}
    assert schedules["checkout-theme-green"]["updates"] == {"defaultVariant": "green", "split": [], "targeting": {}}
    assert schedules["checkout-v2-full-rollout"]["retry"]["maxRetries"] == 10
    assert schedules["checkout-v2-switch-off"]["cancelled"] is True
    assert schedules["checkout-v2-go-live"]["cancelled"] is False  # schema default
    assert kubectl.json("get", "ff", "checkout-v2", "-n", namespace)["spec"]["enabled"] is False
    window = kubectl.json("get", "fcs", "checkout-v2-business-hours", "-n", namespace)["spec"]
    assert window["suspend"] is False and window["timeZone"] == "Europe/Berlin"  # suspend: schema default


# -- reading ---------------------------------------------------------------------------------


def test_get_prints_the_printer_columns(kubectl: Kubectl, crds: None, namespace: str) -> None:
    kubectl("apply", "-k", str(SAMPLES), "-n", namespace)

    flags = kubectl("get", "ff", "-n", namespace).stdout
    assert flags.splitlines()[0].split() == ["NAME", "ENABLED", "ROLLOUT", "TYPE", "DEFAULT", "LAST-SCHEDULE", "AGE"]
    assert [row | {"AGE": ""} for row in table(flags)] == [
        {"NAME": "checkout-theme", "ENABLED": "true", "ROLLOUT": "100", "TYPE": "string", "DEFAULT": "blue",
         "LAST-SCHEDULE": "", "AGE": ""},
        {"NAME": "checkout-v2", "ENABLED": "false", "ROLLOUT": "0", "TYPE": "", "DEFAULT": "", "LAST-SCHEDULE": "",
         "AGE": ""},
        {"NAME": "search-v2", "ENABLED": "false", "ROLLOUT": "0", "TYPE": "", "DEFAULT": "", "LAST-SCHEDULE": "",
         "AGE": ""},
    ]

    schedules = kubectl("get", "fs", "-n", namespace).stdout
    assert schedules.splitlines()[0].split() == [
        "NAME", "FLAG", "SCHEDULED-AT", "PHASE", "RETRIES", "NEXT-RETRY", "AGE"
    ]
    go_live = next(r for r in table(schedules) if r["NAME"] == "checkout-v2-go-live")
    # No operator runs: Pending and 0 come from the schema's status defaults.
    assert go_live | {"AGE": ""} == {
        "NAME": "checkout-v2-go-live", "FLAG": "checkout-v2", "SCHEDULED-AT": "2027-03-01T09:00:00Z",
        "PHASE": "Pending", "RETRIES": "0", "NEXT-RETRY": "", "AGE": "",
    }

    wide = kubectl("get", "fs", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-2:] == ["APPLIED-AT", "LAST-ERROR"]

    both = kubectl("get", "flags", "-n", namespace).stdout
    assert "featureflag.flagscheduler.dev/checkout-v2 " in both
    assert "flagschedule.flagscheduler.dev/checkout-v2-go-live " in both
    assert "ENABLED" in both and "SCHEDULED-AT" in both


def test_explain_shows_the_field_descriptions(kubectl: Kubectl, crds: None) -> None:
    # The OpenAPI document is published a moment after the CRD is Established.
    def explain() -> str:
        result = kubectl("explain", "flagschedule.spec.updates", check=False)
        return result.stdout if result.returncode == 0 else ""

    text = wait_for(explain, what="kubectl explain flagschedule.spec.updates")
    assert "The fields of the flag's spec to set, at least one." in text
    assert "rolloutPercentage\t<integer>" in text
    assert "New rollout percentage, 0 to 100." in text
    assert "Turn the flag on (true) or off (false)." in text


def test_field_selector_lists_the_schedules_of_one_flag(kubectl: Kubectl, crds: None, namespace: str) -> None:
    result = apply(
        kubectl, namespace,
        flag("alpha"), flag("beta"),
        schedule("alpha-on", "alpha"), schedule("alpha-off", "alpha", updates={"enabled": False}),
        schedule("beta-on", "beta"),
    )
    assert result.returncode == 0, result.stderr

    def names(flag_name: str) -> set[str]:
        out = kubectl("get", "fs", "-n", namespace, f"--field-selector=spec.flagRef.name={flag_name}", "-o", "name")
        return set(out.stdout.split())

    assert names("alpha") == {"flagschedule.flagscheduler.dev/alpha-on", "flagschedule.flagscheduler.dev/alpha-off"}
    assert names("beta") == {"flagschedule.flagscheduler.dev/beta-on"}
    assert names("gamma") == set()


# -- bad input -------------------------------------------------------------------------------

LONG = "x" * 1025
# (kind, dotted path in a good object, the bad value or MISSING, fragments of the API server's message)
BAD_INPUT = [
    ("FlagSchedule", "spec.updates.rolloutPercentage", 101,
     ["spec.updates.rolloutPercentage: Invalid value: 101", "should be less than or equal to 100"]),
    ("FlagSchedule", "spec.updates.rolloutPercentage", -1,
     ["spec.updates.rolloutPercentage: Invalid value: -1", "should be greater than or equal to 0"]),
    ("FlagSchedule", "spec.updates.rolloutPercentage", "50",
     ["spec.updates.rolloutPercentage", "must be of type integer"]),
    ("FlagSchedule", "spec.updates.enabled", "true", ["spec.updates.enabled", "must be of type boolean"]),
    ("FlagSchedule", "spec.updates.description", LONG,
     ["spec.updates.description: Too long: may not be more than 1024"]),
    ("FlagSchedule", "spec.updates", {}, ["spec.updates", "should have at least 1 properties"]),
    ("FlagSchedule", "spec.updates", MISSING, ["spec.updates: Required value"]),
    ("FlagSchedule", "spec.updates.foo", 1, ['unknown field "spec.updates.foo"']),
    ("FlagSchedule", "spec.flagRef", MISSING, ["spec.flagRef: Required value"]),
    ("FlagSchedule", "spec.flagRef.name", MISSING, ["spec.flagRef.name: Required value"]),
    ("FlagSchedule", "spec.flagRef.name", "Checkout_V2", ["spec.flagRef.name: Invalid value", "should match"]),
    ("FlagSchedule", "spec.flagRef.name", "", ["spec.flagRef.name", "should be at least 1 chars long"]),
    ("FlagSchedule", "spec.scheduledAt", MISSING, ["spec.scheduledAt: Required value"]),
    ("FlagSchedule", "spec.scheduledAt", "tomorrow",
     ['spec.scheduledAt: Invalid value: "tomorrow"', "must be of type date-time"]),
    ("FlagSchedule", "spec.scheduledAt", "2026-13-01T00:00:00Z",
     ['spec.scheduledAt: Invalid value: "2026-13-01T00:00:00Z"', "must be of type date-time"]),
    ("FlagSchedule", "spec.cancelled", "yes", ["spec.cancelled", "must be of type boolean"]),
    ("FlagSchedule", "spec.startingDeadlineSeconds", -1,
     ["spec.startingDeadlineSeconds: Invalid value: -1", "should be greater than or equal to 0"]),
    ("FlagSchedule", "spec.retry", {"maxRetries": -1},
     ["spec.retry.maxRetries: Invalid value: -1", "should be greater than or equal to 0"]),
    ("FlagSchedule", "spec.retry", {"maxRetries": 101},
     ["spec.retry.maxRetries: Invalid value: 101", "should be less than or equal to 100"]),
    ("FlagSchedule", "spec.retry", {"backoffSeconds": 0},
     ["spec.retry.backoffSeconds: Invalid value: 0", "should be greater than or equal to 1"]),
    ("FlagSchedule", "spec.retry", {"backoffSeconds": 60, "maxBackoffSeconds": 30},
     ["spec.retry.maxBackoffSeconds must be greater than or equal to spec.retry.backoffSeconds"]),
    ("FlagSchedule", "spec.retry", {}, ["spec.retry", "should have at least 1 properties"]),
    ("FlagSchedule", "spec.owner", "team-a", ['unknown field "spec.owner"']),
    ("FlagSchedule", "spec", MISSING, ["spec: Required value"]),
    # FeatureFlag
    ("FeatureFlag", "spec.enabled", MISSING, ["spec.enabled: Required value"]),
    ("FeatureFlag", "spec.enabled", "yes", ['spec.enabled: Invalid value: "string"', "must be of type boolean"]),
    ("FeatureFlag", "spec.rolloutPercentage", 101,
     ["spec.rolloutPercentage: Invalid value: 101", "should be less than or equal to 100"]),
    ("FeatureFlag", "spec.description", LONG, ["spec.description: Too long: may not be more than 1024"]),
    ("FeatureFlag", "spec.owner", "team-a", ['unknown field "spec.owner"']),
]


def _row_id(row: tuple) -> str:
    kind, path, value, _ = row
    shown = "missing" if value is MISSING else ("long" if value is LONG else json.dumps(value))
    return f"{kind}-{path.removeprefix('spec.') or 'spec'}={shown}"


@pytest.mark.parametrize(("kind", "path", "value", "fragments"), BAD_INPUT, ids=[_row_id(r) for r in BAD_INPUT])
def test_bad_input_is_refused_naming_the_field(
    kubectl: Kubectl, crds: None, namespace: str, kind: str, path: str, value: Any, fragments: list[str]
) -> None:
    good = flag("bad") if kind == "FeatureFlag" else schedule("bad")
    result = apply(kubectl, namespace, with_field(good, path, value))
    refused(result, *fragments)
    # Nothing half-applied: the refused object does not exist.
    assert not admin_exists(kubectl, namespace, f"{PLURALS[kind]}/bad")


def test_the_good_base_objects_of_the_bad_input_table_are_accepted(
    kubectl: Kubectl, crds: None, namespace: str
) -> None:
    """The control for the table above: only the changed field makes those objects bad."""
    assert apply(kubectl, namespace, flag("bad"), schedule("bad")).returncode == 0


@pytest.mark.parametrize("validate", ["warn", "false"])
def test_unknown_fields_are_pruned_for_clients_that_do_not_ask_for_strict_validation(
    kubectl: Kubectl, crds: None, namespace: str, validate: str
) -> None:
    """``--validate=warn``/``false`` (fieldValidation Warn/Ignore): stored without the unknown fields, never kept."""
    bad_schedule = with_field(with_field(schedule("pruned"), "spec.updates.foo", 1), "spec.owner", "team-a")
    bad_flag = with_field(flag("pruned"), "spec.owner", "team-a")
    result = apply(kubectl, namespace, bad_flag, bad_schedule, args=(f"--validate={validate}",))
    assert result.returncode == 0, result.stderr
    if validate == "warn":
        assert 'unknown field "spec.owner"' in result.stderr and 'unknown field "spec.updates.foo"' in result.stderr
    assert kubectl.json("get", "fs", "pruned", "-n", namespace)["spec"] == {**SCHEDULE_SPEC, "cancelled": False}
    assert kubectl.json("get", "ff", "pruned", "-n", namespace)["spec"] == {**FLAG_SPEC}


# -- transitions -----------------------------------------------------------------------------


APPLIED_STATUS: dict[str, Any] = {
    "phase": "Applied",
    "appliedAt": "2030-01-01T09:00:00.000Z",
    "conditions": [{"type": "Applied", "status": "True", "reason": "Applied", "message": "FeatureFlag updated",
                    "lastTransitionTime": "2030-01-01T09:00:00.000Z"}],
}


def _set_phase(kubectl: Kubectl, namespace: str, name: str, phase: str, check: bool = True):
    """Write ``phase`` to the schedule's status, with what the CRD's status rules require alongside it."""
    status = APPLIED_STATUS if phase == "Applied" else {"phase": phase}
    return kubectl(
        "patch", "fs", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=check,
    )


@pytest.fixture
def applied_schedule(kubectl: Kubectl, crds: None, namespace: str) -> dict[str, Any]:
    """A schedule created with ``kubectl apply`` whose status.phase an admin set to Applied."""
    obj = schedule("go-live", retry={"maxRetries": 2})
    assert apply(kubectl, namespace, flag(), obj).returncode == 0
    _set_phase(kubectl, namespace, "go-live", "Applied")
    return obj


TRANSITIONS = [
    ("cancel", "spec.cancelled", True,
     "spec.cancelled: Forbidden: spec.cancelled cannot change: the schedule is already Applied"),
    ("reschedule", "spec.scheduledAt", "2030-01-05T09:00:00Z",
     "spec.scheduledAt: Forbidden: spec.scheduledAt cannot change: the schedule is already Applied"),
    ("change-updates", "spec.updates.rolloutPercentage", 50,
     "spec: Forbidden: spec (flagRef, updates, retry, startingDeadlineSeconds) cannot change:"
     " the schedule is already Applied"),
    ("change-flag", "spec.flagRef.name", "other",
     "spec: Forbidden: spec (flagRef, updates, retry, startingDeadlineSeconds) cannot change"),
    ("drop-retry", "spec.retry", MISSING,
     "spec: Forbidden: spec (flagRef, updates, retry, startingDeadlineSeconds) cannot change"),
]


@pytest.mark.parametrize(("path", "value", "message"), [t[1:] for t in TRANSITIONS], ids=[t[0] for t in TRANSITIONS])
def test_an_applied_schedule_refuses_spec_changes(
    kubectl: Kubectl, namespace: str, applied_schedule: dict[str, Any], path: str, value: Any, message: str
) -> None:
    refused(apply(kubectl, namespace, with_field(applied_schedule, path, value)), message)
    stored = kubectl.json("get", "fs", "go-live", "-n", namespace)
    assert stored["spec"] == {**applied_schedule["spec"], "cancelled": False}
    assert stored["status"]["phase"] == "Applied"


def test_an_applied_schedule_cannot_go_back_to_pending(
    kubectl: Kubectl, namespace: str, applied_schedule: dict[str, Any]
) -> None:
    result = _set_phase(kubectl, namespace, "go-live", "Pending", check=False)
    refused(result, "status.phase: Forbidden: status.phase cannot leave Applied: it is final")
    assert kubectl.json("get", "fs", "go-live", "-n", namespace)["status"]["phase"] == "Applied"


@pytest.mark.parametrize("phase", TERMINAL_PHASES)
def test_every_final_phase_freezes_the_schedule(kubectl: Kubectl, crds: None, namespace: str, phase: str) -> None:
    obj = schedule("done")
    assert apply(kubectl, namespace, obj).returncode == 0
    _set_phase(kubectl, namespace, "done", phase)
    refused(
        apply(kubectl, namespace, with_field(obj, "spec.scheduledAt", "2031-01-01T00:00:00Z")),
        f"spec.scheduledAt cannot change: the schedule is already {phase}",
    )


def test_cancelling_a_pending_schedule_is_accepted(kubectl: Kubectl, crds: None, namespace: str) -> None:
    obj = schedule("go-live")
    assert apply(kubectl, namespace, flag(), obj).returncode == 0
    result = apply(kubectl, namespace, with_field(obj, "spec.cancelled", True))
    assert result.returncode == 0, result.stderr
    stored = kubectl.json("get", "fs", "go-live", "-n", namespace)
    assert stored["spec"]["cancelled"] is True
    assert stored["status"]["phase"] == "Pending"  # the operator, not the API server, moves it on


# -- RBAC ------------------------------------------------------------------------------------


def _bind(kubectl: Kubectl, namespace: str, cluster_role: str, user: str) -> None:
    kubectl("create", "rolebinding", f"{user}-{cluster_role}", f"--clusterrole={cluster_role}", f"--user={user}",
            "-n", namespace)


def _eventually_allowed(kubectl: Kubectl, *args: str, user: str) -> None:
    """Retry until the RBAC authorizer's cache has seen a new binding."""
    wait_for(lambda: kubectl(*args, user=user, check=False).returncode == 0, what=f"{user}: kubectl {' '.join(args)}")


def test_viewer_reads_but_cannot_write(kubectl: Kubectl, operator_manifests: None, namespace: str) -> None:
    assert apply(kubectl, namespace, flag(), schedule("go-live")).returncode == 0
    _bind(kubectl, namespace, "flag-scheduler-viewer", "alice")
    _eventually_allowed(kubectl, "get", "fs", "-n", namespace, user="alice")
    assert "go-live" in kubectl("get", "fs", "go-live", "-n", namespace, user="alice").stdout
    refused(
        apply(kubectl, namespace, schedule("alices"), user="alice"),
        "Forbidden", 'User "alice" cannot create resource "flagschedules" in API group "flagscheduler.dev"',
    )


def test_editor_writes_spec_but_not_status(kubectl: Kubectl, operator_manifests: None, namespace: str) -> None:
    _bind(kubectl, namespace, "flag-scheduler-editor", "bob")
    _eventually_allowed(kubectl, "get", "fs", "-n", namespace, user="bob")
    result = apply(kubectl, namespace, flag(), schedule("bobs"), user="bob")
    assert result.returncode == 0, result.stderr
    result = kubectl("patch", "fs", "bobs", "-n", namespace, "--subresource=status", "--type=merge",
                     "-p", '{"status":{"phase":"Applied"}}', user="bob", check=False)
    refused(result, "Forbidden", 'User "bob" cannot patch resource "flagschedules/status"')
    assert kubectl.json("get", "fs", "bobs", "-n", namespace)["status"]["phase"] == "Pending"


def test_user_without_a_role_is_refused(kubectl: Kubectl, operator_manifests: None, namespace: str) -> None:
    result = kubectl("get", "fs", "-n", namespace, user="carol", check=False)
    refused(result, "Forbidden", 'User "carol" cannot list resource "flagschedules" in API group "flagscheduler.dev"')


@pytest.mark.parametrize(
    ("builtin", "verbs"),
    [("view", {"get", "list", "watch"}), ("edit", {"create", "update", "patch", "delete"}), ("admin", {"*"})],
)
def test_builtin_roles_aggregate_the_flag_roles(
    kubectl: Kubectl, operator_manifests: None, builtin: str, verbs: set[str]
) -> None:
    def granted() -> set[str]:
        rules = kubectl.json("get", "clusterrole", builtin).get("rules") or []
        return {
            verb for r in rules if "flagscheduler.dev" in r.get("apiGroups", []) and "flagschedules" in r["resources"]
            for verb in r["verbs"]
        }

    wait_for(lambda: verbs <= granted(), what=f"the {builtin} ClusterRole to aggregate flag-scheduler's rules")


def _as_operator(kubectl: Kubectl, kubeconfig: Path, *args: str, input: str | None = None):
    return kubectl(*args, kubeconfig=kubeconfig, check=False, input=input)


@pytest.fixture
def operator_api(operator_kubeconfig: Path) -> Iterator[k8s.ApiClient]:
    """An official-client ApiClient authenticated as the operator's ServiceAccount."""
    client = k8s_config.new_client_from_config(config_file=str(operator_kubeconfig))
    yield client
    client.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_operator_service_account_can_do_its_job(
    kubectl: Kubectl, operator_kubeconfig: Path, operator_api: k8s.ApiClient, namespace: str
) -> None:
    """Reads with kubectl; writes as the operator sends them: a bare PATCH, with no GET before it."""
    assert apply(kubectl, namespace, flag(), schedule("go-live")).returncode == 0
    for args in (
        ["get", "ff,fs", "-A"],
        ["get", "fs", "go-live", "-n", namespace],
        ["get", "--raw", f"/apis/{API_VERSION}/namespaces/{namespace}/flagschedules?watch=1&timeoutSeconds=1"],
        ["get", "--raw", f"/apis/{API_VERSION}/featureflags?watch=1&timeoutSeconds=1"],
    ):
        result = _as_operator(kubectl, operator_kubeconfig, *args)
        assert result.returncode == 0, f"operator: kubectl {' '.join(args)}:\n{result.stderr}"

    crd = k8s.CustomObjectsApi(operator_api)
    group, version = API_VERSION.split("/")
    marker = {"flagscheduler.dev/last-applied-schedule": "go-live"}
    crd.patch_namespaced_custom_object(
        group, version, namespace, "featureflags", "checkout-v2",
        {"metadata": {"annotations": marker}, "spec": {"enabled": True}},
    )
    crd.patch_namespaced_custom_object(
        group, version, namespace, "flagschedules", "go-live", {"metadata": {"annotations": {"probe": "1"}}}
    )
    crd.patch_namespaced_custom_object_status(
        group, version, namespace, "flagschedules", "go-live", {"status": APPLIED_STATUS}
    )

    core = k8s.CoreV1Api(operator_api)
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(name="go-live.probe"),
        involved_object=k8s.V1ObjectReference(
            api_version=API_VERSION, kind="FlagSchedule", name="go-live", namespace=namespace
        ),
        reason="Applied", message="probe", type="Normal", count=1,
    )
    core.create_namespaced_event(namespace, event)  # posted once, never patched: the role has no events patch

    leases = k8s.CoordinationV1Api(operator_api)
    name = f"probe-{namespace}"  # never the operator's own Lease name, which other tests use
    try:
        leases.create_namespaced_lease(
            OPERATOR_NAMESPACE,
            k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1LeaseSpec(holder_identity="probe")),
        )
        lease = leases.read_namespaced_lease(name, OPERATOR_NAMESPACE)
        lease.spec.holder_identity = "probe-2"
        leases.replace_namespaced_lease(name, OPERATOR_NAMESPACE, lease)  # renewals are updates, never patches
    finally:
        kubectl("delete", "lease", name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")

    stored_flag = kubectl.json("get", "ff", "checkout-v2", "-n", namespace)
    assert stored_flag["spec"]["enabled"] is True
    assert stored_flag["metadata"]["annotations"].items() >= marker.items()
    assert kubectl.json("get", "fs", "go-live", "-n", namespace)["status"]["phase"] == "Applied"
    assert kubectl.json("get", "event", "go-live.probe", "-n", namespace)["count"] == 1


def _lease(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "probe"},
            "spec": {"holderIdentity": "probe"}}


def _new_flag(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return flag("created-by-operator")


def _stored_schedule(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return with_field(kubectl.json("get", "fs", "go-live", "-n", namespace), "spec.updates.enabled", False)


# (id, kubectl arguments with {ns} for the test namespace, what to send on stdin, message fragment)
OPERATOR_REFUSALS = [
    ("get-secrets-everywhere", ["get", "secrets", "-A"], None,
     'cannot list resource "secrets" in API group "" at the cluster scope'),
    ("get-secret-own-namespace", ["get", "secret", "any", "-n", OPERATOR_NAMESPACE], None,
     f'cannot get resource "secrets" in API group "" in the namespace "{OPERATOR_NAMESPACE}"'),
    ("get-secret-test-namespace", ["get", "secret", "any", "-n", "{ns}"], None,
     'cannot get resource "secrets" in API group "" in the namespace "{ns}"'),
    ("create-lease-elsewhere", ["create", "-n", "{ns}", "-f", "-"], _lease,
     'cannot create resource "leases" in API group "coordination.k8s.io" in the namespace "{ns}"'),
    ("delete-lease", ["delete", "lease", "any", "-n", OPERATOR_NAMESPACE], None,
     'cannot delete resource "leases"'),
    ("delete-flag", ["delete", "ff", "checkout-v2", "-n", "{ns}"], None,
     'cannot delete resource "featureflags" in API group "flagscheduler.dev"'),
    ("create-flag", ["create", "-n", "{ns}", "-f", "-"], _new_flag,
     'cannot create resource "featureflags" in API group "flagscheduler.dev"'),
    ("flag-status", ["patch", "ff", "checkout-v2", "-n", "{ns}", "--subresource=status", "--type=merge",
                     "-p", '{{"status":{{"conditions":[]}}}}'], None,
     'resource "featureflags/status" in API group "flagscheduler.dev"'),
    ("update-schedule", ["replace", "-f", "-"], _stored_schedule,
     'cannot update resource "flagschedules" in API group "flagscheduler.dev"'),
    ("list-namespaces", ["get", "namespaces"], None, 'cannot list resource "namespaces"'),
    ("list-crds", ["get", "crd"], None, 'cannot list resource "customresourcedefinitions"'),
]


@pytest.mark.parametrize(
    ("args", "stdin", "message"), [r[1:] for r in OPERATOR_REFUSALS], ids=[r[0] for r in OPERATOR_REFUSALS]
)
def test_operator_service_account_is_refused_everything_else(
    kubectl: Kubectl,
    operator_kubeconfig: Path,
    namespace: str,
    args: list[str],
    stdin: Callable[[Kubectl, str], dict[str, Any]] | None,
    message: str,
) -> None:
    assert apply(kubectl, namespace, flag(), schedule("go-live")).returncode == 0
    body = json.dumps(stdin(kubectl, namespace)) if stdin else None
    result = _as_operator(kubectl, operator_kubeconfig, *(a.format(ns=namespace) for a in args), input=body)
    refused(
        result,
        "Forbidden",
        f'User "system:serviceaccount:{OPERATOR_NAMESPACE}:flag-scheduler"',
        message.format(ns=namespace),
    )


# -- Pod Security ----------------------------------------------------------------------------


@pytest.fixture
def restricted_namespace(kubectl: Kubectl, namespace: str) -> str:
    """The test namespace, enforcing and warning on Pod Security "restricted", with the operator's SA."""
    kubectl("label", "namespace", namespace,
            "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted")
    kubectl("create", "serviceaccount", "flag-scheduler", "-n", namespace)
    return namespace


@pytest.fixture(scope="module")
def deployment(kubectl: Kubectl) -> dict[str, Any]:
    """The operator's Deployment as ``kubectl kustomize manifests/manager`` renders it."""
    docs = yaml.safe_load_all(kubectl("kustomize", str(REPO / "manifests" / "manager")).stdout)
    return next(d for d in docs if d["kind"] == "Deployment")


def pod_from(deployment: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A Pod made from the Deployment's template: Pod Security refuses Pods, it only warns on Deployments."""
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "flag-scheduler-probe", "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def _dry_run(kubectl: Kubectl, obj: dict[str, Any]):
    return kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)


def test_the_deployment_meets_pod_security_restricted(
    kubectl: Kubectl, restricted_namespace: str, deployment: dict[str, Any]
) -> None:
    dep = with_field(deployment, "metadata.namespace", restricted_namespace)
    result = _dry_run(kubectl, dep)
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr and "Warning" not in result.stderr, result.stderr

    result = _dry_run(kubectl, pod_from(deployment, restricted_namespace))
    assert result.returncode == 0, result.stderr
    assert "pod/flag-scheduler-probe created (server dry run)" in result.stdout


def _container_security(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]


def _pod_security(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["securityContext"]


# (id, how to weaken the Deployment, what Pod Security says)
WEAKENED = [
    ("privilege-escalation", lambda d: _container_security(d).update(allowPrivilegeEscalation=True),
     "allowPrivilegeEscalation != false"),
    ("capabilities-kept", lambda d: _container_security(d).pop("capabilities"), "unrestricted capabilities"),
    ("root-allowed", lambda d: _pod_security(d).update(runAsNonRoot=False), "runAsNonRoot != true"),
    ("no-seccomp", lambda d: _pod_security(d).pop("seccompProfile"), "seccompProfile"),
]


@pytest.mark.parametrize(("weaken", "violation"), [w[1:] for w in WEAKENED], ids=[w[0] for w in WEAKENED])
def test_a_weakened_pod_is_refused_by_pod_security(
    kubectl: Kubectl, restricted_namespace: str, deployment: dict[str, Any],
    weaken: Callable[[dict[str, Any]], object], violation: str,
) -> None:
    """The control for the test above: the namespace really enforces restricted."""
    weak = copy.deepcopy(deployment)
    weaken(weak)
    result = _dry_run(kubectl, pod_from(weak, restricted_namespace))
    refused(result, 'pods "flag-scheduler-probe" is forbidden: violates PodSecurity "restricted:latest"', violation)
    # The same weakness in a Deployment is only a warning, which is why the Pod is what is checked.
    result = _dry_run(kubectl, with_field(weak, "metadata.namespace", restricted_namespace))
    assert result.returncode == 0, result.stderr
    assert "would violate PodSecurity" in result.stderr and violation in result.stderr
