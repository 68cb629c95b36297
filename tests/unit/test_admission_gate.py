"""The fail-closed check's verdict on a cluster's policies and bindings (pure), and its one list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flag_scheduler.scheduling.admission_gate import REQUIRED_POLICIES, missing_policies

POLICY_DIR = Path(__file__).resolve().parents[2] / "manifests" / "policy"


def shipped() -> list[dict[str, Any]]:
    return [d for f in sorted(POLICY_DIR.glob("*.yaml")) if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d]


def split(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return ([d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"],
            [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"])


def test_the_required_list_is_every_shipped_policy_bound_with_deny() -> None:
    """A policy added to manifests/policy with a Deny binding must be added to REQUIRED_POLICIES, and back."""
    _, bindings = split(shipped())
    denying = {b["spec"]["policyName"] for b in bindings if "Deny" in b["spec"]["validationActions"]}
    assert set(REQUIRED_POLICIES) == denying


def test_the_shipped_policies_are_in_force() -> None:
    assert missing_policies(*split(shipped())) == []


NAME = "flag-scheduler-operator-annotations"


def binding(**spec: Any) -> dict[str, Any]:
    return {"kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "b"},
            "spec": {"policyName": NAME, "validationActions": ["Deny"], **spec}}


# (id, how the cluster differs from the shipped policies, the sentence naming the problem)
BROKEN = [
    ("policy-missing", lambda p, b: ([x for x in p if x["metadata"]["name"] != NAME], b),
     f"ValidatingAdmissionPolicy {NAME} (only the operator writes the flagscheduler.dev/ marker on flags) is missing"),
    ("binding-missing", lambda p, b: (p, [x for x in b if x["spec"]["policyName"] != NAME]),
     f"no ValidatingAdmissionPolicyBinding binds {NAME} with validationActions [Deny] for every namespace"
     " (bindings found: none)"),
    ("warn-only", lambda p, b: (p, [x for x in b if x["spec"]["policyName"] != NAME]
                                + [binding(validationActions=["Warn", "Audit"])]),
     f"no ValidatingAdmissionPolicyBinding binds {NAME} with validationActions [Deny] for every namespace"
     " (bindings found: b)"),
    ("one-namespace", lambda p, b: (p, [x for x in b if x["spec"]["policyName"] != NAME]
                                    + [binding(matchResources={"namespaceSelector": {"matchLabels": {"a": "b"}}})]),
     f"no ValidatingAdmissionPolicyBinding binds {NAME}"),
    ("ignore-failures", lambda p, b: ([{**x, "spec": {**x["spec"], "failurePolicy": "Ignore"}}
                                       if x["metadata"]["name"] == NAME else x for x in p], b),
     f"ValidatingAdmissionPolicy {NAME} has failurePolicy Ignore"),
]


@pytest.mark.parametrize(("change", "problem"), [r[1:] for r in BROKEN], ids=[r[0] for r in BROKEN])
def test_each_way_a_policy_is_not_in_force_is_named(change: Any, problem: str) -> None:
    problems = missing_policies(*change(*split(shipped())))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_an_extra_binding_with_empty_selectors_counts() -> None:
    policies, bindings = split(shipped())
    others = [x for x in bindings if x["spec"]["policyName"] != NAME]
    everywhere = binding(matchResources={"namespaceSelector": {}, "objectSelector": {}, "matchPolicy": "Equivalent"})
    assert missing_policies(policies, others + [everywhere]) == []


class PolicyLister:
    """Stands in for Kube: answers list_admission_policies with the given objects, or raises."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def list_admission_policies(self) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def gate(answer: Any, opened: list[int]) -> Any:
    from flag_scheduler.config import Settings
    from flag_scheduler.scheduling.admission_gate import AdmissionGate

    return AdmissionGate(Settings(), PolicyLister(answer), on_open=lambda: opened.append(1))  # type: ignore[arg-type]


def api_error(status: int) -> Exception:
    from kubernetes.aio.client.exceptions import ApiException

    err = ApiException(status=status, reason="Forbidden" if status == 403 else "NotFound")
    err.body = '{"message": "m"}'
    return err


async def test_the_gate_holds_until_checked_and_opens_once_in_force() -> None:
    opened: list[int] = []
    checked = gate(split(shipped()), opened)
    assert checked.holding() is not None  # nothing applied before the first check
    assert await checked.check() == []
    assert checked.holding() is None and opened == [1]
    assert await checked.check() == [] and opened == [1]  # opens once, not on every check


@pytest.mark.parametrize(("status", "says"), [
    (403, "the operator needs get and list on both (manifests/rbac/admission_reader_role.yaml)"),
    (404, "the API server does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicies"),
])
async def test_policies_that_cannot_be_read_hold_everything(status: int, says: str) -> None:
    opened: list[int] = []
    checked = gate(api_error(status), opened)
    problems = await checked.check()
    assert len(problems) == 1 and says in problems[0]
    holding = checked.holding()
    assert holding is not None and says in holding and "FLAG_SCHEDULER_ADMISSION_POLICIES=external" in holding
    assert opened == []
