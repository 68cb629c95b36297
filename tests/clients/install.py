"""Install what the SDK client tests run, once: npm packages, Maven artifacts, Debian's Chromium.

``make test`` runs this before pytest (``make clients``), and the tests' session fixture calls it
again, which costs nothing once done, so ``pytest`` alone works on a fresh clone too. Each step says
what it installs; a step is skipped while its stamp matches its lockfile:

- ``tests/clients/js`` and ``tests/clients/browser``: ``npm ci`` from ``package-lock.json``.
- ``tests/clients/java``: ``mvn -q dependency:build-classpath`` from ``pom.xml`` (versions pinned),
  writing ``target/classpath.txt``; then ``javac`` compiles ``FlagClient.java`` into
  ``target/classes`` (Java's source launcher compiled it again at every start: about 4 CPU-s of
  javac per client the tests run).
- Chromium: Debian's ``chromium`` package (``apt-get install``) if no ``chromium`` is on the PATH.

Concurrent callers (pytest-xdist workers) take a file lock, so one installs and the others wait.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent
JS, BROWSER, JAVA = CLIENTS / "js", CLIENTS / "browser", CLIENTS / "java"
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _say(message: str) -> None:
    print(f"clients: {message}", file=sys.stderr, flush=True)


def _stamped(folder: Path, lockfile: str, stamp: Path, install: list[str], *inputs: str) -> None:
    """Run ``install`` in ``folder`` unless ``stamp`` holds the current hash of the lockfile (and ``inputs``)."""
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in (lockfile, *inputs))).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    shown = " ".join(install)
    _say(f"installing {folder.relative_to(CLIENTS.parent.parent)} ({shown if len(shown) < 120 else shown[:117] + '...'})")
    subprocess.run(install, cwd=folder, check=True, timeout=900)
    stamp.write_text(digest)


def chromium() -> str:
    """The path of Chromium, installed from Debian's packages if there is none."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    _say("installing Debian's chromium package (apt-get update && apt-get install -y chromium)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=900)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, timeout=1800)
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("apt-get installed chromium but no chromium is on the PATH")
    return found


def java_classpath() -> str:
    """The Java client's classpath (Maven resolves it once)."""
    return (JAVA / "target" / "classpath.txt").read_text().strip()


def _java() -> None:
    """The Java client's artifacts, then its classes (compiled again when the source or the classpath changes)."""
    _stamped(JAVA, "pom.xml", JAVA / "target" / ".flag-scheduler-stamp",
             ["mvn", "-q", "-B", "-Dstyle.color=never", "dependency:build-classpath",
              "-Dmdep.outputFile=target/classpath.txt"])
    _stamped(JAVA, "FlagClient.java", JAVA / "target" / ".classes-stamp",
             ["javac", "-d", "target/classes", "-cp", java_classpath(), "FlagClient.java"], "target/classpath.txt")


def install_all() -> None:
    """Every client's dependencies; fast once done."""
    with open(CLIENTS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        steps = []
        for folder in (JS, BROWSER):
            (folder / "node_modules").mkdir(exist_ok=True)
            steps.append((folder, "package-lock.json", folder / "node_modules" / ".flag-scheduler-stamp",
                          ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]))
        (JAVA / "target").mkdir(exist_ok=True)
        # Each step writes only its own folder, and most of their time is waiting on the network or
        # the disk: side by side. list() re-raises the first failure.
        with ThreadPoolExecutor(len(steps) + 2) as pool:
            chromium_path = pool.submit(chromium)
            java = pool.submit(_java)
            list(pool.map(lambda step: _stamped(*step), steps))
            java.result()
            chromium_path.result()


if __name__ == "__main__":
    install_all()
    _say("the JS, Java and browser clients are installed")
