"""vatlas_client against the real server on loopback (tests/conftest.py fixtures): real gRPC, session core, renders.

Most tests share the in-process `running_server`; the reconnect test runs `vatlas serve` as a child process
(`server_process_factory`) pinned to one port, so that it can be killed and restarted where the client expects it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TEST_TOKEN, TINY_BUNDLE, TINY_FRAMES, TINY_SIZE
from vatlas_client import (
    AsyncClient,
    Client,
    InvalidArgument,
    NotFound,
    OpEvent,
    OpRejected,
    PermissionDenied,
    PresenceEvent,
    Unauthenticated,
    VatlasError,
    ops,
)

TOKEN, BUNDLE, FRAMES = TEST_TOKEN, TINY_BUNDLE, TINY_FRAMES
WIDTH, HEIGHT = TINY_SIZE

# A stroke that crosses the tiny bundle's editable region on every frame (one entirely outside is refused).
ON_ROI = [(28, 10), (48, 30)]


@pytest.fixture()
def client(running_server: Any) -> Iterator[Client]:
    with Client(running_server.grpc_target, token=TOKEN, timeout=20) as c:
        yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- errors


def test_bad_token_is_unauthenticated(running_server: Any) -> None:
    with Client(running_server.grpc_target, token="wrong") as bad:
        with pytest.raises(Unauthenticated, match="token"):
            bad.create_session(BUNDLE)
        with pytest.raises(Unauthenticated):
            bad.list_sessions()
    with Client(running_server.grpc_target, token=TOKEN) as good:
        info = good.create_session(BUNDLE)
    with Client(running_server.grpc_target) as anonymous, pytest.raises(Unauthenticated):
        anonymous.join(info)


def test_unknown_bundle_and_session_are_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="no-such-bundle"):
        client.bundle_info("no-such-bundle")
    with pytest.raises(NotFound, match="no-such-bundle"):
        client.create_session("no-such-bundle")
    with pytest.raises(NotFound):
        client.join("s-no-such-session", "whatever")


def test_wrong_join_token_is_permission_denied(client: Client) -> None:
    info = client.create_session(BUNDLE)
    with pytest.raises(PermissionDenied, match="join token"):
        client.join(info.session_id, "not-the-token")


def test_bad_op_is_rejected_with_the_servers_message(client: Client) -> None:
    with client.open_session(BUNDLE) as session:
        with pytest.raises(OpRejected, match="out of range") as rejected:
            session.stroke([(1, 1), (5, 5)], frame=FRAMES + 10)
        assert rejected.value.code == "INVALID_ARGUMENT" and rejected.value.op_id.startswith("stroke-")
        with pytest.raises(OpRejected, match="width"):
            session.stroke([(1, 1), (5, 5)], frame=0, width=-3)
        with pytest.raises(OpRejected):
            session.update("never-created", opacity=0.5)
        # the session is still usable after rejections
        assert session.stroke(ON_ROI, frame=0) >= 1
        with pytest.raises(InvalidArgument):
            client.render_frame(session, FRAMES + 10)


# ---------------------------------------------------------------- sessions


def test_two_clients_see_each_others_ops_and_presence(running_server: Any) -> None:
    with Client(running_server.grpc_target, token=TOKEN) as alice_client, Client(running_server.grpc_target, token=TOKEN) as bob_client:
        info = alice_client.create_session(BUNDLE)
        alice = alice_client.join(info, name="alice", color="#ff0000")
        bob = bob_client.join(info.session_id, info.join_token, name="bob")
        try:
            joined = alice.wait_for(lambda e: isinstance(e, PresenceEvent) and e.participant.name == "bob")
            assert joined.participant.participant_id == bob.participant_id and not joined.left

            ack = alice.stroke(ON_ROI, frame=0, width=3, color="#00ff00")
            seen = bob.wait_for(lambda e: isinstance(e, OpEvent))
            assert seen.seq == ack and seen.op.id == ack.op_id and seen.participant_id == alice.participant_id
            assert list(seen.op.color) == [0.0, 1.0, 0.0, 1.0]

            bob_ack = bob.sticker(np.full((8, 8, 4), 255, np.uint8), frame=0, position=(32, 24), size=[8, 8])
            assert bob_ack == ack + 1
            seen = alice.wait_for(lambda e: isinstance(e, OpEvent))
            assert seen.op.type == "sticker" and seen.participant_id == bob.participant_id

            bob.set_presence(cursor=(12.5, 7.0), frame=2, tool="brush")
            moved = alice.wait_for(lambda e: isinstance(e, PresenceEvent) and e.participant.frame == 2)
            assert moved.participant.cursor == (12.5, 7.0) and moved.participant.tool == "brush"
            assert alice.participants[bob.participant_id].frame == 2
            assert alice.seq == bob.seq == bob_ack

            bob.leave()
            gone = alice.wait_for(lambda e: isinstance(e, PresenceEvent) and e.left)
            assert gone.participant.participant_id == bob.participant_id
            assert bob.participant_id not in alice.participants
        finally:
            alice.leave()
            bob.leave()


def test_op_helpers_undo_redo_and_late_join_snapshot(client: Client) -> None:
    with client.open_session(BUNDLE) as session:
        tex = session.texture(np.full((16, 16, 4), (255, 0, 0, 255), np.uint8), frame=0, rect=[26, 12, 16, 16])
        adj = session.adjustment([(24, 10), (44, 10), (44, 30)], frame=0, exposure=0.5)
        assert session.update(tex.op_id, opacity=0.5) == adj + 1
        session.set_visible(adj.op_id, False)
        session.delete(tex.op_id)
        undo = session.undo()  # brings the texture back
        assert undo.op_id.startswith("undo") and undo == session.seq
        redo = session.redo()  # deletes it again
        assert redo == undo + 1
        session.undo()
        session.redo()
        with pytest.raises(OpRejected, match="nothing to redo") as refused:
            session.redo()
        assert refused.value.code == "FAILED_PRECONDITION"
        late = client.join(session.info.session_id, session.join_token, name="late")
        try:
            live_ids = {op.id for op in late.document}
            assert adj.op_id in live_ids and tex.op_id not in live_ids  # deleted objects are left out
            assert late.seq == session.seq
        finally:
            late.leave()


def test_join_with_last_seq_replays_what_was_missed(client: Client) -> None:
    with client.open_session(BUNDLE, name="writer") as writer:
        first = writer.stroke(ON_ROI, frame=0)
        second = writer.stroke([(29, 10), (49, 30)], frame=1)
        third = writer.stroke([(30, 10), (50, 30)], frame=2)
        reader = client.join(writer.info.session_id, writer.join_token, name="reader", last_seq=int(first))
        try:
            replayed = [reader.next_event(10) for _ in range(2)]
            ops_seen = [(e.seq, e.op.id) for e in replayed if isinstance(e, OpEvent)]
            assert ops_seen == [(second, second.op_id), (third, third.op_id)]
            assert reader.seq == third
        finally:
            reader.leave()


# ---------------------------------------------------------------- rendering


def test_render_frame_as_numpy_pil_bytes_playback_and_export(client: Client, tmp_path: Path) -> None:
    with client.open_session(BUNDLE) as session:
        before = client.render(session, 0)
        assert before.shape == (HEIGHT, WIDTH, 3) and before.dtype == np.uint8
        session.texture(np.full((20, 20, 4), (255, 0, 255, 255), np.uint8), frame=0, rect=[22, 14, 20, 20])
        frame = client.render_frame(session, 0, format="raw")
        after = frame.to_numpy()
        assert frame.seq == session.seq and not np.array_equal(before, after)
        assert client.render_image(session, 0).size == (WIDTH, HEIGHT)
        jpeg = client.render_bytes(session, 0, format="jpeg", quality=90)
        assert jpeg[:2] == b"\xff\xd8"
        half = session.render(1, scale=0.5)
        assert half.shape == (HEIGHT // 2, WIDTH // 2, 3)
        shown = [f.frame for f in client.playback(session, start=2, end=6, fps=20)]
        # paced by the wall clock: a slow reader may skip frames, but never sees one twice or out of range
        assert shown and shown == sorted(set(shown)) and set(shown) <= {2, 3, 4, 5}
        progress = []
        out = client.export(session, tmp_path / "edit.mp4", progress=progress.append)
        assert out.stat().st_size == progress[-1].total_bytes > 0
        assert progress[-1].received_bytes == out.stat().st_size and not (tmp_path / "edit.mp4.part").exists()
        from vatlas.video import read_video

        video = read_video(out)
        assert video.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


# ---------------------------------------------------------------- reconnect


def test_session_resumes_after_server_restart(server_process_factory: Callable[..., Any]) -> None:
    port = free_port()
    proc = server_process_factory(extra_args=("--grpc", f"127.0.0.1:{port}"))  # the last --grpc wins
    address = f"127.0.0.1:{port}"
    assert proc.grpc_target == address
    with Client(address, token=TOKEN, reconnect_timeout=60) as a_client, \
            Client(address, token=TOKEN, reconnect_timeout=60) as b_client:
        info = a_client.create_session(BUNDLE)
        alice = a_client.join(info, name="alice")
        bob = b_client.join(info, name="bob")
        before = alice.stroke(ON_ROI, frame=0)
        bob.wait_for(lambda e: isinstance(e, OpEvent) and e.seq == before)
        pid = alice.participant_id

        proc.kill()  # SIGKILL: only what the op log fsynced survives
        # an op sent while the server is down is held, re-sent after the resume and acknowledged then
        result: dict[str, Any] = {}
        sender = threading.Thread(target=lambda: result.update(
            ack=alice.stroke([(29, 10), (49, 30)], frame=1, timeout=90)))
        sender.start()
        proc.restart()
        assert proc.grpc_target == address
        sender.join(100)
        during = result["ack"]
        assert during == before + 1
        assert alice.reconnects >= 1 and alice.participant_id == pid

        seen = bob.wait_for(lambda e: isinstance(e, OpEvent) and e.op.id == during.op_id, 30)
        assert seen.seq == during and bob.reconnects >= 1
        after = bob.stroke([(30, 10), (50, 30)], frame=2)
        got = alice.wait_for(lambda e: isinstance(e, OpEvent), 30)
        assert (got.seq, got.op.id) == (after, after.op_id)
        assert alice.seq == bob.seq == after
        alice.leave()
        bob.leave()


# ---------------------------------------------------------------- asyncio


def test_async_client_basic_flow(running_server: Any, tmp_path: Path) -> None:
    async def flow() -> None:
        async with AsyncClient(running_server.grpc_target, token=TOKEN) as client:
            assert BUNDLE in {b.name for b in await client.list_bundles()}
            with pytest.raises(NotFound):
                await client.create_session("no-such-bundle")
            info = await client.create_session(BUNDLE)
            async with await client.join(info, name="a") as a, await client.join(info, name="b") as b:
                ack = await a.stroke([(2, 2), (40, 30)], frame=0, color="#0000ff")
                seen = await b.wait_for(lambda e: isinstance(e, OpEvent))
                assert (seen.seq, seen.op.id) == (ack, ack.op_id)
                with pytest.raises(OpRejected, match="out of range"):
                    await b.send(ops.stroke([(1, 1), (2, 2)], frame=999))
                await b.set_presence(frame=1, tool="eraser")
                moved = await a.wait_for(lambda e: isinstance(e, PresenceEvent) and e.participant.tool == "eraser")
                assert moved.participant.participant_id == b.participant_id
                image = await a.render(0)
                assert image.shape == (HEIGHT, WIDTH, 3)
                frames = [f.frame async for f in client.playback(a, start=0, end=3, fps=20)]
                assert frames and frames == sorted(set(frames)) and set(frames) <= {0, 1, 2}
                out = await client.export(a, tmp_path / "async.mp4")
                assert out.stat().st_size > 0
            assert a.closed and b.closed

    asyncio.run(flow())


# ---------------------------------------------------------------- bundles and lifecycle


def test_bundles_list_load_info_and_upload(client: Client, tmp_path: Path) -> None:
    listed = {b.name: b for b in client.list_bundles()}
    assert BUNDLE in listed and (listed[BUNDLE].frames, listed[BUNDLE].width) == (FRAMES, WIDTH)
    loaded = client.load_bundle(BUNDLE)
    assert loaded.loaded and loaded.height == HEIGHT and loaded.file_bytes > 0
    info = client.bundle_info(BUNDLE)
    assert (info.frames, info.width, info.height, info.ref_frame) == (FRAMES, WIDTH, HEIGHT, 0)
    video = tmp_path / "clip.mp4"
    video.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # 4 chunks; the server only stores it
    upload_id = client.upload_video(video)
    assert upload_id
    with pytest.raises(FileNotFoundError):
        client.upload_video(tmp_path / "missing.mp4")


def test_closing_the_client_leaves_its_sessions(running_server: Any) -> None:
    with Client(running_server.grpc_target, token=TOKEN) as watcher_client:
        info = watcher_client.create_session(BUNDLE)
        watcher = watcher_client.join(info, name="watcher")
        other_client = Client(running_server.grpc_target, token=TOKEN)
        other = other_client.join(info, name="other")
        other_client.close()
        gone = watcher.wait_for(lambda e: isinstance(e, PresenceEvent) and e.left)
        assert gone.participant.participant_id == other.participant_id and other.closed
        with pytest.raises(VatlasError, match="closed"):
            other.stroke(ON_ROI, frame=0)
        watcher.leave()


def test_limits_and_deadlines_map_to_their_errors(tiny_models_dir: Path, tmp_path: Path) -> None:
    from conftest import start_in_process_server
    from vatlas.server.session.limits import ServerLimits
    from vatlas_client import DeadlineExceeded, ResourceExhausted

    small = start_in_process_server(tiny_models_dir, limits=ServerLimits(max_upload_bytes=1024 * 1024))
    try:
        with Client(small.grpc_target, token=TOKEN) as c:
            video = tmp_path / "big.mp4"
            video.write_bytes(os.urandom(2 * 1024 * 1024))
            with pytest.raises(ResourceExhausted):
                c.upload_video(video)
    finally:
        small.stop()
    # a server that accepts connections and never answers: the call's deadline expires. (A microsecond
    # deadline against a live server raced the reply: gRPC keeps deadlines in milliseconds.)
    with socket.create_server(("127.0.0.1", 0)) as hung:
        port = hung.getsockname()[1]
        with Client(f"127.0.0.1:{port}", token=TOKEN, timeout=0.2) as hurried, pytest.raises(DeadlineExceeded):
            hurried.list_bundles()


def test_ops_from_several_threads_get_their_own_acks(client: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with client.open_session(BUNDLE) as session:
        start = session.seq

        def draw(i: int) -> tuple[str, int]:
            op = ops.stroke([(26 + i % 5, 10), (46 + i % 5, 30)], frame=i % FRAMES, id=f"thread-stroke-{i}")
            ack = session.send(op)
            return ack.op_id, int(ack)

        with ThreadPoolExecutor(4) as pool:
            acks = list(pool.map(draw, range(40)))
        assert [op_id for op_id, _ in acks] == [f"thread-stroke-{i}" for i in range(40)]
        assert sorted(seq for _, seq in acks) == list(range(start + 1, start + 41))


def test_async_session_resumes_after_server_restart(server_process_factory: Callable[..., Any]) -> None:
    port = free_port()
    proc = server_process_factory(extra_args=("--grpc", f"127.0.0.1:{port}"))
    address = f"127.0.0.1:{port}"

    async def flow() -> None:
        async with AsyncClient(address, token=TOKEN, reconnect_timeout=60) as client:
            info = await client.create_session(BUNDLE)
            async with await client.join(info, name="a") as a, await client.join(info, name="b") as b:
                first = await a.stroke(ON_ROI, frame=0)
                await asyncio.to_thread(proc.kill)
                pending = asyncio.ensure_future(a.stroke([(29, 10), (49, 30)], frame=1, timeout=90))
                await asyncio.to_thread(proc.restart)
                second = await pending
                assert second == first + 1 and a.reconnects >= 1
                seen = await b.wait_for(lambda e: isinstance(e, OpEvent) and e.op.id == second.op_id, 30)
                assert seen.seq == second and b.seq == second

    asyncio.run(flow())


def test_a_detached_fit_is_cancelled_over_grpc(running_server, tmp_path: Path) -> None:
    from vatlas_client import VatlasError

    from vatlas.synth import make_scene
    from vatlas.video import write_mp4

    scene = make_scene(frames=4, size=(64, 48), seed=3)
    video = write_mp4(tmp_path / "clip.mp4", scene.frames, scene.fps, crf=12)
    roi = {"ref_frame": 0, "polygons": [[[14, 10], [50, 10], [50, 38], [14, 38]]]}
    with Client(running_server.grpc_target, token=TOKEN, timeout=60) as c:
        progress = c.fit_progress(video, "to-cancel", roi, preset="draft", iterations=100_000, detach=True)
        first = next(progress)
        assert first.fit_id
        c.cancel_fit(first.fit_id)
        with pytest.raises(VatlasError) as stopped:
            for _ in progress:
                pass
        assert stopped.value.code == "CANCELLED" and "cancelled" in stopped.value.message
        assert "to-cancel" not in [b.name for b in c.list_bundles()]
        with pytest.raises(VatlasError) as again:
            c.cancel_fit(first.fit_id)
        assert again.value.code == "FAILED_PRECONDITION"


def test_an_ack_is_a_handle_on_the_object_its_op_made(running_server: Any) -> None:
    """``s = session.stroke(...)``, then ``s.update(width=8)`` and ``s.delete()``, sync and async alike."""
    with Client(running_server.grpc_target, token=TOKEN) as client:
        info = client.create_session(BUNDLE)
        with client.join(info, name="sync") as session:
            s = session.stroke(ON_ROI, frame=0, width=3.0, id="handle-stroke")
            widened = s.update(width=8)
            assert widened > s and widened.session is session
            with client.join(info, name="late") as late:
                assert [op.width for op in late.document if op.id == "handle-stroke"] == [8.0]
            s.delete()
            with client.join(info, name="later") as later:
                assert "handle-stroke" not in [op.id for op in later.document]
            s.restore()
            undone = session.undo()
            with pytest.raises(ValueError, match="no handle"):
                undone.update(width=2)

    async def scenario() -> None:
        async with AsyncClient(running_server.grpc_target, token=TOKEN) as aclient:
            session = await aclient.open_session(BUNDLE, name="async")
            s = await session.stroke(ON_ROI, frame=0, width=3.0, id="async-stroke")
            assert (await s.update(opacity=0.5)) > s
            await s.delete()
            await session.leave()

    asyncio.run(scenario())
