"""Fuzzing both transports with malformed messages: typed errors come back and other participants never notice.

Inputs: random bytes, random msgpack structures, valid requests with one value swapped for a wrong type, a
huge or non-finite number, an unknown key or a second oneof member, text frames and oversize frames
(WebSocket); random bytes on every gRPC method, in-band garbage on the Connect stream, ops with NaN, inf and
huge values, oversize gRPC messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import math
import random
import time
from pathlib import Path

import grpc
import msgpack
import numpy as np
import pytest
from conftest import TINY_BUNDLE, start_in_process_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from serve_helpers import AioStubs, GrpcSession, WsClient, stroke_op
from vatlas.server.doors import wire
from vatlas.server.session.limits import ServerLimits
from vatlas.v1 import bundles_pb2, render_pb2, sessions_pb2

MAX_MESSAGE = 1024 * 1024
MAX_UPLOAD = 256 * 1024
TYPED_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED",
               "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "ALREADY_EXISTS"}


@pytest.fixture(scope="module")
def small_server(tiny_models_dir: Path):
    server = start_in_process_server(tiny_models_dir, limits=ServerLimits(max_message_bytes=MAX_MESSAGE,
                                                                          max_upload_bytes=MAX_UPLOAD))
    yield server
    server.stop()


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind == 0:
        return rng.choice([0, -1, 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-999, 999)])
    if kind == 1:
        return rng.choice([math.nan, math.inf, -math.inf, 1e308, -0.0, 3.5e38, 1e-320, 0.5])
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return None
    if kind == 6:
        return "x" * rng.choice([1, 65, 5000])
    if kind == 7:
        return rng.choice(["stroke", "update", "delete", "frame", "atlas", "jpeg", "raw", "#ffffff"])
    if kind == 8:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 9:
        return [[random_value(rng, depth + 1), random_value(rng, depth + 1)] for _ in range(rng.randrange(1, 4))]
    return {rng.choice(["id", "type", "frame", "x", "set", "zz", "points"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def templates(session_id: str, token: str) -> list[dict]:
    return [
        {"render": {"session_id": session_id, "join_token": token, "frame": 1, "format": "jpeg", "quality": 80,
                    "scale": 0.5, "region": {"x": 0, "y": 0, "width": 16, "height": 16}}},
        {"session": {"op": stroke_op("fz")}},
        {"session": {"op": {"id": "fu", "type": "update", "target": "base", "set": {"width": 3.0}}}},
        {"session": {"presence": {"cursor": [1.0, 2.0], "frame": 1, "tool": "brush"}}},
        {"playback": {"session_id": session_id, "join_token": token, "fps": 30.0, "end_frame": 2}},
        {"create_session": {"bundle": TINY_BUNDLE}},
        {"bundle_info": {"name": TINY_BUNDLE}},
        {"session": {"undo": {}}},
    ]


def mutate(rng: random.Random, request: dict) -> object:
    """Swap one leaf for a random value, add an unknown key or a second oneof member."""
    request = copy.deepcopy(request)
    roll = rng.randrange(10)
    if roll == 0:
        request["render" if "render" not in request else "hello"] = {}
        return request
    if roll == 1:
        request[rng.choice(["teleport", "op", "x"])] = random_value(rng)
        return request
    node = request
    while True:
        key = rng.choice(list(node))
        if isinstance(node[key], dict) and node[key] and rng.random() < 0.7:
            node = node[key]
            continue
        node[key] = random_value(rng)
        return request


async def _session_with_one_member(stubs: AioStubs) -> tuple[sessions_pb2.SessionInfo, sessions_pb2.Join, GrpcSession]:
    """A new session on the tiny bundle and a gRPC member who has its snapshot."""
    info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                              metadata=stubs.metadata)
    join = sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token)
    member = GrpcSession(stubs)
    member.send(join=join)
    await member.event("snapshot")
    return info, join, member


def test_websocket_fuzz_gets_typed_errors_and_spares_others(small_server) -> None:
    rng = random.Random(7)

    async def scenario() -> None:
        stubs = AioStubs(small_server.grpc_target, small_server.token)
        info, join, bystander = await _session_with_one_member(stubs)
        bystander.send_op(stroke_op("base"))
        await bystander.event("accepted")
        fuzzer = await WsClient.connect(small_server.ws_url, small_server.token)
        await fuzzer.send(session=sessions_pb2.ClientMessage(join=join))
        await fuzzer.event("snapshot")
        errors = 0
        plans = templates(info.session_id, info.join_token)
        for i in range(160):
            roll = i % 5
            if roll == 0:
                frame: bytes | str = rng.randbytes(rng.randrange(0, 200))
            elif roll == 1:
                frame = msgpack.packb(random_value(rng), use_bin_type=True)
            elif roll == 2:
                frame = "text frame " + str(i) if i % 10 == 2 else msgpack.packb({"request_id": "nope"})
            else:
                frame = msgpack.packb({"request_id": 10_000 + i, **mutate(rng, rng.choice(plans))},
                                      use_bin_type=True)
            await fuzzer.send_raw(frame)
            await fuzzer.send(stop_playback=sessions_pb2.StopPlayback())
            ping = await fuzzer.send(list_sessions=sessions_pb2.ListSessionsRequest())
            while True:
                resp = await fuzzer.recv(timeout=30)
                kind = resp.WhichOneof("result")
                if kind == "error":
                    assert resp.error.code in TYPED_CODES and resp.error.message, resp
                    errors += 1
                elif kind == "event" and resp.event.WhichOneof("kind") in ("rejected", "error"):
                    ev = resp.event
                    err = ev.rejected.error if ev.WhichOneof("kind") == "rejected" else ev.error
                    assert err.code in TYPED_CODES, resp
                    errors += 1
                if resp.request_id == ping:
                    break
        assert errors >= 100  # almost every malformed frame got its typed error
        # an oversize frame closes only the fuzzer's connection (1009), everybody else carries on
        await fuzzer.send_raw(b"\x00" * (MAX_MESSAGE + 10))
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed in one of its forms
            for _ in range(50):
                await fuzzer.recv(timeout=10)
        assert fuzzer.ws.close_code == 1009
        bystander.send_op(stroke_op("after"))
        acc = await bystander.event("accepted", where=lambda a: a.op_id == "after")
        assert acc.seq > 1
        frame = await stubs.render.RenderFrame(render_pb2.RenderRequest(
            session_id=info.session_id, join_token=info.join_token, frame=0), metadata=stubs.metadata)
        assert frame.seq >= acc.seq
        await bystander.close()
        await stubs.close()

    asyncio.run(scenario())


def test_grpc_fuzz_gets_typed_statuses_and_spares_others(small_server) -> None:
    rng = random.Random(11)
    channel = grpc.insecure_channel(small_server.grpc_target)
    metadata = (("authorization", f"Bearer {small_server.token}"),)
    unary = ["/vatlas.v1.Bundles/ListBundles", "/vatlas.v1.Bundles/LoadBundle", "/vatlas.v1.Bundles/GetBundleInfo",
             "/vatlas.v1.Sessions/CreateSession", "/vatlas.v1.Sessions/ListSessions", "/vatlas.v1.Render/RenderFrame"]
    server_streaming = ["/vatlas.v1.Render/Playback", "/vatlas.v1.Render/Export", "/vatlas.v1.Bundles/StartFit"]
    allowed = {getattr(grpc.StatusCode, c) for c in TYPED_CODES} | {grpc.StatusCode.UNIMPLEMENTED}
    try:
        for i in range(90):
            payload = rng.randbytes(rng.randrange(0, 120))
            if i % 3 == 2:
                method = rng.choice(server_streaming)
                call = channel.unary_stream(method)
                try:
                    for _ in call(payload, metadata=metadata, timeout=20):
                        break
                except grpc.RpcError as exc:
                    assert exc.code() in allowed, (method, exc.code(), exc.details())
            else:
                method = rng.choice(unary)
                try:
                    channel.unary_unary(method)(payload, metadata=metadata, timeout=20)
                except grpc.RpcError as exc:
                    assert exc.code() in allowed, (method, exc.code(), exc.details())
        # oversize message: the library's own RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/vatlas.v1.Bundles/GetBundleInfo")(b"\x0a" + b"\xff\xff\x7f" + b"a" * (MAX_MESSAGE * 2),
                                                                     metadata=metadata, timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        listing = channel.unary_unary("/vatlas.v1.Bundles/ListBundles",
                                      request_serializer=bundles_pb2.ListBundlesRequest.SerializeToString,
                                      response_deserializer=bundles_pb2.ListBundlesResponse.FromString)
        assert listing(bundles_pb2.ListBundlesRequest(), metadata=metadata).bundles[0].name == TINY_BUNDLE
    finally:
        channel.close()


def test_connect_stream_fuzz_rejects_ops_in_band(small_server) -> None:
    rng = random.Random(5)

    async def scenario() -> None:
        stubs = AioStubs(small_server.grpc_target, small_server.token)
        info, join, other = await _session_with_one_member(stubs)
        fuzzer = GrpcSession(stubs)
        fuzzer.send(join=join)
        await fuzzer.event("snapshot")
        bad_values = [math.nan, math.inf, -math.inf, 3e38, -3e38, 1e7]
        sent = []
        for i in range(40):
            op = stroke_op(f"bad{i}")
            field = rng.choice(["width", "points", "color", "frame", "hardness", "type", "mode"])
            if field == "points":
                op["points"] = [[rng.choice(bad_values), 1.0]]
            elif field == "color":
                op["color"] = [rng.choice(bad_values)] * 4
            elif field == "frame":
                op["frame"] = rng.choice([-5, 10_000, 2**31 - 1])
            elif field == "type":
                op[field] = rng.choice(["", "teleport", "x" * 300])
            elif field == "mode":  # "" is proto3's unset, i.e. a valid default stroke
                op[field] = rng.choice(["teleport", "x" * 300])
            else:
                op[field] = rng.choice(bad_values)
            fuzzer.send_op(op)
            sent.append(op["id"])
        for op_id in sent:
            rej = await fuzzer.event("rejected", where=lambda r, op_id=op_id: r.op_id == op_id)
            assert rej.error.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), rej
        # raw garbage on the stream: this client's stream ends with a typed error, the other one carries on
        raw = stubs.channel.stream_stream("/vatlas.v1.Sessions/Connect")

        async def garbage():
            yield sessions_pb2.ClientMessage(join=join).SerializeToString()
            yield b"\xff\xff\xff"

        call = raw(garbage(), metadata=stubs.metadata)
        seen = []
        async for item in call:
            seen.append(sessions_pb2.ServerEvent.FromString(item))
        kinds = [e.WhichOneof("kind") for e in seen]
        assert kinds[0] == "snapshot" and "error" in kinds
        assert next(e.error for e in seen if e.WhichOneof("kind") == "error").code == "INVALID_ARGUMENT"
        other.send_op(stroke_op("fine"))
        assert (await other.event("accepted", where=lambda a: a.op_id == "fine")).seq == 1
        await other.close()
        await fuzzer.close()
        await stubs.close()

    asyncio.run(scenario())


def test_wire_never_raises_anything_but_wire_error() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        obj = random_value(rng)
        with contextlib.suppress(wire.WireError):  # anything else escaping fails the test
            wire.from_mirror(obj if isinstance(obj, dict) else {"request_id": obj}, sessions_pb2.WsRequest)


def test_upload_over_the_limit_is_refused_and_removed(small_server) -> None:
    from serve_helpers import GrpcStubs

    stubs = GrpcStubs(small_server.grpc_target, small_server.token)
    try:
        chunks = [bundles_pb2.UploadChunk(filename="big.mp4", data=b"x" * (100 * 1024)) for _ in range(4)]
        with pytest.raises(grpc.RpcError) as info:
            stubs.bundles.UploadVideo(iter(chunks), metadata=stubs.metadata)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        uploads = small_server.core.jobs.work_dir / "uploads"
        assert not any(uploads.glob("*/big.mp4"))
        ok = stubs.bundles.UploadVideo(iter([chunks[0], bundles_pb2.UploadChunk(data=chunks[1].data, last=True)]),
                                       metadata=stubs.metadata)
        assert ok.bytes == 200 * 1024
    finally:
        stubs.close()


def _big_png() -> bytes:
    """4096 x 4096, some 75 KB: decoded it is 64 MB, and 256 MB as a float image."""
    img = np.zeros((4096, 4096, 4), np.uint8)
    img[..., 1], img[..., 3] = 200, 255
    img[::64, :, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_hostile_raster_ops_are_answered_fast_and_spare_everyone(small_server) -> None:
    """H1-H3 through a real server: the huge polygon, strokes across the world, a 4096 x 4096 paste and an op
    over the raster budget each get their answer quickly; nothing of a refused op is left, and every
    participant's ops and undo go on working."""
    rng = np.random.default_rng(0)
    hostile = [
        ({"id": "h-poly", "type": "adjustment", "space": "frame", "frame": 0,
          "points": [[0, 0], [1e6, 0], [0, 1e6]], "exposure": 0.5}, "accepted"),
        ({**stroke_op("h-wide"), "points": [[-1e6, 10.0], [1e6, 10.0]]}, "accepted"),
        ({**stroke_op("h-1000"), "points": [[-1000.0, 10.0], [1000.0, 10.0]]}, "accepted"),
        ({"id": "h-png", "type": "texture", "space": "frame", "frame": 0, "rect": [0, 0, 64, 48],
          "image": _big_png()}, "accepted"),
        ({**stroke_op("h-budget"), "points": rng.uniform(0, 64, (4096, 2)).tolist(), "width": 400.0}, "rejected"),
    ]

    async def answer(member: GrpcSession, op_id: str) -> tuple[str, object]:
        """The op's OpAccepted or OpRejected, whichever comes (other events stay in the backlog)."""

        def mine(ev: sessions_pb2.ServerEvent) -> bool:
            kind = ev.WhichOneof("kind")
            return kind in ("accepted", "rejected") and getattr(ev, kind).op_id == op_id

        for i, ev in enumerate(member.backlog):
            if mine(ev):
                del member.backlog[i]
                return ev.WhichOneof("kind"), getattr(ev, ev.WhichOneof("kind"))
        while True:
            ev = await asyncio.wait_for(member.call.read(), 60)
            assert ev is not grpc.aio.EOF
            if mine(ev):
                return ev.WhichOneof("kind"), getattr(ev, ev.WhichOneof("kind"))
            member.backlog.append(ev)

    async def scenario() -> None:
        stubs = AioStubs(small_server.grpc_target, small_server.token)
        info, join, bystander = await _session_with_one_member(stubs)
        attacker = GrpcSession(stubs)
        attacker.send(join=join)
        await attacker.event("snapshot")
        engine = small_server.core._session(info.session_id).engine
        for op, expected in hostile:
            start = time.monotonic()
            attacker.send_op(op)
            kind, event = await answer(attacker, op["id"])
            print(f"\n{op['id']}: {kind} in {(time.monotonic() - start) * 1e3:.0f} ms")
            assert kind == expected, event
            if kind == "rejected":
                assert event.error.code == "RESOURCE_EXHAUSTED", event
                assert engine.get(op["id"]) is None
        # The 4096 x 4096 paste keeps what the 64 x 64 atlas shows of it, not 256 MB.
        kept = engine._objects["h-png"].atlas_op.nbytes()
        print(f"4096x4096 paste keeps {kept} B; the session's edits {engine.edit_bytes()} B")
        assert kept < 256 * 1024 and engine.edit_bytes() < 1024 * 1024
        # Everybody carries on: strokes, textures and undo from both participants.
        bystander.send_op(stroke_op("b-stroke", x=5.0))
        bystander.send_op({"id": "b-tex", "type": "texture", "space": "frame", "frame": 1, "rect": [4, 4, 8, 8],
                           "image": _small_png()})
        for op_id in ("b-stroke", "b-tex"):
            assert (await answer(bystander, op_id))[0] == "accepted"
        attacker.send_op(stroke_op("h-budget", x=30.0))  # the refused id is free: nothing of it was kept
        assert (await answer(attacker, "h-budget"))[0] == "accepted"
        for member, target in ((bystander, "b-tex"), (attacker, "h-budget"), (attacker, "h-png")):
            member.send(undo=sessions_pb2.Undo())
            undone = await member.event("applied", where=lambda a, target=target: a.op.target == target)
            assert undone.op.type == "delete"
        assert [o["id"] for o in engine.objects()] == ["h-poly", "h-wide", "h-1000", "b-stroke"]
        frame = await stubs.render.RenderFrame(render_pb2.RenderRequest(
            session_id=info.session_id, join_token=info.join_token, frame=0), metadata=stubs.metadata)
        assert frame.seq == small_server.core._session(info.session_id).seq
        await attacker.close()
        await bystander.close()
        await stubs.close()

    asyncio.run(scenario())


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 4), 200, np.uint8)).save(buf, "PNG")
    return buf.getvalue()
