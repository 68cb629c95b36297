"""Bring one FlagCronSchedule in line with the time: the effectful half of its controller.

Every step can run again after a crash: an edge's FlagSchedule has a deterministic name (409
AlreadyExists means an earlier run made it), deletes carry uid and resourceVersion
preconditions, and the status is computed afresh from the spec, the edge last made and ``now``.
The flag itself is never written here: edges reach it as ordinary FlagSchedules, so exactly once,
retries and forward only come from the scheduler.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler.cronschedule import plan as planning
from flag_scheduler.cronschedule.edges import Edge, InvalidRecurrence, Recurrence, edge_schedule_name, recurrence
from flag_scheduler.cronschedule.model import (
    CRON_SCHEDULES,
    KIND,
    LABEL_CRON_UID,
    LABEL_EDGE,
    CronPhase,
    FlagCronSchedule,
    LastEdge,
)
from flag_scheduler.kube import describe, exact_time
from flag_scheduler.logs import get_logger
from flag_scheduler.models import FLAGS, GROUP, SCHEDULES, VERSION, FeatureFlag, FlagSchedule, rfc3339
from flag_scheduler.scheduling.context import Ctx

READY = "Ready"
_PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cron-plan")


async def reconcile(ctx: Ctx, cron: FlagCronSchedule, edges: list[FlagSchedule]) -> dict[str, Any] | None:
    """Create the edge schedules the time calls for, withdraw stale ones, prune history, write status.

    Returns the FlagCronSchedule as the last write left it (None if nothing was written), so the next
    reconcile never works from a status older than its own write.
    """
    log = get_logger(cron_schedule=cron.ref.name, namespace=cron.ref.namespace, flag=cron.spec.flag_ref.name)
    spec = cron.spec
    try:
        rec = recurrence(spec.start.schedule, spec.end.schedule if spec.end else None, spec.time_zone)
    except InvalidRecurrence as err:
        return await _not_ready(ctx, cron, "InvalidSpec", str(err))
    flag = await _flag(ctx, cron)
    if flag is None:
        message = f"FeatureFlag {spec.flag_ref.name!r} does not exist in namespace {cron.ref.namespace!r}"
        return await _not_ready(ctx, cron, "FlagNotFound", message)
    cron = await _owned_by_flag(ctx, cron, flag)
    now = ctx.clock()
    if spec.suspend:
        for schedule in planning.to_withdraw(edges, frozenset(), now):
            await _withdraw(ctx, schedule)
        await _prune(ctx, cron, edges)
        return await _write_status(ctx, cron, CronPhase.SUSPENDED, cron.status.last_edge, None, 0)
    # Counting missed edges of a dense expression takes CPU: off the loop the dispatcher and the Lease
    # renewals run on, in one thread, so plans never take turns with the loop eight at a time.
    plan = await asyncio.get_running_loop().run_in_executor(
        _PLANNER, planning.plan, rec, cron.ref.name, cron.status.last_edge, now)
    for schedule in planning.to_withdraw(edges, plan.keep, now):
        await _withdraw(ctx, schedule)
    last = cron.status.last_edge
    made = {e.ref.name for e in edges}
    if plan.converge is not None:
        last = await _make_edge(ctx, cron, rec, flag, plan.converge, made)
        if plan.missed:
            message = (f"{plan.missed} edge(s) after {exact_time(cron.status.last_edge.at)} were not applied"
                       f" (the operator was down or the window suspended); applied only the latest,"
                       f" {plan.converge.kind.value} at {exact_time(plan.converge.at)}")
            ctx.event_about(cron.ref, KIND, "Warning", "EdgesMissed", message)
            log.warning("cron.edges_missed", missed=plan.missed, edge=exact_time(plan.converge.at))
    if plan.next is not None:
        await _make_edge(ctx, cron, rec, flag, plan.next, made)
    await _prune(ctx, cron, edges)
    return await _write_status(ctx, cron, plan.phase, last, plan.next, plan.missed)


def edge_schedule(cron: FlagCronSchedule, rec: Recurrence, flag: FeatureFlag, edge: Edge) -> dict[str, Any]:
    """The FlagSchedule that carries one edge: owned by the FlagCronSchedule and by the flag."""
    spec = cron.spec.start if edge.kind.value == "start" else cron.spec.end
    assert spec is not None  # an end edge exists only when spec.end does
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FlagSchedule",
        "metadata": {
            "name": edge_schedule_name(cron.ref.name, edge),
            "namespace": cron.ref.namespace,
            "labels": {LABEL_CRON_UID: cron.ref.uid, LABEL_EDGE: edge.kind.value},
            "ownerReferences": [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": cron.ref.name, "uid": cron.ref.uid,
                 "controller": True},
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag.ref.name,
                 "uid": flag.ref.uid},
            ],
        },
        "spec": {"flagRef": {"name": flag.ref.name}, "scheduledAt": rfc3339(edge.at),
                 "updates": spec.updates.as_patch()},
    }
    deadline = planning.starting_deadline(rec, edge)
    if deadline is not None:
        body["spec"]["startingDeadlineSeconds"] = deadline
    return body


async def _make_edge(
    ctx: Ctx, cron: FlagCronSchedule, rec: Recurrence, flag: FeatureFlag, edge: Edge, made: set[str]
) -> LastEdge:
    """Create the edge's FlagSchedule unless the watch already showed it (``made``)."""
    body = edge_schedule(cron, rec, flag, edge)
    name = body["metadata"]["name"]
    if name not in made:
        try:
            await ctx.kube.create(SCHEDULES, cron.ref.namespace, body)
        except ApiException as err:
            if err.status != 409:  # AlreadyExists: an earlier run (or another replica's term) made it
                raise
    return LastEdge(kind=edge.kind.value, at=edge.at, schedule=name)


async def _flag(ctx: Ctx, cron: FlagCronSchedule) -> FeatureFlag | None:
    """The window's flag as the watch last showed it, else as the API server has it now."""
    key = (cron.ref.namespace, cron.spec.flag_ref.name)
    known = ctx.book.flag(key)
    if known is not None:
        return known
    body = await ctx.kube.get(FLAGS, *key)
    return None if body is None else FeatureFlag.from_body(body)


async def _withdraw(ctx: Ctx, schedule: FlagSchedule) -> None:
    """Delete an edge schedule that has not run and is no longer wanted (suspended, spec changed).

    Deleted, not cancelled: its name is the edge's, and a later resume must be able to create it again.
    """
    try:
        await ctx.kube.delete_schedule(schedule.ref)
    except ApiException as err:
        if err.status not in (404, 409):  # gone, or changed meanwhile (a new event follows)
            raise


async def _prune(ctx: Ctx, cron: FlagCronSchedule, edges: list[FlagSchedule]) -> None:
    spec = cron.spec
    for schedule in planning.to_prune(edges, spec.successful_schedules_history_limit,
                                      spec.failed_schedules_history_limit):
        try:
            await ctx.kube.delete_schedule(schedule.ref)
        except ApiException as err:
            if err.status not in (404, 409):
                raise


async def _owned_by_flag(ctx: Ctx, cron: FlagCronSchedule, flag: FeatureFlag) -> FlagCronSchedule:
    """Make the flag the FlagCronSchedule's owner, so deleting the flag deletes the window too."""
    flags = {o.get("uid") for o in cron.owner_references if o.get("kind") == "FeatureFlag"}
    if flags == {flag.ref.uid}:
        return cron
    # The owner's uid as the API server has it now, never a remembered one: an owner that was
    # deleted (and re-created under the name) would have the garbage collector delete the window.
    body = await ctx.kube.get(FLAGS, cron.ref.namespace, flag.ref.name)
    if body is None:
        return cron
    flag = FeatureFlag.from_body(body)
    if flags == {flag.ref.uid}:
        return cron
    owners = [*(o for o in cron.owner_references if o.get("kind") != "FeatureFlag"),
              {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag.ref.name, "uid": flag.ref.uid}]
    return FlagCronSchedule.from_body(await ctx.kube.set_owners(CRON_SCHEDULES, cron.ref, owners))


def _condition(cron: FlagCronSchedule, ready: bool, reason: str, message: str, now: datetime) -> dict[str, Any]:
    old = next((c for c in cron.status.conditions if c.type == READY), None)
    status = "True" if ready else "False"
    since = old.last_transition_time if old is not None and old.status == status else now
    return {"type": READY, "status": status, "reason": reason, "message": message[:4096],
            "lastTransitionTime": rfc3339(since), "observedGeneration": cron.ref.generation}


async def _not_ready(ctx: Ctx, cron: FlagCronSchedule, reason: str, message: str) -> dict[str, Any] | None:
    """Report what stops the window: condition Ready=False and, once per new message, a Warning Event."""
    old = next((c for c in cron.status.conditions if c.type == READY), None)
    if old is None or old.status != "False" or old.message != message:
        ctx.event_about(cron.ref, KIND, "Warning", reason, message)
        get_logger(cron_schedule=cron.ref.name, namespace=cron.ref.namespace).warning("cron.not_ready", error=message)
    status = {"observedGeneration": cron.ref.generation, "nextEdgeAt": None,
              "conditions": [_condition(cron, False, reason, message, ctx.clock())]}
    return await _patch_status(ctx, cron, status)


async def _write_status(
    ctx: Ctx, cron: FlagCronSchedule, phase: CronPhase, last: LastEdge | None, upcoming: Edge | None, missed: int
) -> dict[str, Any] | None:
    status: dict[str, Any] = {
        "phase": phase.value,
        "observedGeneration": cron.ref.generation,
        "lastEdge": None if last is None else {"kind": last.kind, "at": rfc3339(last.at), "schedule": last.schedule},
        "nextEdgeAt": None if upcoming is None else rfc3339(upcoming.at),
        "missedEdges": min(cron.status.missed_edges + missed, 2**62),
        "conditions": [_condition(cron, True, "Scheduling", "edges are created on time", ctx.clock())],
    }
    current = cron.status.model_dump(by_alias=True, mode="json", exclude_none=True)
    if _same(current, status):
        return None  # compare before you write: an unchanged status costs nothing
    return await _patch_status(ctx, cron, status)


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(_norm(current.get(k)) == _norm(v) for k, v in wanted.items())


def _norm(value: Any) -> Any:
    if isinstance(value, list):
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, str) and value.endswith("Z"):
        return value[:19]
    if isinstance(value, str) and value.endswith("+00:00"):
        return value[:19]
    return value


async def _patch_status(ctx: Ctx, cron: FlagCronSchedule, status: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return await ctx.kube.patch_status(CRON_SCHEDULES, cron.ref, status)
    except ApiException as err:
        if err.status in (404, 409):  # deleted, or re-created under the same name: its own events follow
            return None
        get_logger(cron_schedule=cron.ref.name, namespace=cron.ref.namespace).warning(
            "cron.status_failed", error=describe(err))
        raise
