"""Fuzzing both transports with malformed messages: typed errors come back and other participants never notice.

At least 2000 hostile messages per transport, seeded (the same every run), with issue 17's repros among them,
while a well-behaved participant edits the same session and checks that every one of its ops is answered,
in order. Inputs: random bytes, random msgpack structures, valid requests with one value swapped for a wrong
type, a huge or non-finite number, an unknown key or a second oneof member, text frames and oversize frames
(WebSocket); random bytes and damaged valid requests on every gRPC method, hostile ops and presence in-band on
the Connect stream, in-band garbage, oversize gRPC messages.
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
from vatlas.server.session.limits import ServerLimits
from vatlas_wire.v1 import bundles_pb2, edits_pb2, mirror, render_pb2, sessions_pb2

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


class Bystander:
    """A well-behaved gRPC participant in the fuzzed session: it streams its own ops (new strokes, updates and
    deletes of them, an undo followed by its redo) a few at a time, and checks that every one is accepted,
    answered in the order it was sent, with increasing sequence numbers."""

    WINDOW = 4

    def __init__(self, stubs: AioStubs, join: sessions_pb2.Join) -> None:
        self.stubs, self.join = stubs, join
        self.sent: list[str] = []
        self.answers: list[tuple[str, str, int]] = []  # (op id or "undo", accepted/rejected, seq)

    async def run(self, stop: asyncio.Event) -> None:
        member = GrpcSession(self.stubs)
        member.send(join=self.join)
        await member.event("snapshot")
        n, mine = 0, []
        while not stop.is_set():
            batch = []
            for _ in range(self.WINDOW):
                n += 1
                if n % 7 in (0, 1):  # undo, then redo: its own objects end up as they were
                    word = "undo" if n % 7 == 0 else "redo"
                    member.send(**{word: sessions_pb2.Undo() if word == "undo" else sessions_pb2.Redo()})
                    batch.append(word)
                    continue
                if mine and n % 5 == 0:
                    op = {"id": f"by-u{n}", "type": "update", "target": mine[-1], "set": {"width": 2.0 + n % 5}}
                elif len(mine) > 6:
                    op = {"id": f"by-d{n}", "type": "delete", "target": mine.pop(0)}
                else:
                    op = stroke_op(f"by-{n}", n % 8, x=26.0 + n % 5)
                    mine.append(op["id"])
                member.send_op(op)
                batch.append(op["id"])
            self.sent += batch
            for _ in batch:
                ev = await self._answer(member)
                kind = ev.WhichOneof("kind")
                answer = getattr(ev, kind)
                self.answers.append((answer.op_id, kind, answer.seq if kind == "accepted" else -1))
            await asyncio.sleep(0.01)
        await member.close()

    @staticmethod
    async def _answer(member: GrpcSession) -> sessions_pb2.ServerEvent:
        while True:
            ev = await asyncio.wait_for(member.call.read(), 30)
            assert ev is not grpc.aio.EOF, "the bystander's stream ended"
            if ev.WhichOneof("kind") in ("accepted", "rejected"):
                return ev

    def check(self) -> None:
        assert len(self.answers) == len(self.sent) > 50
        for sent, (op_id, kind, _) in zip(self.sent, self.answers, strict=True):
            if sent in ("undo", "redo"):  # answered with a generated id, or "" when there is nothing to do
                assert (op_id.startswith(f"{sent}:") and kind == "accepted") or (kind == "rejected" and op_id == ""), \
                    (sent, op_id, kind)
            else:
                assert (op_id, kind) == (sent, "accepted"), (sent, op_id, kind)
        seqs = [seq for _, kind, seq in self.answers if kind == "accepted"]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def _no_internals(message: str, server) -> None:
    """L5: an error names no server folder."""
    for root in (server.core.bundles.models_dir, server.core.jobs.work_dir):
        assert str(root) not in message, message


def _issue_repros_ws(session_id: str, token: str) -> list[object]:
    """Issue 17's repros as WebSocket frames (raw bytes or requests)."""
    huge_polygon = {"id": "r-poly", "type": "adjustment", "space": "frame", "frame": 0,
                    "points": [[0, 0], [1e6, 0], [0, 1e6]], "exposure": 0.5}
    return [
        bytes.fromhex("81910000"),  # L1: an unhashable map key
        {"session": {"op": huge_polygon}},  # H1
        {"session": {"op": {**stroke_op("r-wide"), "points": [[-1e6, 10.0], [1e6, 10.0]]}}},  # H2
        {"session": {"op": {**stroke_op("r-1000"), "points": [[-1000.0, 10.0], [1000.0, 10.0]]}}},  # H2
        {"session": {"op": {"id": "r-png", "type": "texture", "space": "frame", "frame": 0, "rect": [0, 0, 64, 48],
                            "image": _big_png()}}},  # H3
        {"session": {"op": {**stroke_op("r-nl\n")}}},  # L4
        {"bundle_info": {"name": TINY_BUNDLE + "\n"}},  # L4
        {"session": {"join": {"session_id": session_id, "join_token": token, "participant_id": "bystander"}}},
        {"render": {"session_id": session_id, "join_token": "wrong", "frame": 0}},
        {"export": {"session_id": session_id, "join_token": token, "format": "png_zip", "end_frame": 2}},
    ]


def test_websocket_fuzz_gets_typed_errors_and_spares_others(small_server) -> None:
    """2000 hostile frames, the issue's repros among them, on a connection that joined the session while a
    well-behaved participant edits it: typed errors only, and the participant never notices."""
    rng = random.Random(7)
    hostile = 2000

    async def scenario() -> None:
        stubs = AioStubs(small_server.grpc_target, small_server.token)
        info, join, member = await _session_with_one_member(stubs)
        member.send_op(stroke_op("base"))
        await member.event("accepted")
        await member.close()
        bystander = Bystander(stubs, sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                                       participant_id="bystander"))
        stop = asyncio.Event()
        editing = asyncio.create_task(bystander.run(stop))
        fuzzer = await WsClient.connect(small_server.ws_url, small_server.token)
        await fuzzer.send(session=sessions_pb2.ClientMessage(join=join))
        await fuzzer.event("snapshot")
        errors = 0
        plans = templates(info.session_id, info.join_token)
        repros = _issue_repros_ws(info.session_id, info.join_token)
        for i in range(hostile):
            roll = i % 5
            if i % 97 == 3:
                item = repros[(i // 97) % len(repros)]
                frame: bytes | str = item if isinstance(item, bytes) else msgpack.packb(
                    {"request_id": 10_000 + i, **item}, use_bin_type=True)  # type: ignore[dict-item]
            elif roll == 0:
                frame = rng.randbytes(rng.randrange(0, 200))
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
                    _no_internals(resp.error.message, small_server)
                    errors += 1
                elif kind == "event" and resp.event.WhichOneof("kind") in ("rejected", "error"):
                    ev = resp.event
                    err = ev.rejected.error if ev.WhichOneof("kind") == "rejected" else ev.error
                    assert err.code in TYPED_CODES, resp
                    _no_internals(err.message, small_server)
                    errors += 1
                if resp.request_id == ping:
                    break
            if editing.done():
                editing.result()  # the bystander failed: say why
        print(f"\n{hostile} hostile WebSocket frames: {errors} typed errors; the bystander had "
              f"{len(bystander.answers)} ops answered")
        assert errors >= hostile // 2  # most malformed frames got their typed error
        # L3: another connection cannot take the bystander's participant id (and so its undo history)
        thief = await WsClient.connect(small_server.ws_url, small_server.token)
        taken = await thief.call(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token, participant_id="bystander")))
        assert taken.WhichOneof("result") == "error" and taken.error.code == "PERMISSION_DENIED", taken
        await thief.close()
        # an oversize frame closes only the fuzzer's connection (1009), everybody else carries on
        await fuzzer.send_raw(b"\x00" * (MAX_MESSAGE + 10))
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed in one of its forms
            for _ in range(50):
                await fuzzer.recv(timeout=10)
        assert fuzzer.ws.close_code == 1009
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(editing, 60)
        bystander.check()
        frame = await stubs.render.RenderFrame(render_pb2.RenderRequest(
            session_id=info.session_id, join_token=info.join_token, frame=0), metadata=stubs.metadata)
        assert frame.seq == small_server.core.sessions[info.session_id].seq
        await stubs.close()

    asyncio.run(scenario())


UNARY = {  # method -> a valid request to mutate
    "/vatlas.v1.Bundles/ListBundles": bundles_pb2.ListBundlesRequest(),
    "/vatlas.v1.Bundles/LoadBundle": bundles_pb2.LoadBundleRequest(name=TINY_BUNDLE),
    "/vatlas.v1.Bundles/GetBundleInfo": bundles_pb2.GetBundleInfoRequest(name=TINY_BUNDLE),
    "/vatlas.v1.Sessions/CreateSession": sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
    "/vatlas.v1.Sessions/ListSessions": sessions_pb2.ListSessionsRequest(),
    "/vatlas.v1.Render/RenderFrame": None,  # filled in with the session
}
STREAMING = {
    "/vatlas.v1.Render/Playback": None,
    "/vatlas.v1.Render/Export": None,
    "/vatlas.v1.Bundles/StartFit": bundles_pb2.StartFitRequest(upload_id="u0", name="fz", roi_json="{}"),
}


def _flipped(rng: random.Random, data: bytes) -> bytes:
    """A valid serialized message with a few bytes changed, cut short or extended."""
    out = bytearray(data)
    roll = rng.randrange(4)
    if roll == 0 and out:
        return bytes(out[:rng.randrange(len(out))])
    if roll == 1:
        return bytes(out + rng.randbytes(rng.randrange(1, 12)))
    for _ in range(rng.randrange(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _connect_fuzz(rng: random.Random, i: int) -> sessions_pb2.ClientMessage:
    """One in-band ClientMessage after join: ops with wrong or extreme values, presence, undo, a second join."""
    bad_values = [math.nan, math.inf, -math.inf, 3e38, -3e38, 1e7]  # none valid for any field below
    roll = i % 6
    if roll == 0:
        return sessions_pb2.ClientMessage(presence=sessions_pb2.PresenceUpdate(
            cursor=edits_pb2.Vec2(x=rng.choice(bad_values), y=rng.choice(bad_values)),
            frame=rng.choice([0, 7, 8, 2**31 - 1]), tool="x" * rng.choice([1, 40]), color=rng.choice(["", "#zz"])))
    if roll == 1:
        return sessions_pb2.ClientMessage(undo=sessions_pb2.Undo()) if i % 2 else \
            sessions_pb2.ClientMessage(redo=sessions_pb2.Redo())
    if roll == 2 and i % 12 == 2:
        return sessions_pb2.ClientMessage(join=sessions_pb2.Join(session_id="s0"))
    op = stroke_op(f"bad{i}")
    field = rng.choice(["width", "points", "color", "frame", "hardness", "type", "mode", "target", "set"])
    if field == "points":
        op["points"] = [[rng.choice(bad_values), 1.0]] * rng.choice([1, 2, 5000])
    elif field == "color":
        op["color"] = [rng.choice(bad_values)] * rng.choice([3, 4])
    elif field == "frame":
        op["frame"] = rng.choice([-5, 10_000, 2**31 - 1])
    elif field == "type":
        op["type"] = rng.choice(["", "teleport", "x" * 300, "delete", "restore"])
    elif field == "mode":  # "" is proto3's unset, i.e. a valid default stroke
        op["mode"] = rng.choice(["teleport", "x" * 300])
    elif field == "target":
        op.update(type=rng.choice(["update", "delete", "set_visible"]), target=rng.choice(["", "nope", "base\n"]))
    elif field == "set":
        op.update(type="update", target="base", set={"width": rng.choice(bad_values)})
    else:
        op[field] = rng.choice(bad_values)
    try:
        return sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp))
    except mirror.WireError:
        return sessions_pb2.ClientMessage(op=edits_pb2.EditOp(id=f"bad{i}", type="stroke", width=math.nan))


def test_grpc_fuzz_gets_typed_statuses_and_spares_others(small_server, tmp_path: Path) -> None:
    """Over 2000 hostile gRPC messages: random bytes and damaged requests on every method, hostile ops and
    presence in-band on a Connect stream, the issue's repros (H1-H4, L2, L4, M4); typed statuses only, and a
    well-behaved participant in the same session never notices."""
    rng = random.Random(11)
    allowed = {getattr(grpc.StatusCode, c) for c in TYPED_CODES} | {grpc.StatusCode.UNIMPLEMENTED}
    counts = {"unary": 0, "streaming": 0, "in-band": 0, "repro": 0}

    async def expect_typed(coro) -> None:
        try:
            await coro
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in allowed, (exc.code(), exc.details())
            _no_internals(exc.details() or "", small_server)

    async def first_item(call) -> None:
        try:
            async for _ in call:
                break
        finally:
            call.cancel()

    async def scenario() -> None:
        stubs = AioStubs(small_server.grpc_target, small_server.token)
        md = stubs.metadata
        info, join, member = await _session_with_one_member(stubs)
        member.send_op(stroke_op("base"))
        await member.event("accepted")
        bystander = Bystander(stubs, sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                                       participant_id="bystander"))
        stop = asyncio.Event()
        editing = asyncio.create_task(bystander.run(stop))
        unary = dict(UNARY, **{"/vatlas.v1.Render/RenderFrame": render_pb2.RenderRequest(
            session_id=info.session_id, join_token=info.join_token, frame=1, format="jpeg", scale=0.5)})
        streaming = dict(STREAMING, **{
            "/vatlas.v1.Render/Playback": render_pb2.PlaybackRequest(session_id=info.session_id,
                                                                      join_token=info.join_token, fps=30, end_frame=2),
            "/vatlas.v1.Render/Export": render_pb2.ExportRequest(session_id=info.session_id,
                                                                 join_token=info.join_token, format="png_zip",
                                                                 end_frame=1)})
        # random bytes and damaged valid requests on every method
        for i in range(1500):
            methods = streaming if i % 4 == 3 else unary
            method = rng.choice(sorted(methods))
            payload = rng.randbytes(rng.randrange(0, 120)) if i % 2 else _flipped(rng, methods[method].SerializeToString())
            if methods is streaming:
                await expect_typed(first_item(stubs.channel.unary_stream(method)(payload, metadata=md, timeout=20)))
                counts["streaming"] += 1
            else:
                await expect_typed(stubs.channel.unary_unary(method)(payload, metadata=md, timeout=20))
                counts["unary"] += 1
        # hostile messages in-band on a Connect stream of the same session: each op gets its typed rejection
        fuzzer = GrpcSession(stubs)
        fuzzer.send(join=join)
        await fuzzer.event("snapshot")
        ops = []
        for i in range(600):
            message = _connect_fuzz(rng, i)
            fuzzer.outbox.put_nowait(message)
            if message.WhichOneof("kind") == "op":
                ops.append(message.op.id)
            counts["in-band"] += 1
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        for op_id in ops:
            rej = await fuzzer.event("rejected", where=lambda r, op_id=op_id: r.op_id == op_id, timeout=60)
            assert rej.error.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND"), rej
        assert not [e for e in fuzzer.backlog if e.WhichOneof("kind") == "error"
                    and e.error.code not in TYPED_CODES]
        await fuzzer.close()
        # the issue's repros
        await _grpc_repros(stubs, info, counts, expect_typed, first_item, tmp_path)
        # raw garbage on a stream: that client's stream ends with a typed error, the others carry on
        raw = stubs.channel.stream_stream("/vatlas.v1.Sessions/Connect")

        async def garbage():
            yield sessions_pb2.ClientMessage(join=join).SerializeToString()
            yield b"\xff\xff\xff"

        seen = [sessions_pb2.ServerEvent.FromString(item) async for item in raw(garbage(), metadata=md)]
        kinds = [e.WhichOneof("kind") for e in seen]
        assert kinds[0] == "snapshot" and "error" in kinds
        assert next(e.error for e in seen if e.WhichOneof("kind") == "error").code == "INVALID_ARGUMENT"
        total = sum(counts.values())
        print(f"\n{total} hostile gRPC messages {counts}; the bystander had {len(bystander.answers)} ops answered")
        assert total >= 2000
        stop.set()
        await asyncio.wait_for(editing, 60)
        bystander.check()
        # oversize message: the library's own RESOURCE_EXHAUSTED; health and listing still answer
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await stubs.channel.unary_unary("/vatlas.v1.Bundles/GetBundleInfo")(
                b"\x0a" + b"\xff\xff\x7f" + b"a" * (MAX_MESSAGE * 2), metadata=md, timeout=20)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(stubs.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert (await stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(), metadata=md)).bundles
        member.send_op(stroke_op("fine"))
        assert (await member.event("accepted", where=lambda a: a.op_id == "fine")).seq > 1
        await member.close()
        await stubs.close()

    asyncio.run(scenario())


async def _grpc_repros(stubs: AioStubs, info: sessions_pb2.SessionInfo, counts: dict[str, int], expect_typed,
                       first_item, tmp_path: Path) -> None:
    """H1-H3 and L4 ops on a Connect stream, L2 renders under random client ids, H4 and M4 fits."""
    md = stubs.metadata
    attacker = GrpcSession(stubs)
    attacker.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
    await attacker.event("snapshot")
    repro_ops = [
        {"id": "g-poly", "type": "adjustment", "space": "frame", "frame": 0, "points": [[0, 0], [1e6, 0], [0, 1e6]],
         "exposure": 0.5},
        {**stroke_op("g-wide"), "points": [[-1e6, 10.0], [1e6, 10.0]]},
        {"id": "g-png", "type": "texture", "space": "frame", "frame": 0, "rect": [0, 0, 64, 48], "image": _big_png()},
    ]
    for op in repro_ops:
        attacker.send_op(op)
        answer = await attacker.event("accepted", where=lambda a, op=op: a.op_id == op["id"], timeout=60)
        assert answer.seq > 0
        counts["repro"] += 1
    attacker.send(op=edits_pb2.EditOp(id="g-nl\n", type="stroke", space="frame", points=[edits_pb2.Vec2(x=1, y=1)]))
    assert (await attacker.event("rejected", where=lambda r: r.op_id == "g-nl\n")).error.code == "INVALID_ARGUMENT"
    undo_ids = []
    for _ in repro_ops:  # and their own undo works
        attacker.send(undo=sessions_pb2.Undo())
        undo_ids.append((await attacker.event("accepted", where=lambda a: a.op_id.startswith("undo:"))).op_id)
    counts["repro"] += 1 + len(repro_ops)
    await attacker.close()
    render = stubs.channel.unary_unary("/vatlas.v1.Render/RenderFrame")
    request = render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token, frame=0,
                                       format="raw", scale=0.25).SerializeToString()
    for i in range(120):  # L2: a new client id per call buys nothing (answered, or rate-limited)
        await expect_typed(render(request, metadata=(*md, ("vatlas-client-id", f"r{i}")), timeout=20))
        counts["repro"] += 1
    upload = await stubs.bundles.UploadVideo(_chunks("clip.m3u8", b"#EXTM3U\n#EXTINF:10.0,\nfile:///etc/passwd\n"
                                                                  b"#EXT-X-ENDLIST\n"), metadata=md)
    roi = '{"ref_frame": 0, "polygons": [[[1, 1], [20, 1], [20, 20]]]}'
    for fields in (dict(iterations=10_000_000), dict(width=8192, height=8192), dict(preset="draft", iterations=5),
                   dict(name="x\n")):
        request = bundles_pb2.StartFitRequest(**{"upload_id": upload.upload_id, "name": "fz-fit", "roi_json": roi,
                                                 **fields})
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # H4 (the playlist), M4 (size, iterations), L4
            async for _ in stubs.bundles.StartFit(request, metadata=md, timeout=120):
                pass
        assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                                        grpc.StatusCode.UNIMPLEMENTED), refused.value.details()
        counts["repro"] += 1


async def _chunks(name: str, data: bytes):
    yield bundles_pb2.UploadChunk(filename=name, data=data, last=True)


def test_wire_never_raises_anything_but_wire_error() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        obj = random_value(rng)
        with contextlib.suppress(mirror.WireError):  # anything else escaping fails the test
            mirror.from_mirror(obj if isinstance(obj, dict) else {"request_id": obj}, sessions_pb2.WsRequest)


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
        bystander.send_op(stroke_op("b-stroke", x=27.0))
        bystander.send_op({"id": "b-tex", "type": "texture", "space": "frame", "frame": 1, "rect": [30, 14, 8, 8],
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
