"""Kopf registration, and nothing else: watch flags, schedules and rollouts, hand each event to the runtime.

Only ``@kopf.on.event`` is used: it neither writes annotations nor adds finalizers, so deleting a
flag or schedule never waits for the operator and a schedule costs no Kopf bookkeeping writes.
"""

from __future__ import annotations

from typing import Any

import kopf

from flag_scheduler.cronschedule.model import CRON_SCHEDULES
from flag_scheduler.kube import PAGE_SIZE
from flag_scheduler.scheduling.namespace_access import EndlessBackoff
from flag_scheduler.models import FLAGS, GROUP, SCHEDULES, VERSION
from flag_scheduler.rollout.models import ROLLOUTS
from flag_scheduler.scheduling.runtime import Runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # our own Events only, about our own objects
    settings.scanning.disabled = True  # no CRD/namespace scanning: needs no extra RBAC
    # A watch the server closes after 240 s is re-opened from its resourceVersion (no relist); one
    # that went silent (a dropped connection) is abandoned by the client after 270 s, and one that
    # cannot connect after 10 s: a dead watch is replaced within 270 s.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    settings.watching.connect_timeout = 10
    # Kopf's own initial LIST, page by page like ours, and its per-object workers gone half a second
    # after their last event (not 5 s): the initial LIST of 100,000 objects otherwise keeps tens of
    # thousands of idle workers alive at once, and their memory is never given back.
    settings.watching.chunk_size = PAGE_SIZE
    settings.queueing.idle_timeout = 0.5
    # A watch or LIST the server refuses (a namespace whose RoleBinding was deleted, an API server
    # restarting) is retried for as long as it takes, not given up after Kopf's default eight tries
    # (a given-up watch would leave that namespace unscheduled until a restart).
    settings.networking.error_backoffs = EndlessBackoff()
    memo.runtime = await Runtime.start(memo.settings)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.close()


@kopf.on.event(GROUP, VERSION, SCHEDULES)
async def schedule_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.observe_schedule(event.get("type"), event["object"])


@kopf.on.event(GROUP, VERSION, FLAGS)
async def flag_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.observe_flag(event.get("type"), event["object"])


@kopf.on.event(GROUP, VERSION, CRON_SCHEDULES)
async def cron_schedule_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.observe_cron(event.get("type"), event["object"])
@kopf.on.event(GROUP, VERSION, ROLLOUTS)
async def rollout_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.observe_rollout(event.get("type"), event["object"])
