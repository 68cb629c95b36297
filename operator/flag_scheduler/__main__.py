"""The one image's two workloads: ``flag-scheduler`` runs the scheduler, ``flag-scheduler serve`` the flag server.

The scheduler (Kopf, standalone, our own Lease) applies schedules and serves only health and
metrics. The flag server (``flag_scheduler.serving``) serves the flags to OpenFeature SDKs,
read-only, with no Lease. Both read the same ``FLAG_SCHEDULER_*`` settings.
"""

from __future__ import annotations

import asyncio
import sys

import kopf

from flag_scheduler import failpoints
from flag_scheduler.config import load_settings
from flag_scheduler.logs import configure_logging

MAX_RECURSION = 60_000  # the API server's decoder refuses JSON nested more than 10,000 levels


USAGE = "usage: flag-scheduler [serve]   (no argument: the scheduler; serve: the flag server)"


def main() -> None:
    """Validate configuration, set up logging, run the workload the first argument names."""
    # A typed flag's targeting rule and object variants are free-form JSON, which the API server
    # admits nested up to 10,000 levels. Python's JSON decoder recurses once per level and Kopf
    # deep-copies every object it sees (three Python frames per level): with the default limit
    # (1,000) one such flag would break the watch of every flag. Pure Python calls take no C stack
    # in CPython 3.11+, and the decoder's 10,000 levels fit the main thread's stack (tested with
    # the deepest flag the API server admits).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), MAX_RECURSION))
    args = sys.argv[1:]
    if args not in ([], ["serve"]):
        raise SystemExit(USAGE)
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if args == ["serve"]:
        from flag_scheduler.serving.flag_server import serve

        asyncio.run(serve(settings))
        return
    failpoints.arm(failpoints.parse(settings.failpoints))
    import flag_scheduler.scheduling.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,  # Kopf's peering would pause equal peers; leadership is our own Lease
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        # No Kopf liveness endpoint: the runtime serves /healthz itself, from before its initial LIST.
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
