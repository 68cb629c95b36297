"""An OpenFeature client (flagd's Python provider, in-process) connected while a FlagRollout ramps a flag.

The client is created once, before the ramp, and kept: it sees 10 %, then 50 %, then 100 % of
10,000 users, and every user who was in stays in. Approval gates hold each step for as long as
the test samples it (holds would make the sample race the next step).
"""

from __future__ import annotations

from collections.abc import Callable

from openfeature.client import OpenFeatureClient

from integration.test_openfeature import KEYS, Served, in_process, known, sdk, served, value  # noqa: F401 - fixtures
from integration.test_rollouts import Rollouts, rollouts  # noqa: F401 - fixture
from operator_harness import Cluster, wait_for

STEPS = [
    {"name": "canary", "updates": {"enabled": True, "rolloutPercentage": 10}, "hold": "1s"},
    {"name": "half", "updates": {"rolloutPercentage": 50}, "hold": "1s", "requiresApproval": True},
    {"name": "full", "updates": {"rolloutPercentage": 100}, "requiresApproval": True},
]


def users_in(client: OpenFeatureClient, keys: list[str] = KEYS) -> set[str]:
    return {k for k in keys if value(client, "checkout-v2", k)}


def test_a_client_sees_ten_then_fifty_then_all_percent_and_users_stay_in(
    cluster: Cluster, served: Served, sdk: Callable[..., OpenFeatureClient], rollouts: Rollouts
) -> None:
    cluster.flag("checkout-v2", enabled=False, rollout=0)
    client = sdk(in_process(served, cluster.ns))
    known(client, "checkout-v2")
    assert users_in(client) == set()
    rollouts.create("checkout-v2", "checkout-v2", STEPS)

    seen: list[set[str]] = []
    for approved, percent in (([], 10), (["half"], 50), (["half", "full"], 100)):
        if approved:
            rollouts.patch("checkout-v2", {"approvedSteps": approved})
        before = len(seen[-1] & set(KEYS[:1000])) if seen else 0
        wait_for(lambda b=before: len(users_in(client, KEYS[:1000])) > b, 30, what=f"the client to see {percent} %")
        phase = "Completed" if percent == 100 else "AwaitingApproval"
        rollouts.wait("checkout-v2", phase)  # the step landed and the next one waits: the flag holds still
        seen.append(users_in(client))
    ten, fifty, everyone = (len(s) for s in seen)
    assert 800 <= ten <= 1200 and 4700 <= fifty <= 5300 and everyone == len(KEYS)
    assert seen[0] <= seen[1] <= seen[2], "a user who was in lost the feature as the rollout grew"
