"""The Service and the optional NetworkPolicy reach the ports the operator serves flags on."""

from __future__ import annotations

from pathlib import Path

import yaml

from flag_scheduler.config import Settings

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def load(path: str) -> dict:
    return yaml.safe_load((MANIFESTS / path).read_text())


def pod_template() -> dict:
    return load("manager/deployment.yaml")["spec"]["template"]


def test_the_service_selects_the_operator_pods_on_the_named_flag_ports() -> None:
    service = load("manager/service.yaml")
    template = pod_template()
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    container_ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    ports = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
    defaults = Settings.model_fields
    assert ports == {"sync": defaults["sync_port"].default, "ofrep": defaults["ofrep_port"].default}
    assert {name: container_ports[name] for name in ports} == ports
    assert "service.yaml" in load("manager/kustomization.yaml")["resources"]


def test_the_network_policy_opens_health_and_metrics_and_limits_the_flag_ports() -> None:
    policy = load("network-policy/flag_readers.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == load("manager/service.yaml")["spec"]["selector"]
    open_rule, readers = policy["spec"]["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {"health", "ready", "metrics"}
    assert {p["port"] for p in readers["ports"]} == {"sync", "ofrep"}
    assert readers["from"] == [{"namespaceSelector": {"matchLabels": {"flagscheduler.dev/read-flags": "true"}}}]
