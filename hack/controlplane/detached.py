"""``make cluster-up`` / ``make cluster-down``: a control plane in the background that is never lost track of.

``up`` starts ``serve`` in its own session and writes the state file (``.cluster/state.json``, or
``$FLAG_SCHEDULER_CLUSTER_STATE``) with serve's pid *before* anything else, so a control plane that
is still starting, or that ``up`` gave up on, can always be stopped. ``serve`` adds the kubeconfig
and its children's pids once the API server is ready.

``down`` asks serve to stop (SIGTERM: components stopped in reverse order, each given a grace
period), waits for it, and if it has not stopped in time kills serve's whole process group. It
removes the state file only once no process of that control plane is left, and says which way it
went: ``control plane stopped`` or ``control plane killed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controlplane import STATE_FILE, ControlPlane, ControlPlaneError, binaries_dir

# How long ``down`` waits for a clean stop before it kills (serve gives each component 10 s).
STOP_GRACE_S = float(os.environ.get("FLAG_SCHEDULER_CLUSTER_STOP_GRACE", "30"))
START_TIMEOUT_S = 90.0


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _write_state(state: dict[str, Any]) -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(STATE_FILE)  # atomic: ``down`` never reads half a file


def serve() -> None:
    """Run a control plane until SIGTERM/SIGINT or until a component dies."""
    cp = ControlPlane(fsync=os.environ.get("FLAG_SCHEDULER_FSYNC", "1") != "0")
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cp.start()
    except ControlPlaneError as err:
        _write_state({"pid": os.getpid(), "error": str(err)})
        raise SystemExit(1) from err
    _write_state({
        "pid": os.getpid(), "kubeconfig": str(cp.kubeconfig()), "kubectl": str(cp.kubectl),
        "audit_log": str(cp.audit_log), "dir": str(cp.dir), "components": [c.proc.pid for c in cp.components],
    })
    try:
        while not stop and all(c.proc.poll() is None for c in cp.components):
            time.sleep(0.2)
    finally:
        killed = cp.stop()
        print(f"stopped; killed after the grace period: {killed or 'none'}", flush=True)


def up() -> None:
    """Stop any control plane this checkout started, start a new one, print KUBECONFIG= and KUBECTL=."""
    down(quiet=True)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    binaries_dir()  # build in the foreground, so its progress is visible
    log = STATE_FILE.with_name("serve.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    _write_state({"pid": proc.pid, "starting": True})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = json.loads(STATE_FILE.read_text())
        if "error" in state:
            down(quiet=True)
            raise SystemExit(f"control plane failed to start:\n{state['error']}")
        if "kubeconfig" in state:
            print(f"KUBECONFIG={state['kubeconfig']}")
            print(f"KUBECTL={state['kubectl']}")
            return
        if proc.poll() is not None:
            down(quiet=True)
            raise SystemExit(f"control plane exited with {proc.returncode}; see {log}")
        time.sleep(0.2)
    down(quiet=True)
    raise SystemExit(f"control plane did not start within {START_TIMEOUT_S:.0f} s (stopped it); see {log}")


def down(quiet: bool = False) -> None:
    """Stop the control plane in the state file: wait for a clean stop, else kill; never leave one behind."""
    if not STATE_FILE.exists():
        if not quiet:
            print("no control plane running")
        return
    state = json.loads(STATE_FILE.read_text())
    pid = int(state["pid"])
    processes = [pid, *state.get("components", [])]
    started = time.monotonic()
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while any(_alive(p) for p in processes) and time.monotonic() - started < STOP_GRACE_S:
        time.sleep(0.1)
    killed = [p for p in processes if _alive(p)]
    if killed:
        _kill(pid, killed)
    if state.get("dir"):
        shutil.rmtree(state["dir"], ignore_errors=True)  # serve removes it on a clean stop
    STATE_FILE.unlink(missing_ok=True)
    took = time.monotonic() - started
    if killed:
        print(f"control plane killed: not stopped after {STOP_GRACE_S:.0f} s (processes {killed})")
    elif not quiet:
        print(f"control plane stopped ({took:.1f} s)")


def _kill(serve_pid: int, pids: list[int]) -> None:
    """SIGKILL serve's process group (its session) and any listed process still in it; wait until gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(serve_pid, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p) == serve_pid:  # never a reused pid outside the control plane's group
                os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    if left:
        raise SystemExit(f"control plane processes {left} survived SIGKILL; state kept in {STATE_FILE}")


def main(argv: list[str]) -> None:
    """Entry point: ``up``, ``down`` or ``serve``."""
    commands = {"up": up, "down": down, "serve": serve}
    if len(argv) != 1 or argv[0] not in commands:
        raise SystemExit("usage: detached.py up|down|serve")
    commands[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
