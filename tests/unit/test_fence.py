"""The fence holds in every path: a refused token write, an unanswered PATCH, this replica's own claims.

Against the in-memory API (``fake_kube``), which, like the API server, stores no write that changes
nothing (such a write does not move the resourceVersion, so it fences nothing). The same paths run
on the real control plane in ``tests/integration/test_fence.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from datetime import timedelta

import pytest
from kubernetes.aio.client.exceptions import ApiException

from fake_kube import FakeKube, _error
from flag_scheduler.forward import after_landing, setter_of
from flag_scheduler.models import SCHEDULES, Marker
from flag_scheduler.scheduling.apply import apply_schedule
from flag_scheduler.scheduling.context import Ctx
from flag_scheduler.scheduling.dispatcher import Dispatcher
from flag_scheduler.scheduling.finished import reject_unreadable
from flag_scheduler.scheduling.landed import FenceRefused, term_of
from flag_scheduler.scheduling.settle import cancel_schedule
from test_apply import NS, T0, add_flag, add_schedule, ctx, flag, kube, phase  # noqa: F401 - fixtures

TOKEN = "flagscheduler.dev/fencing-token"
KEY = (NS, "f")


def refuse(kube: FakeKube, *writes: str) -> None:
    """The next write of each kind is refused as a ValidatingAdmissionPolicy refuses it."""
    for write in writes:
        kube.hooks[write] = lambda: (_ for _ in ()).throw(_error(403, "Forbidden"))


async def late_patch(kube: FakeKube, prepared: object, schedule: object) -> int:
    """The PATCH a deposed leader (or an unanswered request) prepared earlier reaches the API server now."""
    marker = after_landing(Marker(), setter_of(schedule), 1, {"enabled": True}, T0, lambda uid: False)
    try:
        await kube.patch_flag_spec(prepared, {"enabled": True}, marker, "term-1")
    except ApiException as err:
        return err.status
    return 200


def conditions(kube: FakeKube, name: str = "s") -> dict[str, dict]:
    return {c["type"]: c for c in kube.objects[(SCHEDULES, NS, name)]["status"].get("conditions", [])}


async def test_a_flag_that_refuses_the_token_annotation_is_fenced_through_its_status(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    schedule = add_schedule(kube, ctx, cancelled=True)
    prepared = ctx.book.flag(KEY).ref  # what a deposed leader read before it froze
    refuse(kube, "fence_flag")
    await cancel_schedule(ctx, schedule)
    assert phase(kube) == "Cancelled"
    assert flag(kube)["status"]["fencingToken"] == "term-2"
    assert await late_patch(kube, prepared, schedule) == 409
    assert flag(kube)["spec"]["enabled"] is False


async def test_a_flag_that_refuses_every_fencing_write_gets_no_untouched_phase_until_a_fence_lands(
    kube: FakeKube, ctx: Ctx
) -> None:
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    schedule = add_schedule(kube, ctx, cancelled=True)
    for _ in range(2):  # refused twice: said once
        refuse(kube, "fence_flag", "fence_flag_status")
        with pytest.raises(FenceRefused):
            await cancel_schedule(ctx, ctx.book.schedule(schedule.ref.uid))
        assert phase(kube) == "Pending"
        held = conditions(kube)["FenceRefused"]
        assert held["status"] == "True" and "Cancelled is not recorded yet" in held["message"]
    await asyncio.gather(*ctx.background)
    assert [e for e in kube.events if e[2] == "FenceRefused"] == [("s", "Warning", "FenceRefused")]
    await cancel_schedule(ctx, ctx.book.schedule(schedule.ref.uid))  # the policy was lifted
    assert phase(kube) == "Cancelled"
    assert conditions(kube)["FenceRefused"]["status"] == "False"
    assert term_of(flag(kube)["metadata"]["annotations"][TOKEN]) == "term-2"


async def test_an_unanswered_patch_is_fenced_when_a_schedule_this_replica_claimed_is_deleted(
    kube: FakeKube, ctx: Ctx
) -> None:
    """The flag carries this term's token already; the retrying schedule is deleted; the PATCH that got no
    answer must not commit afterwards, although the claim was this replica's own."""
    add_flag(kube, ctx, annotations={TOKEN: "term-2"})
    schedule = add_schedule(kube, ctx, retry={"maxRetries": 3})
    prepared = ctx.book.flag(KEY).ref
    kube.hooks["patch_flag_spec"] = lambda: (_ for _ in ()).throw(TimeoutError("no answer"))
    await apply_schedule(ctx, schedule)
    assert phase(kube) == "Retrying"
    body = copy.deepcopy(kube.objects[(SCHEDULES, NS, "s")])
    kube.delete(SCHEDULES, NS, "s")
    ctx.book.observe_schedule("DELETED", body)
    assert ctx.book.suspects == {KEY: "me"}
    dispatcher = Dispatcher(ctx)
    dispatcher._end_of_life(T0)
    await asyncio.gather(*dispatcher._tasks)
    assert not ctx.book.suspects and KEY not in ctx.unanswered
    assert flag(kube)["metadata"]["annotations"][TOKEN].startswith("term-2.")  # changed, so it was stored
    assert await late_patch(kube, prepared, schedule) == 409


async def test_a_schedule_this_replica_claimed_costs_no_fence_when_every_patch_was_answered(
    kube: FakeKube, ctx: Ctx
) -> None:
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    add_schedule(kube, ctx)
    body = copy.deepcopy(kube.objects[(SCHEDULES, NS, "s")])
    kube.delete(SCHEDULES, NS, "s")
    ctx.book.observe_schedule("DELETED", body)
    dispatcher = Dispatcher(ctx)
    dispatcher._end_of_life(T0)
    await asyncio.gather(*dispatcher._tasks)
    assert not ctx.book.suspects
    assert "fence_flag" not in kube.calls


async def test_a_patch_cut_short_when_the_lead_is_lost_counts_as_unanswered(kube: FakeKube, ctx: Ctx) -> None:
    add_flag(kube, ctx)
    schedule = add_schedule(kube, ctx)
    sent = asyncio.Event()

    async def no_answer(*args: object) -> dict:
        sent.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    kube.patch_flag_spec = no_answer  # type: ignore[method-assign]
    work = asyncio.create_task(apply_schedule(ctx, schedule))
    await sent.wait()
    work.cancel()  # Dispatcher.stop, when the Lease is lost
    with pytest.raises(asyncio.CancelledError):
        await work
    assert KEY in ctx.unanswered


async def test_a_patch_that_lands_fences_this_replicas_own_unanswered_one(kube: FakeKube, ctx: Ctx) -> None:
    """A PATCH of this term that lands moves the version past the unanswered one's precondition: no extra
    fence is owed afterwards."""
    add_flag(kube, ctx, annotations={TOKEN: "term-2"})
    first = add_schedule(kube, ctx, "a", retry={"maxRetries": 3})
    prepared = ctx.book.flag(KEY).ref
    kube.hooks["patch_flag_spec"] = lambda: (_ for _ in ()).throw(TimeoutError("no answer"))
    await apply_schedule(ctx, first)
    assert KEY in ctx.unanswered
    await apply_schedule(ctx, ctx.book.schedule(first.ref.uid))  # the retry lands
    assert phase(kube, "a") == "Applied" and KEY not in ctx.unanswered
    cancelled = add_schedule(kube, ctx, "b", cancelled=True)
    await cancel_schedule(ctx, cancelled)
    assert phase(kube, "b") == "Cancelled" and "fence_flag" not in kube.calls
    assert await late_patch(kube, prepared, first) == 409


async def test_a_suspect_flag_that_refuses_every_fence_is_not_fenced_again_on_every_turn(
    kube: FakeKube, ctx: Ctx
) -> None:
    """A refusal by a policy is permanent until someone lifts it: the suspect stays (no untouched phase
    may rely on it), but its fence is tried again with backoff, not on each turn of the loop (at least
    every HEARTBEAT, and on every wake-up)."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    body = kube.create(SCHEDULES, {
        "metadata": {"namespace": NS, "name": "s"},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": T0.isoformat(), "updates": {"enabled": True}},
        "status": {"phase": "Pending", "retryCount": 0, "claimedBy": "deposed"},  # the last leader's claim
    })
    ctx.book.put_schedule(body)
    kube.delete(SCHEDULES, NS, "s")
    ctx.book.observe_schedule("DELETED", body)
    assert ctx.book.suspects == {KEY: "deposed"}
    dispatcher = Dispatcher(ctx)
    refuse(kube, "fence_flag", "fence_flag_status")
    dispatcher._end_of_life(T0)
    await asyncio.gather(*dispatcher._tasks)
    assert ctx.book.suspects == {KEY: "deposed"}  # not fenced: it stays a suspect
    assert kube.calls.count("fence_flag") == 1
    for _ in range(3):  # the next turns, at once (a burst of watch events wakes the loop)
        refuse(kube, "fence_flag", "fence_flag_status")
        dispatcher._end_of_life(T0)
        await asyncio.gather(*dispatcher._tasks)
    assert kube.calls.count("fence_flag") == 1, kube.calls
    kube.hooks.clear()  # the policy was lifted
    dispatcher._end_of_life(T0 + timedelta(seconds=2))  # the first pause is over: tried again, lands
    await asyncio.gather(*dispatcher._tasks)
    assert kube.calls.count("fence_flag") == 2 and not ctx.book.suspects


async def test_a_claimed_schedule_edited_into_one_the_operator_cannot_read_is_failed_only_after_a_fence(
    kube: FakeKube, ctx: Ctx
) -> None:
    """The last leader claimed the schedule and froze before its PATCH; the schedule is then edited into a
    spec the operator cannot interpret (one stored under an older CRD). ``Failed`` (InvalidSpec) says the
    flag was not changed, so the PATCH prepared earlier must fail afterwards."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    schedule = ctx.book.put_schedule(kube.create(SCHEDULES, {
        "metadata": {"namespace": NS, "name": "s"},
        "spec": {"flagRef": {"name": "f"}, "scheduledAt": T0.isoformat(), "updates": {"enabled": True}},
        "status": {"phase": "Pending", "retryCount": 0, "claimedBy": "deposed"},
    }))
    prepared = ctx.book.flag(KEY).ref  # what the deposed leader read before it froze
    stored = kube.objects[(SCHEDULES, NS, "s")]
    stored["spec"]["scheduledAt"] = "0000-01-01T00:00:00Z"
    stored["metadata"].update(generation=2, resourceVersion=str(next(kube._rv)))
    ctx.book.observe_schedule("MODIFIED", copy.deepcopy(stored))
    assert ctx.book.suspects == {KEY: "deposed"}  # fenced by the dispatcher's turn, and:
    await reject_unreadable(ctx, ctx.book.unreadable[schedule.ref.uid])  # alone, whichever runs first
    assert phase(kube) == "Failed"
    assert await late_patch(kube, prepared, schedule) == 409, "Failed (InvalidSpec), yet the PATCH landed"
    assert flag(kube)["spec"]["enabled"] is False


def refuse_always(kube: FakeKube, *writes: str) -> None:
    """Every write of each kind is refused, as by a policy nobody lifted."""
    def arm(write: str) -> None:
        def refused() -> None:
            arm(write)
            raise _error(403, "Forbidden")
        kube.hooks[write] = refused
    for write in writes:
        arm(write)


async def test_a_cancellation_held_by_a_refused_fence_does_not_hold_up_the_flags_due_schedule(
    kube: FakeKube, ctx: Ctx
) -> None:
    """A policy that refuses every write leaving the flag off refuses both fencing writes, yet admits a
    schedule that turns it on. The held cancellation of one schedule must not keep the due one from
    landing, the more so as that PATCH is itself a write of this term (it fences the flag)."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    add_schedule(kube, ctx, "a", at=T0 + timedelta(hours=1), cancelled=True)
    add_schedule(kube, ctx, "b")
    refuse_always(kube, "fence_flag", "fence_flag_status")
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    with contextlib.suppress(FenceRefused):
        await dispatcher._work_due(KEY)
    assert conditions(kube, "a")["FenceRefused"]["status"] == "True"
    assert phase(kube, "b") == "Applied", "the due schedule waits for another one's fence"
    assert flag(kube)["spec"]["enabled"] is True


async def test_a_missed_schedule_held_by_a_refused_fence_does_not_hold_up_the_next_due_one(
    kube: FakeKube, ctx: Ctx
) -> None:
    """The same policy; the head of line missed its deadline, so Missed waits for a fence that is refused.
    The next schedule, due and admitted, must still land (its PATCH fences the flag)."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    add_schedule(kube, ctx, "a", at=T0 - timedelta(hours=1), startingDeadlineSeconds=60,
                 updates={"rolloutPercentage": 5})
    add_schedule(kube, ctx, "b")
    refuse_always(kube, "fence_flag", "fence_flag_status")
    dispatcher = Dispatcher(ctx)
    dispatcher.leading.set()
    with contextlib.suppress(FenceRefused):
        await dispatcher._work_due(KEY)
    assert conditions(kube, "a")["FenceRefused"]["status"] == "True"
    assert phase(kube, "b") == "Applied", "the due schedule waits for another one's fence"


async def test_a_refused_fence_is_said_again_for_each_generation_it_holds_up(kube: FakeKube, ctx: Ctx) -> None:
    """FenceRefused names the generation whose outcome waits (Argo CD reads a True one of an older
    generation as stale): the schedule moved while still held is said held again, for generation 2."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    schedule = add_schedule(kube, ctx, cancelled=True)
    refuse(kube, "fence_flag", "fence_flag_status")
    with pytest.raises(FenceRefused):
        await cancel_schedule(ctx, schedule)
    assert conditions(kube)["FenceRefused"]["observedGeneration"] == 1
    stored = kube.objects[(SCHEDULES, NS, "s")]
    stored["spec"]["scheduledAt"] = (T0 + timedelta(days=7)).isoformat()
    stored["metadata"].update(generation=2, resourceVersion=str(next(kube._rv)))
    ctx.book.observe_schedule("MODIFIED", copy.deepcopy(stored))
    refuse(kube, "fence_flag", "fence_flag_status")
    with pytest.raises(FenceRefused):
        await cancel_schedule(ctx, ctx.book.schedule(schedule.ref.uid))
    held = conditions(kube)["FenceRefused"]
    assert (held["status"], held["observedGeneration"]) == ("True", 2)


@pytest.mark.parametrize("annotation", ["refused", "stripped"])
async def test_a_fencing_write_that_changes_nothing_is_no_fence(kube: FakeKube, ctx: Ctx, annotation: str) -> None:
    """A CRD older than the operator has no ``status.fencingToken``: the API server prunes it, stores
    nothing and the resourceVersion stays. That write fences nothing, so Cancelled must wait. The
    token annotation is refused, or stored as nothing (a mutating webhook that removes it again)."""
    add_flag(kube, ctx, annotations={TOKEN: "term-1"})
    schedule = add_schedule(kube, ctx, cancelled=True)
    prepared = ctx.book.flag(KEY).ref

    async def pruned(ref: object, token: str) -> dict:
        return copy.deepcopy(flag(kube))  # answered 200 with the object as it was

    if annotation == "refused":
        refuse(kube, "fence_flag")
    else:
        kube.fence_flag = pruned  # type: ignore[method-assign]
    kube.fence_flag_status = pruned  # type: ignore[method-assign]
    with pytest.raises(FenceRefused):
        await cancel_schedule(ctx, schedule)
    assert phase(kube) == "Pending"
    assert await late_patch(kube, prepared, schedule) == 200  # nothing fenced it: Cancelled would be a lie
