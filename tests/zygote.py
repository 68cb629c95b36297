"""Warm starts for the operator processes the tests run: fork them from a process that has imported the operator.

A fresh ``python -m flag_scheduler`` spends about a second of CPU importing Kopf, the Kubernetes
client, gRPC and the operator before it runs a line of its own, and the suite starts a few hundred
of them on a 2-core machine. Each test worker therefore keeps one *zygote*: a single-threaded
process that has imported all of that once and forks an operator on request. The fork is a real,
separate OS process that runs the same ``main()`` as ``python -m flag_scheduler``, with the
test's arguments, environment and working directory, stdin from ``/dev/null`` and stdout and
stderr appended to the test's log file; it dies with its zygote, which dies with the test worker
(``PR_SET_PDEATHSIG``), as the control plane's children do.

What differs from a fresh interpreter, and why it does not matter here:

- Modules are imported before the test's environment is in place. The operator reads its settings
  (``FLAG_SCHEDULER_*``, ``KUBECONFIG``, failpoints) in ``main()``, never at import; a test that
  set a variable the imports read would see the zygote's value. (``random`` reseeds itself in a
  fork; ``PYTHONHASHSEED`` is the zygote's, so string hashing is alike across forks.)
- The process is the zygote's child, not the test's: ``ForkedProcess`` gives the tests the part of
  ``subprocess.Popen`` they use, signals it through a pidfd (never a recycled pid) and learns its
  exit status from the zygote, which reaps it.

``FLAG_SCHEDULER_TEST_FORK=0`` turns this off: every operator is a fresh interpreter again.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PRELOAD = (
    "flag_scheduler.__main__",  # Kopf, the Kubernetes client, pydantic, structlog, the settings
    "flag_scheduler.scheduling.handlers",  # the scheduler (registers Kopf handlers, as main() would)
    "flag_scheduler.serving.flag_server",  # the flag server (gRPC, aiohttp)
    "_strptime", "pwd", "tzdata.zoneinfo",  # imported on first use (timestamps, ~, time zones)
)
# The asyncio Kubernetes client imports an API class, and the pydantic models its methods name, on
# first attribute access: CoreV1Api alone is about 250 models and a second of CPU, which every
# scheduler paid after the fork (in ``Kube.__init__``) until the zygote took them too. The classes
# the operator builds (kube.py, scheduling/leader.py); a new one shows up in ``sys.modules`` of a
# fork that was not in the zygote's.
PRELOAD_ATTRIBUTES = ("kubernetes.aio.client", (
    "CoreV1Api", "CustomObjectsApi", "AdmissionregistrationV1Api", "CoordinationV1Api",
))


def enabled() -> bool:
    return os.environ.get("FLAG_SCHEDULER_TEST_FORK", "1") != "0"


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# -- the zygote's side -----------------------------------------------------------------------------


def _serve(status_dir: Path) -> None:
    """Read one JSON request per line on stdin, fork it, answer its pid; reap children into ``status_dir``."""
    for module in PRELOAD:
        __import__(module)
    package, names = PRELOAD_ATTRIBUTES
    for name in names:
        getattr(importlib.import_module(package), name)
    requests = os.fdopen(sys.stdin.fileno(), "rb", buffering=0)
    answers = sys.stdout.buffer
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fileobj is requests:
                chunk = requests.read(65536)
                if not chunk:  # the test worker is gone
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    pid = os.fork()
                    if pid == 0:
                        signal.set_wakeup_fd(-1)
                        for fd in (wake_r, wake_w):
                            os.close(fd)
                        selector.close()
                        _run_child(json.loads(line))  # never returns
                    answers.write(f"{pid}\n".encode())
                    answers.flush()
            else:
                os.read(wake_r, 4096)
        _reap(status_dir)


def _reap(status_dir: Path) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        tmp = status_dir / f"{pid}.tmp"
        tmp.write_text(str(os.waitstatus_to_exitcode(status)))
        tmp.rename(status_dir / str(pid))


def _reread_settings_read_at_import() -> None:
    """Give the few settings that libraries read from the environment at import the test's values.

    The Kubernetes client takes its default kubeconfig from ``KUBECONFIG`` at import (in the module
    and again in the package that re-exports it); structlog its colour switches. Found with a grep
    of the preloaded packages for module-level environment reads; a new one shows up as an
    operator that ignores a test's setting.
    """
    kubeconfig = os.environ.get("KUBECONFIG")
    for name, home in (("kubernetes.config", "~/.kube/config"),
                       ("kubernetes.aio.config", (Path.home() / ".kube/config").as_posix())):
        for module in (sys.modules.get(name), sys.modules.get(f"{name}.kube_config")):
            if module is not None:
                module.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig or home  # type: ignore[attr-defined]
    colours = sys.modules.get("structlog._config")
    if colours is not None:
        colours._no_colors = os.environ.get("NO_COLOR", "") != ""  # type: ignore[attr-defined]
        colours._force_colors = os.environ.get("FORCE_COLOR", "") != ""  # type: ignore[attr-defined]


def _run_child(request: dict[str, Any]) -> None:
    """In the fork: become ``python -m flag_scheduler <args>`` and exit with its status."""
    code: int = 0
    try:
        _die_with_parent()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["flag_scheduler", *request["args"]]
        _reread_settings_read_at_import()
        from flag_scheduler.__main__ import main

        main()
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what an interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    # An interpreter's own exit: wait for non-daemon threads, run atexit, flush, then leave
    # without unwinding into the zygote's loop.
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# -- the tests' side -------------------------------------------------------------------------------


class ForkedProcess:
    """The part of ``subprocess.Popen`` the tests use, for a process forked by the zygote."""

    def __init__(self, pid: int, status_file: Path) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._status = status_file
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (and reaped): its status file tells how
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"flag_scheduler (pid {self.pid})", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """One per test worker, started on first use."""

    _lock = threading.Lock()
    _instance: Zygote | None = None

    def __init__(self) -> None:
        self.status_dir = Path(tempfile.mkdtemp(prefix="flag-scheduler-zygote-"))
        # Started from a thread that lives as long as the worker: PR_SET_PDEATHSIG fires when the
        # thread that forked the child ends, and the first operator may be started from a test's
        # short-lived thread (the zygote, and every operator forked from it, died with that thread).
        started: list[subprocess.Popen[bytes]] = []
        ready = threading.Event()

        def keep() -> None:
            try:
                started.append(subprocess.Popen(
                    [sys.executable, __file__, str(self.status_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    preexec_fn=_die_with_parent,
                ))
            finally:
                ready.set()
            threading.Event().wait()  # never set: the thread ends with the process

        threading.Thread(target=keep, name="zygote", daemon=True).start()
        ready.wait()
        if not started:
            raise RuntimeError("the zygote did not start (see the worker's stderr)")
        self.proc = started[0]

    @classmethod
    def spawn(cls, args: list[str], env: dict[str, str], log: Path) -> ForkedProcess:
        """Fork ``flag_scheduler <args>`` with ``env``, its output appended to ``log``."""
        log.touch()  # there when spawn returns, as a file Popen's caller opened would be
        with cls._lock:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                cls._instance = cls()
            zygote = cls._instance
            assert zygote.proc.stdin is not None and zygote.proc.stdout is not None
            request = {"args": args, "env": env, "log": str(log), "cwd": os.getcwd()}
            zygote.proc.stdin.write(json.dumps(request).encode() + b"\n")
            zygote.proc.stdin.flush()
            answer = zygote.proc.stdout.readline()
            if not answer:
                raise RuntimeError(f"the zygote exited with {zygote.proc.wait()}")
            pid = int(answer)
            return ForkedProcess(pid, zygote.status_dir / str(pid))


if __name__ == "__main__":
    _die_with_parent()
    _serve(Path(sys.argv[1]))
