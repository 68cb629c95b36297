"""``make demo``: a real control plane, the CRDs, the scheduler, the flag server, and one schedule applied on time.

The two workloads run as two processes, as they run as two Deployments: ``flag-scheduler`` (the
scheduler) and ``flag-scheduler serve`` (the flag server). An OpenFeature SDK client (flagd's
provider, in-process, on the flag server's sync port) prints the
flag once a second, as an application would see it: off for everyone, then on for a quarter of
the users from the due time on, without a restart.

Ends by itself when not on a terminal (or with CI=true); on a terminal it keeps the operator and
control plane running until Ctrl-C, so you can try kubectl against them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack" / "controlplane"), str(REPO / "operator")]

from controlplane import ControlPlane, free_port  # noqa: E402

FLAG = """
apiVersion: flagscheduler.dev/v1alpha1
kind: FeatureFlag
metadata: {name: checkout-v2, namespace: default}
spec: {enabled: false, rolloutPercentage: 0, description: New checkout flow}
"""
SCHEDULE = """
apiVersion: flagscheduler.dev/v1alpha1
kind: FlagSchedule
metadata: {{name: checkout-v2-go-live, namespace: default}}
spec:
  flagRef: {{name: checkout-v2}}
  scheduledAt: "{at}"
  updates: {{enabled: true, rolloutPercentage: 25}}
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def sdk_client(port: int):  # noqa: ANN201 - the SDK's client type, imported late
    """An OpenFeature client reading the flag server's flags over flagd sync, as an application would."""
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=port,
                                            selector="default", deadline_ms=30_000))
    return api.get_client()


def print_every_second(client, stop: threading.Event) -> None:  # noqa: ANN001
    """The flag for user-1 and for 100 users, once a second, until ``stop``."""
    from openfeature.evaluation_context import EvaluationContext

    while not stop.wait(1.0 - time.time() % 1.0):
        on = [client.get_boolean_value("checkout-v2", False, EvaluationContext(f"user-{i}")) for i in range(100)]
        print(f"  [{datetime.now(UTC):%H:%M:%S}Z] SDK client: checkout-v2 is {'on ' if any(on) else 'off'}"
              f" for {sum(on)} of 100 users", flush=True)


def main() -> None:
    with ControlPlane(fsync=True) as cp:
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig())}

        def kubectl(*args: str, stdin: str | None = None) -> str:
            out = subprocess.run([str(cp.kubectl), *args], env=env, input=stdin, text=True,
                                 capture_output=True, check=True)
            return out.stdout

        say(f"control plane up: {' '.join(kubectl('get', '--raw', '/version').split())}")
        print(f"KUBECONFIG={cp.kubeconfig()}\nKUBECTL={cp.kubectl}")
        kubectl("apply", "-k", str(REPO / "crds"))
        kubectl("apply", "-k", str(REPO / "manifests" / "policy"))  # the operator applies nothing without them
        kubectl("wait", "--for=condition=Established", "crd/featureflags.flagscheduler.dev",
                "crd/flagschedules.flagscheduler.dev", "crd/flagrollouts.flagscheduler.dev", "--timeout=30s")
        say("scheduler and flag server starting (console logs below)")
        sync_port = free_port()
        settings = {**env, "FLAG_SCHEDULER_LOG_FORMAT": "console", "FLAG_SCHEDULER_HEALTH_PORT": "0",
                    "FLAG_SCHEDULER_READY_PORT": "0",
                    "FLAG_SCHEDULER_METRICS_PORT": "0", "FLAG_SCHEDULER_LEASE_NAMESPACE": "default",
                    "FLAG_SCHEDULER_SYNC_PORT": str(sync_port), "FLAG_SCHEDULER_OFREP_PORT": "0",
                    "FLAG_SCHEDULER_SERVE_ADDRESS": "127.0.0.1"}
        operator = subprocess.Popen([sys.executable, "-m", "flag_scheduler"], env=settings)
        flag_server = subprocess.Popen([sys.executable, "-m", "flag_scheduler", "serve"], env=settings)
        stop = threading.Event()
        try:
            kubectl("apply", "-f", "-", stdin=FLAG)
            client = sdk_client(sync_port)
            # Due once the client is connected, however long the operator and client took to start.
            at = datetime.now(UTC) + timedelta(seconds=15)
            kubectl("apply", "-f", "-", stdin=SCHEDULE.format(at=at.strftime("%Y-%m-%dT%H:%M:%SZ")))
            say(f"before ({datetime.now(UTC):%H:%M:%S}Z), schedule due at {at:%H:%M:%S}Z")
            print(kubectl("get", "ff,fs", "-n", "default"))
            say(f"an application's OpenFeature client (flagd in-process, the flag server's sync port {sync_port}),"
                " once a second")
            printer = threading.Thread(target=print_every_second, args=(client, stop), daemon=True)
            printer.start()
            kubectl("wait", "--for=condition=Applied", "flagschedule/checkout-v2-go-live", "-n", "default",
                    "--timeout=60s")
            time.sleep(2.5)
            stop.set()
            printer.join()
            say(f"after ({datetime.now(UTC):%H:%M:%S}Z)")
            print(kubectl("get", "ff,fs", "-n", "default"))
            print(kubectl("get", "ff", "checkout-v2", "-n", "default", "-o",
                          "jsonpath=flag spec now: {.spec}{'\\n'}applied at: "
                          "{.metadata.annotations.flagscheduler\\.dev/last-applied-at}{'\\n'}"))
            if sys.stdin.isatty() and os.environ.get("CI", "").lower() not in ("1", "true"):
                say("demo running; try the kubectl line above with KUBECONFIG set. Ctrl-C to stop.")
                try:
                    operator.wait()
                except KeyboardInterrupt:
                    pass
        finally:
            stop.set()
            for process in (flag_server, operator):
                process.terminate()
            for process in (flag_server, operator):
                process.wait(timeout=15)
    say("stopped; nothing left running")


if __name__ == "__main__":
    main()
