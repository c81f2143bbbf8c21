"""Per-server budgets against real servers on loopback: the WebSocket inbound queue is bounded by bytes with
backpressure, idle sessions are unloaded to disk and come back on demand, a session cap answers
RESOURCE_EXHAUSTED (H3); the op log is snapshotted and compacted, so replay time stays flat and a stale
resume point gets the whole document (L7); render rate limits follow the connection and the client address,
never the client id, and playback frames are rate-checked all along (L2); gRPC connections and calls are
capped (M3)."""

from __future__ import annotations

import asyncio
import io
import secrets
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import TEST_TOKEN, TINY_BUNDLE, start_in_process_server
from PIL import Image
from serve_helpers import AioStubs, GrpcSession, WsClient, stroke_op
from vatlas.server.doors import ws_door
from vatlas.server.session.limits import MIB, ServerLimits
from vatlas_client import Client
from vatlas_wire.v1 import bundles_pb2, bundles_pb2_grpc, render_pb2, render_pb2_grpc, sessions_pb2

LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]  # a channel of its own connection


def noise_png(seed: int, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def _new_session(stubs: AioStubs) -> tuple[sessions_pb2.SessionInfo, GrpcSession]:
    info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                              metadata=stubs.metadata)
    member = GrpcSession(stubs)
    member.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
    await member.event("snapshot")
    return info, member


# ---------------------------------------------------------------- H3: the WebSocket inbound queue


def test_websocket_frames_waiting_are_bounded_by_bytes(tiny_models_dir: Path) -> None:
    """30 frames of 0.9 MB sent while the session cannot commit: the server holds at most ws_inbound_bytes of
    them and stops reading (the sender blocks); once it can commit, every op is answered in order."""
    limits = ServerLimits(max_message_bytes=MIB, ws_inbound_bytes=2 * MIB)
    server = start_in_process_server(tiny_models_dir, limits=limits)
    pngs = [noise_png(i, 550) for i in range(30)]
    assert all(0.8 * MIB < len(p) < MIB - 4096 for p in pngs)

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        info, member = await _new_session(stubs)
        client = await WsClient.connect(server.ws_url, server.token)
        await client.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token)))
        await client.event("snapshot")
        session = server.core.sessions[info.session_id]
        server.call(session.lock.acquire())  # nothing commits until it is released

        async def send_all() -> None:
            for i, png in enumerate(pngs):
                op = {"id": f"t{i}", "type": "texture", "space": "frame", "frame": 0, "image": png,
                      "rect": [4, 4, 32, 32]}
                from vatlas_wire.v1 import edits_pb2, mirror

                await client.send(session=sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)))

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(3.0)
        conn = next(c for c in list(ws_door.LIVE) if c.participant is not None
                    and c.participant.session.session_id == info.session_id)
        print(f"\npeak inbound {conn.peak_inbound / MIB:.2f} MiB, sender done: {sender.done()}")
        assert conn.peak_inbound <= limits.ws_inbound_bytes
        assert not sender.done(), "the server read everything: no backpressure"
        server.loop.call_soon_threadsafe(session.lock.release)
        await asyncio.wait_for(sender, 60)
        seqs = [(await client.event("accepted", timeout=60, where=lambda a, i=i: a.op_id == f"t{i}")).seq
                for i in range(30)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 30
        await client.close()
        await member.close()
        await stubs.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


# ---------------------------------------------------------------- H3: sessions unloaded and reloaded


def test_idle_sessions_are_unloaded_to_disk_and_come_back(tiny_models_dir: Path, tmp_path: Path) -> None:
    limits = ServerLimits(max_loaded_sessions=2, session_idle_seconds=600)
    server = start_in_process_server(tiny_models_dir, data_dir=tmp_path / "data", limits=limits)
    core = server.core

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        a, alice = await _new_session(stubs)
        alice.send_op(stroke_op("a1"))
        await alice.event("accepted")
        render = render_pb2.RenderRequest(session_id=a.session_id, join_token=a.join_token, frame=0, format="png")
        before = (await stubs.render.RenderFrame(render, metadata=stubs.metadata)).data
        await alice.close()
        await asyncio.sleep(0.3)  # alice's leave reaches the server
        b, bob = await _new_session(stubs)
        c, carol = await _new_session(stubs)  # a third loaded session: the idle one (a) makes room
        unloaded = core.sessions[a.session_id]
        assert unloaded.engine is None and unloaded.doc is None and unloaded.oplog is None and unloaded.records == []
        assert sum(s.holds_memory for s in core.sessions.values()) == 2
        # every loaded session has a participant: the next one cannot be loaded
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                               metadata=stubs.metadata)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "sessions in memory" in info.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs.render.RenderFrame(render, metadata=stubs.metadata)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await bob.close()
        await asyncio.sleep(0.3)
        # on demand: a render loads it again from disk (b, now idle, makes room), pixels as before
        again = await stubs.render.RenderFrame(render, metadata=stubs.metadata)
        assert again.data == before and again.seq == 1
        assert core.sessions[b.session_id].engine is None
        alice = GrpcSession(stubs)
        alice.send(join=sessions_pb2.Join(session_id=a.session_id, join_token=a.join_token))
        assert [op.id for op in (await alice.event("snapshot")).document.ops] == ["a1"]
        alice.send_op(stroke_op("a2"))
        assert (await alice.event("accepted")).seq == 2
        for member in (alice, carol):
            await member.close()
        await stubs.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_sessions_idle_for_session_idle_seconds_are_unloaded(tiny_models_dir: Path, tmp_path: Path) -> None:
    server = start_in_process_server(tiny_models_dir, data_dir=tmp_path / "data",
                                     limits=ServerLimits(session_idle_seconds=0.4))
    memory_only = start_in_process_server(tiny_models_dir, limits=ServerLimits(session_idle_seconds=0.4))

    async def scenario(target: Any) -> str:
        stubs = AioStubs(target.grpc_target, target.token)
        info, member = await _new_session(stubs)
        member.send_op(stroke_op("x"))
        await member.event("accepted")
        session = target.core.sessions[info.session_id]
        await asyncio.sleep(1.0)
        assert session.engine is not None, "a session with a participant was unloaded"
        await member.close()
        for _ in range(60):
            await asyncio.sleep(0.1)
            if session.engine is None:
                break
        assert session.engine is None
        member = GrpcSession(stubs)  # and back on the next join
        member.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        assert [op.id for op in (await member.event("snapshot")).document.ops] == ["x"]
        await member.close()
        await stubs.close()
        return info.session_id

    try:
        sid = asyncio.run(scenario(server))
        assert server.core.sessions[sid].persisted
        sid = asyncio.run(scenario(memory_only))  # without --data only the engine goes; the document stays
        assert not memory_only.core.sessions[sid].persisted
    finally:
        server.stop()
        memory_only.stop()


# ---------------------------------------------------------------- L7: snapshots and compaction


async def _churn(target: str, token: str, info: sessions_pb2.SessionInfo | None, ops: int, prefix: str,
                 live: int = 8) -> sessions_pb2.SessionInfo:
    """`ops` ops that keep about `live` strokes alive (new strokes, the oldest deleted)."""
    stubs = AioStubs(target, token)
    try:
        if info is None:
            info, member = await _new_session(stubs)
        else:
            member = GrpcSession(stubs)
            member.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
            await member.event("snapshot")
        alive: list[str] = []
        sent = []
        for n in range(ops):
            if len(alive) > live:
                op = {"id": f"{prefix}d{n}", "type": "delete", "target": alive.pop(0)}
            else:
                op = stroke_op(f"{prefix}{n}", n % 8, x=26.0 + n % 5)
                alive.append(op["id"])
            member.send_op(op)
            sent.append(op["id"])
            if n % 50 == 49 and n < ops - 1:  # keep the window of unanswered ops small
                await member.event("accepted", where=lambda a, last=op["id"]: a.op_id == last, timeout=120)
        await member.event("accepted", where=lambda a: a.op_id == sent[-1], timeout=120)
        await member.close()
        return info
    finally:
        await stubs.close()


def _restart_and_join(server: Any, info: sessions_pb2.SessionInfo) -> tuple[float, sessions_pb2.Snapshot]:
    """SIGKILL, start again, and the seconds from the new process's READY to the first join's snapshot."""
    server.kill()
    server.restart()
    start = time.perf_counter()

    async def join() -> sessions_pb2.Snapshot:
        stubs = AioStubs(server.grpc_target, server.token)
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        snap = await s.event("snapshot", timeout=120)
        await s.close()
        await stubs.close()
        return snap

    snap = asyncio.run(join())
    return time.perf_counter() - start, snap


def test_the_log_is_compacted_and_replay_time_stays_flat(server_process_factory, tmp_path: Path) -> None:
    server = server_process_factory(data_dir=tmp_path / "data", extra_args=("--limit", "compact_every=64"))
    info = asyncio.run(_churn(server.grpc_target, server.token, None, 150, "a"))
    short, snap = _restart_and_join(server, info)
    assert snap.session.seq == 150
    info = asyncio.run(_churn(server.grpc_target, server.token, info, 1350, "b"))
    long, snap = _restart_and_join(server, info)
    print(f"\nfirst join after a restart: {short * 1e3:.0f} ms at 150 ops, {long * 1e3:.0f} ms at 1500 ops")
    assert snap.session.seq == 1500 and len(snap.document.ops) <= 20  # each churn keeps 8 or 9 strokes
    assert long < 3 * short + 0.5, "replay time grows with the log"
    session_dir = tmp_path / "data" / "sessions" / info.session_id
    from vatlas.server.session.oplog import read_records, read_snapshot

    records, _ = read_records(session_dir / "ops.log")
    assert len(records) <= 3 * 64 and read_snapshot(session_dir).state["seq"] >= 1500 - 2 * 64


def test_a_client_resuming_from_a_compacted_seq_gets_the_document(server_process_factory, tmp_path: Path) -> None:
    """Alice's resume point was compacted away while she was disconnected: the server sends the document,
    and her client takes it instead of waiting for a replay that cannot come; an op she sent meanwhile is
    acknowledged after the resume."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "data"
    pinned = server_process_factory(data_dir=data, extra_args=("--grpc", f"127.0.0.1:{port}", "--limit",
                                                               "compact_every=40"))
    with Client(pinned.grpc_target, token=TEST_TOKEN, reconnect_timeout=90) as client:
        info = client.create_session(TINY_BUNDLE)
        alice = client.join(info, name="alice")
        first = alice.stroke([(28, 10), (48, 30)], frame=0)
        pinned.kill()
        other = server_process_factory(data_dir=data, extra_args=("--limit", "compact_every=40"))
        proto_info = sessions_pb2.SessionInfo(session_id=info.session_id, join_token=info.join_token)
        asyncio.run(_churn(other.grpc_target, other.token, proto_info, 200, "b", live=3))
        other.kill()
        result: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: result.update(ack=alice.stroke([(29, 10), (49, 30)], frame=1,
                                                                                  timeout=120)))
        sender.start()
        pinned.restart()
        sender.join(130)
        assert result["ack"] == int(first) + 201
        ids = [op.id for op in alice.document]  # the document the server sent instead of a replay
        assert ids[0] == first.op_id and len(ids) >= 4 and all(i.startswith("b") for i in ids[1:])
        assert alice.seq == int(first) + 201 and alice.reconnects >= 1
        alice.leave()


# ---------------------------------------------------------------- L2: rate limits and GPU share


def test_random_client_ids_do_not_buy_more_renders(tiny_models_dir: Path) -> None:
    limits = ServerLimits(renders_per_second=100, renders_burst=100, identity_renders_per_second=150,
                          identity_renders_burst=150)
    server = start_in_process_server(tiny_models_dir, limits=limits)

    async def flood(channel: grpc.aio.Channel, info: sessions_pb2.SessionInfo, n: int) -> list[bool]:
        """n renders, 64 at a time, each with a new random client id; which succeeded."""
        stub = render_pb2_grpc.RenderStub(channel)
        room = asyncio.Semaphore(64)

        async def one() -> bool:
            metadata = (("authorization", f"Bearer {TEST_TOKEN}"), ("vatlas-client-id", secrets.token_hex(8)))
            async with room:
                try:
                    await stub.RenderFrame(render_pb2.RenderRequest(session_id=info.session_id,
                                                                    join_token=info.join_token, frame=0,
                                                                    format="raw", scale=0.25), metadata=metadata)
                    return True
                except grpc.aio.AioRpcError as exc:
                    # grpc.aio itself cancels a few of many concurrent calls now and then (any method)
                    assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED), exc
                    return False

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        info, member = await _new_session(stubs)
        start = time.monotonic()
        one = await flood(stubs.channel, info, 1200)
        elapsed = time.monotonic() - start
        print(f"\none connection: {sum(one)} of 1200 in {elapsed:.2f} s")
        assert sum(one) <= limits.renders_burst + limits.renders_per_second * elapsed + 5
        # more connections from the same address share the address's budget
        await asyncio.sleep(1.6)  # both buckets full again
        channels = [grpc.aio.insecure_channel(server.grpc_target, options=LOCAL_POOL) for _ in range(4)]
        start = time.monotonic()
        many = await asyncio.gather(*(flood(ch, info, 300) for ch in channels))
        elapsed = time.monotonic() - start
        print(f"four connections: {sum(map(sum, many))} of 1200 in {elapsed:.2f} s")
        assert sum(map(sum, many)) <= limits.identity_renders_burst + limits.identity_renders_per_second * elapsed + 5
        for ch in channels:
            await ch.close()
        await member.close()
        await stubs.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_playback_is_rate_checked_all_along_and_others_keep_their_latency(tiny_models_dir: Path) -> None:
    """Twelve looping 240 fps playbacks on one connection get the connection's render rate between them, and
    a render from another connection is about as fast as without them."""
    limits = ServerLimits(renders_per_second=60, renders_burst=60)
    server = start_in_process_server(tiny_models_dir, limits=limits)
    seconds = 3.0

    async def latencies(stub: Any, info: sessions_pb2.SessionInfo, metadata: Any, n: int) -> list[float]:
        out = []
        for i in range(n):
            start = time.perf_counter()
            await stub.RenderFrame(render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token,
                                                            frame=i % 8, format="jpeg"), metadata=metadata)
            out.append(time.perf_counter() - start)
            await asyncio.sleep(0.02)
        return out

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        info, member = await _new_session(stubs)
        viewer = grpc.aio.insecure_channel(server.grpc_target, options=LOCAL_POOL)
        viewer_stub = render_pb2_grpc.RenderStub(viewer)
        await latencies(viewer_stub, info, stubs.metadata, 5)  # warm
        alone = await latencies(viewer_stub, info, stubs.metadata, 30)
        frames = [0]

        async def play() -> None:
            call = stubs.render.Playback(render_pb2.PlaybackRequest(
                session_id=info.session_id, join_token=info.join_token, fps=240, loop=True, format="jpeg"),
                metadata=stubs.metadata)
            end = time.monotonic() + seconds
            async for _ in call:
                frames[0] += 1
                if time.monotonic() > end:
                    break
            call.cancel()

        players = [asyncio.create_task(play()) for _ in range(12)]
        await asyncio.sleep(0.3)
        busy = await latencies(viewer_stub, info, stubs.metadata, 30)
        await asyncio.gather(*players)
        a, b = statistics.median(alone) * 1e3, statistics.median(busy) * 1e3
        print(f"\n12 playbacks: {frames[0]} frames in {seconds:.0f} s; another connection's render p50 "
              f"{a:.1f} ms alone, {b:.1f} ms beside them")
        assert frames[0] <= limits.renders_burst + limits.renders_per_second * (seconds + 0.5) + 12
        assert b <= 3 * a + 30
        await viewer.close()
        await member.close()
        await stubs.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


# ---------------------------------------------------------------- M3: gRPC connections and calls


def test_grpc_connections_and_calls_per_address_are_capped(tiny_models_dir: Path) -> None:
    limits = ServerLimits(max_grpc_connections=3, max_grpc_calls_per_address=4)
    server = start_in_process_server(tiny_models_dir, limits=limits)
    metadata = (("authorization", f"Bearer {TEST_TOKEN}"),)

    def listing(channel: grpc.Channel) -> grpc.StatusCode:
        try:
            bundles_pb2_grpc.BundlesStub(channel).ListBundles(bundles_pb2.ListBundlesRequest(), metadata=metadata,
                                                               timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    channels = [grpc.insecure_channel(server.grpc_target, options=LOCAL_POOL) for _ in range(5)]
    try:
        codes = [listing(ch) for ch in channels]
        assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.UNAVAILABLE] * 2, codes
        channels[0].close()
        time.sleep(0.3)
        fresh = grpc.insecure_channel(server.grpc_target, options=LOCAL_POOL)
        channels.append(fresh)
        assert listing(fresh) == grpc.StatusCode.OK  # a closed connection frees its place
        for ch in channels:
            ch.close()
        time.sleep(0.3)

        async def streams() -> None:
            stubs = AioStubs(server.grpc_target, server.token)
            info, member = await _new_session(stubs)  # one call in flight
            others = [GrpcSession(stubs) for _ in range(3)]
            for s in others:
                s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
                await s.event("snapshot")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(), metadata=stubs.metadata)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await others[0].close()
            await asyncio.sleep(0.3)
            assert (await stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(),
                                                    metadata=stubs.metadata)).bundles
            for s in (member, *others[1:]):
                await s.close()
            await stubs.close()

        asyncio.run(streams())
    finally:
        for ch in channels:
            ch.close()
        server.stop()


def test_a_sessions_images_are_budgeted(tiny_models_dir: Path, tmp_path: Path) -> None:
    """Images kept as uploaded count against max_document_image_bytes: past it a paste is refused with
    RESOURCE_EXHAUSTED and nothing of it stays; a deleted image is freed once no undo can restore it (here:
    after a restart, when nobody's undo history survives)."""
    pngs = [noise_png(50 + i, 120) for i in range(4)]  # about 43 KB each
    limits = ServerLimits(max_document_image_bytes=2 * len(pngs[0]) + len(pngs[0]) // 2)

    def paste(op_id: str, png: bytes) -> dict:
        return {"id": op_id, "type": "texture", "space": "frame", "frame": 0, "image": png, "rect": [26, 12, 16, 16]}

    async def first(server: Any) -> sessions_pb2.SessionInfo:
        stubs = AioStubs(server.grpc_target, server.token)
        info, member = await _new_session(stubs)
        for i in range(2):
            member.send_op(paste(f"p{i}", pngs[i]))
            await member.event("accepted", where=lambda a, i=i: a.op_id == f"p{i}")
        member.send_op(paste("p2", pngs[2]))
        refused = await member.event("rejected", where=lambda r: r.op_id == "p2")
        assert refused.error.code == "RESOURCE_EXHAUSTED" and "images" in refused.error.message
        session = server.core.sessions[info.session_id]
        assert "p2" not in session.doc.objects and session.doc.image_bytes == len(pngs[0]) + len(pngs[1])
        member.send_op({"id": "del", "type": "delete", "target": "p0"})
        await member.event("accepted", where=lambda a: a.op_id == "del")
        member.send_op(paste("p2", pngs[2]))  # p0 can still be restored by this member's undo: no room yet
        assert (await member.event("rejected", where=lambda r: r.op_id == "p2")).error.code == "RESOURCE_EXHAUSTED"
        await member.close()
        await stubs.close()
        return info

    async def second(server: Any, info: sessions_pb2.SessionInfo) -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        member = GrpcSession(stubs)
        member.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        assert [op.id for op in (await member.event("snapshot")).document.ops] == ["p1"]
        member.send_op(paste("p2", pngs[2]))
        assert (await member.event("accepted", where=lambda a: a.op_id == "p2")).seq > 0
        await member.close()
        await stubs.close()

    server = start_in_process_server(tiny_models_dir, data_dir=tmp_path / "data", limits=limits)
    try:
        info = asyncio.run(first(server))
    finally:
        server.stop()
    server = start_in_process_server(tiny_models_dir, data_dir=tmp_path / "data", limits=limits)
    try:
        asyncio.run(second(server, info))
    finally:
        server.stop()
