"""Jobs under quotas against real servers on loopback (M4, L8): uploads share a store quota, a cancelled upload
is removed at once and orphans at start; fits have size, iteration and decoded-video limits, run as a child
process that stops (and frees its slot) when its caller leaves unless it detaches; a cancelled export keeps
its slot and its folder until its worker has stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import start_in_process_server
from serve_helpers import AioStubs, GrpcStubs
from vatlas.server.session.limits import ServerLimits
from vatlas_wire.v1 import bundles_pb2, render_pb2, sessions_pb2

from vatlas.video import write_mp4

ROI = '{"ref_frame": 0, "polygons": [[[4, 4], [40, 4], [40, 30], [4, 30]]]}'
KB = 1024


def _wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.default_rng(0)
    frames = np.stack([np.clip(rng.normal(120 + 5 * i, 30, (48, 64, 3)), 0, 255).astype(np.uint8) for i in range(8)])
    write_mp4(path, frames, 10.0)
    return path.read_bytes()


def _upload(stubs: GrpcStubs, data: bytes, name: str = "clip.mp4") -> str:
    chunks = [bundles_pb2.UploadChunk(filename=name, data=data[i:i + 64 * KB], last=i + 64 * KB >= len(data))
              for i in range(0, len(data), 64 * KB)]
    return stubs.bundles.UploadVideo(iter(chunks), metadata=stubs.metadata).upload_id


# ---------------------------------------------------------------- uploads


def test_uploads_share_a_quota_and_the_oldest_unused_go_first(tiny_models_dir: Path) -> None:
    server = start_in_process_server(tiny_models_dir, limits=ServerLimits(max_upload_store_bytes=300 * KB,
                                                                          max_upload_bytes=200 * KB))
    stubs = GrpcStubs(server.grpc_target, server.token)
    jobs = server.core.jobs
    try:
        first = _upload(stubs, b"a" * 150 * KB)
        second = _upload(stubs, b"b" * 100 * KB)
        third = _upload(stubs, b"c" * 120 * KB)  # no room for it: the oldest goes
        assert set(jobs.uploads) == {second, third} and jobs.store_bytes() == 220 * KB
        assert not (jobs.work_dir / "uploads" / first).exists()
        jobs.uploads[second].fits = 1  # a fit reads it: it stays, and the newcomer is refused
        jobs.uploads[third].fits = 1
        with pytest.raises(grpc.RpcError) as info:
            _upload(stubs, b"d" * 150 * KB)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "uploads on this server" in \
            info.value.details()
        assert set(jobs.uploads) == {second, third} and len(list((jobs.work_dir / "uploads").iterdir())) == 2
    finally:
        stubs.close()
        server.stop()


def test_a_cancelled_upload_is_removed_at_once(tiny_models_dir: Path) -> None:
    server = start_in_process_server(tiny_models_dir)
    uploads = server.core.jobs.work_dir / "uploads"

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        more = asyncio.Event()

        async def chunks():
            for _ in range(20):
                yield bundles_pb2.UploadChunk(filename="big.mp4", data=b"x" * 256 * KB)
            await more.wait()  # the client goes quiet, then gives up

        call = stubs.bundles.UploadVideo(chunks(), metadata=stubs.metadata)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sum(f.stat().st_size for f in uploads.glob("*/big.mp4")) >= 5 * 1024 * KB:
                break
        assert list(uploads.glob("*/big.mp4")), "the upload never reached the disk"
        call.cancel()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not list(uploads.glob("*")):
                break
        assert not list(uploads.glob("*")), "a cancelled upload stayed on disk"
        assert server.core.jobs.store_bytes() == 0 and not server.core.jobs.uploads
        await stubs.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_uploads_of_an_earlier_run_are_removed_at_start(server_process_factory, tmp_path: Path, clip: bytes) -> None:
    server = server_process_factory(data_dir=tmp_path / "data")
    stubs = GrpcStubs(server.grpc_target, server.token)
    upload_id = _upload(stubs, clip)
    stubs.close()
    assert (tmp_path / "data" / "uploads" / upload_id).is_dir()
    server.kill()
    server.restart()
    assert not (tmp_path / "data" / "uploads").exists()
    stubs = GrpcStubs(server.grpc_target, server.token)
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(stubs.bundles.StartFit(bundles_pb2.StartFitRequest(upload_id=upload_id, name="late", roi_json=ROI),
                                        metadata=stubs.metadata))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        stubs.close()


# ---------------------------------------------------------------- fits


def test_fit_size_iterations_and_video_are_limited(tiny_models_dir: Path, clip: bytes) -> None:
    server = start_in_process_server(tiny_models_dir, limits=ServerLimits(max_fit_video_bytes=64 * 48 * 3 * 4))
    stubs = GrpcStubs(server.grpc_target, server.token)
    try:
        upload_id = _upload(stubs, clip)
        cases = [
            (dict(iterations=10_000_000), grpc.StatusCode.INVALID_ARGUMENT, "iterations"),
            (dict(width=8192, height=8192), grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
            (dict(width=64, height=48, iterations=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "decoded frames"),
        ]
        for fields, code, word in cases:
            with pytest.raises(grpc.RpcError) as info:
                list(stubs.bundles.StartFit(bundles_pb2.StartFitRequest(upload_id=upload_id, name="big", roi_json=ROI,
                                                                        preset="draft", **fields),
                                            metadata=stubs.metadata, timeout=60))
            assert info.value.code() == code and word in info.value.details(), (fields, info.value.details())
        assert not server.core.jobs._fitting  # every refusal freed the slot
    finally:
        stubs.close()
        server.stop()


def _fit_process(server, name: str, timeout: float = 60.0) -> int:
    found: list[int] = []

    def started() -> bool:
        process = server.core.jobs._fitting.get(name)
        if process is not None:
            found.append(process.pid)
        return bool(found)

    _wait_for(started, timeout, f"the fit process of {name}")
    return found[0]


def test_a_fit_stops_when_its_caller_leaves_unless_it_detaches(tiny_models_dir: Path, tmp_path: Path,
                                                               clip: bytes) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.vatlas").symlink_to(tiny_models_dir / "tiny.vatlas")
    server = start_in_process_server(models)
    stubs = GrpcStubs(server.grpc_target, server.token)
    upload_id = _upload(stubs, clip)

    def start(name: str, detach: bool = False):
        call = stubs.bundles.StartFit(bundles_pb2.StartFitRequest(
            upload_id=upload_id, name=name, roi_json=ROI, preset="draft", iterations=100_000, width=64, height=48,
            detach=detach), metadata=stubs.metadata)
        first = next(call)
        assert first.stage == "fitting"
        return call

    try:
        call = start("long")
        pid = _fit_process(server, "long")
        assert _alive(pid)
        call.cancel()  # the caller goes away
        _wait_for(lambda: not _alive(pid), 20, "the fit to stop")
        _wait_for(lambda: not server.core.jobs._fitting, 10, "the fit slot")
        assert not (models / "long.vatlas").exists()
        # the slot is free again: a detached fit takes it and keeps it after its caller leaves
        call = start("kept", detach=True)
        pid = _fit_process(server, "kept")
        call.cancel()
        time.sleep(2.0)
        assert _alive(pid) and "kept" in server.core.jobs._fitting
        with pytest.raises(grpc.RpcError) as info:
            next(stubs.bundles.StartFit(bundles_pb2.StartFitRequest(upload_id=upload_id, name="third", roi_json=ROI,
                                                                    preset="draft"), metadata=stubs.metadata))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stubs.close()
        server.stop()
    _wait_for(lambda: not _alive(pid), 20, "shutdown to stop the detached fit")


# ---------------------------------------------------------------- exports (L8)


@pytest.fixture(scope="module")
def long_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vatlas.models.bundle import save_bundle

    from vatlas.bench.render import synthetic_bundle

    models = tmp_path_factory.mktemp("long-models")
    save_bundle(synthetic_bundle(192, 128, 160, 128, seed=0), models / "long.vatlas")
    return models


def _export_threads() -> dict[str, threading.Thread]:
    return {t.name: t for t in threading.enumerate() if t.name.startswith("vatlas-export-")}


def test_a_cancelled_export_keeps_its_slot_and_folder_until_its_worker_stops(long_models: Path) -> None:
    server = start_in_process_server(long_models, limits=ServerLimits(max_concurrent_exports=1))
    jobs = server.core.jobs
    problems: list[str] = []
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        """All along: at most one export worker alive, and each one's folder still there while it runs."""
        while watching.is_set():
            alive = _export_threads()
            if len(alive) > 1:
                problems.append(f"{len(alive)} export workers at once")
            folders = list(jobs.work_dir.glob("export-*"))
            if alive and len(folders) < len(alive):
                problems.append("an export folder was removed while its worker ran")
            time.sleep(0.002)

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        infos = [await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle="long"),
                                                    metadata=stubs.metadata) for _ in range(2)]

        def export(info):
            return stubs.render.Export(render_pb2.ExportRequest(session_id=info.session_id, join_token=info.join_token,
                                                                format="png_zip"), metadata=stubs.metadata)

        first = export(infos[0])
        event = await first.read()
        assert event.stage == "rendering"
        assert jobs.exports_running == 1
        first.cancel()  # the caller goes away mid-export
        second = export(infos[1])
        event = await second.read()  # only once the first worker has stopped
        assert event.stage == "rendering" and f"vatlas-export-{infos[0].session_id}" not in _export_threads()
        second.cancel()
        await asyncio.sleep(0.1)
        await stubs.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        asyncio.run(scenario())
        _wait_for(lambda: jobs.exports_running == 0 and not _export_threads(), 60, "the export workers to stop")
        _wait_for(lambda: not list(jobs.work_dir.glob("export-*")), 10, "the export folders to go")
    finally:
        watching.clear()
        watcher.join(5)
        server.stop()
    assert not problems, problems[:5]

