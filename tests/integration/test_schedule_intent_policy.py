"""Every change of a schedule's intent needs the right to patch the flag it names, before and after.

manifests/policy/schedules_need_flag_patch.yaml, with the control plane's real users: carol may
patch FlagSchedules in the namespace but not the flag ``checkout-v2``; bob may patch ``checkout-v2``
only. What the operator would do with a changed schedule (apply it with its own rights) is the
reason: moving someone else's go-live to now, un-cancelling it, re-pointing it or deleting it is a
change to their flag.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Kubectl

from .admission import (
    SCHEDULE_POLICY,
    accepted,
    admin_create,
    admin_exists,
    admin_get,
    flag,
    grant,
    patch,
    refused,
    schedule,
    wait_can,
)

CHANGE = ("creating a FlagSchedule or changing its spec (flagRef, updates, scheduledAt, cancelled, retry,"
          " startingDeadlineSeconds, ttlSecondsAfterFinished) needs the permission to patch the flag it names")
BEFORE = ("changing the spec of a FlagSchedule, or deleting one that has not finished, needs the permission"
          " to patch the flag it named before")


def may_not(user: str, flag_name: str, namespace: str) -> str:
    return f'user "{user}" may not patch featureflags.flagscheduler.dev "{flag_name}" in namespace "{namespace}"'


@pytest.fixture
def team(kubectl: Kubectl, namespace: str, policies: None) -> str:
    """Flags checkout-v2 and pricing, the admin's schedule go-live of checkout-v2; carol edits schedules only."""
    for name in ("checkout-v2", "pricing"):
        admin_create(kubectl, namespace, flag(name))
    admin_create(kubectl, namespace, schedule("go-live", "checkout-v2", retry={"maxRetries": 3}))
    grant(kubectl, namespace, "carol", "get,update,patch,delete", "flagschedules.flagscheduler.dev")
    wait_can(kubectl, namespace, "carol", "delete", "flagschedules.flagscheduler.dev")
    return namespace


# (id, the merge patch carol sends to someone else's schedule of checkout-v2)
INTENT_CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("move-to-now", {"scheduledAt": "2026-01-01T00:00:00Z"}),
    ("cancel", {"cancelled": True}),
    ("updates", {"updates": {"enabled": False}}),
    ("retry", {"retry": {"maxRetries": 100}}),
    ("starting-deadline", {"startingDeadlineSeconds": 31536000}),
    ("ttl", {"ttlSecondsAfterFinished": 0}),
]


@pytest.mark.parametrize("spec", [c[1] for c in INTENT_CHANGES], ids=[c[0] for c in INTENT_CHANGES])
def test_changing_any_intent_of_someone_elses_schedule_is_refused(
    kubectl: Kubectl, team: str, spec: dict[str, Any]
) -> None:
    before = admin_get(kubectl, team, "fs/go-live")["spec"]
    refused(patch(kubectl, team, "fs/go-live", {"spec": spec}, user="carol"),
            f'flagschedules.flagscheduler.dev "go-live" is forbidden: {SCHEDULE_POLICY}',
            f"{may_not('carol', 'checkout-v2', team)}: {CHANGE}")
    assert admin_get(kubectl, team, "fs/go-live")["spec"] == before


def test_un_cancelling_someone_elses_schedule_is_refused(kubectl: Kubectl, team: str) -> None:
    """The cancel was recorded in the spec; the operator has not marked it Cancelled yet (none runs here)."""
    accepted(patch(kubectl, team, "fs/go-live", {"spec": {"cancelled": True}}))
    refused(patch(kubectl, team, "fs/go-live", {"spec": {"cancelled": False}}, user="carol"),
            SCHEDULE_POLICY, f"{may_not('carol', 'checkout-v2', team)}: {CHANGE}")
    assert admin_get(kubectl, team, "fs/go-live")["spec"]["cancelled"] is True


def test_retargeting_another_teams_schedule_to_ones_own_flag_is_refused(kubectl: Kubectl, team: str) -> None:
    """bob may patch pricing, not checkout-v2: taking checkout-v2's schedule away is a change to checkout-v2."""
    grant(kubectl, team, "bob", "get,patch", "flagschedules.flagscheduler.dev")
    grant(kubectl, team, "bob", "patch", "featureflags.flagscheduler.dev", names="pricing")
    wait_can(kubectl, team, "bob", "patch", "featureflags.flagscheduler.dev/pricing")
    refused(patch(kubectl, team, "fs/go-live", {"spec": {"flagRef": {"name": "pricing"}}}, user="bob"),
            SCHEDULE_POLICY, f"{may_not('bob', 'checkout-v2', team)}: {BEFORE}")
    assert admin_get(kubectl, team, "fs/go-live")["spec"]["flagRef"] == {"name": "checkout-v2"}


def test_deleting_someone_elses_pending_schedule_is_refused(kubectl: Kubectl, team: str) -> None:
    result = kubectl("delete", "fs", "go-live", "-n", team, user="carol", check=False)
    refused(result, SCHEDULE_POLICY, f"{may_not('carol', 'checkout-v2', team)}: {BEFORE}")
    assert admin_exists(kubectl, team, "fs/go-live")


def test_a_finished_schedule_may_be_deleted_with_the_schedule_right_alone(kubectl: Kubectl, team: str) -> None:
    """Removing the record of a change that already happened changes no flag (Argo CD's prune, TTL)."""
    status = {"phase": "Cancelled", "conditions": [{
        "type": "Applied", "status": "False", "reason": "Cancelled", "message": "cancelled",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    accepted(patch(kubectl, team, "fs/go-live", {"status": status}, "--subresource=status"))
    accepted(kubectl("delete", "fs", "go-live", "-n", team, user="carol", check=False))


def test_metadata_of_someone_elses_schedule_is_not_intent(kubectl: Kubectl, team: str) -> None:
    """Labels and annotations choose nothing for the flag; the operator's ownerReference is such a write."""
    accepted(patch(kubectl, team, "fs/go-live", {"metadata": {"labels": {"team": "checkout"}}}, user="carol"))


def test_the_flags_owner_changes_every_intent(kubectl: Kubectl, team: str) -> None:
    """The control for the refusals above: with patch on checkout-v2, carol may do all of it."""
    grant(kubectl, team, "carol", "patch", "featureflags.flagscheduler.dev", names="checkout-v2")
    wait_can(kubectl, team, "carol", "patch", "featureflags.flagscheduler.dev/checkout-v2")
    for _, spec in INTENT_CHANGES:
        accepted(patch(kubectl, team, "fs/go-live", {"spec": spec}, user="carol"))
    accepted(patch(kubectl, team, "fs/go-live", {"spec": {"cancelled": False}}, user="carol"))
    accepted(kubectl("delete", "fs", "go-live", "-n", team, user="carol", check=False))
