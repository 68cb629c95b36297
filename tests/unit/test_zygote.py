"""The tests' warm start (tests/zygote.py): a forked operator behaves as ``python -m flag_scheduler`` does."""

from __future__ import annotations

import os
from pathlib import Path

import zygote


def test_a_forked_operator_gets_its_own_arguments_environment_and_exit_status(tmp_path: Path) -> None:
    usage = zygote.Zygote.spawn(["bogus"], dict(os.environ), tmp_path / "usage.log")
    assert usage.wait(30) == 1
    assert "usage: flag-scheduler [serve]" in (tmp_path / "usage.log").read_text()

    env = {**os.environ, "FLAG_SCHEDULER_NAMESPACES": "not-json"}
    invalid = zygote.Zygote.spawn([], env, tmp_path / "invalid.log")
    assert invalid.wait(30) == 1
    assert "FLAG_SCHEDULER_NAMESPACES" in (tmp_path / "invalid.log").read_text()
    assert usage.pid != invalid.pid != os.getpid()
