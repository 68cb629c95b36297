"""Running the JS, Java and browser OpenFeature clients of ``tests/clients/`` from tests.

Each runtime's client is one long-lived process that prints (or, for the page, POSTs) one JSON
object per stage; ``ClientProcess`` and ``PageServer`` turn those into ``next_report(timeout)``.
``split_*`` restate the three generations of flagd's ``fractional`` hashing found in the clients'
source, so a test can say which generation each real client runs, key by key.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cbor2
import mmh3

from clients.install import BROWSER, JAVA, JS, chromium, install_all, java_classpath
from controlplane import _die_with_parent, free_port
from operator_harness import OperatorProcess

# -- the operator serving flags ------------------------------------------------------------------


@dataclass
class Served:
    """A flag-server process serving flags on free loopback ports (beside a scheduler process)."""

    op: OperatorProcess
    sync_port: int
    ofrep_port: int

    def ofrep_url(self, namespace: str) -> str:
        return f"http://127.0.0.1:{self.ofrep_port}/{namespace}"


def serve(start_operator: Callable[..., OperatorProcess], sync_port: int = 0, ofrep_port: int = 0,
          log_name: str = "flag-server.log", scheduler: bool = True, **env: str) -> Served:
    """The scheduler (unless ``scheduler`` is false) and a flag server serving sync and OFREP on loopback."""
    if scheduler:
        start_operator(log_name=f"scheduler-{log_name}")
    sync_port, ofrep_port = sync_port or free_port(), ofrep_port or free_port()
    op = start_operator(log_name=log_name, flag_server=True, FLAG_SCHEDULER_SYNC_PORT=str(sync_port),
                        FLAG_SCHEDULER_OFREP_PORT=str(ofrep_port), FLAG_SCHEDULER_SERVE_ADDRESS="127.0.0.1", **env)
    return Served(op, sync_port, ofrep_port)


# -- client processes ----------------------------------------------------------------------------


class Reports:
    """JSON reports arriving from a client, read with a deadline; each has ``arrived`` (monotonic)."""

    def __init__(self, name: str, log: Path) -> None:
        self.name, self.log = name, log
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()

    def next_report(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                if self.exited() or time.monotonic() > deadline:
                    state = "exited" if self.exited() else f"no report within {timeout}s"
                    raise AssertionError(f"{self.name}: {state} ({what}); its log:\n"
                                         f"{self.log.read_text()[-3000:] if self.log.exists() else ''}") from None
        assert "error" not in report, f"{self.name} failed: {report['error']}"
        return report

    def exited(self) -> bool:
        return False


class ClientProcess(Reports):
    """A client program printing one JSON line per stage; its stderr goes to ``log``."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log: Path) -> None:
        super().__init__(name, log)
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL,  # noqa: SIM115
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.queue.put({**json.loads(line), "arrived": time.monotonic()})
            except ValueError:
                with open(self.log, "ab") as log:
                    log.write(b"stdout: " + line)

    def exited(self) -> bool:
        return self.proc.poll() is not None and self.queue.empty()

    def stop(self) -> None:
        """End the client and everything it started (its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def js_client(job: dict[str, Any], log: Path) -> ClientProcess:
    return ClientProcess("js", ["node", "client.mjs", json.dumps(job)], JS, log)


def java_client(job: dict[str, Any], log: Path) -> ClientProcess:
    """``FlagClient`` as compiled by ``make clients``. The JIT stops at its first tier: the client runs
    for seconds, in which the optimising compiler's threads only took CPU from the tests beside it."""
    classpath = os.pathsep.join(["target/classes", java_classpath()])
    return ClientProcess("java", ["java", "-XX:TieredStopAtLevel=1", "-cp", classpath, "FlagClient", json.dumps(job)],
                         JAVA, log)


class PageServer(Reports):
    """Serves ``tests/clients/browser`` on its own origin; the page POSTs its reports to ``/report``."""

    def __init__(self, log: Path) -> None:
        super().__init__("browser", log)
        reports = self.queue

        class Handler(SimpleHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                reports.put({**body, "arrived": time.monotonic()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(Handler, directory=str(BROWSER)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.browser: ClientProcess | None = None

    def open(self, job: dict[str, Any], profile: Path) -> None:
        """Load the page in headless Chromium with ``job`` in its query string."""
        from urllib.parse import quote

        url = f"{self.origin}/index.html?job={quote(json.dumps(job))}"
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={profile}", url]
        self.browser = ClientProcess("chromium", argv, BROWSER, self.log)

    def close(self) -> None:
        if self.browser is not None:
            self.browser.stop()
        self.server.shutdown()
        self.server.server_close()


def clients_installed() -> Iterator[None]:
    """Session fixture body: the clients' dependencies, installed once (``tests/clients/install.py``)."""
    install_all()
    yield


def chromium_version() -> str:
    return subprocess.run([chromium(), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()


# -- flagd's fractional, by generation ------------------------------------------------------------
# Each takes the flag key, the targeting key and the split as (variant, weight) pairs in the served
# order, and returns the variant the key falls into. They differ in what is hashed and how a hash
# becomes a bucket. ``rollout`` turns one into the on/off rule of a rollout of p %.

Split = list[tuple[str, int]]


def _first_above(bucket: int, split: Split) -> str:
    """The variant whose cumulative weight first exceeds ``bucket`` (the current and previous rules)."""
    end = 0
    for variant, weight in split:
        end += weight
        if bucket < end:
            return variant
    raise AssertionError(f"bucket {bucket} beyond the split {split}")


def split_cbor(flag: str, key: str, split: Split) -> str:
    """flagd's current rule (ADR "non-string rand units"): murmur3 of CBOR [flag, key], hash*total>>32."""
    hashed = mmh3.hash(cbor2.dumps([flag, key], canonical=True), signed=False)
    return _first_above((hashed * sum(w for _, w in split)) >> 32, split)


def split_concat(flag: str, key: str, split: Split) -> str:
    """The previous rule: murmur3 of the string flag + key, hash*total>>32."""
    return _first_above((mmh3.hash((flag + key).encode(), signed=False) * sum(w for _, w in split)) >> 32, split)


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def split_concat_percent(flag: str, key: str, split: Split) -> str | None:
    """The oldest rule: |signed murmur3 of flag + key| / 2^31 * 100 against float32 running percentages."""
    signed = mmh3.hash((flag + key).encode(), signed=True)
    magnitude = abs(signed) if signed != -(2**31) else signed  # Java's Math.abs(MIN_VALUE) stays negative
    bucket = _f32(_f32(_f32(float(magnitude)) / _f32(2.0**31)) * 100.0)
    total, end = sum(w for _, w in split), 0.0
    for variant, weight in split:
        end = _f32(end + _f32(float(weight * 100) / float(total)))
        if bucket < end:
            return variant
    return None  # |hash| rounds up to 2^31 in float32: the provider raises "Unable to find a correct bucket"


def rollout(generation: Callable[[str, str, Split], str | None]) -> Callable[[str, str, int], bool]:
    """The on/off answer of a rollout of ``p`` % (served as the split [on: p, off: 100 - p]) under ``generation``."""
    def on(flag: str, key: str, p: int) -> bool:
        return generation(flag, key, [("on", p), ("off", 100 - p)]) == "on"
    on.__name__ = generation.__name__
    return on
