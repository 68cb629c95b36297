"""The operator fails closed: no schedule is applied while its admission policies are not in force.

``FLAG_SCHEDULER_ADMISSION_POLICIES=check`` (the default; the test harness passes ``external`` to
every other test) with a check every second. The test that deletes a binding is exclusive: while it
is gone every namespace could schedule changes to flags it may not patch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from conftest import REPO, Kubectl
from controlplane import free_port
from operator_harness import Cluster, OperatorProcess, in_seconds, scrape_metrics, wait_for

CHECKED = {"FLAG_SCHEDULER_ADMISSION_POLICIES": "check", "FLAG_SCHEDULER_ADMISSION_CHECK_SECONDS": "1"}
BINDING = "flag-scheduler-schedules-need-flag-patch"
GAUGE = "flag_scheduler_admission_policies_missing"


def test_with_its_policies_in_force_the_operator_applies(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], policies: None
) -> None:
    port = free_port()
    operator = start_operator(FLAG_SCHEDULER_METRICS_PORT=str(port), **CHECKED)
    cluster.flag("checkout-v2")
    cluster.schedule("go-live", "checkout-v2", in_seconds(1), {"enabled": True})
    cluster.wait_phase("go-live", "Applied")
    assert scrape_metrics(port)[GAUGE] == 0
    assert not [line for line in operator.log_lines() if line.get("event") == "admission.policies_missing"]


@pytest.fixture
def binding_deleted(kubectl: Kubectl, policies: None) -> Iterator[Callable[[], None]]:
    """The binding of the schedule policy deleted; returns a function that restores it (and so does teardown)."""
    kubectl("delete", "validatingadmissionpolicybinding", BINDING)

    def restore() -> None:
        kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "policy"))

    yield restore
    restore()


@pytest.mark.exclusive
def test_a_missing_binding_holds_every_schedule_until_it_is_back(
    cluster: Cluster, kubectl: Kubectl, start_operator: Callable[..., OperatorProcess],
    binding_deleted: Callable[[], None],
) -> None:
    port = free_port()
    operator = start_operator(FLAG_SCHEDULER_METRICS_PORT=str(port), **CHECKED)
    missing = operator.wait_log("admission.policies_missing")
    assert missing["missing"] == [f"no ValidatingAdmissionPolicyBinding binds {BINDING} with validationActions"
                                  " [Deny] for every namespace (bindings found: none)"]
    assert "kubectl apply --server-side -k manifests/policy" in missing["fix"]
    assert "FLAG_SCHEDULER_ADMISSION_POLICIES=external" in missing["fix"]
    assert scrape_metrics(port)[GAUGE] == 1

    cluster.flag("checkout-v2")
    cluster.schedule("go-live", "checkout-v2", in_seconds(1), {"enabled": True})
    held = cluster.wait_event("go-live", "AdmissionPoliciesMissing", "Warning", timeout=20)
    assert held["message"].startswith(f"Not applied: no ValidatingAdmissionPolicyBinding binds {BINDING}")
    assert "To fix: install them with `kubectl apply --server-side -k manifests/policy`" in held["message"]
    assert cluster.status("go-live")["phase"] == "Pending"
    assert cluster.get_flag("checkout-v2")["spec"]["enabled"] is False
    # What changes no flag goes on: a cancellation is recorded while the policies are missing.
    cluster.flag("pricing")
    cluster.schedule("dropped", "pricing", in_seconds(3600), {"enabled": True}, cancelled=True)
    cluster.wait_phase("dropped", "Cancelled")

    binding_deleted()
    cluster.wait_phase("go-live", "Applied", timeout=20)
    assert cluster.get_flag("checkout-v2")["spec"]["enabled"] is True
    operator.wait_log("admission.policies_in_force")
    assert scrape_metrics(port)[GAUGE] == 0


@pytest.mark.exclusive
def test_the_external_setting_applies_without_the_policies(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], binding_deleted: Callable[[], None],
) -> None:
    """The explicit opt-out for clusters that enforce the same rules another way (a webhook, say)."""
    operator = start_operator(FLAG_SCHEDULER_ADMISSION_POLICIES="external")
    cluster.flag("checkout-v2")
    cluster.schedule("go-live", "checkout-v2", in_seconds(1), {"enabled": True})
    cluster.wait_phase("go-live", "Applied")
    assert not [line for line in operator.log_lines() if line.get("event", "").startswith("admission.")]


def test_an_operator_that_may_not_read_the_policies_applies_nothing(
    cluster: Cluster, kubectl: Kubectl, start_operator: Callable[..., OperatorProcess], policies: None,
) -> None:
    """Unknown is not in force: a ServiceAccount without the admission-reader role is held, and told what to grant."""
    sa = f"no-reader-{uuid.uuid4().hex[:6]}"
    ns = cluster.ns
    kubectl("create", "serviceaccount", sa, "-n", ns)
    kubectl("create", "rolebinding", sa, "--clusterrole=flag-scheduler-operator", f"--serviceaccount={ns}:{sa}",
            "-n", ns)
    kubectl("create", "role", "lease", "--verb=get,create,update", "--resource=leases", "-n", ns)
    kubectl("create", "rolebinding", "lease", "--role=lease", f"--serviceaccount={ns}:{sa}", "-n", ns)
    wait_for(lambda: all(kubectl("auth", "can-i", verb, what, "-n", ns, f"--as=system:serviceaccount:{ns}:{sa}",
                                 check=False).stdout.strip() == "yes"
                         for verb, what in (("list", "flagschedules.flagscheduler.dev"), ("update", "leases"))),
             what="the ServiceAccount's bindings to take effect")
    token = kubectl("create", "token", sa, "-n", ns).stdout.strip()
    kubeconfig = cluster.cp.write_token_kubeconfig(sa, token)
    operator = start_operator(kubeconfig=kubeconfig, **CHECKED)
    missing = operator.wait_log("admission.policies_missing")
    assert missing["missing"][0].startswith("cannot read ValidatingAdmissionPolicies and their bindings (403 Forbidden")
    assert "needs get and list on both (manifests/rbac/admission_reader_role.yaml)" in missing["missing"][0]
    cluster.flag("checkout-v2")
    cluster.schedule("go-live", "checkout-v2", in_seconds(1), {"enabled": True})
    cluster.wait_event("go-live", "AdmissionPoliciesMissing", "Warning", timeout=20)
    assert cluster.status("go-live")["phase"] == "Pending"
    assert cluster.get_flag("checkout-v2")["spec"]["enabled"] is False
