"""Small real clients for the server tests: a WebSocket client speaking the msgpack mirror, gRPC stubs, ops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from vatlas_wire.v1 import (
    bundles_pb2_grpc,
    edits_pb2,
    mirror,
    render_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)
from websockets.asyncio.client import connect


def stroke_op(op_id: str, frame: int = 0, *, x: float = 28.0, color: tuple = (1.0, 0.0, 0.0, 1.0)) -> dict:
    """A small red stroke in frame space, mirror form (the default x crosses the tiny bundle's ROI on every frame)."""
    return {"id": op_id, "type": "stroke", "space": "frame", "frame": frame,
            "points": [[x, 10.0], [x + 20.0, 30.0]], "width": 4.0, "color": list(color)}


def stroke_proto(op_id: str, frame: int = 0, **kwargs: Any) -> edits_pb2.EditOp:
    return mirror.from_mirror(stroke_op(op_id, frame, **kwargs), edits_pb2.EditOp)


class WsClient:
    """asyncio WebSocket client: `hello` on connect, numbered requests, typed responses."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 1
        self.backlog: list[sessions_pb2.WsResponse] = []

    @classmethod
    async def connect(cls, url: str, token: str | None, *, hello: bool = True) -> WsClient:
        ws = await connect(url, max_size=128 * 1024 * 1024)
        client = cls(ws)
        if hello:
            resp = await client.call(hello=sessions_pb2.Hello(protocol_version=1, token=token or ""))
            assert resp.WhichOneof("result") == "welcome", resp
        return client

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, **call: Any) -> int:
        rid = self.next_id
        self.next_id += 1
        await self.ws.send(mirror.pack(sessions_pb2.WsRequest(request_id=rid, **call)))
        return rid

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 30.0) -> sessions_pb2.WsResponse:
        if self.backlog:
            return self.backlog.pop(0)
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        return mirror.unpack(data, sessions_pb2.WsResponse)  # type: ignore[return-value]

    async def recv_until(self, predicate: Callable[[sessions_pb2.WsResponse], bool],
                         timeout: float = 30.0) -> sessions_pb2.WsResponse:
        """The first response matching `predicate`; others are kept for later `recv` calls."""
        deadline = time.monotonic() + timeout
        for i, resp in enumerate(self.backlog):
            if predicate(resp):
                return self.backlog.pop(i)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching WebSocket response")
            data = await asyncio.wait_for(self.ws.recv(), remaining)
            resp = mirror.unpack(data, sessions_pb2.WsResponse)
            if predicate(resp):
                return resp  # type: ignore[return-value]
            self.backlog.append(resp)  # type: ignore[arg-type]

    async def call(self, timeout: float = 30.0, **call: Any) -> sessions_pb2.WsResponse:
        rid = await self.send(**call)
        return await self.recv_until(lambda r: r.request_id == rid, timeout)

    async def event(self, kind: str, timeout: float = 30.0,
                    where: Callable[[Any], bool] = lambda _: True) -> Any:
        """The next session event of one kind (snapshot, accepted, rejected, applied, presence, error)."""
        resp = await self.recv_until(
            lambda r: r.WhichOneof("result") == "event" and r.event.WhichOneof("kind") == kind
            and where(getattr(r.event, kind)), timeout)
        return getattr(resp.event, kind)


class GrpcStubs:
    """Sync stubs on one channel with the server token attached."""

    def __init__(self, target: str, token: str | None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.bundles = bundles_pb2_grpc.BundlesStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionsStub(self.channel)
        self.render = render_pb2_grpc.RenderStub(self.channel)

    def close(self) -> None:
        self.channel.close()


class AioStubs:
    """grpc.aio stubs on one channel with the server token attached."""

    def __init__(self, target: str, token: str | None) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.bundles = bundles_pb2_grpc.BundlesStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionsStub(self.channel)
        self.render = render_pb2_grpc.RenderStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class GrpcSession:
    """A participant on the gRPC Connect stream (grpc.aio): send messages, read events by kind."""

    def __init__(self, stubs: AioStubs) -> None:
        self.outbox: asyncio.Queue[sessions_pb2.ClientMessage | None] = asyncio.Queue()
        self.call = stubs.sessions.Connect(self._requests(), metadata=stubs.metadata)
        self.backlog: list[sessions_pb2.ServerEvent] = []

    async def _requests(self) -> Any:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            yield message

    def send(self, **kind: Any) -> None:
        self.outbox.put_nowait(sessions_pb2.ClientMessage(**kind))

    def send_op(self, op: dict) -> None:
        self.send(op=mirror.from_mirror(op, edits_pb2.EditOp))

    async def event(self, kind: str, timeout: float = 30.0, where: Callable[[Any], bool] = lambda _: True) -> Any:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.backlog):
            if ev.WhichOneof("kind") == kind and where(getattr(ev, kind)):
                return getattr(self.backlog.pop(i), kind)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} event")
            ev = await asyncio.wait_for(self.call.read(), remaining)
            if ev is grpc.aio.EOF:
                raise EOFError("the Connect stream ended")
            if ev.WhichOneof("kind") == kind and where(getattr(ev, kind)):
                return getattr(ev, kind)
            self.backlog.append(ev)

    async def close(self) -> None:
        self.outbox.put_nowait(None)
        self.call.cancel()
