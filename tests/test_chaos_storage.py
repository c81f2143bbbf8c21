"""Storage chaos against the real `vatlas serve` process: a full disk and a damaged op log lose no acknowledged op.

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
from vatlas.server.session.oplog import DAMAGED_SUFFIX, read_records
from vatlas.v1 import render_pb2, sessions_pb2

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
    """A flipped bit in record 10 and a zeroed page further on cost only the records they touch."""
    server = server_process_factory(data_dir=tmp_path / "data")

    async def edit() -> sessions_pb2.SessionInfo:
        stubs = AioStubs(server.grpc_target, server.token)
        try:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
            s = GrpcSession(stubs)
            s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
            await s.event("snapshot")
            for i in range(400):
                s.send_op(stroke_op(f"s{i}", i % 8, x=float(i % 30)))
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
