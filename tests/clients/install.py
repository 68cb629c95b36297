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

What a step produces (``node_modules``, the classpath, the classes) is kept in a cache outside the
checkout, keyed by the hash its stamp holds (``$FLAG_SCHEDULER_CACHE``, default
``~/.cache/flag-scheduler/clients``), as the control plane's binaries are: a fresh clone links it
in instead of running npm, Maven and javac again (about 25 CPU-s of a fresh clone's set-up).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent
JS, BROWSER, JAVA = CLIENTS / "js", CLIENTS / "browser", CLIENTS / "java"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CACHE = Path(os.environ.get("FLAG_SCHEDULER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "flag-scheduler") / "clients"


def _say(message: str) -> None:
    print(f"clients: {message}", file=sys.stderr, flush=True)


def _stamped(folder: Path, lockfile: str, stamp: Path, install: list[str], outputs: tuple[str, ...],
             *inputs: str) -> None:
    """Run ``install`` in ``folder`` unless ``stamp`` holds the current hash of the lockfile (and ``inputs``).

    ``outputs`` (paths in ``folder``) are what ``install`` makes: they are taken from the cache when it
    has them for this hash, and put there after an install.
    """
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in (lockfile, *inputs))).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    cached = CACHE / f"{folder.name}-{stamp.name.strip('.')}-{digest[:24]}"
    if cached.is_dir() and _usable(cached):
        for name in outputs:
            _link_tree(cached / name, folder / name)
    else:
        shown = " ".join(install)
        _say(f"installing {folder.relative_to(CLIENTS.parent.parent)} "
             f"({shown if len(shown) < 120 else shown[:117] + '...'})")
        subprocess.run(install, cwd=folder, check=True, timeout=900)
        _keep(folder, outputs, cached)
    stamp.write_text(digest)


def _usable(cached: Path) -> bool:
    """A cached classpath names jars in the local Maven repository: all of them must still be there."""
    classpath = cached / "target" / "classpath.txt"
    return not classpath.exists() or all(Path(jar).exists() for jar in classpath.read_text().strip().split(os.pathsep))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target)


def _link_tree(source: Path, target: Path) -> None:
    """``source`` (a file or a tree) at ``target``, hard-linked where the file system allows."""
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        _link_or_copy(str(source), str(target))


def _keep(folder: Path, outputs: tuple[str, ...], cached: Path) -> None:
    """Put ``outputs`` into the cache as ``cached``, whole or not at all (a rename)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{cached.name}-", dir=CACHE))
    try:
        for name in outputs:
            _link_tree(folder / name, partial / name)
        partial.rename(cached)
    except OSError:  # another clone filled it first, or the cache is not writable: the install stands
        shutil.rmtree(partial, ignore_errors=True)


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
              "-Dmdep.outputFile=target/classpath.txt"], ("target/classpath.txt",))
    _stamped(JAVA, "FlagClient.java", JAVA / "target" / ".classes-stamp",
             ["javac", "-d", "target/classes", "-cp", java_classpath(), "FlagClient.java"], ("target/classes",),
             "target/classpath.txt")


def install_all() -> None:
    """Every client's dependencies; fast once done."""
    with open(CLIENTS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        steps = []
        for folder in (JS, BROWSER):
            (folder / "node_modules").mkdir(exist_ok=True)
            steps.append((folder, "package-lock.json", folder / "node_modules" / ".flag-scheduler-stamp",
                          ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], ("node_modules",)))
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
