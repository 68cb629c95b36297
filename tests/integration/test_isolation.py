"""Isolation under writes that hang: a failing flag holds one slot for one attempt, never the others.

A validating webhook that never answers (a socket that accepts connections and never speaks TLS)
makes the API server hold each PATCH of the chosen flags until the webhook's ``timeoutSeconds``
(at most 10 s: the API server's webhook client gives up a TLS handshake after 10 s), then refuse
it: a slow path, for real. With ``FLAG_SCHEDULER_MAX_CONCURRENCY=2`` the audit log
shows which requests were in flight together.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from conftest import Kubectl
from operator_harness import Cluster, OperatorProcess, in_seconds, parse_time, wait_for

HANG_LABEL = "flagscheduler.dev/test-hang"


@pytest.fixture
def hanging_webhook(kubectl: Kubectl, cluster: Cluster) -> Iterator[Callable[[int], None]]:
    """``hang(seconds)``: from now on, every update of a flag labelled HANG_LABEL=true hangs that long, then fails."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # connections complete in the kernel's backlog; nothing ever answers them
    name = f"hang-{cluster.ns}"

    def hang(seconds: int) -> None:
        webhook = {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "hang.flagscheduler.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": seconds,
                "clientConfig": {"url": f"https://127.0.0.1:{listener.getsockname()[1]}/hang"},
                "rules": [{"apiGroups": ["flagscheduler.dev"], "apiVersions": ["*"], "operations": ["UPDATE"],
                           "resources": ["featureflags"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.ns}},
                "objectSelector": {"matchLabels": {HANG_LABEL: "true"}},
            }],
        }
        kubectl("apply", "-f", "-", input=json.dumps(webhook))
        probe = {"apiVersion": "flagscheduler.dev/v1alpha1", "kind": "FeatureFlag",
                 "metadata": {"name": "hang-probe", "labels": {HANG_LABEL: "true"}}, "spec": {"enabled": False}}
        kubectl("apply", "-n", cluster.ns, "-f", "-", input=json.dumps(probe))
        wait_for(lambda: "hang.flagscheduler.dev" in kubectl(
            "annotate", "ff", "hang-probe", "-n", cluster.ns, "probe=1", "--overwrite", "--dry-run=server",
            check=False).stderr, 60, interval=0.5, what="the hanging webhook to take effect")

    yield hang
    kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
    listener.close()


def hanging_flag(cluster: Cluster, name: str) -> None:
    body = {"apiVersion": "flagscheduler.dev/v1alpha1", "kind": "FeatureFlag",
            "metadata": {"name": name, "labels": {HANG_LABEL: "true"}}, "spec": {"enabled": False}}
    cluster.custom.create_namespaced_custom_object("flagscheduler.dev", "v1alpha1", cluster.ns, "featureflags", body)


def flag_patches(cluster: Cluster, prefix: str) -> list[tuple[datetime, datetime, int]]:
    """(received, completed, code) of the operator's PATCHes of flags named ``prefix*``, in arrival order."""
    return sorted(
        (parse_time(e["requestReceivedTimestamp"]), parse_time(e["stageTimestamp"]), e["responseStatus"]["code"])
        for e in cluster.audit("featureflags", "patch")
        if e["objectRef"]["name"].startswith(prefix)
    )


def most_in_flight(requests: list[tuple[datetime, datetime, Any]]) -> int:
    """The largest number of requests in flight at one instant."""
    edges = sorted([(start, 1) for start, _, _ in requests] + [(end, -1) for _, end, _ in requests])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def test_a_hanging_flag_holds_one_slot_and_the_others_apply_meanwhile(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], hanging_webhook: Callable[[int], None]
) -> None:
    hanging_webhook(10)
    start_operator(FLAG_SCHEDULER_MAX_CONCURRENCY="2", FLAG_SCHEDULER_MAX_RETRIES="5")
    hanging_flag(cluster, "bad")
    for i in range(10):
        cluster.flag(f"good-{i}", enabled=False)
    due = in_seconds(3)
    cluster.schedule("bad", "bad", due, {"enabled": True})  # first: it takes a slot before the others
    for i in range(10):
        cluster.schedule(f"good-{i}", f"good-{i}", due, {"enabled": True})
    for i in range(10):
        cluster.wait_phase(f"good-{i}", "Applied", timeout=60)
    wait_for(lambda: flag_patches(cluster, "bad"), 60, what="the hanging PATCH to complete")
    (hung_from, hung_until, code), *_ = flag_patches(cluster, "bad")
    assert code != 200
    good = flag_patches(cluster, "good-")
    assert [c for _, _, c in good] == [200] * 10
    assert any(start > hung_from for start, _, _ in good), "nothing ran alongside the hanging PATCH"
    assert all(start < hung_until for start, _, _ in good), \
        f"a good flag waited for the hanging one to finish: {hung_from}..{hung_until}, {good}"
    status = cluster.wait_phase("bad", "Retrying", timeout=30)
    assert "hang.flagscheduler.dev" in status["lastError"]


def test_max_concurrency_bounds_the_flags_changed_in_parallel(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess], hanging_webhook: Callable[[int], None]
) -> None:
    hanging_webhook(4)
    start_operator(FLAG_SCHEDULER_MAX_CONCURRENCY="2", FLAG_SCHEDULER_MAX_RETRIES="5")
    for i in range(3):
        hanging_flag(cluster, f"slow-{i}")
    due = in_seconds(3)
    for i in range(3):
        cluster.schedule(f"slow-{i}", f"slow-{i}", due, {"enabled": True})
    # Each flag's first attempt hangs 4 s; with two slots the third waits for one of them.
    wait_for(lambda: {name for name in (f"slow-{i}" for i in range(3)) if flag_patches(cluster, name)}
             == {"slow-0", "slow-1", "slow-2"}, 60, what="a completed PATCH of every slow flag")
    requests = flag_patches(cluster, "slow-")
    assert most_in_flight(requests) == 2, requests  # both slots used, never a third
