"""``make demo`` shows what it promises: the schedule applied, and an SDK client seeing it flip."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.long
def test_the_demo_shows_an_sdk_client_seeing_the_scheduled_change() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py")], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "CI": "true"}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = re.findall(r"SDK client: checkout-v2 is (off|on) +for (\d+) of 100 users", proc.stdout)
    assert seen and seen[0] == ("off", "0"), proc.stdout
    assert seen[-1][0] == "on" and 15 <= int(seen[-1][1]) <= 35, "a quarter of the users, as scheduled"
    flips = [i for i in range(1, len(seen)) if seen[i][0] != seen[i - 1][0]]
    assert len(flips) == 1, f"off, then on, once: {seen}"
    assert "checkout-v2-go-live   checkout-v2" in proc.stdout and "Applied" in proc.stdout
    assert "stopped; nothing left running" in proc.stdout
