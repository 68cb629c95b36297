"""Warnings at admission: ``kubectl apply`` prints them and the write still succeeds.

manifests/policy/schedule_warnings.yaml (validationActions [Warn], no webhook). A flagRef naming a
missing flag and two schedules at one instant are not warned about at admission (the policy file
says why); the operator reports the first as FlagFound=False.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from conftest import Kubectl
from operator_harness import wait_for

from .admission import accepted, admin_get, flag, schedule

WARNING = ("Warning: Validation failed for ValidatingAdmissionPolicy 'flag-scheduler-schedule-warnings' with binding"
           " 'flag-scheduler-schedule-warnings': spec.scheduledAt ")
PAST = "2001-02-03T04:05:06Z"


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any], *extra: str):
    return kubectl("apply", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj), check=False)


@pytest.fixture(scope="session")
def warnings(kubectl: Kubectl, policies: None) -> None:
    """The warning policy in force (policies load asynchronously): a dry-run create until it warns."""
    probe = f"warning-probe-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", probe)
    try:
        wait_for(lambda: WARNING in apply(kubectl, probe, schedule("p", "f", scheduledAt=PAST), "--dry-run=server")
                 .stderr, what="the warning policy to take effect")
    finally:
        kubectl("delete", "namespace", probe, "--wait=false")


def test_a_schedule_in_the_past_is_created_with_a_warning(kubectl: Kubectl, namespace: str, warnings: None) -> None:
    accepted(apply(kubectl, namespace, flag("checkout-v2")))
    result = apply(kubectl, namespace, schedule("go-live", "checkout-v2", scheduledAt=PAST))
    accepted(result)
    assert "flagschedule.flagscheduler.dev/go-live created" in result.stdout
    warning = next(line for line in result.stderr.splitlines() if line.startswith("Warning:"))
    assert warning.startswith(WARNING + "2001-02-03T04:05:06Z is in the past (the API server received this at 20")
    assert warning.endswith("): the operator applies it at once, or marks it Missed if it is more than"
                            " spec.startingDeadlineSeconds late")
    assert admin_get(kubectl, namespace, "fs/go-live")["spec"]["scheduledAt"] == PAST


def test_moving_a_schedule_into_the_past_warns(kubectl: Kubectl, namespace: str, warnings: None) -> None:
    accepted(apply(kubectl, namespace, schedule("go-live", "checkout-v2")))
    result = kubectl("patch", "fs", "go-live", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"spec": {"scheduledAt": PAST}}), check=False)
    accepted(result)
    assert WARNING + "2001-02-03T04:05:06Z is in the past" in result.stderr
    assert admin_get(kubectl, namespace, "fs/go-live")["spec"]["scheduledAt"] == PAST


def test_a_future_schedule_and_other_edits_print_no_warning(kubectl: Kubectl, namespace: str, warnings: None) -> None:
    created = apply(kubectl, namespace, schedule("go-live", "checkout-v2"))  # 2030
    accepted(created)
    assert "Warning" not in created.stderr
    edited = kubectl("patch", "fs", "go-live", "-n", namespace, "--type=merge",
                     "-p", '{"spec":{"updates":{"rolloutPercentage":5}}}', check=False)
    accepted(edited)
    assert "Warning" not in edited.stderr


def test_a_schedule_for_a_missing_flag_is_accepted_without_an_admission_warning(
    kubectl: Kubectl, namespace: str, warnings: None
) -> None:
    """Admission cannot see whether the flag exists; the operator's FlagFound=False says it (test_operator.py)."""
    result = apply(kubectl, namespace, schedule("orphan", "no-such-flag"))
    accepted(result)
    assert "Warning" not in result.stderr
