"""The mechanics the Argo CD recipe in the README relies on, shown with kubectl on the real API server.

Argo CD cannot run here, but a sync is an apply with field manager ``argocd-controller``
(``tests/argocd_sync.py`` says exactly what it sends), so each step of the recipe is checked on
what the API server does with such applies after a schedule has changed a flag: who owns which
field, what a plain sync does (reverts), what a RespectIgnoreDifferences sync does (keeps), and
what happens to schedules that are final or cancelled outside Git. Every test runs for
client-side and for server-side apply.

One operator run lands all schedules at the start (module fixture); the tests then only apply.
"""

from __future__ import annotations

import copy
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from argocd_sync import MODES, git_flag, git_schedule, owned, respect_ignore_differences, sync
from conftest import REPO, Kubectl
from controlplane import ControlPlane
from operator_harness import OperatorProcess, in_seconds, rfc3339, wait_for

GO_LIVE = {"enabled": True, "rolloutPercentage": 30}
GIT_SPEC = {"enabled": False, "rolloutPercentage": 0, "description": "From Git"}


@dataclass
class Landed:
    """The namespace where every Git schedule has landed, and the Git manifests of each object."""

    kubectl: Kubectl
    namespace: str
    git: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.kubectl.json("get", kind, name, "-n", self.namespace, "--show-managed-fields")

    def manifest(self, name: str) -> dict[str, Any]:
        """A copy of ``name`` as committed to Git."""
        return copy.deepcopy(self.git[name])


def _git_objects(ns: str, mode: str, due: str, later: str) -> list[dict[str, Any]]:
    m = "csa" if mode == "client-side" else "ssa"
    objects = []
    for use in ("owned", "revert", "respect", "drop"):
        objects += [
            git_flag(f"{use}-{m}", ns, **GIT_SPEC),
            git_schedule(f"{use}-{m}-go-live", ns, f"{use}-{m}", due, GO_LIVE),
        ]
    objects += [
        # Git leaves rolloutPercentage to the schedule (the CRD defaults it to 100 at creation).
        git_flag(f"lean-{m}", ns, enabled=True, description="Lean"),
        git_schedule(f"lean-{m}-ramp", ns, f"lean-{m}", due, {"rolloutPercentage": 50}),
        git_flag(f"cancel-{m}", ns, **GIT_SPEC),
        git_schedule(f"cancel-{m}-later", ns, f"cancel-{m}", later, GO_LIVE),
    ]
    return objects


@pytest.fixture(scope="module")
def landed(
    control_plane: ControlPlane, kubectl: Kubectl, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Landed]:
    """Git synced in both modes, the operator run until every schedule landed, then stopped."""
    ns = f"argo-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", ns)
    state = Landed(kubectl, ns)
    due, later = rfc3339(in_seconds(4)), rfc3339(in_seconds(3600))
    for mode in MODES:
        objects = _git_objects(ns, mode, due, later)
        state.git |= {o["metadata"]["name"]: o for o in objects}
        assert sync(kubectl, mode, *objects).returncode == 0
    log = tmp_path_factory.mktemp("argocd-sync") / "operator.log"
    op = OperatorProcess(control_plane.kubeconfig(), [ns], log).start()
    try:
        for m in ("csa", "ssa"):
            # What the cancel action (or kubectl) does: a merge patch outside Git.
            kubectl("patch", "fs", f"cancel-{m}-later", "-n", ns, "--type=merge", "--field-manager=argocd-server",
                    "-p", '{"spec":{"cancelled":true}}')
        expected = {n: "Applied" for n in state.git if n.endswith(("-go-live", "-ramp"))}
        expected |= {f"cancel-{m}-later": "Cancelled" for m in ("csa", "ssa")}
        wait_for(lambda: _phases(kubectl, ns) == expected, timeout=60, what=f"phases {expected}")
    finally:
        op.stop()
    yield state
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _phases(kubectl: Kubectl, ns: str) -> dict[str, str]:
    items = kubectl.json("get", "flagschedules", "-n", ns)["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}


def _short(mode: str) -> str:
    return "csa" if mode == "client-side" else "ssa"


@pytest.mark.parametrize("mode", MODES)
def test_flag_scheduler_owns_exactly_the_fields_its_schedule_changed(landed: Landed, mode: str) -> None:
    live = landed.get("featureflag", f"owned-{_short(mode)}")
    assert live["spec"] == {**GIT_SPEC, **GO_LIVE}
    mine = owned(live, "flag-scheduler")
    annotations = {p for p in mine if p[:2] == ("metadata", "annotations")}
    assert mine - annotations == {("spec", "enabled"), ("spec", "rolloutPercentage")}
    assert ("metadata", "annotations", "flagscheduler.dev/last-applied-schedule") in annotations
    assert all(p[2].startswith("flagscheduler.dev/") for p in annotations)
    # Ownership moved: Argo CD's manager keeps only what the schedule left alone.
    argocd = owned(live, "argocd-controller")
    assert ("spec", "description") in argocd
    assert not argocd & {("spec", "enabled"), ("spec", "rolloutPercentage")}


@pytest.mark.parametrize("mode", MODES)
def test_plain_sync_reverts_what_the_schedule_changed(landed: Landed, mode: str) -> None:
    name = f"revert-{_short(mode)}"
    git = landed.manifest(name)
    if mode == "server-side":
        # Without force the API server names the conflict; Argo CD always forces.
        refused = sync(landed.kubectl, mode, git, force=False)
        assert refused.returncode != 0
        assert 'conflicts with "flag-scheduler"' in refused.stderr and ".spec.enabled" in refused.stderr
        assert landed.get("featureflag", name)["spec"] == {**GIT_SPEC, **GO_LIVE}
    assert sync(landed.kubectl, mode, git).returncode == 0
    assert landed.get("featureflag", name)["spec"] == GIT_SPEC


@pytest.mark.parametrize("mode", MODES)
def test_respect_ignore_differences_sync_keeps_the_change_and_lands_other_edits(landed: Landed, mode: str) -> None:
    name = f"respect-{_short(mode)}"
    git = landed.manifest(name)
    git["spec"]["description"] = "From Git, edited"  # a new commit touching another field
    target = respect_ignore_differences(git, landed.get("featureflag", name), ["flag-scheduler"])
    assert target["spec"] == {"enabled": True, "rolloutPercentage": 30, "description": "From Git, edited"}
    for _ in range(2):  # the sync, then a later sync or self-heal of the same commit
        assert sync(landed.kubectl, mode, target).returncode == 0
        live = landed.get("featureflag", name)
        assert live["spec"] == target["spec"]
        assert respect_ignore_differences(git, live, ["flag-scheduler"]) == target


@pytest.mark.parametrize("mode", MODES)
def test_commit_that_stops_setting_a_scheduled_field(landed: Landed, mode: str) -> None:
    """Client-side apply deletes what it applied before (the CRD default returns); server-side keeps it."""
    name = f"drop-{_short(mode)}"
    git = landed.manifest(name)
    del git["spec"]["rolloutPercentage"]
    target = respect_ignore_differences(git, landed.get("featureflag", name), ["flag-scheduler"])
    assert target["spec"] == {"enabled": True, "description": "From Git"}
    assert sync(landed.kubectl, mode, target).returncode == 0
    rollout = landed.get("featureflag", name)["spec"]["rolloutPercentage"]
    assert rollout == (100 if mode == "client-side" else 30)


@pytest.mark.parametrize("mode", MODES)
def test_fields_left_out_of_git_are_never_reverted_but_enabled_is_required(landed: Landed, mode: str) -> None:
    name = f"lean-{_short(mode)}"
    assert landed.get("featureflag", name)["spec"] == {"enabled": True, "rolloutPercentage": 50, "description": "Lean"}
    assert sync(landed.kubectl, mode, landed.manifest(name)).returncode == 0
    assert landed.get("featureflag", name)["spec"]["rolloutPercentage"] == 50
    no_enabled = git_flag(f"no-enabled-{_short(mode)}", landed.namespace, rolloutPercentage=0)
    refused = sync(landed.kubectl, mode, no_enabled)
    assert refused.returncode != 0 and "spec.enabled: Required value" in refused.stderr


@pytest.mark.parametrize("mode", MODES)
def test_final_schedule_resynced_unchanged_is_accepted_and_changed_is_refused(landed: Landed, mode: str) -> None:
    name = f"owned-{_short(mode)}-go-live"
    before = landed.get("flagschedule", name)
    assert sync(landed.kubectl, mode, landed.manifest(name)).returncode == 0
    after = landed.get("flagschedule", name)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"]["phase"] == "Applied"
    changed = landed.manifest(name)
    changed["spec"]["updates"]["rolloutPercentage"] = 40
    refused = sync(landed.kubectl, mode, changed)
    assert refused.returncode != 0
    refusal = "spec (flagRef, updates, retry, startingDeadlineSeconds) cannot change: the schedule is already Applied"
    assert refusal in refused.stderr
    assert landed.get("flagschedule", name)["spec"]["updates"] == GO_LIVE


@pytest.mark.parametrize("mode", MODES)
def test_schedule_cancelled_outside_git_stays_cancelled_if_git_leaves_it_out(landed: Landed, mode: str) -> None:
    name = f"cancel-{_short(mode)}-later"
    git = landed.manifest(name)
    assert "cancelled" not in git["spec"]
    assert sync(landed.kubectl, mode, git).returncode == 0
    live = landed.get("flagschedule", name)
    assert live["spec"]["cancelled"] is True and live["status"]["phase"] == "Cancelled"
    # A Git manifest that spells out cancelled: false would try to undo it, and is refused.
    refused = sync(landed.kubectl, mode, {**git, "spec": {**git["spec"], "cancelled": False}})
    assert refused.returncode != 0
    assert "spec.cancelled cannot change: the schedule is already Cancelled" in refused.stderr
    # Committing the cancellation afterwards is accepted: it matches.
    assert sync(landed.kubectl, mode, {**git, "spec": {**git["spec"], "cancelled": True}}).returncode == 0


@pytest.mark.parametrize("mode", MODES)
def test_git_cancelled_false_undoes_a_cancel_the_operator_has_not_seen(landed: Landed, mode: str) -> None:
    """No operator runs now: the cancel stays unconfirmed (Pending), and nothing protects it."""
    name = f"unseen-{_short(mode)}"
    git = git_schedule(name, landed.namespace, f"cancel-{_short(mode)}", rfc3339(in_seconds(3600)), GO_LIVE)
    assert sync(landed.kubectl, mode, git).returncode == 0
    landed.kubectl("patch", "fs", name, "-n", landed.namespace, "--type=merge", "-p", '{"spec":{"cancelled":true}}')
    assert sync(landed.kubectl, mode, {**git, "spec": {**git["spec"], "cancelled": False}}).returncode == 0
    live = landed.get("flagschedule", name)
    assert live["spec"]["cancelled"] is False and live["status"]["phase"] == "Pending"


def test_argocd_cm_component_patches_argo_cds_configmap(control_plane: ControlPlane, tmp_path: Path) -> None:
    """``argocd/install`` as a kustomize Component adds our keys to argocd-cm and keeps Argo CD's."""
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"timeout.reconciliation": "180s"},
    }))
    component = os.path.relpath(REPO / "argocd" / "install", tmp_path)  # kustomize wants it relative
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["argocd-cm.yaml"], "components": [component],
    }))
    rendered = subprocess.run(
        [str(control_plane.kubectl), "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    (cm,) = yaml.safe_load_all(rendered)
    snippet = yaml.safe_load((REPO / "argocd" / "install" / "argocd-cm.yaml").read_text())
    assert cm["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert cm["data"] == {"timeout.reconciliation": "180s", **snippet["data"]}
