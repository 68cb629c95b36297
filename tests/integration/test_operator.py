"""The operator against the real control plane: on time, in order, retries, cancel, catch-up, deadlines.

Each test runs its own operator process watching only the test's namespace, so tests never share
state. Schedules are set a few seconds ahead and waited for with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from conftest import Kubectl
from controlplane import ControlPlane, free_port
from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, wait_for

DENY_POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
    resourceRules:
      - apiGroups: ["flagscheduler.dev"]
        apiVersions: ["*"]
        operations: ["UPDATE"]
        resources: ["featureflags"]
  validations:
    - expression: "object.metadata.name != '{flag}'"
      message: "flag {flag} is frozen by policy"
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
"""


@pytest.fixture
def cluster(api_client: k8s.ApiClient, control_plane: ControlPlane, namespace: str, crds: None) -> Cluster:
    return Cluster(api_client, control_plane, namespace)


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start an operator for this test's namespace (env overrides as keyword arguments)."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        op = OperatorProcess(control_plane.kubeconfig(), [namespace], tmp_path / "operator.log", **env).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def deny_updates(kubectl: Kubectl, namespace: str) -> Iterator[Callable[[str], Callable[[], None]]]:
    """Make the API server refuse every update of one flag, for real (ValidatingAdmissionPolicy)."""
    names: list[str] = []

    def deny(flag: str) -> Callable[[], None]:
        name = f"deny-{namespace}-{flag}"
        kubectl("apply", "-f", "-", input=DENY_POLICY.format(name=name, ns=namespace, flag=flag))
        names.append(name)
        # The policy takes effect asynchronously: probe until an update of the flag is refused.
        wait_for(
            lambda: "frozen by policy" in kubectl(
                "annotate", "featureflag", flag, "-n", namespace, "probe=1", "--overwrite", "--dry-run=server",
                check=False,
            ).stderr,
            what="the deny policy to take effect",
        )

        def lift() -> None:
            kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)
            wait_for(
                lambda: kubectl(
                    "annotate", "featureflag", flag, "-n", namespace, "probe=1", "--overwrite", "--dry-run=server",
                    check=False,
                ).returncode == 0,
                what="the deny policy to be lifted",
            )

        return lift

    yield deny
    for name in names:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--ignore-not-found")


def test_schedule_applied_on_time(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator()
    cluster.flag("checkout-v2", enabled=False, rollout=0)
    due = in_seconds(3)
    cluster.schedule("go-live", "checkout-v2", due, {"enabled": True, "rolloutPercentage": 25})
    assert cluster.wait_phase("go-live", "Pending", timeout=10)["phase"] == "Pending"
    assert cluster.get_flag("checkout-v2")["spec"]["enabled"] is False

    status = cluster.wait_phase("go-live", "Applied", timeout=15)
    flag = cluster.get_flag("checkout-v2")
    assert flag["spec"] == {"enabled": True, "rolloutPercentage": 25}
    assert flag["metadata"]["annotations"]["flagscheduler.dev/last-applied-schedule"] == "go-live"
    assert flag["metadata"]["annotations"]["flagscheduler.dev/last-applied-at"] == status["appliedAt"]
    applied_at = parse_time(status["appliedAt"])
    assert 0 <= (applied_at - due).total_seconds() < 1.0
    applied = next(c for c in status["conditions"] if c["type"] == "Applied")
    assert applied["status"] == "True" and applied["reason"] == "Applied"
    assert status["observedGeneration"] == 1
    # The flag PATCH is made by our field manager (Argo CD ignores exactly these fields).
    managers = {m["manager"] for m in flag["metadata"]["managedFields"]}
    assert "flag-scheduler" in managers
    # Owned by the flag, so deleting the flag removes it.
    owners = cluster.get_schedule("go-live")["metadata"]["ownerReferences"]
    assert owners[0]["kind"] == "FeatureFlag" and owners[0]["name"] == "checkout-v2"
    cluster.wait_event("go-live", "Applied", "Normal")
    # Exactly one flag PATCH for the schedule. The operator's writes, from the server's audit log:
    # first sight = ownerReference + claim; at the due time = flag, schedule status (+ the Event).
    assert len(cluster.audit("featureflags", "patch")) == 1
    assert len(cluster.audit("flagschedules", "patch")) == 1
    schedule_status = cluster.audit("flagschedules/status", "patch")
    assert len(schedule_status) == 2
    assert sum(parse_time(e["requestReceivedTimestamp"]) >= due for e in schedule_status) == 1
    assert len(cluster.audit("featureflags/status", "patch")) == 0
    assert status["claimedBy"]


def test_cancel_before_due(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator()
    cluster.flag("beta", enabled=False)
    cluster.schedule("later", "beta", in_seconds(4), {"enabled": True})
    cluster.patch_schedule("later", {"cancelled": True})
    status = cluster.wait_phase("later", "Cancelled", timeout=10)
    assert next(c for c in status["conditions"] if c["type"] == "Applied")["reason"] == "Cancelled"
    # Past the due time, the flag is still untouched.
    wait_for(lambda: parse_time(cluster.get_schedule("later")["spec"]["scheduledAt"]) < in_seconds(-1), timeout=10)
    assert cluster.get_flag("beta")["spec"]["enabled"] is False
    assert cluster.status("later")["phase"] == "Cancelled"


def test_two_schedules_of_one_flag_apply_in_order(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator()
    cluster.flag("ordered", enabled=False, rollout=0)
    at = in_seconds(3)
    # Same due time: ties go by name, so "a-first" then "b-second"; the flag ends with b's value.
    cluster.schedule("b-second", "ordered", at, {"rolloutPercentage": 50})
    cluster.schedule("a-first", "ordered", at, {"rolloutPercentage": 10, "enabled": True})
    first = cluster.wait_phase("a-first", "Applied", timeout=15)
    second = cluster.wait_phase("b-second", "Applied", timeout=15)
    assert parse_time(first["appliedAt"]) <= parse_time(second["appliedAt"])
    assert cluster.get_flag("ordered")["spec"] == {"enabled": True, "rolloutPercentage": 50}
    patches = cluster.audit("featureflags", "patch")
    assert [p["responseStatus"]["code"] for p in patches] == [200, 200]


def test_refused_patch_retries_then_applies(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    op = start_operator(FLAG_SCHEDULER_MAX_RETRIES="20")
    cluster.flag("frozen", enabled=False)
    lift = deny_updates("frozen")
    cluster.schedule("thaw", "frozen", in_seconds(2), {"enabled": True})
    status = wait_for(lambda: (s := cluster.status("thaw")).get("retryCount", 0) >= 2 and s, timeout=20,
                      what="two retries")
    assert status["phase"] == "Retrying"
    assert "frozen by policy" in status["lastError"]
    assert status["lastError"].startswith("403 Forbidden")
    assert parse_time(status["nextRetryAt"]) > parse_time(status["conditions"][0]["lastTransitionTime"])
    cluster.wait_event("thaw", "Retrying", "Warning")
    retrying = [l for l in op.log_lines() if l.get("event") == "schedule.retrying"]
    assert {"flag", "schedule", "attempt", "retry_count", "next_retry_at", "error"} <= retrying[0].keys()
    assert cluster.get_flag("frozen")["spec"]["enabled"] is False

    lift()
    status = cluster.wait_phase("thaw", "Applied", timeout=20)
    assert status["retryCount"] >= 2
    assert cluster.get_flag("frozen")["spec"]["enabled"] is True
    succeeded = [p for p in cluster.audit("featureflags", "patch") if p["responseStatus"]["code"] == 200]
    assert len(succeeded) == 1


def test_retries_exhausted_fail_and_max_retries_env_respected(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    start_operator(FLAG_SCHEDULER_MAX_RETRIES="1")
    cluster.flag("stuck", enabled=False)
    deny_updates("stuck")
    cluster.schedule("default-limit", "stuck", in_seconds(2), {"enabled": True})
    cluster.schedule("override", "stuck", in_seconds(2), {"enabled": True}, retry={"maxRetries": 0})
    # Order per flag: "default-limit" (name first) fails after 1 retry, then "override" fails at once.
    status = cluster.wait_phase("default-limit", "Failed", timeout=20)
    assert status["retryCount"] == 1
    assert "frozen by policy" in status["lastError"]
    cluster.wait_event("default-limit", "Failed", "Warning")
    status = cluster.wait_phase("override", "Failed", timeout=20)
    assert status["retryCount"] == 0
    assert cluster.get_flag("stuck")["spec"]["enabled"] is False


def test_missing_flag_reports_then_fails(cluster: Cluster, start_operator: Callable[..., OperatorProcess]) -> None:
    start_operator(FLAG_SCHEDULER_MAX_RETRIES="1")
    cluster.schedule("orphan", "no-such-flag", in_seconds(3), {"enabled": True})
    status = wait_for(
        lambda: any(c["type"] == "FlagFound" and c["status"] == "False" for c in cluster.status("orphan").get(
            "conditions", [])) and cluster.status("orphan"),
        timeout=10, what="FlagFound=False",
    )
    assert status["phase"] == "Pending"
    cluster.wait_event("orphan", "FlagNotFound", "Warning")
    status = cluster.wait_phase("orphan", "Failed", timeout=20)
    assert "404" in status["lastError"] and "no-such-flag" in status["lastError"]


def test_error_isolation_fifty_good_schedules_on_time(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], deny_updates: Callable
) -> None:
    start_operator(FLAG_SCHEDULER_MAX_RETRIES="5")
    cluster.flag("bad", enabled=False)
    deny_updates("bad")
    for i in range(50):
        cluster.flag(f"good-{i:02d}", enabled=False)
    due = in_seconds(5)
    cluster.schedule("bad-one", "bad", due, {"enabled": True})
    for i in range(50):
        cluster.schedule(f"good-{i:02d}", f"good-{i:02d}", due, {"enabled": True})
    for i in range(50):
        status = cluster.wait_phase(f"good-{i:02d}", "Applied", timeout=20)
        assert (parse_time(status["appliedAt"]) - due).total_seconds() < 1.0, status
    assert cluster.status("bad-one")["phase"] == "Retrying"


def test_catch_up_after_downtime_and_missed_deadline(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("late", enabled=False, rollout=0)
    cluster.flag("strict", enabled=False)
    # The operator is down while these fall due.
    cluster.schedule("old-2", "late", in_seconds(-20), {"rolloutPercentage": 20})
    cluster.schedule("old-1", "late", in_seconds(-30), {"rolloutPercentage": 10, "enabled": True})
    cluster.schedule("too-late", "strict", in_seconds(-60), {"enabled": True}, startingDeadlineSeconds=10)
    start_operator()
    first = cluster.wait_phase("old-1", "Applied", timeout=15)
    second = cluster.wait_phase("old-2", "Applied", timeout=15)
    assert parse_time(first["appliedAt"]) <= parse_time(second["appliedAt"])
    assert cluster.get_flag("late")["spec"] == {"enabled": True, "rolloutPercentage": 20}
    missed = cluster.wait_phase("too-late", "Missed", timeout=15)
    assert "startingDeadlineSeconds" in next(c for c in missed["conditions"] if c["type"] == "Applied")["message"]
    cluster.wait_event("too-late", "Missed", "Warning")
    assert cluster.get_flag("strict")["spec"]["enabled"] is False


def test_deleting_flag_garbage_collects_schedules(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("doomed", enabled=False)
    cluster.schedule("far-future", "doomed", in_seconds(3600), {"enabled": True})
    wait_for(lambda: cluster.get_schedule("far-future")["metadata"].get("ownerReferences"), timeout=10,
             what="the ownerReference")
    kubectl("delete", "featureflag", "doomed", "-n", cluster.ns, "--timeout=20s")
    wait_for(
        lambda: "NotFound" in kubectl("get", "flagschedule", "far-future", "-n", cluster.ns, check=False).stderr,
        timeout=30, what="the schedule to be garbage-collected",
    )


def test_kubectl_wait_for_applied(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], kubectl: Kubectl
) -> None:
    start_operator()
    cluster.flag("waited", enabled=False)
    cluster.schedule("soon", "waited", in_seconds(2), {"enabled": True})
    kubectl("wait", "--for=condition=Applied", "flagschedule/soon", "-n", cluster.ns, "--timeout=20s")
    out = kubectl("get", "fs", "-n", cluster.ns).stdout
    assert "Applied" in out and "waited" in out


def test_invalid_configuration_stops_with_the_variable_named(control_plane: ControlPlane, tmp_path: Path) -> None:
    op = OperatorProcess(control_plane.kubeconfig(), ["default"], tmp_path / "bad.log",
                         FLAG_SCHEDULER_MAX_RETRIES="lots")
    with pytest.raises(AssertionError, match="operator exited"):
        op.start(timeout=20)
    assert "FLAG_SCHEDULER_MAX_RETRIES" in (tmp_path / "bad.log").read_text()


def test_metrics_health_and_console_logs(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    metrics_port, health_port = free_port(), free_port()
    op = start_operator(
        FLAG_SCHEDULER_METRICS_PORT=str(metrics_port), FLAG_SCHEDULER_HEALTH_PORT=str(health_port),
        FLAG_SCHEDULER_LOG_FORMAT="console",
    )
    cluster.flag("observed", enabled=False)
    cluster.schedule("watched", "observed", in_seconds(2), {"enabled": True})
    cluster.schedule("later", "observed", in_seconds(3600), {"rolloutPercentage": 50})
    cluster.wait_phase("watched", "Applied", timeout=15)

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines() if line.startswith("flag_scheduler_")
        }

    metrics = wait_for(lambda: (m := scrape()).get("flag_scheduler_pending_schedules") == 1 and m, 10,
                       what="the pending gauge to count the one schedule left")
    assert metrics["flag_scheduler_schedules_applied_total"] == 1
    assert metrics["flag_scheduler_lateness_seconds_count"] == 1
    assert metrics["flag_scheduler_lateness_seconds_bucket{le=\"1.0\"}"] == 1
    assert metrics["flag_scheduler_is_leader"] == 1
    assert urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5).status == 200
    # A person at a terminal reads key=value lines, not JSON.
    applied = [line for line in op.log_path.read_text().splitlines() if "schedule.applied" in line]
    assert applied and not applied[0].startswith("{") and "schedule=watched" in applied[0]
