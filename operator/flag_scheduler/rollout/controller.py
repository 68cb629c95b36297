"""The FlagRollout controller: keeps each rollout's status and schedules in line with ``plan``, while leading.

Fed by the scheduler's watches (rollouts, the schedules labelled with a rollout, flags), it marks
rollouts dirty and reconciles them a few at a time, one at a time per flag (so two rollouts of one
flag never both start). A reconcile, every step re-runnable after a crash:

1. compute the plan from the cached rollout, its schedules and its flag (``plan.plan``);
2. write the status if it changed, preconditioned on uid and resourceVersion (409: read, again);
3. cancel the schedules the plan cancels (by uid), then create the one it creates: the status
   written in 2 already names it, and AlreadyExists means an earlier attempt created it;
4. post at most one Event about what changed (``rollout_event``): a new phase (Normal, or Warning
   for a drift, an abort or a failure), else a step that landed, else a step scheduled.

Nothing is written unless this replica leads (``is_leader``, checked before each write).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pydantic
from kubernetes.aio.client.exceptions import ApiException

from flag_scheduler import failpoints
from flag_scheduler.kube import TRANSPORT_ERRORS, Kube, describe
from flag_scheduler.logs import get_logger
from flag_scheduler.models import GROUP, SCHEDULES, VERSION, FeatureFlag, ObjectRef, rfc3339
from flag_scheduler.rollout.models import (
    FINAL, KIND, LABEL_ROLLOUT, LABEL_STEP, ROLLOUTS, FlagRollout, FlagRolloutStatus, FlagValues, StepSchedule,
)
from flag_scheduler.rollout.plan import FlagView, NewSchedule, plan

Key = tuple[str, str]
# (rollout, type, reason, message): posts a core Event about the rollout in the background.
EventPoster = Callable[[ObjectRef, str, str, str, str], None]
WARNING_REASONS = frozenset({"FlagDrifted", "AnotherRolloutActive", "Aborting", "Aborted", "BaselineRestore",
                             "AbortedBeforeStart"})
WORKERS = 16
RETRY_SECONDS = 1.0
log = get_logger()


class NotLeading(Exception):
    """This replica is not surely the leader right now (its last renewal is too old): write nothing, retry."""


class RolloutController:
    """Caches of rollouts and their schedules, a dirty set, and workers that reconcile while leading."""

    def __init__(self, kube: Kube, clock: Callable[[], datetime], flag_of: Callable[[Key], FeatureFlag | None],
                 is_leader: Callable[[], bool], event: EventPoster = lambda *_: None) -> None:
        self.kube, self.clock, self.flag_of, self.is_leader, self.event = kube, clock, flag_of, is_leader, event
        self.rollouts: dict[Key, dict[str, Any]] = {}
        self._by_flag: dict[Key, set[Key]] = defaultdict(set)  # (namespace, flag) -> its rollouts
        self.schedules: dict[Key, dict[str, StepSchedule]] = defaultdict(dict)
        self.leading = asyncio.Event()
        self._dirty: dict[Key, None] = {}
        self._wake = asyncio.Event()
        self._busy: set[Key] = set()
        self._flag_locks: dict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task] = set()

    # -- what the watches say ---------------------------------------------------------------------

    def observe_rollout(self, event_type: str | None, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        held = self.rollouts.get(key)
        if held is not None:
            self._by_flag[(key[0], _flag_name(held))].discard(key)
        if event_type == "DELETED":
            self.rollouts.pop(key, None)
            self.schedules.pop(key, None)
            return
        if _newer(body, held):
            self.rollouts[key] = held = body
            self.mark(key)
        self._by_flag[(key[0], _flag_name(held))].add(key)

    def observe_schedule(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        owner = (meta.get("labels") or {}).get(LABEL_ROLLOUT)
        if not owner:
            return
        key = (meta["namespace"], owner)
        if event_type == "DELETED":
            self.schedules[key].pop(meta["name"], None)
        else:
            self.schedules[key][meta["name"]] = StepSchedule.from_body(body)
        self.mark(key)

    def observe_flag(self, key: Key) -> None:
        """A flag changed: its rollouts look again (baseline, drift)."""
        for rkey in self._by_flag.get(key, ()):
            self.mark(rkey)

    def mark(self, key: Key) -> None:
        self._dirty[key] = None
        self._wake.set()

    # -- leadership and the work loop -------------------------------------------------------------

    def lead(self) -> None:
        self.leading.set()
        for key in self.rollouts:
            self.mark(key)

    def follow(self) -> None:
        self.leading.clear()

    async def run(self) -> None:
        """Reconcile dirty rollouts, up to ``WORKERS`` at once, while leading; forever."""
        slots = asyncio.Semaphore(WORKERS)
        while True:
            await self.leading.wait()
            await self._wake.wait()
            self._wake.clear()
            for key in [k for k in self._dirty if k not in self._busy]:
                del self._dirty[key]
                await slots.acquire()
                self._busy.add(key)
                task = asyncio.create_task(self._reconcile_guarded(key))
                self._tasks.add(task)
                task.add_done_callback(lambda t, k=key: (self._tasks.discard(t), self._busy.discard(k),
                                                         slots.release(), self._dirty and self._wake.set()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _reconcile_guarded(self, key: Key) -> None:
        try:
            await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except NotLeading:
            if self.leading.is_set():  # a late renewal, not a lost Lease: look again soon (lead() re-marks all)
                self._later(key)
        except (ApiException, *TRANSPORT_ERRORS) as err:
            log.warning("rollout.retrying", namespace=key[0], rollout=key[1], error=describe(err))
            self._later(key)
        except Exception as err:  # noqa: BLE001 - one rollout's bug must not stop the others
            log.error("rollout.failed", namespace=key[0], rollout=key[1], error=describe(err), exc_info=True)
            self._later(key)

    def _later(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(RETRY_SECONDS, self.mark, key)

    # -- one rollout ------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """Bring one rollout's status and schedules in line with its plan (see the module docstring)."""
        body = self.rollouts.get(key)
        if body is None:
            return
        self._leading()
        try:
            rollout = FlagRollout.from_body(body)
        except pydantic.ValidationError as err:
            log.warning("rollout.unreadable", namespace=key[0], rollout=key[1], error=str(err)[:500])
            return
        flag_key = (key[0], rollout.spec.flag_ref.name)
        async with self._flag_locks[flag_key]:
            flag = self.flag_of(flag_key)
            rollout = await self._own(rollout, flag)
            if rollout is None:
                return
            view = None if flag is None else FlagView(flag.ref.uid, FlagValues.model_validate(
                flag.spec.model_dump(by_alias=True)), flag.marker.name, flag.marker.applied_at)
            result = plan(rollout, dict(self.schedules.get(key, {})), view, self.clock(), self._rival(rollout))
            if not await self._write_status(rollout, result.status):
                return
        for name in result.cancel:
            await self._cancel(rollout, name)
        if result.create is not None:
            failpoints.reach("rollout.before-create")
            await self._create(rollout, result.create, None if view is None else view.uid)
            failpoints.reach("rollout.after-create")
        told = rollout_event(rollout, result.status, result.create)
        if told is not None:
            self.event(rollout.ref, *told)

    def _leading(self) -> None:
        if not self.is_leader():
            raise NotLeading()

    def _rival(self, r: FlagRollout) -> str | None:
        """Another active rollout of the same flag: started and not final, or not started and created earlier."""
        mine = (r.created_at, r.ref.name)
        for ns, name in self._by_flag.get((r.ref.namespace, r.spec.flag_ref.name), ()):
            body = self.rollouts.get((ns, name))
            if body is None or name == r.ref.name:
                continue
            spec, status = body.get("spec") or {}, body.get("status") or {}
            if status.get("phase") in FINAL:
                continue
            if status.get("startedAt") or (not spec.get("abort") and (body["metadata"].get("creationTimestamp", ""),
                                                                       name) < mine):
                return name
        return None

    async def _own(self, r: FlagRollout, flag: FeatureFlag | None) -> FlagRollout | None:
        """The rollout owned by its flag (ownerReference), so deleting the flag deletes the rollout."""
        if flag is None or any(o.get("uid") == flag.ref.uid for o in r.owner_references):
            return r
        self._leading()
        owners = [*(o for o in r.owner_references if o.get("kind") != "FeatureFlag"),
                  {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": flag.ref.name, "uid": flag.ref.uid}]
        try:
            body = await self.kube.set_owners(ROLLOUTS, r.ref, owners)
        except ApiException as err:
            if err.status not in (404, 409):
                raise
            await self._reread((r.ref.namespace, r.ref.name))
            return None
        self.observe_rollout("MODIFIED", body)
        return FlagRollout.from_body(body)

    async def _write_status(self, r: FlagRollout, status: dict[str, Any]) -> bool:
        """Write ``status`` unless it is what the rollout already has; False if the rollout changed meanwhile."""
        if _same(r.status, status):
            return True
        self._leading()
        try:
            body = await self.kube.patch_status(ROLLOUTS, r.ref, status, unchanged=True)
        except ApiException as err:
            if err.status not in (404, 409):
                raise
            await self._reread((r.ref.namespace, r.ref.name))
            return False
        self.observe_rollout("MODIFIED", body)
        if status["phase"] != r.status.phase.value:
            log.info("rollout.phase", namespace=r.ref.namespace, rollout=r.ref.name, flag=r.spec.flag_ref.name,
                     phase=status["phase"], step=status["currentStep"], waiting_for=status["waitingFor"])
        return True

    async def _reread(self, key: Key) -> None:
        fresh = await self.kube.get(ROLLOUTS, *key)
        if fresh is None:
            self.observe_rollout("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        else:
            self.observe_rollout("MODIFIED", fresh)
            self.mark(key)

    async def _cancel(self, r: FlagRollout, name: str) -> None:
        known = self.schedules.get((r.ref.namespace, r.ref.name), {}).get(name)
        if known is None:
            return
        self._leading()
        try:
            body = await self.kube.cancel_schedule(r.ref.namespace, name, known.uid)
        except ApiException as err:
            if err.status not in (404, 409, 422):  # gone, re-created, or final (the CEL rule): its event follows
                raise
            return
        self.observe_schedule("MODIFIED", body)
        log.info("rollout.step_cancelled", namespace=r.ref.namespace, rollout=r.ref.name, schedule=name)

    async def _create(self, r: FlagRollout, new: NewSchedule, flag_uid: str | None) -> None:
        self._leading()
        try:
            body = await self.kube.create(SCHEDULES, r.ref.namespace, schedule_body(r, new, flag_uid))
        except ApiException as err:
            if err.status != 409:
                raise
            return  # AlreadyExists: created before (the name is deterministic)
        self.observe_schedule("ADDED", body)
        log.info("rollout.step_scheduled", namespace=r.ref.namespace, rollout=r.ref.name, schedule=new.name,
                 step=new.step, scheduled_at=body["spec"]["scheduledAt"])


def rollout_event(r: FlagRollout, status: dict[str, Any], created: NewSchedule | None) -> tuple[str, str, str] | None:
    """The one Event (type, reason, message) for what a reconcile changed, or None if nothing a person would want told."""
    applied, before = status["stepsApplied"], r.status.steps_applied
    landed = ""
    if applied > before:
        entry = status["steps"][applied - 1]
        landed = f"step {status['currentStep']} applied (FlagSchedule {entry['schedule']!r})"
    scheduled = "" if created is None else (f"FlagSchedule {created.name!r} created for step {created.step!r},"
                                           f" due at {rfc3339(created.at)}")
    told = "; ".join(filter(None, (landed, scheduled)))
    if status["phase"] != r.status.phase.value:
        held = next((c for c in status["conditions"] if c["status"] == "True" and c["type"] != "FlagDrifted"), None)
        reason = held["reason"] if held else status["phase"]
        failed = status["phase"] == "Failed" or reason in WARNING_REASONS
        message = "; ".join(filter(None, (f"{status['phase']}: {held['message'] if held else ''}".rstrip(": "),
                                          status.get("waitingFor") and f"waiting for {status['waitingFor']}", told)))
        return ("Warning" if failed else "Normal", reason, message)
    if landed:
        return ("Normal", "StepApplied", told)
    if scheduled:
        return ("Normal", "StepScheduled", told)
    return None


def schedule_body(r: FlagRollout, new: NewSchedule, flag_uid: str | None) -> dict[str, Any]:
    """The FlagSchedule for a step: labelled with the rollout and step, owned (as controller) by the rollout.

    Also owned by the flag as the scheduler would make it on first sight, which saves it that write.
    """
    owners = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": r.ref.name,
               "uid": r.ref.uid, "controller": True, "blockOwnerDeletion": False}]
    if flag_uid:
        owners.append({"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureFlag", "name": r.spec.flag_ref.name,
                       "uid": flag_uid})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FlagSchedule",
        "metadata": {
            "name": new.name,
            "namespace": r.ref.namespace,
            "labels": {LABEL_ROLLOUT: r.ref.name, LABEL_STEP: new.step},
            "ownerReferences": owners,
        },
        "spec": {"flagRef": {"name": r.spec.flag_ref.name}, "scheduledAt": rfc3339(new.at), "updates": new.updates},
    }


def _same(old: FlagRolloutStatus, new: dict[str, Any]) -> bool:
    try:
        parsed = FlagRolloutStatus.model_validate({k: v for k, v in new.items() if v is not None})
    except pydantic.ValidationError:
        return False
    return parsed.model_dump(mode="json") == old.model_dump(mode="json")


def _flag_name(body: dict[str, Any]) -> str:
    return str(((body.get("spec") or {}).get("flagRef") or {}).get("name", ""))


def _newer(body: dict[str, Any], held: dict[str, Any] | None) -> bool:
    if held is None or held["metadata"].get("uid") != body["metadata"].get("uid"):
        return True
    new, old = body["metadata"].get("resourceVersion", ""), held["metadata"].get("resourceVersion", "")
    return not (new.isdigit() and old.isdigit()) or int(new) >= int(old)
