"""Helpers for tests that run the operator: start it as a process, make objects, wait for outcomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

import zygote
from controlplane import ControlPlane, _die_with_parent

GROUP, VERSION = "flagscheduler.dev", "v1alpha1"
T = TypeVar("T")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}")


# Every operator process a test started and has not stopped yet; the session stops leftovers.
RUNNING: set[OperatorProcess] = set()


class OperatorProcess:
    """``python -m flag_scheduler`` as a separate OS process, watching the given namespaces.

    The process dies with the test run (``PR_SET_PDEATHSIG``, like the control plane's children), so
    a killed pytest leaves no operator behind; one that fails to start is stopped before ``start``
    raises.
    """

    args: tuple[str, ...] = ()
    started_event = "operator.started"

    def __init__(self, kubeconfig: Path, namespaces: list[str], log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FLAG_SCHEDULER_NAMESPACES": json.dumps(namespaces),
            # Each test's operator elects itself in the test's namespace, apart from every other test.
            "FLAG_SCHEDULER_LEASE_NAMESPACE": namespaces[0],
            "FLAG_SCHEDULER_LOG_FORMAT": "json",
            "FLAG_SCHEDULER_HEALTH_PORT": "0",
            "FLAG_SCHEDULER_READY_PORT": "0",
            "FLAG_SCHEDULER_METRICS_PORT": "0",
            "FLAG_SCHEDULER_SYNC_PORT": "0",  # tests that read flags pick free ports
            "FLAG_SCHEDULER_OFREP_PORT": "0",
            # Most tests run without the shipped admission policies installed; the operator's
            # fail-closed check is exercised where asked for (test_fail_closed.py passes "check").
            "FLAG_SCHEDULER_ADMISSION_POLICIES": "external",
            "FLAG_SCHEDULER_BACKOFF_SECONDS": "1",
            "FLAG_SCHEDULER_MAX_BACKOFF_SECONDS": "2",
            **env,
        }
        self.proc: subprocess.Popen | zygote.ForkedProcess | None = None
        self._parsed: list[dict[str, Any]] = []  # log_lines: the lines parsed so far, up to byte _parsed_to
        self._parsed_to = 0

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if zygote.enabled():  # forked from a process that has the imports done (tests/zygote.py)
            self.proc = zygote.Zygote.spawn(list(self.args), self.env, self.log_path)
        else:
            out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flag_scheduler", *self.args], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
            out.close()
        RUNNING.add(self)
        try:
            wait_for(lambda: self.started_event in self.log_path.read_text()[offset:] or self._died(), timeout,
                     what=f"{self.started_event} in the log")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            RUNNING.discard(self)
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: the operator releases its Lease), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        RUNNING.discard(self)

    def send(self, sig: int) -> None:
        """Send a signal to the operator process (SIGCONT resumes one frozen at a failpoint)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """``kill -9``, and reap it (works on a process frozen at a failpoint too)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_log(self, *events: str, after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a log line whose ``event`` is one of ``events``, at index ``after`` or later."""
        return wait_for(
            lambda: next((l for l in self.log_lines()[after:] if l.get("event") in events), None),
            timeout, what=f"{' or '.join(events)} in the operator's log",
        )

    def log_lines(self) -> list[dict[str, Any]]:
        """The operator's JSON log lines (non-JSON lines skipped).

        Tests poll this every 0.1 s while the log grows to thousands of lines: each call parses only
        the complete lines appended since the last (the file is only ever appended to).
        """
        with open(self.log_path, "rb") as log:
            if log.seek(0, os.SEEK_END) < self._parsed_to:  # never expected: start again
                self._parsed, self._parsed_to = [], 0
            log.seek(self._parsed_to)
            new = log.read()
        complete = new[:new.rfind(b"\n") + 1]
        self._parsed_to += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                self._parsed.append(parsed)
        return list(self._parsed)


class FlagServerProcess(OperatorProcess):
    """``python -m flag_scheduler serve``: the flag server, serving the given namespaces' flags."""

    args = ("serve",)
    started_event = "flag_server.started"


class Cluster:
    """Flags and schedules in one namespace, through the official client as admin."""

    def __init__(self, api_client: k8s.ApiClient, cp: ControlPlane, namespace: str) -> None:
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.cp = cp
        self.ns = namespace
        # The audit log holds the whole run: entries about this namespace come after it was made, so
        # ``audit`` reads from here on (by the end of a run the file holds every test's writes).
        self._audit_from = cp.audit_log.stat().st_size if cp.audit_log.exists() else 0

    def flag(self, name: str, enabled: bool = False, rollout: int = 0, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FeatureFlag",
            "metadata": {"name": name},
            "spec": {"enabled": enabled, "rolloutPercentage": rollout, **spec},
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "featureflags", body)

    def schedule(self, name: str, flag: str, at: datetime, updates: dict[str, Any], **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FlagSchedule",
            "metadata": {"name": name},
            "spec": {"flagRef": {"name": flag}, "scheduledAt": rfc3339(at), "updates": updates, **spec},
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "flagschedules", body)

    def get_flag(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "featureflags", name)

    def schedule_gone(self, name: str) -> bool:
        """True once the API server answers NotFound for the schedule (what ``kubectl get`` shows as NotFound)."""
        try:
            self.get_schedule(name)
        except k8s.ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    def get_schedule(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "flagschedules", name)

    def patch_schedule(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, "flagschedules", name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.get_schedule(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the schedule's status.phase is ``phase``; return the status."""
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s, timeout, what=f"{name} phase {phase}"
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        """(type, reason, message) of the Events about object ``name``."""
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [{"type": e.type, "reason": e.reason, "message": e.message} for e in items]

    def wait_event(self, name: str, reason: str, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for an Event about ``name`` with ``reason`` and ``type_``; return it.

        The operator posts Events after the status write they describe, so a test that has just
        seen the phase must wait for the Event rather than read the list once.
        """
        return wait_for(
            lambda: next((e for e in self.events(name) if e["reason"] == reason and e["type"] == type_), None),
            timeout,
            what=f"{type_} Event {reason} on {name}",
        )

    def audit(self, resource: str, verb: str | None = None) -> list[dict[str, Any]]:
        """Audit entries for ``resource`` in this namespace (subresource as ``featureflags/status``).

        Dry-run requests (the tests' own probes) are left out: they change nothing.
        """
        out = []
        with open(self.cp.audit_log, "rb") as log:
            if log.seek(0, os.SEEK_END) >= self._audit_from:
                log.seek(self._audit_from)
            else:  # a new file (a control plane started again): all of it
                log.seek(0)
            text = log.read().decode()
        for line in text.splitlines():
            if self.ns not in line:  # parse only lines naming this test's namespace
                continue
            e = json.loads(line)
            ref = e.get("objectRef", {})
            res = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            if "dryRun=" in e.get("requestURI", ""):
                continue
            if ref.get("namespace") == self.ns and res == resource and (verb is None or e["verb"] == verb):
                out.append(e)
        return out


def scrape_metrics(port: int) -> dict[str, float]:
    """The operator's ``flag_scheduler_*`` samples from its /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line.startswith("flag_scheduler_")
    }


class History:
    """Every version of the schedules in a namespace, as a watch (``kubectl get -w``) delivers them."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [str(cp.kubectl), f"--kubeconfig={cp.kubeconfig()}", "get", "flagschedules", "-n", namespace,
             "--watch", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_die_with_parent,
        )
        self._text = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._text += line

    def versions(self, name: str) -> list[dict[str, Any]]:
        """The versions of schedule ``name`` seen so far, oldest first."""
        with self._lock:
            text = self._text
        decoder, out, pos = json.JSONDecoder(), [], 0
        while (start := text.find("{", pos)) != -1:
            try:
                obj, pos = decoder.raw_decode(text, start)
            except ValueError:
                break  # a version still being written
            if obj.get("metadata", {}).get("name") == name:
                out.append(obj)
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
