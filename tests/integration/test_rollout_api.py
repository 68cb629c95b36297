"""What the API server refuses about a FlagRollout, with the messages a user reads (no operator needed).

Bad specs are refused by the CRD's schema and CEL rules, each message naming the field; creating or
changing a rollout needs the right to patch its flag (manifests/policy/rollouts_need_flag_patch.yaml),
shown with the control plane's real users.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import REPO, Kubectl
from operator_harness import wait_for

from .admission import admin_get, grant, wait_can

API_VERSION = "flagscheduler.dev/v1alpha1"
POLICY = "ValidatingAdmissionPolicy 'flag-scheduler-rollouts-need-flag-patch'"
SAMPLE = REPO / "manifests" / "samples" / "flagscheduler_v1alpha1_flagrollout.yaml"
STEP = {"name": "all", "updates": {"rolloutPercentage": 100}}


def rollout(name: str = "ro", flag: str = "f", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "FlagRollout", "metadata": {"name": name},
            "spec": {"flagRef": {"name": flag}, "steps": [STEP], **spec}}


def create(kubectl: Kubectl, namespace: str, obj: dict[str, Any], *extra: str, **kw: Any):
    return kubectl("create", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj), check=False, **kw)


def patch(kubectl: Kubectl, namespace: str, what: str, body: dict[str, Any], *extra: str, **kw: Any):
    return kubectl("patch", what, "-n", namespace, "--type=merge", "-p", json.dumps(body), *extra, check=False, **kw)


def refused(result, *fragments: str) -> None:
    assert result.returncode != 0, f"expected a refusal, got success:\n{result.stdout}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in the API server's message:\n{result.stderr}"


def accepted(result) -> None:
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("spec", "fragments"), [
    pytest.param({"steps": []}, ["spec.steps: Invalid value", "should have at least 1 items"], id="no-steps"),
    pytest.param({"steps": [STEP] * 2}, ['spec.steps[1]: Duplicate value: {"name":"all"}'], id="duplicate-names"),
    pytest.param({"steps": [{**STEP, "name": f"s{i}"} for i in range(21)]}, ["spec.steps: Too many: 21"],
                 id="too-many-steps"),
    pytest.param({"steps": [{**STEP, "hold": "721h"}]},
                 ['spec.steps[0].hold: Invalid value: "721h": hold must be at most 720h (30 days)'], id="hold-too-long"),
    pytest.param({"steps": [{**STEP, "hold": "2d"}]}, ["spec.steps[0].hold: Invalid value", "should match"],
                 id="hold-not-a-duration"),
    pytest.param({"steps": [{**STEP, "updates": {}}]}, ["spec.steps[0].updates", "should have at least 1 properties"],
                 id="empty-updates"),
    pytest.param({"steps": [{**STEP, "updates": {"rolloutPercentage": 101}}]},
                 ["spec.steps[0].updates.rolloutPercentage", "should be less than or equal to 100"], id="percent"),
    pytest.param({"steps": [{**STEP, "name": "Not_A_Label"}]}, ["spec.steps[0].name: Invalid value"], id="step-name"),
    pytest.param({"approvedSteps": ["nope"]},
                 ["spec.approvedSteps: Invalid value: spec.approvedSteps may only name steps of spec.steps"],
                 id="approve-unknown-step"),
    pytest.param({"onAbort": "Rollback"}, ['spec.onAbort: Unsupported value: "Rollback"'], id="on-abort"),
    pytest.param({"startAt": "1999-12-31T00:00:00Z"}, ["spec.startAt", "from 2000-01-01"], id="start-at"),
])
def test_bad_specs_are_refused_naming_the_field(
    kubectl: Kubectl, namespace: str, crds: None, spec: dict[str, Any], fragments: list[str]
) -> None:
    refused(create(kubectl, namespace, rollout(**spec), "--dry-run=server"), *fragments)


def test_a_rollout_name_must_be_a_dns_label(kubectl: Kubectl, namespace: str, crds: None) -> None:
    refused(create(kubectl, namespace, rollout(name="a.b"), "--dry-run=server"),
            "metadata.name of a FlagRollout must be a DNS label")


def test_abort_is_one_way_approvals_only_grow_and_the_flag_is_fixed(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    accepted(create(kubectl, namespace, rollout(steps=[{**STEP, "requiresApproval": True}], abort=True,
                                                approvedSteps=["all"])))
    refused(patch(kubectl, namespace, "fro/ro", {"spec": {"abort": False}}),
            "spec.abort: Forbidden: spec.abort cannot be set back to false: an abort is final")
    refused(patch(kubectl, namespace, "fro/ro", {"spec": {"approvedSteps": []}}), "spec.approvedSteps only grows")
    refused(patch(kubectl, namespace, "fro/ro", {"spec": {"flagRef": {"name": "other"}}}), "spec.flagRef cannot change")


def test_the_spec_is_frozen_once_completed_and_the_steps_once_started(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    accepted(create(kubectl, namespace, rollout(steps=[STEP, {**STEP, "name": "two"}])))
    started = {"status": {"phase": "Progressing", "startedAt": "2027-03-01T09:00:00Z"}}
    accepted(patch(kubectl, namespace, "fro/ro", started, "--subresource=status"))
    refused(patch(kubectl, namespace, "fro/ro", {"spec": {"steps": [STEP]}}),
            "spec.steps and spec.startAt cannot change once the rollout has started")
    accepted(patch(kubectl, namespace, "fro/ro", {"spec": {"paused": True}}))  # the controls still work
    accepted(patch(kubectl, namespace, "fro/ro", {"status": {"phase": "Completed"}}, "--subresource=status"))
    refused(patch(kubectl, namespace, "fro/ro", {"spec": {"paused": False}}),
            "spec: Forbidden: spec cannot change: the rollout is already Completed")


# -- creating or changing a rollout needs the right to patch its flag ------------------------


def test_a_user_without_patch_on_the_flag_cannot_create_or_steer_a_rollout(
    kubectl: Kubectl, namespace: str, operator_manifests: None
) -> None:
    for name in ("mine", "theirs"):
        accepted(create(kubectl, namespace, {"apiVersion": API_VERSION, "kind": "FeatureFlag",
                                             "metadata": {"name": name}, "spec": {"enabled": False}}))
    grant(kubectl, namespace, "alice", "create,get,patch", "flagrollouts.flagscheduler.dev")
    grant(kubectl, namespace, "alice", "get,patch", "featureflags.flagscheduler.dev", names="mine")
    wait_can(kubectl, namespace, "alice", "patch", "featureflags.flagscheduler.dev/mine")
    wait_can(kubectl, namespace, "alice", "create", "flagrollouts.flagscheduler.dev")
    # The policy loads asynchronously after manifests/ was applied: wait until it refuses.
    wait_for(lambda: POLICY in create(kubectl, namespace, rollout("probe", "theirs"), "--dry-run=server",
                                      user="alice").stderr, what="the rollout policy to take effect")

    refused(create(kubectl, namespace, rollout("ramp-theirs", "theirs"), user="alice"),
            f'flagrollouts.flagscheduler.dev "ramp-theirs" is forbidden: {POLICY}',
            f'user "alice" may not patch featureflags.flagscheduler.dev "theirs" in namespace "{namespace}":'
            " creating a FlagRollout, or changing its spec")
    accepted(create(kubectl, namespace, rollout("ramp-mine", "mine"), user="alice"))
    accepted(patch(kubectl, namespace, "fro/ramp-mine", {"spec": {"paused": True}}, user="alice"))
    # Someone else's rollout of a flag alice may not patch: she cannot pause, approve or abort it.
    accepted(create(kubectl, namespace, rollout("ramp-theirs", "theirs")))
    refused(patch(kubectl, namespace, "fro/ramp-theirs", {"spec": {"abort": True}}, user="alice"), POLICY)
    # Nor withdraw its steps by deleting it while it runs; her own she may delete.
    grant(kubectl, namespace, "alice", "delete", "flagrollouts.flagscheduler.dev")
    wait_can(kubectl, namespace, "alice", "delete", "flagrollouts.flagscheduler.dev")
    refused(kubectl("delete", "fro", "ramp-theirs", "-n", namespace, user="alice", check=False), POLICY,
            "deleting one that has not ended withdraws its steps")
    accepted(kubectl("delete", "fro", "ramp-mine", "-n", namespace, user="alice", check=False))


def test_the_sample_rollout_applies_and_names_its_steps(kubectl: Kubectl, namespace: str, crds: None) -> None:
    kubectl("apply", "-f", str(SAMPLE), "-n", namespace)
    spec = admin_get(kubectl, namespace, "flagrollouts/search-v2")["spec"]
    assert [s["name"] for s in spec["steps"]] == ["canary", "half", "full"]
    assert [s["hold"] for s in spec["steps"]] == ["2h", "24h", "0"]  # the last hold defaults to 0
    listed = kubectl("get", "flags", "-n", namespace).stdout  # rollouts are in the flags category
    assert "flagrollout.flagscheduler.dev/search-v2" in listed and "featureflag.flagscheduler.dev/search-v2" in listed
