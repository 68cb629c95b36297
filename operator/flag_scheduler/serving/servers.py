"""The flag server's two listeners: flagd sync (gRPC) and OFREP (HTTP), on one store.

Every flag-server replica serves the same: the store is fed by each replica's own watch, and
serving is read-only. On shutdown the store wakes every sync stream, which ends with status
``UNAVAILABLE`` (providers retry it, through the Service, on another replica), then the servers stop
(gRPC sends GOAWAY), giving calls in flight a moment to finish.
"""

from __future__ import annotations

from grpc import aio

from flag_scheduler.config import Settings
from flag_scheduler.serving.flag_store import FlagStore
from flag_scheduler.http_server import Listener
from flag_scheduler.logs import get_logger
from flag_scheduler.serving.ofrep import start_ofrep_server
from flag_scheduler.serving.sync import start_sync_server

log = get_logger()

GRACE_SECONDS = 2.0


class Serving:
    """The sync and OFREP servers of one replica (either may be off: port 0)."""

    def __init__(self, store: FlagStore) -> None:
        self.store = store
        self.sync: aio.Server | None = None
        self.ofrep: Listener | None = None

    @classmethod
    async def start(cls, settings: Settings, store: FlagStore) -> Serving:
        """Listen on the configured ports; SystemExit naming the setting if one is taken."""
        serving = cls(store)
        try:
            if settings.sync_port:
                serving.sync = await start_sync_server(store, settings)
            if settings.ofrep_port:
                serving.ofrep = await start_ofrep_server(store, settings)
        except BaseException:
            await serving.close()
            raise
        return serving

    async def close(self) -> None:
        """End every sync stream cleanly, then stop both servers."""
        self.store.close()
        if self.sync is not None:
            await self.sync.stop(GRACE_SECONDS)
        if self.ofrep is not None:
            await self.ofrep.close()
        log.info("serving.stopped")
