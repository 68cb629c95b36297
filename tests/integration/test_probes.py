"""Readiness apart from liveness: /readyz answers once the replica's book is loaded, for a follower too."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from controlplane import free_port
from operator_harness import Cluster, OperatorProcess


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_leader_and_follower_are_ready_once_loaded(
    cluster: Cluster, start_operator: Callable[..., OperatorProcess]
) -> None:
    cluster.flag("checkout-v2")
    ports = {name: (free_port(), free_port()) for name in ("first", "second")}
    for name, (ready, health) in ports.items():
        start_operator(log_name=f"{name}.log", FLAG_SCHEDULER_IDENTITY=name, FLAG_SCHEDULER_READY_PORT=str(ready),
                       FLAG_SCHEDULER_HEALTH_PORT=str(health))
    for ready, health in ports.values():
        assert get(ready, "/readyz") == (200, "ok")
        assert get(ready, "/healthz")[0] == 404  # liveness is another endpoint, on another port
        assert get(health, "/healthz")[0] == 200
