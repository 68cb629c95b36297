"""Every kube-score check that `make lint` skips is listed, with the same reason, in the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def accepted() -> dict[str, str]:
    lines = (ROOT / "hack" / "kube-score" / "accepted.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if line and not line.startswith("#"))


def test_the_readme_lists_each_accepted_finding_with_its_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `([a-z-]+)` \| (.+) \|$", readme.split("**kube-score.**", 1)[1], flags=re.M))
    assert accepted(), "the list is read"
    assert {k: table.get(k, "").replace("`", "") for k in accepted()} == {
        k: v.replace("`", "") for k, v in accepted().items()}
