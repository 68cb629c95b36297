"""Kopf registration, and nothing else: Kopf runs the process (startup, cleanup, signals), the runtime the rest.

No Kopf watch: the runtime lists and watches its four kinds itself (``informer.py``), once. Kopf's
own watch would LIST every object a second time after the runtime's LIST and route each through a
per-object worker, which doubled the start-up at 110,000 objects. With no resource handler
registered, Kopf watches nothing, writes no annotation and adds no finalizer.
"""

from __future__ import annotations

from typing import Any

import kopf

from flag_scheduler.scheduling.runtime import Runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # our own Events only, about our own objects
    settings.scanning.disabled = True  # no CRD/namespace scanning: needs no extra RBAC
    memo.runtime = await Runtime.start(memo.settings)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.close()
