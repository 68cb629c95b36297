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


USAGE = "usage: flag-scheduler [serve]   (no argument: the scheduler; serve: the flag server)"


def main() -> None:
    """Validate configuration, set up logging, run the workload the first argument names."""
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
