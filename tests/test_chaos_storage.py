"""Storage chaos against the real `vatlas serve` process: SIGKILL at random moments, a full disk, torn tails and
damaged files lose no acknowledged op.

The SIGKILL storm (`vatlas.bench.serve.run_chaos`, also `vatlas bench serve --chaos KILLS`) kills a
server over a hundred times while a gRPC and a WebSocket participant stream ops, injects torn tails and
flipped snapshot bits between kills, and after each restart resumes from the last verified seq.

The full disk is a small tmpfs when this process may mount one (root with CAP_SYS_ADMIN); the same scenario
also runs with the server's file size limit squeezed (RLIMIT_FSIZE via prlimit, so write() fails with EFBIG
part way through a record, exactly like ENOSPC on a full disk), which needs no privileges.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BUNDLE
from PIL import Image
from serve_helpers import AioStubs, GrpcSession, stroke_op
from vatlas.server.session.oplog import DAMAGED_SUFFIX, read_records, read_snapshot
from vatlas_wire.v1 import render_pb2, sessions_pb2

from vatlas.bench.serve import run_chaos

ROOM = 8 * 1024  # what is left on the "disk" when the big op arrives


def noise_png(seed: int, side: int = 120) -> bytes:
    """A PNG that does not compress (about 43 KB): one op far larger than the room left."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def texture_op(op_id: str, png: bytes) -> dict:
    return {"id": op_id, "type": "texture", "space": "frame", "frame": 0, "image": png, "rect": [4, 4, 32, 32]}


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


async def _full_disk_scenario(server, squeeze: Callable[[Path], None], release: Callable[[], None]) -> list[str]:
    stubs = AioStubs(server.grpc_target, server.token)
    try:
        info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                  metadata=stubs.metadata)
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        await s.event("snapshot")
        s.send_op(stroke_op("a"))
        assert (await s.event("accepted")).seq == 1
        render = render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token, frame=0,
                                          format="png")
        before = (await stubs.render.RenderFrame(render, metadata=stubs.metadata)).data
        log_path = server.data_dir / "sessions" / info.session_id / "ops.log"
        size = log_path.stat().st_size
        squeeze(log_path)
        png = noise_png(1)
        s.send_op(texture_op("big", png))
        rejected = await s.event("rejected", where=lambda r: r.op_id == "big")
        assert rejected.error.code == "UNAVAILABLE", rejected
        assert str(server.data_dir) not in rejected.error.message and "Errno" not in rejected.error.message
        assert log_path.stat().st_size == size, "the refused op left bytes in the log"
        after = (await stubs.render.RenderFrame(render, metadata=stubs.metadata)).data
        assert after == before, "the refused op reached the engine"
        release()
        s.send_op(texture_op("big", png))  # the retry is not ALREADY_EXISTS: nothing of the first try stayed
        assert (await s.event("accepted", where=lambda a: a.op_id == "big")).seq == 2
        for i in range(5):
            s.send_op(stroke_op(f"later{i}", i))
            assert (await s.event("accepted", where=lambda a, i=i: a.op_id == f"later{i}")).seq == 3 + i
        await s.close()
        return [info.session_id, info.join_token]
    finally:
        await stubs.close()


async def _snapshot(server, session_id: str, join_token: str) -> sessions_pb2.Snapshot:
    stubs = AioStubs(server.grpc_target, server.token)
    try:
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=session_id, join_token=join_token))
        snap = await s.event("snapshot")
        await s.close()
        return snap
    finally:
        await stubs.close()


def _check_restart(server, session_id: str, join_token: str) -> None:
    server.kill()
    server.restart()
    snap = asyncio.run(_snapshot(server, session_id, join_token))
    assert snap.session.seq == 7
    assert [op.id for op in snap.document.ops] == ["a", "big", *(f"later{i}" for i in range(5))]
    records, clean = read_records(server.data_dir / "sessions" / session_id / "ops.log")
    assert [r["seq"] for r in records] == list(range(1, 8))


def test_full_tmpfs_loses_no_acknowledged_op(server_process_factory, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        server = server_process_factory(data_dir=disk / "data")
        filler = disk / "filler"

        def squeeze(_: Path) -> None:
            st = os.statvfs(disk)
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - ROOM))

        ids = asyncio.run(_full_disk_scenario(server, squeeze, lambda: filler.unlink()))
        _check_restart(server, *ids)
        server.close()


def test_file_size_limit_loses_no_acknowledged_op(server_process_factory, tmp_path: Path) -> None:
    server = server_process_factory(data_dir=tmp_path / "data")
    pid = server.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)

    def squeeze(log_path: Path) -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (log_path.stat().st_size + ROOM, hard))

    ids = asyncio.run(_full_disk_scenario(server, squeeze,
                                          lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))))
    _check_restart(server, *ids)


def test_damaged_log_is_resynced_quarantined_and_reported(server_process_factory, tmp_path: Path) -> None:
    """A flipped bit in record 10 and a zeroed page further on cost only the records they touch (no snapshot
    here: one would make the damaged records before it redundant, see the snapshot tests below)."""
    server = server_process_factory(data_dir=tmp_path / "data", extra_args=("--limit", "compact_every=100000"))

    async def edit() -> sessions_pb2.SessionInfo:
        stubs = AioStubs(server.grpc_target, server.token)
        try:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
            s = GrpcSession(stubs)
            s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
            await s.event("snapshot")
            for i in range(400):
                s.send_op(stroke_op(f"s{i}", i % 8, x=26.0 + i % 5))
            await s.event("accepted", where=lambda a: a.op_id == "s399", timeout=120)
            await s.close()
            return info
        finally:
            await stubs.close()

    info = asyncio.run(edit())
    server.kill()
    log_path = server.data_dir / "sessions" / info.session_id / "ops.log"
    data = bytearray(log_path.read_bytes())
    records, _ = read_records(log_path)
    assert len(records) == 400
    starts = [0]
    for _ in range(399):
        length = int.from_bytes(data[starts[-1]:starts[-1] + 4], "little")
        starts.append(starts[-1] + 8 + length)
    data[starts[9] + 20] ^= 0x10  # one flipped bit inside record 10 (seq 10)
    page = (len(data) // 2) // 4096 * 4096
    data[page:page + 4096] = bytes(4096)  # a zeroed page in the middle
    log_path.write_bytes(bytes(data))
    lost = {i + 1 for i, start in enumerate(starts) if i == 9 or (start < page + 4096 and
                                                                  (starts[i + 1] if i < 399 else len(data)) > page)}
    server.restart()
    snap = asyncio.run(_snapshot(server, info.session_id, info.join_token))
    live = {op.id for op in snap.document.ops}
    assert live == {f"s{i}" for i in range(400) if i + 1 not in lost}
    assert snap.session.seq == 400 and len(lost) < 40  # record 10 and the ~20 the page touched
    quarantined = list(log_path.parent.glob(f"ops.log{DAMAGED_SUFFIX}*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)
    records, clean = read_records(log_path)
    assert clean == log_path.stat().st_size and len(records) == 400 - len(lost)
    report = "".join(server.stderr_lines)
    assert "DAMAGED OP LOG" in report and str(quarantined[0].name) in report, report[-2000:]


KILLS = 105


def test_sigkill_storm_loses_no_acknowledged_op(tiny_models_dir: Path, tmp_path: Path, server_process_factory) -> None:
    """Over a hundred SIGKILLs at random moments, torn tails and damaged snapshots between them, snapshots and
    compactions under way: every acknowledged op comes back with its seq, in order, after every restart."""
    result = run_chaos(tiny_models_dir, TINY_BUNDLE, tmp_path / "data", KILLS, seed=17)
    print({k: v for k, v in result.items() if k not in ("restart_s", "resume_s", "server_stderr", "final_live",
                                                        "alive_strokes")})
    assert result["kills"] == KILLS and result["acked"] > 5 * KILLS
    assert not result["lost"], result["lost"][:10]
    assert not result["disorder"], result["disorder"][:10]
    assert not result["rejected"], result["rejected"][:10]
    # the damage was there to repair, and the log was compacted many times under the kills
    assert result["torn"] >= KILLS // 7 and result["flipped"] >= 3 and result["snapshots"] >= 20
    assert result["full_document_resumes"] <= KILLS // 10  # nearly every restart was checked op by op
    # a fresh `vatlas serve` process (not a forked one) replays the same session
    server = server_process_factory(token="chaos-token", data_dir=tmp_path / "data")
    snap = asyncio.run(_snapshot(server, result["session_id"], _join_token(tmp_path / "data", result["session_id"])))
    assert snap.session.seq == result["max_seq"]
    assert [op.id for op in snap.document.ops] == result["final_live"]
    assert set(result["alive_strokes"]) <= set(result["final_live"])
    session_dir = tmp_path / "data" / "sessions" / result["session_id"]
    assert list(session_dir.glob(f"snapshot{DAMAGED_SUFFIX}*")), "the flipped snapshots were not quarantined"
    records, clean = read_records(session_dir / "ops.log")
    assert clean == (session_dir / "ops.log").stat().st_size  # torn tails were cut
    assert len(records) < result["acked"] // 5  # compacted: the log reaches back only to the fallback snapshot


def _join_token(data: Path, session_id: str) -> str:
    import json

    return json.loads((data / "sessions" / session_id / "meta.json").read_text())["join_token"]


async def _edit(server, n: int, prefix: str, info: sessions_pb2.SessionInfo | None = None) -> sessions_pb2.SessionInfo:
    stubs = AioStubs(server.grpc_target, server.token)
    try:
        if info is None:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        await s.event("snapshot")
        for i in range(n):
            s.send_op(stroke_op(f"{prefix}{i}", i % 8, x=26.0 + i % 5))
        await s.event("accepted", where=lambda a: a.op_id == f"{prefix}{n - 1}", timeout=120)
        await s.close()
        return info
    finally:
        await stubs.close()


def test_a_damaged_snapshot_falls_back_and_loses_nothing(server_process_factory, tmp_path: Path) -> None:
    """A flipped bit in the newest snapshot: the fallback snapshot and the log rebuild the session exactly."""
    server = server_process_factory(data_dir=tmp_path / "data", extra_args=("--limit", "compact_every=30"))
    info = asyncio.run(_edit(server, 100, "s"))
    server.kill()
    session_dir = server.data_dir / "sessions" / info.session_id
    assert read_snapshot(session_dir).state["seq"] >= 60 and (session_dir / "snapshot.prev").exists()
    data = bytearray((session_dir / "snapshot").read_bytes())
    data[len(data) // 2] ^= 0x04
    (session_dir / "snapshot").write_bytes(bytes(data))
    server.restart()
    snap = asyncio.run(_snapshot(server, info.session_id, info.join_token))
    assert snap.session.seq == 100 and [op.id for op in snap.document.ops] == [f"s{i}" for i in range(100)]
    quarantined = list(session_dir.glob(f"snapshot{DAMAGED_SUFFIX}*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)
    report = "".join(server.stderr_lines)
    assert "DAMAGED SNAPSHOT" in report and "damaged and repaired" not in report.split("DAMAGED SNAPSHOT")[0]
    # and the session goes on: the next snapshot is written over the repaired state
    asyncio.run(_edit(server, 40, "t", info))
    server.kill()
    server.restart()
    snap = asyncio.run(_snapshot(server, info.session_id, info.join_token))
    assert snap.session.seq == 140 and len(snap.document.ops) == 140


def test_a_full_disk_while_snapshotting_loses_nothing(server_process_factory, tmp_path: Path) -> None:
    """The snapshot cannot be written (the file size limit lets log records in, not the whole document): the
    session goes on logging, a restart has every acknowledged op, and once there is room again the next
    snapshot is written."""
    server = server_process_factory(data_dir=tmp_path / "data", extra_args=("--limit", "compact_every=20"))
    pid = server.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    info = asyncio.run(_edit_textures(server, None, 10))  # seq 1-10: 75 KB of images every snapshot holds
    asyncio.run(_edit(server, 30, "a", info))  # seq 11-40: snapshots at 20 and 40, the log cut back to 21-40
    session_dir = server.data_dir / "sessions" / info.session_id
    log_path = session_dir / "ops.log"
    _wait_for(lambda: (read_snapshot(session_dir).state or {}).get("seq") == 40 and len(read_records(log_path)[0]) == 20)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (log_path.stat().st_size + 16 * 1024, hard))
    asyncio.run(_edit(server, 25, "b", info))  # seq 41-65: the snapshot due at 60 does not fit
    _wait_for(lambda: "cannot snapshot the op log" in "".join(server.stderr_lines))
    assert read_snapshot(session_dir).state["seq"] == 40
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    asyncio.run(_edit(server, 10, "c", info))  # seq 66-75: tried again, and written
    _wait_for(lambda: read_snapshot(session_dir).state["seq"] >= 65)
    server.kill()
    server.restart()
    snap = asyncio.run(_snapshot(server, info.session_id, info.join_token))
    expected = ([f"t{i}" for i in range(10)] + [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(25)]
                + [f"c{i}" for i in range(10)])
    assert snap.session.seq == len(expected) and [op.id for op in snap.document.ops] == expected


def _wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def _edit_textures(server, info: sessions_pb2.SessionInfo | None, n: int) -> sessions_pb2.SessionInfo:
    """A session (new unless given) and n texture ops of 7.5 KB of noise each."""
    stubs = AioStubs(server.grpc_target, server.token)
    try:
        if info is None:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        await s.event("snapshot")
        for i in range(n):
            s.send_op(texture_op(f"t{i}", noise_png(100 + i, side=50)))
            await s.event("accepted", where=lambda a, i=i: a.op_id == f"t{i}", timeout=60)
        await s.close()
        return info
    finally:
        await stubs.close()
