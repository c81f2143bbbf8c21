"""The gRPC front door (grpc.aio): Bundles, Sessions and Render services over the session core.

Every vatlas.v1 call needs `authorization: Bearer <token>` metadata when the server has a token; a
`vatlas-protocol` metadata value, when sent, must be the current protocol version. Health checking
(`grpc.health.v1.Health`) and reflection are on and need no token. Core errors become gRPC status codes with
their message; op rejections travel in-band as `OpRejected` on the Connect stream.

Render calls are coalesced per client when the client names itself with `vatlas-client-id` metadata: a
RenderFrame still waiting when the same client sends a newer one fails with ABORTED (latest request wins).
Calls without that metadata are never coalesced with each other. Every Playback call is its own viewer.
Rate limits never look at the client id: they are per connection and per client address (L2).

Connections: grpc.aio has no hook where a new connection could be refused by its address, so the door caps
what it can: connections in all (`grpc.max_allowed_incoming_connections`), connections without calls are
closed after `grpc_idle_seconds`, and calls in flight per client address (`max_grpc_calls_per_address`,
RESOURCE_EXHAUSTED beyond). A per-address *connection* cap needs a reverse proxy in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from vatlas.server.doors.auth import bearer, check_protocol, check_token
from vatlas.server.errors import INTERNAL_MESSAGE, CoreError
from vatlas.server.session.core import ServerCore
from vatlas.server.session.viewing import Viewer
from vatlas_wire.v1 import (
    bundles_pb2,
    bundles_pb2_grpc,
    render_pb2,
    render_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext

SERVICE_NAMES = (
    bundles_pb2.DESCRIPTOR.services_by_name["Bundles"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["Sessions"].full_name,
    render_pb2.DESCRIPTOR.services_by_name["Render"].full_name,
)


class _Door:
    def __init__(self, core: ServerCore, token: str | None) -> None:
        self.core = core
        self.token = token

    async def check(self, context: grpc.aio.ServicerContext) -> None:
        """Token and protocol checks shared by every call."""
        meta = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            check_token(self.token, bearer(meta.get("authorization", "")))
            if "vatlas-protocol" in meta:
                try:
                    version = int(meta["vatlas-protocol"])
                except ValueError:
                    version = -1
                check_protocol(version)
        except CoreError as exc:
            await abort(context, exc)

    @staticmethod
    def client_key(context: grpc.aio.ServicerContext) -> str:
        """The render coalescing slot: the client id within its connection (ids only group a client's own
        calls: a chosen id can never reach another connection's slot); without one each call is its own."""
        meta = dict(context.invocation_metadata() or ())
        client = meta.get("vatlas-client-id")
        if isinstance(client, str) and client:
            return f"grpc:{context.peer()}:{client[:128]}"
        return f"grpc-call:{id(context)}"

    @staticmethod
    def viewer(context: grpc.aio.ServicerContext) -> Viewer:
        """Rate limits and GPU share (L2): per connection (the peer's address and port) and per client address
        (every gRPC call carries the server token, so the address is the identity); never the client id."""
        peer = context.peer() or "?"
        return Viewer(f"grpc-peer:{peer}", ("grpc", peer_address(peer)))


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _ = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer


async def abort(context: grpc.aio.ServicerContext, exc: CoreError) -> None:
    await context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), exc.message)


async def answer(context: grpc.aio.ServicerContext, call: Callable[[], Any]) -> Any:
    """A unary RPC's reply: call()'s result, awaited when it is awaitable; a CoreError aborts with its status."""
    try:
        result = call()
        return await result if inspect.isawaitable(result) else result
    except CoreError as exc:
        await abort(context, exc)
        raise


async def stream(context: grpc.aio.ServicerContext, start: Callable[[], Awaitable[AsyncIterator[Any]]]
                 ) -> AsyncIterator[Any]:
    """A server-streaming RPC's replies: the stream start() opens, closed with the call (a cancelled call ends
    it at once); a CoreError, on opening or later, aborts with its status."""
    try:
        replies = await start()
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield reply
    except CoreError as exc:
        await abort(context, exc)


class BundlesDoor(_Door, bundles_pb2_grpc.BundlesServicer):
    async def ListBundles(self, request: bundles_pb2.ListBundlesRequest, context: Context) -> bundles_pb2.ListBundlesResponse:
        await self.check(context)
        return bundles_pb2.ListBundlesResponse(bundles=self.core.list_bundles())

    async def LoadBundle(self, request: bundles_pb2.LoadBundleRequest, context: Context) -> bundles_pb2.BundleInfo:
        await self.check(context)
        return await answer(context, lambda: self.core.load_bundle(request.name))

    async def GetBundleInfo(self, request: bundles_pb2.GetBundleInfoRequest, context: Context) -> bundles_pb2.BundleInfo:
        await self.check(context)
        return await answer(context, lambda: self.core.bundle_info(request.name))

    async def UploadVideo(self, request_iterator: AsyncIterator[bundles_pb2.UploadChunk], context: Context) -> bundles_pb2.UploadResult:
        await self.check(context)
        return await answer(context, lambda: self.core.jobs.upload(request_iterator))

    async def StartFit(self, request: bundles_pb2.StartFitRequest, context: Context) -> AsyncIterator[bundles_pb2.FitProgress]:
        await self.check(context)
        async for event in stream(context, lambda: self.core.jobs.start_fit(request)):
            yield event

    async def GetUploadFrame(self, request: bundles_pb2.UploadFrameRequest, context: Context) -> bundles_pb2.UploadFrame:
        await self.check(context)
        return await answer(context, lambda: self.core.jobs.upload_frame(request))

    async def ListFits(self, request: bundles_pb2.ListFitsRequest, context: Context) -> bundles_pb2.ListFitsResponse:
        await self.check(context)
        return self.core.jobs.list_fits()

    async def CancelFit(self, request: bundles_pb2.CancelFitRequest, context: Context) -> bundles_pb2.FitInfo:
        await self.check(context)
        return await answer(context, lambda: self.core.jobs.cancel(request))

    async def AttachFit(self, request: bundles_pb2.AttachFitRequest, context: Context) -> AsyncIterator[bundles_pb2.FitProgress]:
        await self.check(context)
        async for event in stream(context, lambda: self.core.jobs.attach(request)):
            yield event


class SessionsDoor(_Door, sessions_pb2_grpc.SessionsServicer):
    async def CreateSession(self, request: sessions_pb2.CreateSessionRequest, context: Context) -> sessions_pb2.SessionInfo:
        await self.check(context)
        return await answer(context, lambda: self.core.create_session(request))

    async def ListSessions(self, request: sessions_pb2.ListSessionsRequest, context: Context) -> sessions_pb2.ListSessionsResponse:
        await self.check(context)
        return sessions_pb2.ListSessionsResponse(sessions=self.core.list_sessions())

    async def Connect(self, request_iterator: AsyncIterator[sessions_pb2.ClientMessage], context: Context) -> AsyncIterator[sessions_pb2.ServerEvent]:
        # The join is read before the credentials are checked: a call ended before the client's first message
        # was written makes grpc.aio report INTERNAL ("Internal error from Core") to that client instead of our
        # status (grpc/grpc#36066). One message is bounded by the channel's maximum message size.
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        except CoreError as exc:
            await abort(context, exc)
        await self.check(context)
        if first.WhichOneof("kind") != "join":
            await abort(context, CoreError("INVALID_ARGUMENT", "the first message on Connect must be join"))
        try:
            participant = await self.core.join(first.join)
        except CoreError as exc:
            await abort(context, exc)
            return

        async def read() -> None:
            try:
                async for message in requests:
                    if not await self.core.handle(participant, message):
                        break
            except CoreError as exc:  # an undecodable message: tell this client, end only its stream
                participant.send(sessions_pb2.ServerEvent(error=_err(exc.code, exc.message)))
            self.core.leave(participant)

        reader = asyncio.create_task(read())
        try:
            while True:
                event = await participant.events.get()
                if event is None:
                    break
                yield event
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
                await reader
            self.core.leave(participant)


def _err(code: str, message: str) -> Any:
    from vatlas_wire.v1 import common_pb2

    return common_pb2.Error(code=code, message=message)


class RenderDoor(_Door, render_pb2_grpc.RenderServicer):
    async def RenderFrame(self, request: render_pb2.RenderRequest, context: Context) -> render_pb2.RenderedFrame:
        await self.check(context)
        return await answer(context, lambda: self.core.viewing.render(self.client_key(context), request,
                                                              viewer=self.viewer(context)))

    async def Playback(self, request: render_pb2.PlaybackRequest, context: Context) -> AsyncIterator[render_pb2.RenderedFrame]:
        await self.check(context)
        viewer = self.viewer(context)
        async for frame in stream(context, lambda: self.core.viewing.playback(f"grpc-playback:{id(context)}", request,
                                                                     viewer=viewer)):
            yield frame

    async def Export(self, request: render_pb2.ExportRequest, context: Context) -> AsyncIterator[render_pb2.ExportEvent]:
        await self.check(context)
        async for event in stream(context, lambda: self.core.jobs.export(request)):
            yield event


class Undecodable:
    """Stands in for a request message whose bytes did not parse (answered with INVALID_ARGUMENT)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _safe_deserializer(cls: Any) -> Any:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
            return Undecodable(f"cannot decode {cls.DESCRIPTOR.full_name}: {exc}")

    return deserialize


async def _checked_stream(requests: Any) -> AsyncIterator[Any]:
    async for item in requests:
        if isinstance(item, Undecodable):
            raise CoreError("INVALID_ARGUMENT", item.error)
        yield item


async def _fail(context: Context, exc: BaseException) -> None:
    """Turn whatever a handler raised into a typed status: never UNKNOWN, never exception text."""
    if isinstance(exc, CoreError):
        await abort(context, exc)
    log.error("gRPC call failed", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


# what a handler may raise that must pass through untouched: grpc's own abort and cancellation
_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError)


class CallCounter:
    """gRPC calls in flight per client address (the part of M3 grpc.aio lets a server enforce)."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.by_address: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def call(self, context: Context) -> AsyncIterator[None]:
        address = peer_address(context.peer() or "?")
        if self.by_address.get(address, 0) >= self.per_address:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"more than {self.per_address} calls in flight from one address")
        self.by_address[address] = self.by_address.get(address, 0) + 1
        try:
            yield
        finally:
            self.by_address[address] -= 1
            if not self.by_address[address]:
                del self.by_address[address]


@contextlib.asynccontextmanager
async def _guarded(context: Context, counter: CallCounter) -> AsyncIterator[None]:
    """One call's body: counted against its address's calls in flight, any failure turned into a typed status
    (see `_fail`)."""
    try:
        async with counter.call(context):
            yield
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - see _fail
        await _fail(context, exc)


async def _decoded(request: Any, context: Context) -> None:
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)


def _wrap(behaviour: Any, client_streaming: bool, server_streaming: bool, counter: CallCounter) -> Any:
    """Turn undecodable requests into INVALID_ARGUMENT before the servicer sees them, and any failure into a
    typed status; every call counts against its address's calls in flight (`_guarded`)."""
    if client_streaming and server_streaming:
        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            async with _guarded(context, counter):
                async for item in behaviour(_checked_stream(requests), context):
                    yield item
        return stream_stream
    if client_streaming:
        async def stream_unary(requests: Any, context: Context) -> Any:
            async with _guarded(context, counter):
                return await behaviour(_checked_stream(requests), context)
        return stream_unary
    if server_streaming:
        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await _decoded(request, context)
            async with _guarded(context, counter):
                async for item in behaviour(request, context):
                    yield item
        return unary_stream

    async def unary_unary(request: Any, context: Context) -> Any:
        await _decoded(request, context)
        async with _guarded(context, counter):
            return await behaviour(request, context)
    return unary_unary


def checked_handler(servicer: Any, service: Any, counter: CallCounter) -> grpc.GenericRpcHandler:
    """Method handlers for a service built from its descriptor, with lenient decoding (see `_wrap`)."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in service.methods:
        in_cls = message_factory.GetMessageClass(method.input_type)
        out_cls = message_factory.GetMessageClass(method.output_type)
        streaming = (bool(method.client_streaming), bool(method.server_streaming))
        handlers[method.name] = factories[streaming](
            _wrap(getattr(servicer, method.name), *streaming, counter),
            request_deserializer=_safe_deserializer(in_cls),
            response_serializer=out_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def start_grpc(core: ServerCore, host: str, port: int, token: str | None) -> tuple[grpc.aio.Server, int, Any]:
    """Start the gRPC server; returns (server, bound port, health servicer)."""
    limits = core.limits
    size = limits.max_message_bytes
    server = grpc.aio.server(maximum_concurrent_rpcs=limits.max_concurrent_rpcs, options=[
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
        ("grpc.max_allowed_incoming_connections", limits.max_grpc_connections),
        ("grpc.max_connection_idle_ms", int(limits.grpc_idle_seconds * 1000)),
    ])
    counter = CallCounter(limits.max_grpc_calls_per_address)
    server.add_generic_rpc_handlers((
        checked_handler(BundlesDoor(core, token), bundles_pb2.DESCRIPTOR.services_by_name["Bundles"], counter),
        checked_handler(SessionsDoor(core, token), sessions_pb2.DESCRIPTOR.services_by_name["Sessions"], counter),
        checked_handler(RenderDoor(core, token), render_pb2.DESCRIPTOR.services_by_name["Render"], counter),
    ))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
