"""Shared fixtures: one real control plane per test run, a fresh namespace per test, tests in parallel.

``make test`` runs the integration tests on several pytest-xdist workers against one control plane,
which the controller process starts (and stops) once; each worker attaches to it. Every integration
test holds a shared lock while it runs, and one marked ``exclusive`` (it changes something every
other test sees: cluster-wide admission policies or bindings, CRDs, the API server) holds it
exclusively, so it never runs beside another test.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The tests start operator processes (subprocess with a preexec_fn, so fork) while OpenFeature SDK
# clients run gRPC in this process. gRPC's fork handlers then start a poller in the child, which
# aborts (SIGABRT, "epoll_wait error: Bad file descriptor") when the fds are closed before exec:
# seen once as a flag server that "exited with -6" at start. Nothing here uses gRPC across a fork.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import pytest  # noqa: E402
from hypothesis import settings
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
# Hypothesis' per-example deadline is a timing assertion: on a loaded machine (tests run in parallel)
# it fails examples for being slow, not wrong. The suite's speed is watched by --durations instead.
settings.register_profile("flag-scheduler", deadline=None)
settings.load_profile("flag-scheduler")
CRD_NAMES = (
    "crd/featureflags.flagscheduler.dev", "crd/flagschedules.flagscheduler.dev", "crd/flagcronschedules.flagscheduler.dev",
    "crd/flagrollouts.flagscheduler.dev",
)


class Kubectl:
    """Runs the control plane's own kubectl as a given identity."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def __call__(
        self, *args: str, user: str = "admin", kubeconfig: Path | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = kubeconfig or self.cp.kubeconfig(user)
        proc = subprocess.run(
            [str(self.cp.kubectl), f"--kubeconfig={config}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
            # A run is over in a fraction of a second: Go's garbage collector only costs it CPU,
            # about a fifth of the ~65 ms each of the suite's ~1,300 runs takes. (A long-running
            # kubectl, such as a watch, keeps its collector.)
            env={**os.environ, "GOGC": "off"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw: object) -> dict:
        """Run ``kubectl ... -o json`` and parse the output."""
        return json.loads(self(*args, "-o", "json", **kw).stdout)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> ControlPlane:
    """The run's one control plane: started by this process, or by the xdist controller for its workers."""
    cp = getattr(request.config, "_flag_scheduler_cp", None)
    if cp is None and _is_worker(request.config):
        cp = _attach_control_plane(request.config)
    if cp is None:
        cp = _start_control_plane(request.config)
    return cp


def _start_control_plane(config: pytest.Config) -> ControlPlane:
    cp = ControlPlane(fsync=False, gogc=400).start()
    config._flag_scheduler_cp = cp
    state = _shared_dir(config) / CP_STATE
    state.with_suffix(".tmp").write_text(json.dumps(cp.describe()))
    state.with_suffix(".tmp").replace(state)  # workers never read half a file
    api, etcd = cp.versions()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"control plane: kube-apiserver {api}, etcd {etcd}")
    return cp


def _attach_control_plane(config: pytest.Config) -> ControlPlane:
    """On an xdist worker: the controller's control plane (it starts it once the workers collected)."""
    state = _shared_dir(config) / CP_STATE
    deadline = time.monotonic() + 120
    while not state.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the controller's control plane did not come up within 120 s ({state})")
        time.sleep(0.1)
    cp = ControlPlane.attach(json.loads(state.read_text()))
    config._flag_scheduler_cp = cp
    return cp


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> k8s.ApiClient:
    """A synchronous official-client ApiClient authenticated as the admin."""
    return k8s_config.new_client_from_config(config_file=str(control_plane.kubeconfig()))


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    """The project's CRDs from ``crds/``, Established and served."""
    install(kubectl, REPO / "crds")


def install(kubectl: Kubectl, kustomization: Path) -> None:
    """``kubectl apply -k`` a tree holding the CRDs; return once their resources are served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(kustomization))
    kubectl("wait", "--for=condition=Established", *CRD_NAMES, "--timeout=60s")
    # Established comes a moment before discovery and the storage serve the new kinds.
    deadline = time.monotonic() + 60
    while kubectl("get", "featureflags,flagschedules,flagcronschedules,flagrollouts", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("the CRDs were Established but their resources were not served within 60 s")
        time.sleep(0.2)


@pytest.fixture
def namespace(api_client: k8s.ApiClient) -> str:
    """A fresh namespace for one test, left in place afterwards.

    Made with the Python client, not kubectl: a kubectl process costs about 0.1 s of CPU, and every
    integration test needs a namespace (tests that show what a user sees still use kubectl). It is
    not deleted: the control plane is thrown away at the end of the run, and deleting ~300 namespaces
    while the other tests run had the namespace controller LIST and DELETE every resource type in
    each (about 24,000 requests), CPU the tests themselves need. Nothing watches a finished test's
    namespace: every operator a test starts watches its own test's namespaces only.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.CoreV1Api(api_client).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests, and order the run so the workers finish together.

    ``make test`` hands tests to the workers one at a time in this order (``--maxschedchunk=1``):
    tests marked ``long`` first, so none of them starts last and holds up the end of the run; then
    the other integration tests; then the ``exclusive`` ones, which wait for the cluster to
    themselves, so they come when nothing long is left to wait for; then the unit tests, which take
    no cluster lock and keep the other workers busy while an exclusive test runs.
    """
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("integration") is None:
            return 3
        if item.get_closest_marker("exclusive") is not None:
            return 2
        return 0 if item.get_closest_marker("long") is not None else 1

    items.sort(key=rank)  # stable: within a rank, the collection's order


def pytest_collection_finish(session: pytest.Session) -> None:
    if _is_worker(session.config) or session.config.option.collectonly:
        return  # the controller starts the control plane once for every worker; listing tests needs none
    if any(item.get_closest_marker("integration") for item in session.items):
        _start_control_plane(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker where the shared control plane's state and locks live."""
    node.workerinput["flag_scheduler_shared"] = str(_shared_dir(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist controller: have the control plane up once, before any worker runs a test, if one is needed."""
    config = node.config
    early: threading.Event | None = getattr(config, "_flag_scheduler_early", None)
    if early is not None:
        early.wait()
    if getattr(config, "_flag_scheduler_cp", None) is None and any("/integration/" in i for i in ids):
        _start_control_plane(config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: Any) -> None:
    """xdist controller: start the control plane while the workers start and collect (about 3 s saved).

    Only when the run names the integration tests (``tests`` or a path under ``tests/integration``);
    if none is collected after all, it is stopped at the end like any other.
    """
    if not any("integration" in str(arg) or Path(str(arg).split("::")[0]).resolve() in (REPO, REPO / "tests")
               for arg in config.args):
        return
    started, done = threading.Event(), threading.Event()

    def run() -> None:
        # The thread lives until the run ends: the control plane's processes die with the thread that
        # started them (PR_SET_PDEATHSIG is per thread).
        try:
            _start_control_plane(config)
        finally:
            started.set()
        done.wait()

    config._flag_scheduler_early, config._flag_scheduler_done = started, done
    threading.Thread(target=run, name="control-plane", daemon=True).start()


def pytest_unconfigure(config: pytest.Config) -> None:
    from operator_harness import RUNNING

    for op in list(RUNNING):  # a test that lost track of its operator: stop it before its API server
        op.stop()
    cp = getattr(config, "_flag_scheduler_cp", None)
    if cp is not None:
        cp.stop()  # a worker's handle does nothing: the controller owns the control plane
    done = getattr(config, "_flag_scheduler_done", None)
    if done is not None:
        done.set()  # the thread that started it may end now
    if not _is_worker(config) and getattr(config, "_flag_scheduler_shared", None):
        shutil.rmtree(config._flag_scheduler_shared, ignore_errors=True)


# -- tests in parallel: a readers-writer lock around every integration test -----------------------

CP_STATE = "control-plane.json"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _shared_dir(config: pytest.Config) -> Path:
    """A directory every process of this run sees: the controller makes it, workers get its path."""
    if _is_worker(config):
        return Path(config.workerinput["flag_scheduler_shared"])
    if getattr(config, "_flag_scheduler_shared", None) is None:
        config._flag_scheduler_shared = Path(tempfile.mkdtemp(prefix="flag-scheduler-tests-"))
    return config._flag_scheduler_shared


@contextlib.contextmanager
def cluster_lock(shared: Path, exclusive: bool) -> Iterator[None]:
    """Hold the run's cluster lock: shared for ordinary tests, exclusive for ``exclusive`` ones.

    ``flock`` has no writer preference, so a turnstile gives one: a waiting exclusive test holds it,
    and no new test takes the shared lock until the exclusive one has the cluster to itself.
    """
    with open(shared / "turnstile.lock", "a") as turnstile, open(shared / "cluster.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _cluster_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Integration tests run side by side; an ``exclusive`` one (it changes what every test sees) alone."""
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    with cluster_lock(_shared_dir(request.config), request.node.get_closest_marker("exclusive") is not None):
        yield


_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "/integration/" in report.nodeid:
        _skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skips:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nintegration tests must not be skipped: {', '.join(_skips)}")
