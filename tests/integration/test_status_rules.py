"""The CEL rules that keep a FlagSchedule's status coherent, whoever writes it.

Status is the operator's fencing and retry state. No role for people may write it (RBAC, see
test_admission_policy.py), and for those who still can (cluster administrators, the operator) the
CRD refuses a status that contradicts itself or moves backwards. Each row sets up a status with
writes the operator would make, then sends one write and asserts the API server's message, which
names the field. The accepted rows are the operator's own paths through the phases: the rules
must never refuse those.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Kubectl

from .admission import admin_create, admin_get, admin_patch_status, schedule

T_RETRY, T_RETRY_2, T_APPLIED = "2030-01-01T09:00:30.000Z", "2030-01-01T09:01:30.000Z", "2030-01-01T09:02:00.000Z"


def applied_condition(status: str, reason: str) -> dict[str, Any]:
    return {"type": "Applied", "status": status, "reason": reason, "message": reason,
            "lastTransitionTime": "2030-01-01T09:00:00.000Z", "observedGeneration": 1}


# Status writes as the operator sends them (merge patches of the status subresource).
CLAIM = {"claimedBy": "replica-1"}
RECLAIM = {"claimedBy": "replica-2"}
RETRYING = {"phase": "Retrying", "retryCount": 1, "nextRetryAt": T_RETRY, "lastError": "503 ServiceUnavailable",
            "observedGeneration": 1, "conditions": [applied_condition("False", "Retrying")]}
RETRYING_2 = {**RETRYING, "retryCount": 2, "nextRetryAt": T_RETRY_2}
FLAG_NOT_FOUND = {"phase": "Retrying", "conditions": [
    applied_condition("False", "Retrying"), {**applied_condition("False", "NotFound"), "type": "FlagFound"}]}
APPLIED = {"phase": "Applied", "appliedAt": T_APPLIED, "nextRetryAt": None, "lastError": None,
           "observedGeneration": 1, "conditions": [applied_condition("True", "Applied")]}
FAILED = {"phase": "Failed", "nextRetryAt": None, "lastError": "403 Forbidden",
          "conditions": [applied_condition("False", "RetriesExhausted")]}
CANCELLED = {"phase": "Cancelled", "nextRetryAt": None, "conditions": [applied_condition("False", "Cancelled")]}
MISSED = {"phase": "Missed", "nextRetryAt": None, "conditions": [applied_condition("False", "DeadlineExceeded")]}

# (id, the writes before, the refused write, the API server's message)
REFUSED = [
    ("applied-without-appliedAt", [CLAIM], {**APPLIED, "appliedAt": None},
     "status.appliedAt: Required value: status.appliedAt is required when status.phase is Applied"),
    ("applied-without-its-condition", [CLAIM], {**APPLIED, "conditions": []},
     "status.conditions: Required value: status.phase Applied needs the condition Applied=True"),
    ("applied-condition-while-pending", [], {"conditions": APPLIED["conditions"]},
     "status.conditions: Forbidden: the condition Applied=True needs status.phase Applied"),
    ("appliedAt-while-pending", [], {"appliedAt": T_APPLIED},
     "status.appliedAt: Forbidden: status.appliedAt may only be set when status.phase is Applied"),
    ("retrying-without-nextRetryAt", [], {**RETRYING, "nextRetryAt": None},
     "status.nextRetryAt: Required value: status.phase Retrying needs status.nextRetryAt"),
    ("retrying-without-a-failed-attempt", [], {**RETRYING, "retryCount": 0},
     "status.phase Retrying needs status.nextRetryAt and a status.retryCount of at least 1"),
    ("nextRetryAt-while-pending", [], {"nextRetryAt": T_RETRY},
     "status.nextRetryAt: Forbidden: status.nextRetryAt may only be set while status.phase is Retrying"),
    ("retryCount-decreases", [RETRYING, RETRYING_2], {"retryCount": 1},
     "status.retryCount: Forbidden: status.retryCount cannot decrease"),
    ("retryCount-grows-while-pending", [], {"retryCount": 3},
     "status.retryCount: Forbidden: status.retryCount grows only with status.phase Retrying"),
    ("far-nextRetryAt-without-a-new-retry", [RETRYING], {"nextRetryAt": "2099-01-01T00:00:00.000Z"},
     "status.nextRetryAt: Forbidden: status.nextRetryAt can only be set together with a new retry"),
    ("back-to-pending", [RETRYING], {"phase": "Pending", "nextRetryAt": None},
     "status.phase: Forbidden: status.phase cannot go back to Pending from Retrying"),
    ("appliedAt-rewritten", [CLAIM, APPLIED], {"appliedAt": T_RETRY},
     "status.appliedAt: Forbidden: status.appliedAt cannot change once set"),
    ("applied-retried-again", [CLAIM, APPLIED], {**RETRYING_2, "appliedAt": None},
     "status.phase: Forbidden: status.phase cannot leave Applied: it is final"),
]

# (id, the operator's writes, the status it ends with)
ACCEPTED = [
    ("applied-on-time", [CLAIM, APPLIED], {"phase": "Applied", "retryCount": 0, "appliedAt": T_APPLIED}),
    ("retried-then-applied", [CLAIM, RETRYING, FLAG_NOT_FOUND, RECLAIM, RETRYING_2, APPLIED],
     {"phase": "Applied", "retryCount": 2, "appliedAt": T_APPLIED, "claimedBy": "replica-2"}),
    ("retried-then-failed", [CLAIM, RETRYING, RETRYING_2, FAILED], {"phase": "Failed", "retryCount": 2}),
    ("failed-without-retries", [CLAIM, FAILED], {"phase": "Failed", "retryCount": 0}),
    ("cancelled", [CLAIM, CANCELLED], {"phase": "Cancelled", "retryCount": 0}),
    ("missed", [CLAIM, MISSED], {"phase": "Missed", "retryCount": 0}),
]


@pytest.fixture(scope="module")
def rules_namespace(kubectl: Kubectl, crds: None) -> Iterator[str]:
    """One namespace for the module: each row makes its own schedule, so rows share nothing else."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def new_schedule(kubectl: Kubectl, namespace: str, name: str) -> None:
    admin_create(kubectl, namespace, schedule(name, "checkout-v2"))


def write_status(kubectl: Kubectl, namespace: str, name: str, status: dict[str, Any]):
    """The refused write, sent with kubectl: the message asserted is the one kubectl prints."""
    return kubectl("patch", "fs", name, "-n", namespace, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}), check=False)


@pytest.mark.parametrize(("before", "write", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_incoherent_status_is_refused_naming_the_field(
    kubectl: Kubectl, rules_namespace: str, request: pytest.FixtureRequest,
    before: list[dict[str, Any]], write: dict[str, Any], message: str,
) -> None:
    name = request.node.callspec.id.lower()
    new_schedule(kubectl, rules_namespace, name)
    for status in before:  # the operator's own writes, sent as it sends them
        admin_patch_status(kubectl, rules_namespace, f"fs/{name}", status)
    stored = admin_get(kubectl, rules_namespace, f"fs/{name}")["status"]

    result = write_status(kubectl, rules_namespace, name, write)
    assert result.returncode != 0, f"expected a refusal, got success:\n{result.stdout}"
    assert message in result.stderr, f"{message!r} not in the API server's message:\n{result.stderr}"
    assert admin_get(kubectl, rules_namespace, f"fs/{name}")["status"] == stored


@pytest.mark.parametrize(("writes", "final"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_the_operators_own_paths_are_accepted(
    kubectl: Kubectl, rules_namespace: str, request: pytest.FixtureRequest,
    writes: list[dict[str, Any]], final: dict[str, Any],
) -> None:
    name = request.node.callspec.id.lower()
    new_schedule(kubectl, rules_namespace, name)
    for status in writes:  # each one accepted, or the client raises the API server's refusal
        admin_patch_status(kubectl, rules_namespace, f"fs/{name}", status)
    stored = admin_get(kubectl, rules_namespace, f"fs/{name}")["status"]
    assert {k: stored.get(k) for k in final} == final
    assert "nextRetryAt" not in stored
