"""Argo CD syncs as the tenant: what a commit can do is what the tenant's ServiceAccount may do.

With sync impersonation (argocd/install/appproject.yaml), Argo CD's application controller sends
each apply with ``Impersonate-User: system:serviceaccount:<namespace>:<name>`` and field manager
``argocd-controller``. kubectl's ``--as`` sends the same header, so these applies reach the
admission policies exactly as a sync of the README's recipe would. The tenant is
argocd/install/tenant.yaml, applied as shipped in the test's namespace instead of ``shop``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from argocd_sync import git_flag, git_schedule, sync
from conftest import REPO, Kubectl
from operator_harness import wait_for

from .admission import MARKER_POLICY, SCHEDULE_POLICY, accepted, admin_exists, admin_get, refused

INSTALL = REPO / "argocd" / "install"


def tenant_manifests(namespace: str) -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((INSTALL / "tenant.yaml").read_text()))
    text = yaml.safe_dump_all(docs).replace("namespace: shop", f"namespace: {namespace}")
    return list(yaml.safe_load_all(text))


class AsTenant:
    """kubectl as the admin impersonating the tenant ServiceAccount, as Argo CD's controller does."""

    def __init__(self, kubectl: Kubectl, user: str) -> None:
        self.kubectl, self.user = kubectl, user

    def __call__(self, *args: str, **kw: Any):
        return self.kubectl(*args, f"--as={self.user}", **kw)

    def json(self, *args: str) -> dict[str, Any]:
        return self.kubectl.json(*args, f"--as={self.user}")


@pytest.fixture
def tenant(kubectl: Kubectl, namespace: str, policies: None) -> AsTenant:
    """The shop tenant installed in the test's namespace, with flags checkout-v2 (its own) and pricing (not)."""
    project = yaml.safe_load((INSTALL / "appproject.yaml").read_text())
    account = project["spec"]["destinationServiceAccounts"][0]["defaultServiceAccount"]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(tenant_manifests(namespace)))
    user = f"system:serviceaccount:{namespace}:{account}"
    for name in ("checkout-v2", "pricing"):
        kubectl("apply", "-f", "-", input=yaml.safe_dump(git_flag(name, namespace, enabled=False)))
    as_tenant = AsTenant(kubectl, user)
    wait_for(lambda: as_tenant("auth", "can-i", "patch", "featureflags.flagscheduler.dev/checkout-v2", "-n",
                               namespace, check=False).stdout.strip() == "yes", what="the tenant's Role in force")
    return as_tenant


def sync_as(tenant: AsTenant, *objects: dict[str, Any]):
    """``sync`` (server-side, forced, field manager argocd-controller) sent as the tenant."""
    return sync(tenant, "server-side", *objects)  # type: ignore[arg-type]


def test_a_commit_schedules_the_tenants_own_flag(tenant: AsTenant, namespace: str) -> None:
    accepted(sync_as(tenant, git_schedule("go-live", namespace, "checkout-v2", "2030-01-01T09:00:00Z",
                                          {"enabled": True})))


def test_a_commit_cannot_schedule_a_flag_the_tenant_may_not_patch(
    tenant: AsTenant, kubectl: Kubectl, namespace: str
) -> None:
    result = sync_as(tenant, git_schedule("pricing-up", namespace, "pricing", "2030-01-01T09:00:00Z",
                                          {"enabled": True}))
    refused(result, SCHEDULE_POLICY,
            f'user "{tenant.user}" may not patch featureflags.flagscheduler.dev "pricing" in namespace "{namespace}"')
    assert not admin_exists(kubectl, namespace, "fs/pricing-up")


def test_a_commit_cannot_move_another_teams_schedule(tenant: AsTenant, kubectl: Kubectl, namespace: str) -> None:
    """The other team's schedule of pricing, re-committed by the tenant with its time moved to now."""
    theirs = git_schedule("pricing-up", namespace, "pricing", "2030-01-01T09:00:00Z", {"enabled": True})
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(theirs))
    moved = {**theirs, "spec": {**theirs["spec"], "scheduledAt": "2026-01-01T00:00:00Z"}}
    refused(sync_as(tenant, moved), SCHEDULE_POLICY, f'user "{tenant.user}" may not patch')
    assert admin_get(kubectl, namespace, "fs/pricing-up")["spec"]["scheduledAt"] == "2030-01-01T09:00:00Z"


def test_a_commit_cannot_forge_the_marker_even_on_the_tenants_own_flag(
    tenant: AsTenant, kubectl: Kubectl, namespace: str
) -> None:
    """A marker far in the future would make every later schedule of the flag Superseded."""
    forged = git_flag("checkout-v2", namespace, enabled=False)
    forged["metadata"]["annotations"].update({
        "flagscheduler.dev/last-applied-schedule": "forever",
        "flagscheduler.dev/last-applied-scheduled-at": "2199-12-31T23:59:59Z",
    })
    refused(sync_as(tenant, forged), MARKER_POLICY, f'user "{tenant.user}" may not set, change or remove')
    annotations = admin_get(kubectl, namespace, "ff/checkout-v2")["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("flagscheduler.dev/")]


def test_the_project_impersonates_the_shipped_tenant_account() -> None:
    """appproject.yaml and tenant.yaml name the same ServiceAccount in the same destination namespace."""
    project = yaml.safe_load((INSTALL / "appproject.yaml").read_text())["spec"]
    account = project["destinationServiceAccounts"][0]
    accounts = [d for d in yaml.safe_load_all((INSTALL / "tenant.yaml").read_text()) if d["kind"] == "ServiceAccount"]
    assert [(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts] == [
        (account["namespace"], account["defaultServiceAccount"])]
    assert project["destinations"][0]["namespace"] == account["namespace"]
    application = yaml.safe_load((INSTALL / "application.yaml").read_text())
    assert application["spec"]["project"] == yaml.safe_load((INSTALL / "appproject.yaml").read_text())["metadata"]["name"]
