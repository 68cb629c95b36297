"""FlagRollout controls under Argo CD: what a sync (and so a self-heal) does to an action's change.

The Argo CD actions (pause, resume, approve-next, abort) patch the live spec outside Git. A sync
applies Git again, in either apply mode (``tests/argocd_sync.py``): a control that Git leaves out is
never touched, one Git spells out is set back to Git's value.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from argocd_sync import MODES, sync
from conftest import Kubectl

STEPS = [{"name": "canary", "updates": {"enabled": True, "rolloutPercentage": 10}, "hold": "1h"},
         {"name": "full", "updates": {"rolloutPercentage": 100}, "requiresApproval": True}]


def git_rollout(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A FlagRollout as committed to Git, with Argo CD's tracking annotation."""
    return {
        "apiVersion": "flagscheduler.dev/v1alpha1", "kind": "FlagRollout",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {"argocd.argoproj.io/tracking-id": f"flags:flagscheduler.dev/FlagRollout:{namespace}/{name}"}},
        "spec": {"flagRef": {"name": "checkout-v2"}, "steps": STEPS, **spec},
    }


def action(kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """What an Argo CD resource action does: a patch of the live object by argocd-server."""
    kubectl("patch", "fro", name, "-n", namespace, "--type=merge", "--field-manager=argocd-server",
            "-p", json.dumps({"spec": spec}))


def live_spec(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "fro", name, "-n", namespace)["spec"]


@pytest.mark.parametrize("mode", MODES)
def test_controls_left_out_of_git_survive_a_sync(kubectl: Kubectl, namespace: str, crds: None, mode: str) -> None:
    git = git_rollout("ramp", namespace)
    assert sync(kubectl, mode, git).returncode == 0
    action(kubectl, namespace, "ramp", {"paused": True, "approvedSteps": ["full"]})
    assert sync(kubectl, mode, git).returncode == 0  # a self-heal
    spec = live_spec(kubectl, namespace, "ramp")
    assert spec["paused"] is True and spec["approvedSteps"] == ["full"]


@pytest.mark.parametrize("mode", MODES)
def test_a_control_git_spells_out_is_set_back_by_a_sync(kubectl: Kubectl, namespace: str, crds: None, mode: str) -> None:
    git = git_rollout("ramp", namespace, paused=False)
    assert sync(kubectl, mode, git).returncode == 0
    action(kubectl, namespace, "ramp", {"paused": True})
    assert sync(kubectl, mode, git).returncode == 0  # selfHeal: the pause is undone
    assert live_spec(kubectl, namespace, "ramp")["paused"] is False


@pytest.mark.parametrize("mode", MODES)
def test_an_abort_from_the_ui_cannot_be_undone_by_git(kubectl: Kubectl, namespace: str, crds: None, mode: str) -> None:
    git = git_rollout("ramp", namespace, abort=False)
    assert sync(kubectl, mode, git).returncode == 0
    action(kubectl, namespace, "ramp", {"abort": True})
    refused = sync(kubectl, mode, git)
    assert refused.returncode != 0 and "spec.abort cannot be set back to false" in refused.stderr
    assert live_spec(kubectl, namespace, "ramp")["abort"] is True
