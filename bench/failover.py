"""Failover: three replicas as deployed, the leader ``kill -9``ed again and again while schedules fall due.

Failover time is from a kill to the next flag PATCH any replica gets accepted (the API server's
audit log), so it includes the Lease expiring, a follower acquiring it, re-claiming and applying.
The election runs with short timings (Lease 3 s, renew 2 s, retry 1 s, as in
``tests/integration/test_failover.py``); with the defaults (15 s / 10 s / 2 s) a crashed leader
is replaced after at most about 17 s. Every schedule must end Applied, each change landing once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.aio import client

from audit import Due
from cluster import FLAGS, LEASE_NAMESPACE, SCHEDULES, OperatorProcess, flag_body, parse_time, schedule_body

ELECTION = {
    "FLAG_SCHEDULER_LEASE_DURATION_SECONDS": "3",
    "FLAG_SCHEDULER_RENEW_DEADLINE_SECONDS": "2",
    "FLAG_SCHEDULER_RETRY_PERIOD_SECONDS": "1",
}
LEASE = "bench-failover"


class Replicas:
    """Operator processes sharing the bench's failover Lease; a killed one is replaced by a new one."""

    def __init__(self, env: Any, namespace: str) -> None:
        self.env, self.namespace = env, namespace
        self.live: dict[str, OperatorProcess] = {}
        self.serial = 0
        self.starting: set[asyncio.Task] = set()

    async def start_one(self) -> None:
        self.serial += 1
        identity = f"replica-{self.serial}"
        op = OperatorProcess(self.env.cluster, self.env.log_dir / f"operator-failover-{identity}.log")
        self.live[identity] = op
        env = {"FLAG_SCHEDULER_IDENTITY": identity, "FLAG_SCHEDULER_LEASE_NAME": LEASE, **ELECTION,
               "FLAG_SCHEDULER_SYNC_PORT": "0", "FLAG_SCHEDULER_OFREP_PORT": "0"}  # three on one machine
        await asyncio.to_thread(op.start, [self.namespace], extra_env=env, lead=False)

    async def holder(self) -> str | None:
        lease = await client.CoordinationV1Api(self.env.cluster.api).read_namespaced_lease(LEASE, LEASE_NAMESPACE)
        return lease.spec.holder_identity

    async def kill_leader(self) -> float:
        """SIGKILL the replica holding the Lease, start a replacement in the background; return the kill time."""
        holder = await self.holder()
        while holder not in self.live or not self.live[holder].alive():
            await asyncio.sleep(0.05)
            holder = await self.holder()
        op = self.live.pop(holder)
        os.kill(op.proc.pid, signal.SIGKILL)
        killed = time.time()
        op.proc.wait()
        task = asyncio.create_task(self.start_one())
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)
        return killed

    async def stop(self) -> None:
        await asyncio.gather(*self.starting, return_exceptions=True)
        for op in self.live.values():
            op.stop()


async def failover(env: Any, kills: int, every: float, flags: int = 50, per_s: float = 15.0) -> dict[str, Any]:
    """Kill the leader ``kills`` times, ``every`` seconds apart, while ``per_s`` schedules per second fall due."""
    ns = "bench-failover"
    await env.cluster.create_namespace(ns)
    replicas = Replicas(env, ns)
    for _ in range(3):
        await replicas.start_one()
    while await replicas.holder() is None:
        await asyncio.sleep(0.1)
    spread = every * (kills + 1)
    count = int(spread * per_s)
    start = datetime.now(UTC) + timedelta(seconds=10)
    await env.cluster.create_many(ns, FLAGS, [flag_body(f"flag-{i}") for i in range(flags)])
    # 1 + i % 100: never the flag's initial 0, and never the value its previous schedule set.
    bodies = [schedule_body(f"s-{i:05d}", f"flag-{i % flags}", start + timedelta(seconds=spread * i / count), 1 + i % 100)
              for i in range(count)]
    dues = [Due(b["metadata"]["name"], b["spec"]["flagRef"]["name"], parse_time(b["spec"]["scheduledAt"]).timestamp())
            for b in bodies]
    await env.cluster.create_many(ns, SCHEDULES, bodies)
    env.audit.require_created(ns, SCHEDULES, [d.name for d in dues])
    killed: list[float] = []
    try:
        for k in range(kills):
            await asyncio.sleep(max(0.0, start.timestamp() + every * (k + 0.5) - time.time()))
            killed.append(await replicas.kill_leader())
        items = await _wait_all_applied(env, ns, timeout=spread + 120)
    finally:
        await replicas.stop()
    flag_items = (await env.cluster.custom.list_namespaced_custom_object("flagscheduler.dev", "v1alpha1", ns, FLAGS))
    changes = {f["metadata"]["name"]: f["metadata"]["generation"] - 1 for f in flag_items["items"]}
    result = _analyse(env, ns, dues, items, killed, changes)
    result.update({"kills": kills, "every_s": every, "schedules": count, "flags": flags,
                   "election": {k.removeprefix("FLAG_SCHEDULER_").lower(): float(v) for k, v in ELECTION.items()}})
    result["delete_s"] = round(await env.cluster.delete_namespace(ns), 1)
    return {"result": result}


async def _wait_all_applied(env: Any, ns: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = await env.cluster.list_schedules(ns)
        if all((i.get("status") or {}).get("phase") == "Applied" for i in items) or time.monotonic() > deadline:
            return items
        await asyncio.sleep(1.0)


def _analyse(env: Any, ns: str, dues: list[Due], items: list[dict[str, Any]], killed: list[float],
             changes: dict[str, int]) -> dict[str, Any]:
    """Failover times from the audit log; exactly-once from the phases and each flag's generation.

    Consecutive schedules of a flag set different values, so each landed change bumps the flag's
    generation once (a PATCH cut off by a kill may land without a 200 in the log).
    """
    patches = [w for w in env.audit.by_operator(ns) if w.resource == "featureflags" and w.verb == "patch"]
    accepted = sorted(w.received for w in patches if w.code == 200)
    failovers = [next((t for t in accepted if t > k), float("nan")) - k for k in killed]
    per_flag = Counter(d.flag for d in dues)
    phases = Counter((i.get("status") or {}).get("phase") for i in items)
    return {
        "failover_s": [round(f, 3) for f in failovers],
        "failover_median_s": round(statistics.median(failovers), 3) if failovers else None,
        "failover_max_s": round(max(failovers), 3) if failovers else None,
        "phases": dict(phases),
        "doubled": sum(max(0, changes.get(f, 0) - n) for f, n in per_flag.items()),
        "lost": sum(max(0, n - changes.get(f, 0)) for f, n in per_flag.items()),
        "in_flight_at_kill": sum(1 for w in patches if w.code == 504),
    }
