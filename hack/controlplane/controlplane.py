"""Start and stop a real local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager.

Used by the pytest fixtures, ``make cluster-up``/``make cluster-down``, ``make demo`` and the
benchmarks. It runs the binaries that ``build.sh`` builds from the Go module proxy (the way
controller-runtime's envtest runs downloaded ones), on free loopback ports, in a temporary
directory, with:

- RBAC authorization and static bearer tokens: ``admin`` (``system:masters``) and the non-admin
  identities in ``USERS`` for RBAC tests;
- a service-account signing key, so TokenRequest works;
- an audit log (``audit.log`` in the directory, JSON lines, written synchronously, never rotated)
  recording every write to the ``flagscheduler.dev`` group, to leases and to core Events: verb,
  resource, name, user, code;
- kube-controller-manager with the garbage collector, namespace, service-account and
  cluster-role aggregation controllers.

Every child runs with ``PR_SET_PDEATHSIG``, so a crashed or killed test run takes its control plane
with it; stale temporary directories of dead runs are removed at the next start.

Command line (``python hack/controlplane/controlplane.py``):
``up`` starts a detached control plane and prints ``KUBECONFIG=...`` and ``KUBECTL=...``;
``down`` stops it; ``serve`` is what ``up`` runs in the background (see ``detached.py``).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TMP_PREFIX = "flag-scheduler-cp-"
ADMIN = "admin"
# Non-admin identities: name -> groups. None of them is bound to any role by the launcher.
USERS: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
    resources:
      - group: "flagscheduler.dev"
      - group: "coordination.k8s.io"
        resources: ["leases"]
      - group: ""
        resources: ["events"]
  - level: None
"""
# The audit log's writer rotates at --audit-log-maxsize megabytes, and 0 means its default of 100 MB,
# not "never": a size no run reaches keeps every record in the one file readers follow.
AUDIT_LOG_MAX_MB = 1 << 20
STATE_FILE = Path(os.environ.get("FLAG_SCHEDULER_CLUSTER_STATE", HERE.parents[1] / ".cluster" / "state.json"))


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries the failing component's log tail."""


def binaries_dir() -> Path:
    """Build (or find in the cache) the binaries and return their directory."""
    override = os.environ.get("FLAG_SCHEDULER_BIN_DIR")
    if override:
        return Path(override)
    out = subprocess.run([str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs() -> None:
    """Remove temporary directories left by control planes whose owner process is gone."""
    for d in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if not owner or not _pid_alive(owner):
            shutil.rmtree(d, ignore_errors=True)


def _write_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _write_serving_cert(directory: Path) -> None:
    """Write ``ca.crt`` and a serving ``apiserver.crt``/``apiserver.key`` for 127.0.0.1 and localhost.

    Kubeconfigs then carry the CA and clients verify the server, as against a real cluster,
    instead of skipping TLS verification.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
              extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("flag-scheduler-local-ca", ca_key, "flag-scheduler-local-ca", ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
    ])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("kube-apiserver", key, "flag-scheduler-local-ca", ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
    ])
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "apiserver.crt").write_bytes(cert.public_bytes(pem))
    (directory / "apiserver.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@dataclass
class Component:
    """One started process and its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last lines of the component's log."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager on loopback ports."""

    fsync: bool = True
    # The Go collector's GOGC for etcd, kube-apiserver and the controller manager; None keeps Go's
    # default (100). The test run's control plane lives minutes and has memory to spare: at 400 the
    # API server spends a fraction of the CPU it did collecting (a profile of a suite run had 12 % of
    # it in the collector), CPU the tests on two cores need.
    gogc: int | None = None
    bin_dir: Path = field(default_factory=binaries_dir)
    dir: Path = field(init=False)
    components: list[Component] = field(default_factory=list, init=False)
    etcd_port: int = field(default=0, init=False)
    api_port: int = field(default=0, init=False)
    tokens: dict[str, str] = field(default_factory=dict, init=False)
    # False for a handle on a control plane another process started (``attach``): ``stop`` leaves it be.
    owned: bool = field(default=True, init=False)

    # -- public surface -------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def kubeconfig(self, user: str = ADMIN) -> Path:
        """Path of a kubeconfig that authenticates as ``user`` (``admin`` or one of ``USERS``)."""
        return self.dir / f"{user}.kubeconfig"

    def write_token_kubeconfig(self, name: str, token: str) -> Path:
        """Write a kubeconfig for an arbitrary bearer token (e.g. a ServiceAccount's) and return it."""
        path = self.dir / f"{name}.kubeconfig"
        ca = base64.b64encode((self.dir / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": name}}],
            "current-context": "local",
        }
        # Atomically: test workers running side by side rewrite the same account's file while others
        # read it (a kubectl that read it half-written went to localhost:8080).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(path)
        return path

    def describe(self) -> dict[str, object]:
        """What another process needs to use this control plane (``attach``): ports, tokens, paths."""
        return {"fsync": self.fsync, "bin_dir": str(self.bin_dir), "dir": str(self.dir),
                "etcd_port": self.etcd_port, "api_port": self.api_port, "tokens": self.tokens}

    @classmethod
    def attach(cls, state: dict) -> ControlPlane:
        """A handle on a running control plane that another process started and ``describe``d.

        Test workers running in parallel share the one control plane their controller started; the
        handle has no components, so ``stop`` does nothing and the owner alone stops it.
        """
        cp = cls(fsync=bool(state["fsync"]), bin_dir=Path(state["bin_dir"]))
        cp.dir, cp.owned = Path(state["dir"]), False
        cp.etcd_port, cp.api_port, cp.tokens = int(state["etcd_port"]), int(state["api_port"]), dict(state["tokens"])
        return cp

    def start(self, timeout: float = 60.0) -> ControlPlane:
        """Start all components and return once the API server is ready."""
        remove_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controller_manager(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> list[str]:
        """Stop every process this instance started and remove its directory; return the ones killed.

        Components stop in reverse start order (controller manager, API server, etcd), each with
        SIGTERM and ``grace`` seconds before SIGKILL, so the API server never drains towards a
        storage that is already gone.
        """
        if not self.owned:
            return []
        killed = []
        for comp in reversed(self.components):
            if comp.proc.poll() is None:
                comp.proc.terminate()
            try:
                comp.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                comp.proc.kill()
                comp.proc.wait()
                killed.append(comp.name)
        self.components.clear()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)
        return killed

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop kube-apiserver and start it again on the same port, keeping etcd's data."""
        comp = next(c for c in self.components if c.name == "kube-apiserver")
        comp.proc.terminate()
        try:
            comp.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            comp.proc.kill()  # graceful shutdown waits for open watches far longer than a test should
            comp.proc.wait()
        index = self.components.index(comp)
        self.components.remove(comp)
        self._launch_apiserver(timeout)
        self.components.insert(index, self.components.pop())  # keep the start order that stop() reverses

    def versions(self) -> tuple[str, str]:
        """(kube-apiserver gitVersion, etcd server version) read from the running servers."""
        api = json.loads(self._get(f"{self.server}/version"))["gitVersion"]
        etcd = json.loads(self._get(f"http://127.0.0.1:{self.etcd_port}/version"))["etcdserver"]
        return api, f"v{etcd}"

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> Component:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(self.bin_dir / name.split("#")[0]), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                cwd=self.dir,
                env=None if self.gogc is None else {**os.environ, "GOGC": str(self.gogc)},
            )
        comp = Component(name, proc, log)
        self.components.append(comp)
        return comp

    def _get(self, url: str) -> bytes:
        req = urllib.request.Request(url)
        ctx = None
        if url.startswith("https"):  # API server and controller manager, verified with our CA; etcd is plain HTTP
            ctx = ssl.create_default_context(cafile=self.dir / "ca.crt")
            req.add_header("Authorization", f"Bearer {self.tokens[ADMIN]}")
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return resp.read()

    def _wait(self, comp: Component, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if comp.proc.poll() is not None:
                raise ControlPlaneError(f"{comp.name} exited with {comp.proc.returncode}:\n{comp.tail()}")
            try:
                self._get(url)
                return
            except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
                last = str(err)
            time.sleep(0.1)
        raise ControlPlaneError(f"{comp.name} not ready after {timeout:.0f}s ({last}):\n{comp.tail()}")

    def _start_etcd(self, timeout: float) -> None:
        self.etcd_port, peer = free_port(), free_port()
        args = [
            "--name=default",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--log-level=warn",
        ]
        if not self.fsync:
            args.append("--unsafe-no-fsync")
        comp = self._spawn("etcd", args)
        self._wait(comp, f"http://127.0.0.1:{self.etcd_port}/health", timeout)

    def _start_apiserver(self, timeout: float) -> None:
        self.api_port = free_port()
        _write_key(self.dir / "sa.key")
        self.tokens = {ADMIN: os.urandom(16).hex(), **{u: os.urandom(16).hex() for u in USERS}}
        rows = [f'{self.tokens[ADMIN]},{ADMIN},uid-{ADMIN},"system:masters"']
        for user, groups in USERS.items():
            rows.append(f'{self.tokens[user]},{user},uid-{user},"{",".join(groups)}"')
        (self.dir / "tokens.csv").write_text("\n".join(rows) + "\n")
        (self.dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        _write_serving_cert(self.dir)
        for user in [ADMIN, *USERS]:
            self.write_token_kubeconfig(user, self.tokens[user])
        self._launch_apiserver(timeout)

    def _launch_apiserver(self, timeout: float) -> None:
        d = self.dir
        comp = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # loopback may not be a Service endpoint
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={d / 'tokens.csv'}",
                f"--service-account-key-file={d / 'sa.key'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--audit-policy-file={d / 'audit-policy.yaml'}",
                f"--audit-log-path={d / 'audit.log'}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
                "--v=1",
            ],
        )
        self._wait(comp, f"{self.server}/readyz", timeout)

    def _start_controller_manager(self, timeout: float) -> None:
        port = free_port()
        comp = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig(ADMIN)}",
                f"--authentication-kubeconfig={self.kubeconfig(ADMIN)}",
                f"--authorization-kubeconfig={self.kubeconfig(ADMIN)}",
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,"
                "clusterrole-aggregation-controller",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={self.dir / 'apiserver.crt'}",  # the same CA-signed 127.0.0.1 certificate
                f"--tls-private-key-file={self.dir / 'apiserver.key'}",
                "--v=1",
            ],
        )
        self._wait(comp, f"https://127.0.0.1:{port}/healthz", timeout)


def main(argv: list[str]) -> None:
    """``up``, ``down`` or ``serve``: the command line lives in ``detached.py``."""
    import detached  # imports this module; loaded only for the command line

    detached.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
