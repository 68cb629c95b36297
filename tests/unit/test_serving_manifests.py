"""The flag server's manifests: the Service reaches its pods' flag ports, the scheduler's pods have none,
and the network-policy overlay narrows who may read flags or scrape metrics."""

from __future__ import annotations

from pathlib import Path

import yaml

from flag_scheduler.config import Settings

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def load(path: str) -> dict:
    return yaml.safe_load((MANIFESTS / path).read_text())


def pod_template(path: str = "manager/flag_server_deployment.yaml") -> dict:
    return load(path)["spec"]["template"]


def test_the_service_selects_the_flag_server_pods_on_the_named_flag_ports() -> None:
    service = load("manager/service.yaml")
    template = pod_template()
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    scheduler_labels = pod_template("manager/deployment.yaml")["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= scheduler_labels.items(), "the scheduler serves no flags"
    container_ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    ports = {p["targetPort"]: p["port"] for p in service["spec"]["ports"]}
    defaults = Settings.model_fields
    assert ports == {"sync": defaults["sync_port"].default, "ofrep": defaults["ofrep_port"].default}
    assert {name: container_ports[name] for name in ports} == ports
    assert "service.yaml" in load("manager/kustomization.yaml")["resources"]


def test_the_flag_server_runs_as_its_own_read_only_service_account() -> None:
    assert pod_template()["spec"]["serviceAccountName"] == "flag-server"
    role = load("rbac/flag_server_role.yaml")
    assert role["rules"] == [{"apiGroups": ["flagscheduler.dev"], "resources": ["featureflags"],
                              "verbs": ["get", "list", "watch"]}]
    binding = load("rbac/flag_server_role_binding.yaml")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flag-server",
                                    "namespace": "flag-scheduler-system"}]


def test_the_network_policy_overlay_limits_the_flag_ports_and_metrics() -> None:
    policy = load("network-policy/flag_readers.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == load("manager/service.yaml")["spec"]["selector"]
    open_rule, readers, scrapers = policy["spec"]["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {"health"}
    assert {p["port"] for p in readers["ports"]} == {"sync", "ofrep"}
    assert readers["from"] == [{"namespaceSelector": {"matchLabels": {"flagscheduler.dev/read-flags": "true"}}}]
    assert {p["port"] for p in scrapers["ports"]} == {"metrics"}
    scheduler = load("network-policy/scheduler_metrics.yaml")
    health, metrics = scheduler["spec"]["ingress"]  # the probes (health, ready) stay open
    assert "from" not in health and {p["port"] for p in health["ports"]} == {"health", "ready"}
    assert metrics["from"] == scrapers["from"] == [
        {"namespaceSelector": {"matchLabels": {"flagscheduler.dev/scrape-metrics": "true"}}}]
