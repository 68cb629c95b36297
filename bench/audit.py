"""Reading the API server's audit log: who wrote what, when, and what that says per schedule.

The control plane audits every write to ``flagscheduler.dev``, to leases and to core Events at
Metadata level, in blocking mode, so a line is on disk before the client gets its answer, and never
rotates the file (``controlplane.AUDIT_LOG_MAX_MB``). The reader still checks: a file that was
replaced or shrank, or a created schedule with no record, stops the bench (``AuditIncomplete``)
rather than undercounting writes or lateness.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cluster import OPERATOR_USER


@dataclass(frozen=True, slots=True)
class Write:
    """One audited, completed, non-dry-run write request."""

    verb: str
    resource: str  # "featureflags", "flagschedules/status", ...
    namespace: str
    name: str
    user: str
    code: int
    received: float  # epoch seconds: requestReceivedTimestamp
    done: float  # epoch seconds: stageTimestamp of ResponseComplete


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AuditIncomplete(RuntimeError):
    """The audit log lost records (rotated, truncated, or a write the bench made is missing)."""


class AuditLog:
    """The audit log, read incrementally: ``refresh()`` parses lines appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes: list[Write] = []
        self._offset = 0
        self._inode: int | None = None

    def refresh(self) -> list[Write]:
        """Parse the complete lines appended since last time; return all writes so far."""
        with open(self.path, "rb") as f:
            stat = os.fstat(f.fileno())
            if self._inode is None:
                self._inode = stat.st_ino
            if stat.st_ino != self._inode or stat.st_size < self._offset:
                raise AuditIncomplete(f"{self.path} was rotated or truncated after {self._offset} bytes")
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            entry = json.loads(line)
            if entry.get("stage") != "ResponseComplete" or "dryRun=" in entry.get("requestURI", ""):
                continue
            ref = entry.get("objectRef", {})
            resource = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            self.writes.append(Write(
                verb=entry["verb"], resource=resource, namespace=ref.get("namespace", ""), name=ref.get("name", ""),
                user=entry["user"]["username"], code=entry.get("responseStatus", {}).get("code", 0),
                received=_epoch(entry["requestReceivedTimestamp"]), done=_epoch(entry["stageTimestamp"]),
            ))
        return self.writes

    def require_created(self, namespace: str, resource: str, names: list[str]) -> None:
        """Fail loudly unless every object the bench created in ``namespace`` has its create record."""
        seen = {w.name for w in self.refresh()
                if w.verb == "create" and w.resource == resource and w.namespace == namespace and w.code == 201}
        missing = [n for n in names if n not in seen]
        if missing:
            raise AuditIncomplete(f"{len(missing)} of {len(names)} {resource} created in {namespace} have no audit "
                                  f"record (first: {missing[:3]}); counts from this log would be short")

    def by_operator(self, namespace: str | None = None) -> list[Write]:
        """The operator's writes (user alice), in one namespace or (None) anywhere."""
        return [w for w in self.refresh() if w.user == OPERATOR_USER and (namespace is None or w.namespace == namespace)]


@dataclass(frozen=True)
class Due:
    """What the analysis needs to know about one schedule the bench created."""

    name: str
    flag: str
    at: float  # scheduledAt, epoch seconds


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else None, "count": len(values)}


def flag_patch_lateness(writes: list[Write], schedules: list[Due]) -> dict[str, list[float]]:
    """Lateness of each schedule's flag PATCH: the k-th successful spec PATCH of a flag is its k-th schedule.

    The operator applies the schedules of one flag in (scheduledAt, name) order, one at a time, and
    writes the flag's spec for nothing else, so the order identifies which schedule a PATCH carried.
    Returns ``received`` and ``done`` lateness lists (seconds, PATCH time − scheduledAt).
    """
    patches: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.resource == "featureflags" and w.verb == "patch" and w.code == 200:
            patches[w.name].append(w)
    per_flag: dict[str, list[Due]] = defaultdict(list)
    for s in schedules:
        per_flag[s.flag].append(s)
    received, done = [], []
    for flag, due in per_flag.items():
        due.sort(key=lambda s: (s.at, s.name))
        for s, w in zip(due, sorted(patches[flag], key=lambda w: w.received), strict=False):
            received.append(w.received - s.at)
            done.append(w.done - s.at)
    return {"received": received, "done": done}


def applied_times(writes: list[Write], schedules: list[Due]) -> dict[str, float]:
    """Per schedule, when its last successful status write at or after its due time completed.

    Once the schedule is Applied that write is the one that said so (a first-sight claim comes
    before the due time); callers confirm the phase with the server before trusting the times.
    """
    due_at = {s.name: s.at for s in schedules}
    last: dict[str, float] = {}
    for w in writes:
        if w.resource == "flagschedules/status" and w.code == 200 and w.received >= due_at.get(w.name, float("inf")):
            last[w.name] = max(last.get(w.name, 0.0), w.done)
    return last


def writes_per_schedule(writes: list[Write], schedules: list[Due]) -> dict:
    """Operator writes per schedule at the due time (at or after scheduledAt) and over its whole life.

    Writes to a schedule count for it; writes to flags and Events are shared out evenly over the
    schedules (the operator writes flags only to apply schedules, and in these workloads posts
    Events only about outcomes at the due time; an Event's name is generated, so the audit record
    of its create names no schedule). Failed writes (409, ...) count: they cost the server a
    request all the same.
    """
    due_at = {s.name: s.at for s in schedules}
    first_due = min(due_at.values(), default=0.0)
    n = max(1, len(schedules))
    hot: Counter[str] = Counter()
    life: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for w in writes:
        key = f"{w.verb} {w.resource}"
        codes[f"{key} {w.code}"] += 1
        if w.resource.startswith("featureflags"):
            life[key] += 1
            hot[key] += 1
        elif w.resource == "events":
            life[key] += 1
            hot[key] += w.received >= first_due
        elif w.name in due_at:
            life[key] += 1
            if w.received >= due_at[w.name]:
                hot[key] += 1
    return {
        "hot_path": round(sum(hot.values()) / n, 3),
        "lifetime": round(sum(life.values()) / n, 3),
        "hot_path_by_request": {k: round(v / n, 3) for k, v in sorted(hot.items())},
        "lifetime_by_request": {k: round(v / n, 3) for k, v in sorted(life.items())},
        "requests_by_code": dict(sorted(codes.items())),
    }


def apply_breakdown(writes: list[Write], schedules: list[Due], since: float) -> dict[str, float | None]:
    """Where an apply's time goes: in the API server (per write) or between writes (the operator's side).

    Per flag, the operator's writes to the flag and to its schedules after ``since`` form one
    sequence (it works on one flag at a time); a gap is the time from the server finishing one of
    them to the next one arriving. The dispatch delay is from ``since`` to a flag's first write.
    """
    flag_of = {s.name: s.flag for s in schedules}
    per_flag: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.received < since:
            continue
        flag = w.name if w.resource.startswith("featureflags") else flag_of.get(w.name)
        if flag is not None:
            per_flag[flag].append(w)
    server, gaps, dispatch = [], [], []
    for seq in per_flag.values():
        seq.sort(key=lambda w: w.received)
        dispatch.append(seq[0].received - since)
        server += [w.done - w.received for w in seq]
        gaps += [b.received - a.done for a, b in zip(seq, seq[1:])]

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(1000 * value, 1)

    return {"server_ms_p50": ms(server, 50), "server_ms_p90": ms(server, 90),
            "between_writes_ms_p50": ms(gaps, 50), "between_writes_ms_p90": ms(gaps, 90),
            "first_write_dispatch_s_p50": percentile(dispatch, 50), "first_write_dispatch_s_max": max(dispatch, default=None)}
