"""Logging: a logger made at import renders as configured later (modules bind theirs at import)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from flag_scheduler.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def test_a_logger_made_before_configuration_logs_json_lines_once_configured(capsys: pytest.CaptureFixture[str]) -> None:
    early = get_logger(flag="checkout-v2")  # as module-level loggers are, at import
    configure_logging("json")
    early.info("schedule.applied", schedule="at-nine")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["event"], line["flag"], line["schedule"]) == ("schedule.applied", "checkout-v2", "at-nine")
