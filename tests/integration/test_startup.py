"""Start-up lists each kind once and misses nothing: what changes between the LIST and the WATCH is seen.

The operator runs as a process and is frozen by a failpoint (``start.after-list``) after it has
listed every kind and before its watches open. Meanwhile a flag and a schedule are created, one
listed schedule (due in an hour) is moved to now and another cancelled. Once resumed, the operator
applies the new and the moved schedule and cancels the cancelled one: its watches start from the
LISTs' resourceVersions, so nothing in the gap is lost (a missed event would leave a schedule
Pending for the hour).
"""

from __future__ import annotations

import signal
from pathlib import Path

from controlplane import ControlPlane
from operator_harness import Cluster, OperatorProcess, in_seconds, rfc3339

class FrozenAfterList(OperatorProcess):
    """The operator, started until it freezes between its LISTs and its watches."""

    started_event = "failpoint.stopped"


def test_what_changes_between_the_list_and_the_watch_is_scheduled(
    cluster: Cluster, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cluster.flag("early", enabled=False, rollout=10)
    cluster.schedule("move-me", "early", in_seconds(3600), {"rolloutPercentage": 30})
    cluster.schedule("cancel-me", "early", in_seconds(3600), {"enabled": True})
    operator = FrozenAfterList(control_plane.kubeconfig(), [namespace], tmp_path / "operator.log",
                               FLAG_SCHEDULER_FAILPOINTS="start.after-list")
    try:
        operator.start()
        assert "operator.started" not in operator.log_path.read_text()
        cluster.flag("late", enabled=False)  # created: the watch's ADDED
        cluster.schedule("late-on", "late", in_seconds(2), {"enabled": True})
        cluster.patch_schedule("move-me", {"scheduledAt": rfc3339(in_seconds(2))})  # changed: MODIFIED
        cluster.patch_schedule("cancel-me", {"cancelled": True})
        operator.send(signal.SIGCONT)

        assert cluster.wait_phase("late-on", "Applied")["retryCount"] == 0
        assert cluster.get_flag("late")["spec"]["enabled"] is True
        cluster.wait_phase("move-me", "Applied")
        cluster.wait_phase("cancel-me", "Cancelled")
        early = cluster.get_flag("early")["spec"]
        assert (early["enabled"], early["rolloutPercentage"]) == (False, 30)
        started = next(line for line in operator.log_lines() if line.get("event") == "operator.started")
        assert started["live_schedules"] == 2  # what the LIST saw: the rest came through the watch
    finally:
        operator.stop()


class _Access:
    """Every namespace readable (what the informer reports to, not under test here)."""

    def __init__(self, namespace: str) -> None:
        self.namespaces = [namespace]

    async def report(self, namespace: str, err: Exception) -> None:
        raise AssertionError(f"{namespace} refused: {err}")

    def readable(self, namespace: str | None) -> None:
        pass


async def test_an_api_server_that_refuses_the_first_lists_selector_is_listed_whole(
    cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    # A CRD from before status.phase was selectable answers the start-up LIST's selector with 400:
    # the real API server's answer to a field it does not offer, and the informer lists it all.
    from kubernetes.aio import client, config
    from kubernetes.aio.client.exceptions import ApiException

    from flag_scheduler.kube import Kube
    from flag_scheduler.scheduling.informer import Informer

    cluster.schedule("one", "f", in_seconds(3600), {"enabled": True})
    cluster.schedule("two", "f", in_seconds(7200), {"enabled": True})
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(control_plane.kubeconfig()), client_configuration=configuration)
    kube = Kube(client.ApiClient(configuration), "test")
    try:
        not_offered = "spec.scheduledAt!=never"
        try:
            async for _ in kube.list_pages("flagschedules", namespace, field_selector=not_offered):
                raise AssertionError("the API server took a selector on a field the CRD does not offer")
        except ApiException as err:
            assert err.status == 400 and "field label not supported" in (err.body or "")
        seen: list[str] = []
        informer = Informer(kube, _Access(namespace), "flagschedules",  # type: ignore[arg-type]
                            lambda kind, body: seen.append(body["metadata"]["name"]), not_offered)
        await informer.load()
        assert sorted(seen) == ["one", "two"] and informer.complete.is_set()
    finally:
        await kube.close()
