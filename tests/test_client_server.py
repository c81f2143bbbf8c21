"""vatlas_client against a real `vatlas serve` process on loopback: real gRPC, real session core, real renders.

The server runs as a child process so that the reconnect test can stop and restart it on the same port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from vatlas.models.bundle import save_bundle
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

from vatlas.synth import make_scene

TOKEN = "client-test-token"
BUNDLE = "tiny"
FRAMES, WIDTH, HEIGHT = 8, 64, 48
READY = "VATLAS_READY "


def make_models(directory: Path, name: str = BUNDLE) -> Path:
    """A models folder holding one small ground-truth bundle of a synthetic scene (perfect 'fit')."""
    directory.mkdir(parents=True, exist_ok=True)
    scene = make_scene(frames=FRAMES, size=(WIDTH, HEIGHT), seed=3)
    save_bundle(scene.ground_truth_bundle(atlas_size=64), directory / f"{name}.vatlas")
    return directory


class ServerProcess:
    """`vatlas serve` in a child process; `restart()` brings it back on the same port with the same data."""

    def __init__(self, models: Path, data: Path | None, log: Path) -> None:
        self.models, self.data, self.log_path = models, data, log
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        cmd = [sys.executable, "-m", "vatlas.cli", "serve", "--models", str(self.models), "--grpc",
               f"127.0.0.1:{self.port}", "--http", "127.0.0.1:0", "--token", TOKEN, "--device", "cpu",
               "--log-level", "WARNING"]
        if self.data is not None:
            cmd += ["--data", str(self.data)]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(READY):
                self.port = int(json.loads(line[len(READY):])["grpc"].rpartition(":")[2])
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"vatlas serve did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("client-server")
    proc = ServerProcess(make_models(root / "models"), root / "data", root / "serve.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address, token=TOKEN, timeout=20) as c:
        yield c


# ---------------------------------------------------------------- errors


def test_bad_token_is_unauthenticated(server: ServerProcess) -> None:
    with Client(server.address, token="wrong") as bad:
        with pytest.raises(Unauthenticated, match="token"):
            bad.create_session(BUNDLE)
        with pytest.raises(Unauthenticated):
            bad.list_sessions()
    with Client(server.address, token=TOKEN) as good:
        info = good.create_session(BUNDLE)
    with Client(server.address) as anonymous, pytest.raises(Unauthenticated):
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
        assert session.stroke([(1, 1), (5, 5)], frame=0) >= 1
        with pytest.raises(InvalidArgument):
            client.render_frame(session, FRAMES + 10)


# ---------------------------------------------------------------- sessions


def test_two_clients_see_each_others_ops_and_presence(server: ServerProcess) -> None:
    with Client(server.address, token=TOKEN) as alice_client, Client(server.address, token=TOKEN) as bob_client:
        info = alice_client.create_session(BUNDLE)
        alice = alice_client.join(info, name="alice", color="#ff0000")
        bob = bob_client.join(info.session_id, info.join_token, name="bob")
        try:
            joined = alice.wait_for(lambda e: isinstance(e, PresenceEvent) and e.participant.name == "bob")
            assert joined.participant.participant_id == bob.participant_id and not joined.left

            ack = alice.stroke([(4, 4), (30, 20)], frame=0, width=3, color="#00ff00")
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
        tex = session.texture(np.full((16, 16, 4), (255, 0, 0, 255), np.uint8), frame=0, rect=[8, 8, 16, 16])
        adj = session.adjustment([(0, 0), (20, 0), (20, 20)], frame=0, exposure=0.5)
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
        first = writer.stroke([(1, 1), (9, 9)], frame=0)
        second = writer.stroke([(2, 2), (8, 3)], frame=1)
        third = writer.stroke([(3, 3), (7, 7)], frame=2)
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
        shown = [f.frame for f in client.playback(session, start=2, end=6, fps=200)]
        assert shown == [2, 3, 4, 5]
        progress = []
        out = client.export(session, tmp_path / "edit.mp4", progress=progress.append)
        assert out.stat().st_size == progress[-1].total_bytes > 0
        assert progress[-1].received_bytes == out.stat().st_size and not (tmp_path / "edit.mp4.part").exists()
        from vatlas.video import read_video

        video = read_video(out)
        assert video.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


# ---------------------------------------------------------------- reconnect


def test_session_resumes_after_server_restart(tmp_path: Path) -> None:
    proc = ServerProcess(make_models(tmp_path / "models"), tmp_path / "data", tmp_path / "serve.log")
    proc.start()
    try:
        with Client(proc.address, token=TOKEN, reconnect_timeout=60) as a_client, \
                Client(proc.address, token=TOKEN, reconnect_timeout=60) as b_client:
            info = a_client.create_session(BUNDLE)
            alice = a_client.join(info, name="alice")
            bob = b_client.join(info, name="bob")
            before = alice.stroke([(1, 1), (20, 20)], frame=0)
            bob.wait_for(lambda e: isinstance(e, OpEvent) and e.seq == before)
            pid = alice.participant_id

            proc.stop()
            # an op sent while the server is down is held, re-sent after the resume and acknowledged then
            result: dict[str, object] = {}
            sender = threading.Thread(target=lambda: result.update(
                ack=alice.stroke([(5, 5), (9, 9)], frame=1, timeout=90)))
            sender.start()
            proc.start()
            sender.join(100)
            during = result["ack"]
            assert during == before + 1
            assert alice.reconnects >= 1 and alice.participant_id == pid

            seen = bob.wait_for(lambda e: isinstance(e, OpEvent) and e.op.id == during.op_id, 30)
            assert seen.seq == during
            after = bob.stroke([(3, 3), (4, 9)], frame=2)
            got = alice.wait_for(lambda e: isinstance(e, OpEvent), 30)
            assert (got.seq, got.op.id) == (after, after.op_id)
            assert alice.seq == bob.seq == after
            alice.leave()
            bob.leave()
    finally:
        proc.stop()


# ---------------------------------------------------------------- asyncio


def test_async_client_basic_flow(server: ServerProcess, tmp_path: Path) -> None:
    async def flow() -> None:
        async with AsyncClient(server.address, token=TOKEN) as client:
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
                frames = [f.frame async for f in client.playback(a, start=0, end=3, fps=200)]
                assert frames == [0, 1, 2]
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


def test_closing_the_client_leaves_its_sessions(server: ServerProcess) -> None:
    with Client(server.address, token=TOKEN) as watcher_client:
        info = watcher_client.create_session(BUNDLE)
        watcher = watcher_client.join(info, name="watcher")
        other_client = Client(server.address, token=TOKEN)
        other = other_client.join(info, name="other")
        other_client.close()
        gone = watcher.wait_for(lambda e: isinstance(e, PresenceEvent) and e.left)
        assert gone.participant.participant_id == other.participant_id and other.closed
        with pytest.raises(VatlasError, match="closed"):
            other.stroke([(1, 1), (2, 2)], frame=0)
        watcher.leave()
