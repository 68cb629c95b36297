"""flagd's sync protocol (``flagd.sync.v1.FlagSyncService``, gRPC) for in-process providers and flagd.

``SyncFlags`` streams the selected namespace's whole flag set at once and again after every change
of a served definition, until the server shuts down and ends it with ``UNAVAILABLE`` (retryable);
``FetchAllFlags`` answers it once; ``GetMetadata`` (deprecated upstream, still called by the
providers) answers an empty object. The selector names the namespace (bare, or
``flagSetId=<namespace>``): the ``flagd-selector`` header, else the request's ``selector`` field
(providers send both).

The messages and the service come from the generated code that ``openfeature-provider-flagd``
ships (``openfeature.schemas.protobuf.flagd.sync.v1``), the stubs the providers themselves use.
Clients may ping every 10 s on idle streams (flagd's Go provider pings every 30 s; gRPC's default
policy would answer that with GOAWAY), and the server pings idle peers so a vanished client's
stream is closed and leaves the gauge.

Bounded (settings in ``config.py``): calls per replica (over it: ``RESOURCE_EXHAUSTED``, from
gRPC's own limit), streams per connection (HTTP/2 ``MAX_CONCURRENT_STREAMS``: the client queues
the rest), connection age (``GOAWAY``, then a grace period: clients reconnect, through the
Service, possibly to another replica) and request size. A snapshot is serialized once and the same
bytes go to every stream, so a stream costs the same however many flags its namespace has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.struct_pb2 import Struct
from grpc import aio
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from flag_scheduler.config import Settings
from flag_scheduler.serving.flag_definitions import selected_namespace
from flag_scheduler.serving.flag_store import FlagStore
from flag_scheduler.logs import get_logger
from flag_scheduler.metrics import SYNC_PUSHES, SYNC_STREAMS

log = get_logger()

SELECTOR_HEADER = "flagd-selector"
SERVICE = "flagd.sync.v1.FlagSyncService"
SHUTTING_DOWN = "flag server shutting down: reconnect (through the Service, to another replica)"
MAX_REQUEST_BYTES = 16 * 1024  # a request carries a selector and a provider id: a few bytes
LOGGED_CHARS = 128  # of a client-chosen string (provider id, peer) in a log line


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The channel arguments that bound what one client can hold (see the README, "Bounded serving")."""
    return [
        ("grpc.so_reuseport", 0),  # a second process on the same port must fail, not share it silently
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_concurrent_streams", settings.sync_max_streams_per_connection),
        ("grpc.max_connection_age_ms", int(settings.sync_max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.sync_max_connection_age_grace_seconds * 1000)),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ]


def _encode_sync(configuration: str) -> bytes:
    return sync_pb2.SyncFlagsResponse(flag_configuration=configuration).SerializeToString()


class FlagSync(sync_pb2_grpc.FlagSyncServiceServicer):
    """The service: every replica answers from its own warm store; no leadership needed."""

    def __init__(self, store: FlagStore) -> None:
        self.store = store

    async def SyncFlags(  # noqa: N802 - the protocol's name
        self, request: sync_pb2.SyncFlagsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Send the flag set now and after each change, until the client leaves or the server closes."""
        namespace = await _namespace(request.selector, context)
        SYNC_STREAMS.inc()
        # At debug: a client may open thousands of streams, each with a provider id of its choosing.
        log.debug("sync.stream_opened", namespace=namespace, peer=context.peer()[:LOGGED_CHARS],
                  provider_id=request.provider_id[:LOGGED_CHARS])
        try:
            sent = None
            while not self.store.closed:
                snap = self.store.snapshot(namespace)
                if snap.etag != sent:
                    # Already serialized, once per snapshot: every stream shares the same bytes.
                    yield snap.encoded("sync", _encode_sync)
                    sent = snap.etag
                    SYNC_PUSHES.inc()
                await snap.replaced.wait()
            # A server going away ends streams UNAVAILABLE, not OK: the JS provider takes an OK end
            # as the end of the story and never reconnects, while every provider retries UNAVAILABLE.
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        finally:
            SYNC_STREAMS.dec()
            log.debug("sync.stream_closed", namespace=namespace, peer=context.peer()[:LOGGED_CHARS])

    async def FetchAllFlags(  # noqa: N802
        self, request: sync_pb2.FetchAllFlagsRequest, context: aio.ServicerContext
    ) -> sync_pb2.FetchAllFlagsResponse:
        """The flag set, once."""
        namespace = await _namespace(request.selector, context)
        return sync_pb2.FetchAllFlagsResponse(flag_configuration=self.store.snapshot(namespace).configuration)

    async def GetMetadata(  # noqa: N802
        self, request: sync_pb2.GetMetadataRequest, context: aio.ServicerContext
    ) -> sync_pb2.GetMetadataResponse:
        """No static context: providers add what this returns to every evaluation."""
        return sync_pb2.GetMetadataResponse(metadata=Struct())


async def _namespace(field: str, context: aio.ServicerContext) -> str:
    """The selected namespace; INVALID_ARGUMENT naming the setting when there is none or it is no name."""
    header = dict(context.invocation_metadata() or ()).get(SELECTOR_HEADER)
    namespace, problem = selected_namespace(header if header is not None else field)
    if problem:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"selector: {problem}")
    return namespace


def _handlers(service: FlagSync) -> grpc.GenericRpcHandler:
    """The generated service's handlers, except that SyncFlags yields bytes already encoded."""
    methods = {
        "SyncFlags": grpc.unary_stream_rpc_method_handler(
            service.SyncFlags, request_deserializer=sync_pb2.SyncFlagsRequest.FromString,
            response_serializer=bytes,
        ),
        "FetchAllFlags": grpc.unary_unary_rpc_method_handler(
            service.FetchAllFlags, request_deserializer=sync_pb2.FetchAllFlagsRequest.FromString,
            response_serializer=sync_pb2.FetchAllFlagsResponse.SerializeToString,
        ),
        "GetMetadata": grpc.unary_unary_rpc_method_handler(
            service.GetMetadata, request_deserializer=sync_pb2.GetMetadataRequest.FromString,
            response_serializer=sync_pb2.GetMetadataResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start_sync_server(store: FlagStore, settings: Settings) -> aio.Server:
    """Serve ``FlagSyncService`` on the sync port; SystemExit naming the setting if the port is taken."""
    address, port = settings.serve_address, settings.sync_port
    server = aio.server(options=server_options(settings), maximum_concurrent_rpcs=settings.sync_max_streams)
    server.add_generic_rpc_handlers((_handlers(FlagSync(store)),))
    try:
        bound = server.add_insecure_port(f"{address}:{port}")
    except RuntimeError as err:
        bound, cause = 0, err
    else:
        cause = None
    if not bound:
        raise SystemExit(f"FLAG_SCHEDULER_SYNC_PORT: cannot listen on {address}:{port} ({cause or 'in use'})")
    await server.start()
    log.info("sync.serving", address=address, port=port, max_streams=settings.sync_max_streams,
             max_streams_per_connection=settings.sync_max_streams_per_connection)
    return server
