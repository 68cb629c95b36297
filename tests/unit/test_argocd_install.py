"""``argocd/install`` says exactly what ``argocd/resource_customizations`` holds, and the README shows it.

The argocd-cm patch is generated (``make argocd-snippet``); this reads it back independently of
the generator and compares every script with its file, byte for byte, so an edited script that
was not regenerated, or a YAML quirk that changed one, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "argocd" / "resource_customizations"
INSTALL = ROOT / "argocd" / "install"
REGENERATE = "regenerate with `make argocd-snippet`"


def expected_data() -> dict[str, str | dict]:
    """The argocd-cm keys the scripts under resource_customizations call for."""
    data: dict[str, str | dict] = {}
    for kind_dir in sorted(p for p in CUSTOMIZATIONS.glob("*/*") if p.is_dir()):
        key = f"{kind_dir.parent.name}_{kind_dir.name}"
        if (kind_dir / "health.lua").exists():
            data[f"resource.customizations.health.{key}"] = (kind_dir / "health.lua").read_text()
        actions = kind_dir / "actions"
        if (actions / "discovery.lua").exists():
            data[f"resource.customizations.actions.{key}"] = {
                "discovery.lua": (actions / "discovery.lua").read_text(),
                "definitions": [
                    {"name": d.name, "action.lua": (d / "action.lua").read_text()}
                    for d in sorted(actions.iterdir())
                    if (d / "action.lua").exists()
                ],
            }
    return data


def test_snippet_is_exactly_the_scripts() -> None:
    snippet = yaml.safe_load((INSTALL / "argocd-cm.yaml").read_text())
    assert snippet["kind"] == "ConfigMap" and snippet["metadata"] == {"name": "argocd-cm"}
    data = dict(snippet["data"])
    for key, value in data.items():
        if key.startswith("resource.customizations.actions."):
            data[key] = yaml.safe_load(value)  # Argo CD parses this value as YAML
    expected = expected_data()
    assert set(data) == set(expected), REGENERATE
    for key, value in expected.items():
        assert data[key] == value, f"{key} differs from its files: {REGENERATE}"
    assert not any(k.startswith("resource.customizations.useOpenLibs.") for k in snippet["data"])


def test_every_kind_has_health_and_flagschedule_has_cancel() -> None:
    keys = set(expected_data())
    assert keys >= {
        "resource.customizations.health.flagscheduler.dev_FeatureFlag",
        "resource.customizations.health.flagscheduler.dev_FlagSchedule",
        "resource.customizations.health.flagscheduler.dev_FlagCronSchedule",
        "resource.customizations.actions.flagscheduler.dev_FlagSchedule",
        "resource.customizations.health.flagscheduler.dev_FlagRollout",
        "resource.customizations.actions.flagscheduler.dev_FlagRollout",
    }
    actions = expected_data()["resource.customizations.actions.flagscheduler.dev_FlagSchedule"]
    assert [d["name"] for d in actions["definitions"]] == ["cancel"]
    rollout = expected_data()["resource.customizations.actions.flagscheduler.dev_FlagRollout"]
    assert sorted(d["name"] for d in rollout["definitions"]) == ["abort", "approve-next", "pause", "resume"]


def test_component_patches_argocd_cm_with_the_snippet() -> None:
    kustomization = yaml.safe_load((INSTALL / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert kustomization["patches"] == [
        {"path": "argocd-cm.yaml", "target": {"version": "v1", "kind": "ConfigMap", "name": "argocd-cm"}}
    ]


def test_readme_shows_the_example_application() -> None:
    readme = (ROOT / "README.md").read_text()
    application = (INSTALL / "application.yaml").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    assert application in blocks, "README's Application differs from argocd/install/application.yaml"
