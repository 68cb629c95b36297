"""structlog set-up: JSON lines on stdout in production, readable console output for people."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(log_format: str, level: str = "info") -> None:
    """Route structlog and the standard library (Kopf, the client) through one renderer."""
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kopf logs every watch event at debug/info; keep its chatter to warnings.
    logging.getLogger("kopf").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def get_logger(**bound: object) -> structlog.stdlib.BoundLogger:
    """A structlog logger with keys bound (``flag``, ``schedule``, ...).

    Lazy: it takes the configuration in force when it first logs, so a module-level logger made
    at import, before ``configure_logging`` ran, still renders as configured.
    """
    return structlog.get_logger("flag_scheduler", **bound)
