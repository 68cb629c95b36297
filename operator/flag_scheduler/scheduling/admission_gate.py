"""Fail closed: the scheduler applies nothing unless its admission policies are in force.

The operator changes flags with its own rights. What stops a user from using it to change a flag
they may not patch, or from forging the marker that tells it a change already landed, are
ValidatingAdmissionPolicies (``manifests/policy/``), not the operator. A cluster where they were
never installed (older than 1.30) or where someone deleted a binding would let anyone who may
create a schedule change any flag in the namespace, silently. So at start and every
``admission_check_seconds`` each replica reads the policies and bindings and compares them with
``REQUIRED_POLICIES``; while one is missing, ignored on failure, not bound with ``Deny`` for every
object, or cannot be read, due schedules are held (never applied, never failed: they wait, and a
Warning Event on each says why), the gauge ``flag_scheduler_admission_policies_missing`` counts the
problems and a log line names them with the fix. ``FLAG_SCHEDULER_ADMISSION_POLICIES=external``
says the cluster enforces the same rules some other way (a webhook, another policy engine) and
turns the check off.

``REQUIRED_POLICIES`` is the one list: a new kind whose policy guards what the operator does for
it adds its policy's name here (a unit test keeps it equal to the Deny-bound policies shipped in
``manifests/policy/``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import metrics
from flag_scheduler.config import Settings
from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe
from flag_scheduler.logs import get_logger

# The admission policies the scheduler needs in force, each with what it protects.
REQUIRED_POLICIES: dict[str, str] = {
    "flag-scheduler-schedules-need-flag-patch": "scheduling a change needs the right to patch the flag",
    "flag-scheduler-cron-schedules-need-flag-patch": "a recurring window needs the right to patch the flag",
    "flag-scheduler-rollouts-need-flag-patch": "a rollout needs the right to patch the flag",
    "flag-scheduler-operator-annotations": "only the operator writes the flagscheduler.dev/ marker on flags",
}
REQUIRED_ACTION = "Deny"
FIX = ("install them with `kubectl apply --server-side -k manifests/policy` (Kubernetes >= 1.30), or set"
       " FLAG_SCHEDULER_ADMISSION_POLICIES=external if the cluster enforces the same rules another way")
log = get_logger()


def missing_policies(
    policies: list[dict[str, Any]], bindings: list[dict[str, Any]], required: dict[str, str] = REQUIRED_POLICIES
) -> list[str]:
    """One sentence per required policy that is not in force, given the cluster's policies and bindings."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in policies}
    problems = []
    for name, purpose in required.items():
        policy = by_name.get(name)
        if policy is None:
            problems.append(f"ValidatingAdmissionPolicy {name} ({purpose}) is missing")
            continue
        if (policy.get("spec") or {}).get("failurePolicy") == "Ignore":
            problems.append(f"ValidatingAdmissionPolicy {name} has failurePolicy Ignore")
        own = [b for b in bindings if (b.get("spec") or {}).get("policyName") == name]
        if not any(_denies_everywhere(b) for b in own):
            names = ", ".join(sorted((b.get("metadata") or {}).get("name", "") for b in own)) or "none"
            problems.append(f"no ValidatingAdmissionPolicyBinding binds {name} with validationActions"
                            f" [{REQUIRED_ACTION}] for every namespace (bindings found: {names})")
    return problems


def _denies_everywhere(binding: dict[str, Any]) -> bool:
    spec = binding.get("spec") or {}
    if REQUIRED_ACTION not in (spec.get("validationActions") or []) or spec.get("paramRef"):
        return False
    match = spec.get("matchResources") or {}
    narrowing = (match.get("namespaceSelector"), match.get("objectSelector"), match.get("resourceRules"),
                 match.get("excludeResourceRules"))
    return not any(narrowing)


def _unreadable(err: ApiException) -> str:
    if err.status == 404:
        return ("the API server does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicies"
                f" (Kubernetes older than 1.30?): {describe(err)}")
    return (f"cannot read ValidatingAdmissionPolicies and their bindings ({describe(err)}); the operator"
            " needs get and list on both (manifests/rbac/admission_reader_role.yaml)")


class AdmissionGate:
    """Whether the required policies are in force, checked at start and every ``admission_check_seconds``."""

    def __init__(self, settings: Settings, kube: Kube, on_open: Callable[[], None] = lambda: None) -> None:
        self.external = settings.admission_policies == "external"
        self.period = settings.admission_check_seconds
        self.kube = kube
        self.on_open = on_open
        self.problems: list[str] = [] if self.external else ["not checked yet"]

    async def check(self) -> list[str]:
        """Read the policies and bindings again; log, count and call ``on_open`` when the answer changes."""
        if self.external:
            return []
        try:
            policies, bindings = await self.kube.list_admission_policies()
            problems = missing_policies(policies, bindings)
        except ApiException as err:
            problems = [_unreadable(err)]
        except TRANSPORT_ERRORS as err:
            problems = [f"cannot read ValidatingAdmissionPolicies and their bindings ({describe(err)})"]
        was, self.problems = self.problems, problems
        metrics.ADMISSION_PROBLEMS.set(len(problems))
        if problems and problems != was:
            log.error("admission.policies_missing", missing=problems, fix=FIX,
                      effect="no schedule is applied until they are in force")
        elif not problems and was:
            log.info("admission.policies_in_force", policies=sorted(REQUIRED_POLICIES))
            self.on_open()
        return problems

    def holding(self) -> str | None:
        """Why due schedules are held now, for an Event, or None when they may be applied."""
        if not self.problems:
            return None
        return f"Not applied: {'; '.join(self.problems)}. To fix: {FIX}"

    async def run(self) -> None:
        """Check again every ``period`` seconds, forever (not started when the check is external)."""
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception as err:  # noqa: BLE001 - a bug here must not end the checks; the last answer stands
                log.exception("admission.check_failed", error=describe(err))
