"""The rollout controller's effects, on a fake API: what it writes, in which order, and when it waits."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from flag_scheduler.models import FeatureFlag
from flag_scheduler.rollout import controller as controller_module
from flag_scheduler.rollout.controller import RolloutController

NOW = datetime(2027, 3, 1, 9, tzinfo=UTC)
FLAG = FeatureFlag.from_body({"metadata": {"namespace": "ns", "name": "f", "uid": "flag-uid", "resourceVersion": "1"},
                              "spec": {"enabled": False, "rolloutPercentage": 0}})
ROLLOUT = {"metadata": {"namespace": "ns", "name": "ro", "uid": "ro-uid", "resourceVersion": "1", "generation": 1,
                        "ownerReferences": [{"kind": "FeatureFlag", "name": "f", "uid": "flag-uid"}]},
           "spec": {"flagRef": {"name": "f"}, "steps": [{"name": "all", "updates": {"rolloutPercentage": 100}}]}}


class FakeKube:
    """Records writes; answers them as the API server would (a new resourceVersion)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.version = 1

    async def patch_status(self, plural: str, ref: Any, status: dict[str, Any], unchanged: bool = False) -> dict[str, Any]:
        assert unchanged, "a rollout's status is written only over the version it was planned from"
        self.writes.append(("status", status["phase"]))
        self.version += 1
        body = copy.deepcopy(ROLLOUT)
        body["metadata"]["resourceVersion"] = str(self.version)
        body["status"] = {k: v for k, v in status.items() if v is not None}
        return body

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", body["metadata"]["name"]))
        return {**body, "metadata": {**body["metadata"], "uid": "s-uid", "resourceVersion": "9"}}


async def test_a_late_lease_renewal_delays_the_work_and_never_drops_it(monkeypatch: Any) -> None:
    monkeypatch.setattr(controller_module, "RETRY_SECONDS", 0.01)
    renewed = iter([False, False, True])  # the first checks come while the last renewal is too old
    kube = FakeKube()
    ctl = RolloutController(kube, lambda: NOW, lambda key: FLAG, lambda: next(renewed, True))
    ctl.lead()
    ctl.observe_rollout("ADDED", copy.deepcopy(ROLLOUT))
    loop = asyncio.create_task(ctl.run())
    try:
        for _ in range(200):
            if ("create", "ro.1-all") in kube.writes:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await ctl.close()
    assert kube.writes[:2] == [("status", "Progressing"), ("create", "ro.1-all")]  # status first, then the create
