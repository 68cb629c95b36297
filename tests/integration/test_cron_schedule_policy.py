"""Recurring windows are no back door: a FlagCronSchedule needs the right to patch its flag.

manifests/policy/cron_schedules_need_flag_patch.yaml, with the control plane's real users.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conftest import Kubectl
from operator_harness import wait_for

from .admission import accepted, admin_create, create, flag, grant, patch, refused, wait_can

CRON_POLICY = "ValidatingAdmissionPolicy 'flag-scheduler-cron-schedules-need-flag-patch'"


def window(name: str, flag_name: str) -> dict[str, Any]:
    return {"apiVersion": "flagscheduler.dev/v1alpha1", "kind": "FlagCronSchedule", "metadata": {"name": name},
            "spec": {"flagRef": {"name": flag_name}, "timeZone": "Europe/Berlin",
                     "start": {"schedule": "0 9 * * 1-5", "updates": {"enabled": True}},
                     "end": {"schedule": "0 18 * * 1-5", "updates": {"enabled": False}}}}


@pytest.fixture
def flags(kubectl: Kubectl, namespace: str, operator_manifests: None) -> str:
    """Flags promo and pricing; the policy in force (it loads asynchronously: probe until it refuses)."""
    for name in ("promo", "pricing"):
        admin_create(kubectl, namespace, flag(name))
    grant(kubectl, namespace, "carol", "create,get,patch", "flagcronschedules.flagscheduler.dev")
    wait_can(kubectl, namespace, "carol", "create", "flagcronschedules.flagscheduler.dev")
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    wait_for(lambda: CRON_POLICY in create(kubectl, namespace, window(probe, "promo"), "--dry-run=server",
                                           user="carol").stderr, what="the policy to take effect")
    return namespace


def test_a_window_on_a_flag_the_user_may_not_patch_is_refused(kubectl: Kubectl, flags: str) -> None:
    refused(
        create(kubectl, flags, window("hours", "promo"), user="carol"),
        f'flagcronschedules.flagscheduler.dev "hours" is forbidden: {CRON_POLICY}',
        f'user "carol" may not patch featureflags.flagscheduler.dev "promo" in namespace "{flags}": creating a'
        " FlagCronSchedule or changing its spec (flagRef, timeZone, start, end, suspend, history limits) needs"
        " the permission to patch the flag it names",
    )


def test_patch_on_one_flag_allows_windows_on_it_only_and_every_change_of_intent_needs_it(
    kubectl: Kubectl, flags: str
) -> None:
    grant(kubectl, flags, "bob", "create,get,patch,delete", "flagcronschedules.flagscheduler.dev")
    grant(kubectl, flags, "carol", "delete", "flagcronschedules.flagscheduler.dev")
    grant(kubectl, flags, "bob", "patch", "featureflags.flagscheduler.dev", names="promo")
    wait_can(kubectl, flags, "bob", "patch", "featureflags.flagscheduler.dev/promo")
    wait_can(kubectl, flags, "carol", "delete", "flagcronschedules.flagscheduler.dev")
    accepted(create(kubectl, flags, window("hours", "promo"), user="bob"))
    refused(create(kubectl, flags, window("other", "pricing"), user="bob"), CRON_POLICY)
    refused(patch(kubectl, flags, "fcs/hours", {"spec": {"flagRef": {"name": "pricing"}}}, user="bob"),
            CRON_POLICY, 'user "bob" may not patch featureflags.flagscheduler.dev "pricing"')
    # carol may patch windows but not promo: suspending, moving or deleting its window is refused.
    for change in ({"suspend": True}, {"end": {"schedule": "0 23 * * *"}}, {"successfulSchedulesHistoryLimit": 0}):
        refused(patch(kubectl, flags, "fcs/hours", {"spec": change}, user="carol"), CRON_POLICY,
                'user "carol" may not patch featureflags.flagscheduler.dev "promo"')
    refused(kubectl("delete", "fcs", "hours", "-n", flags, user="carol", check=False), CRON_POLICY,
            "changing the spec of a FlagCronSchedule, or deleting one, needs the permission to patch the flag")
    accepted(patch(kubectl, flags, "fcs/hours", {"spec": {"suspend": True}}, user="bob"))
    accepted(kubectl("delete", "fcs", "hours", "-n", flags, user="bob", check=False))
