"""Leader election on a ``coordination.k8s.io/v1`` Lease, with the official client's ``kubernetes.aio``.

The library's ``LeaderElection``/``LeaseLock`` do the Lease protocol (client-go's algorithm). What
it lacks, and this module adds:

- it lets a non-API error (connection refused while the API server restarts, a hung request)
  escape ``run()`` without stopping the leader's work; here every attempt is bounded by
  ``retry_period`` and any error counts as a failed renewal;
- it stops leading only after ``renew_deadline`` of failed attempts and the attempt in flight; here
  ``fresh()`` turns false ``renew_deadline`` after the *start* of the last successful renewal, and
  the operator checks it before every flag patch, so a leader that cannot renew stops applying
  before its Lease can expire for the others (``lease_duration`` after they saw that renewal);
- it campaigns once; here a replica that lost the Lease goes back to campaigning;
- it never gives the Lease back; here a leader that shuts down cleanly releases it, so a rolling
  update hands over in about one retry period instead of a full lease duration;
- it has no fencing token; here each term of leadership draws a random ``term`` that the operator
  writes to the flags it touches (see ``apply.py``): the Lease's ``leaseTransitions`` would do, but
  the library neither maintains nor exposes it;
- in kubernetes 37.0.2 ``LeaseLock.create`` passes ``pretty=True``, which the generated client
  refuses (``pretty`` must be a string), so no Lease could ever be created; ``_LeaseLock`` fixes it;
- it runs on the caller's event loop; here the election runs on an event loop of its own, in a
  thread of its own, with its own client and connections. On the operator's loop a renewal waits
  for its turn behind everything else that loop has to do: in a burst of 1,000 due schedules the
  loop lagged by seconds, every attempt ran out of its ``retry_period`` and the leader stood down
  mid-burst. In its own thread a renewal needs only the GIL, which Python hands over every few
  milliseconds. The leadership callbacks still run on the operator's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection.electionconfig import Config
from kubernetes.aio.leaderelection.leaderelection import LeaderElection
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock

from flag_scheduler import metrics
from flag_scheduler.config import Settings
from flag_scheduler.kube import TRANSPORT_ERRORS, describe
from flag_scheduler.logs import get_logger

log = get_logger()
T = TypeVar("T")


async def _or_exit(callback: Awaitable[None], what: str) -> None:
    """Run a leadership callback; if it fails, end the process so Kubernetes restarts it.

    The election library runs callbacks as fire-and-forget tasks: an exception would be lost and
    leave a replica that renews the Lease but never dispatches (or never stops). A restart is the
    honest outcome; the Lease then passes to a healthy replica.
    """
    try:
        await callback
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - anything here is a bug: crash loudly rather than limp on
        log.critical("leader.callback_failed", callback=what, error=describe(err), exc_info=True)
        sys.stdout.flush()
        os._exit(70)


class LeaseNamespaceMissing(SystemExit):
    """The Lease's namespace does not exist: the operator stops at once, saying what to do."""


async def check_lease_namespace(settings: Settings, api: client.ApiClient) -> None:
    """Stop (``LeaseNamespaceMissing``) if the Lease's namespace is missing; any other answer passes.

    A dry-run create of the Lease writes nothing, needs only the ``create`` the Role grants, and is
    refused with 404 only when the namespace is missing (409 when the Lease exists). Without this
    the election would log ``leader.create_failed`` forever and never apply anything.
    """
    body = client.V1Lease(metadata=client.V1ObjectMeta(name=settings.lease_name))
    try:
        await client.CoordinationV1Api(api).create_namespaced_lease(settings.lease_namespace, body, dry_run="All")
    except ApiException as err:
        if err.status != 404:
            return  # the election reports it (403: RBAC; 409: the Lease exists)
        ns = settings.lease_namespace
        log.error("leader.namespace_missing", lease=f"{ns}/{settings.lease_name}", error=describe(err))
        raise LeaseNamespaceMissing(
            f"the Lease namespace {ns!r} does not exist: create it (kubectl create namespace {ns}; "
            "`make run` and `make deploy` do) or set FLAG_SCHEDULER_LEASE_NAMESPACE to an existing namespace"
        ) from None
    except TRANSPORT_ERRORS:
        return  # not reachable yet: the election retries and reports


class _LeaseLock(LeaseLock):
    """``LeaseLock`` whose ``create`` works with the current generated client."""

    async def create(self, name: str, namespace: str, election_record: LeaderElectionRecord) -> bool:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException as err:
            log.warning("leader.create_failed", error=describe(err))
            return False
        return True


class _Election(LeaderElection):
    """``LeaderElection`` whose attempts are bounded in time and never raise."""

    def __init__(self, config: Config, on_renewed: Callable[[float], None]) -> None:
        super().__init__(config)
        self._on_renewed = on_renewed

    async def try_acquire_or_renew(self) -> bool:
        started = time.monotonic()
        try:
            ok = await asyncio.wait_for(super().try_acquire_or_renew(), self.election_config.retry_period)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure is a failed renewal, never a crash
            log.warning("leader.renew_failed", error=describe(err))
            return False
        if ok:
            self._on_renewed(started)
        return ok


class _LoopThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def call(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on this thread's loop and wait for it from the caller's loop (cancelling it with us)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)


class Leadership:
    """Campaigns for the Lease forever on a thread of its own; runs ``on_start``/``on_stop`` on the caller's loop.

    ``connect`` makes the Lease's own API client; it is called on the election's thread, whose loop
    the client then belongs to.
    """

    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], Awaitable[client.ApiClient]],
        on_start: Callable[[], Awaitable[None]],
        on_stop: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.identity = settings.identity
        self._connect = connect
        self._api: client.ApiClient | None = None
        self.lock: _LeaseLock | None = None
        self._on_start = on_start
        self._on_stop = on_stop
        self._renewed_at = float("-inf")
        self.leading = False
        self.term = uuid.uuid4().hex  # the fencing token: a new one each time this replica becomes leader
        self._thread: _LoopThread | None = None
        self._main: asyncio.AbstractEventLoop | None = None

    def fresh(self) -> bool:
        """True while this replica leads and its last renewal started less than renew_deadline ago."""
        return self.leading and time.monotonic() - self._renewed_at < self.settings.renew_deadline_seconds

    def _renewed(self, started: float) -> None:
        self._renewed_at = started

    async def run(self) -> None:
        """Campaign on the election's own thread until cancelled; the callbacks come back to this loop."""
        self._main = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = _LoopThread("leader-election")
        await self._thread.call(self._campaign())

    async def _campaign(self) -> None:
        """Campaign, lead until the Lease is lost, campaign again; forever (on the election's thread)."""
        s = self.settings
        if self._api is None:
            self._api = await self._connect()
            self.lock = _LeaseLock(s.lease_name, s.lease_namespace, s.identity, self._api)
        while True:
            config = Config(
                self.lock, s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds,
                self._started, self._stopped,
            )
            await _Election(config, self._renewed).run()
            await asyncio.sleep(s.retry_period_seconds)

    async def _on_main(self, callback: Awaitable[Any]) -> Any:
        """Run a leadership callback on the operator's loop, from the election's thread."""
        assert self._main is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(callback, self._main))

    async def _started(self) -> None:
        self.term = uuid.uuid4().hex
        self.leading = True
        metrics.IS_LEADER.set(1)
        log.info("leader.acquired", identity=self.identity, lease=f"{self.settings.lease_namespace}/{self.settings.lease_name}")
        await self._on_main(_or_exit(self._on_start(), "start"))

    async def _stopped(self) -> None:
        was_leading, self.leading = self.leading, False
        metrics.IS_LEADER.set(0)
        if was_leading:
            log.warning("leader.lost", identity=self.identity, lease=f"{self.settings.lease_namespace}/{self.settings.lease_name}")
        await self._on_main(_or_exit(self._on_stop(), "stop"))

    async def release(self) -> None:
        """Give the Lease back if we hold it (clean shutdown), so a follower takes over at once."""
        if self._thread is not None and self._api is not None:
            await self._thread.call(self._release())

    async def _release(self) -> None:
        if not self.leading or self._api is None:
            return
        self.leading = False
        metrics.IS_LEADER.set(0)
        s = self.settings
        leases = client.CoordinationV1Api(self._api)
        with contextlib.suppress(ApiException, *TRANSPORT_ERRORS):
            lease = await leases.read_namespaced_lease(s.lease_name, s.lease_namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                await asyncio.wait_for(
                    leases.replace_namespaced_lease(s.lease_name, s.lease_namespace, lease), s.retry_period_seconds,
                )
                log.info("leader.released", identity=self.identity)

    async def close(self) -> None:
        """Close the Lease's client and stop the election's thread (after ``release``)."""
        if self._thread is None:
            return
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._thread.call(self._api.close())
        await self._thread.stop()
        self._thread = None
