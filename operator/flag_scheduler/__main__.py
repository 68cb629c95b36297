"""``flag-scheduler`` / ``python -m flag_scheduler``: run the operator (Kopf, standalone)."""

from __future__ import annotations

import kopf

from flag_scheduler import failpoints
from flag_scheduler.config import load_settings
from flag_scheduler.logs import configure_logging


def main() -> None:
    """Validate configuration, set up logging, run Kopf against $KUBECONFIG or the in-cluster config."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    failpoints.arm(failpoints.parse(settings.failpoints))
    import flag_scheduler.scheduling.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,  # Kopf's peering would pause equal peers; leadership is our own Lease
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
