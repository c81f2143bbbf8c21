"""Upload and fit over the WebSocket against the real in-process server: chunked upload with the gRPC path's
limits, decoded frames of the upload, a fit with progress and previews that outlives its socket when detached
and is found again by id, and typed errors for a too-large upload and bad ROIs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import start_in_process_server
from serve_helpers import WsClient
from vatlas.server.encoders import decode
from vatlas.server.session.limits import ServerLimits
from vatlas_wire.v1 import bundles_pb2

from vatlas.synth import make_scene
from vatlas.video import write_mp4

CHUNK = 4096
ROI = {"ref_frame": 1, "polygons": [[[14, 10], [50, 10], [50, 38], [14, 38]]]}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    scene = make_scene(frames=4, size=(64, 48), seed=3)
    path = tmp_path_factory.mktemp("ws-clip") / "clip.mp4"
    write_mp4(path, scene.frames, scene.fps, crf=12)
    return path.read_bytes()


@pytest.fixture
def server(tiny_models_dir: Path, tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.vatlas").symlink_to(tiny_models_dir / "tiny.vatlas")
    server = start_in_process_server(models, limits=ServerLimits(max_upload_bytes=256 * 1024))
    yield server
    server.stop()


async def upload(client: WsClient, data: bytes, *, announce: bool = True) -> tuple[bundles_pb2.UploadResult, list[int]]:
    """Send `data` in CHUNK-byte chunks under one request id; the acknowledged byte counts and the result."""
    rid = client.next_id
    client.next_id += 1
    from vatlas_wire.v1 import mirror, sessions_pb2

    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    for i, piece in enumerate(pieces):
        chunk = bundles_pb2.UploadChunk(data=piece, last=i == len(pieces) - 1)
        if i == 0:
            chunk.filename = "my clip.mp4"
            chunk.total_bytes = len(data) if announce else 0
        await client.ws.send(mirror.pack(sessions_pb2.WsRequest(request_id=rid, upload=chunk)))
    acks: list[int] = []
    while True:
        resp = await client.recv_until(lambda r: r.request_id == rid)
        kind = resp.WhichOneof("result")
        if kind == "upload_progress":
            acks.append(resp.upload_progress.bytes)
        elif kind == "upload":
            return resp.upload, acks
        else:
            raise AssertionError(resp)


def test_chunked_upload_and_its_frames(server, clip: bytes) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        result, acks = await upload(client, clip)
        assert result.bytes == len(clip) and result.upload_id
        assert acks == [CHUNK * (i + 1) for i in range(len(acks))] and len(acks) == -(-len(clip) // CHUNK) - 1
        stored = server.core.jobs.uploads[result.upload_id].path
        assert stored.read_bytes() == clip and stored.name == "my_clip.mp4"
        resp = await client.call(upload_frame=bundles_pb2.UploadFrameRequest(upload_id=result.upload_id, frame=2,
                                                                              max_side=32))
        frame = resp.upload_frame
        assert (frame.frames, frame.width, frame.height, frame.image_width, frame.image_height) == (4, 64, 48, 32, 24)
        assert decode(frame.jpeg).shape == (24, 32, 3) and frame.fps > 0
        full = (await client.call(upload_frame=bundles_pb2.UploadFrameRequest(upload_id=result.upload_id,
                                                                              frame=0))).upload_frame
        assert decode(full.jpeg).shape == (48, 64, 3)
        resp = await client.call(upload_frame=bundles_pb2.UploadFrameRequest(upload_id=result.upload_id, frame=4))
        assert resp.error.code == "OUT_OF_RANGE" and "4 frames" in resp.error.message
        resp = await client.call(upload_frame=bundles_pb2.UploadFrameRequest(upload_id="u-none", frame=0))
        assert resp.error.code == "NOT_FOUND"
        await client.close()

    run(scenario())


def test_a_too_large_upload_is_refused_and_nothing_is_kept(server, clip: bytes) -> None:
    big = clip * (256 * 1024 // len(clip) + 2)

    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        for announce in (True, False):
            started = time.monotonic()
            with pytest.raises(AssertionError) as info:
                await upload(client, big, announce=announce)
            error = str(info.value)
            assert "RESOURCE_EXHAUSTED" in error and "larger than 262144 bytes" in error, error
            assert time.monotonic() - started < 20
        # the refused uploads' later chunks were dropped without answers; the connection still works
        resp = await client.call(list_fits=bundles_pb2.ListFitsRequest())
        assert resp.WhichOneof("result") == "fits" and not client.backlog
        assert not server.core.jobs.uploads and server.core.jobs.store_bytes() == 0
        assert not any((server.core.jobs.work_dir / "uploads").glob("*/*"))
        await client.close()

    run(scenario())


@pytest.mark.parametrize(("roi", "words"), [
    ("{nope", "not JSON"),
    (json.dumps({"ref_frame": 0, "polygons": [[[1, 1], [20, 1]]]}), "at least 3"),
    (json.dumps({"ref_frame": 0, "polygons": [[[1, 1], [20, 1], [5, 9]]] * 65}), "at most 64"),
    (json.dumps({"ref_frame": 0, "polygons": [[[100, 100], [200, 100], [200, 200]]]}), "outside the 64x48 frame"),
    (json.dumps({"ref_frame": 9, "polygons": ROI["polygons"]}), "beyond the video's 4 frames"),
])
def test_a_bad_roi_is_refused_with_a_typed_error(server, clip: bytes, roi: str, words: str) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        result, _ = await upload(client, clip)
        rid = await client.send(start_fit=bundles_pb2.StartFitRequest(upload_id=result.upload_id, name="bad",
                                                                       roi_json=roi, iterations=5))
        while True:
            resp = await client.recv_until(lambda r: r.request_id == rid, timeout=120)
            if resp.WhichOneof("result") != "fit":
                break
        assert resp.error.code == "INVALID_ARGUMENT" and words in resp.error.message, resp
        assert not server.core.jobs._fitting and not (server.core.bundles.models_dir / "bad.vatlas").exists()
        await client.close()

    run(scenario())


def test_a_fit_stops_with_its_socket_unless_detached_and_is_found_again(server, clip: bytes) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        result, _ = await upload(client, clip)
        # not detached: closing the socket stops the fit and frees its slot
        start = bundles_pb2.StartFitRequest(upload_id=result.upload_id, name="gone", roi_json=json.dumps(ROI),
                                            preset="draft", iterations=100_000)
        rid = await client.send(start_fit=start)
        first = (await client.recv_until(lambda r: r.request_id == rid)).fit
        assert first.fit_id and first.stage == "fitting"
        deadline = time.monotonic() + 60
        while server.core.jobs._fitting.get("gone") is None:
            assert time.monotonic() < deadline, "the fit process did not start"
            await asyncio.sleep(0.1)
        await client.close()
        deadline = time.monotonic() + 30
        while server.core.jobs._fitting:
            assert time.monotonic() < deadline, "the fit did not stop with its socket"
            await asyncio.sleep(0.1)
        client = await WsClient.connect(server.ws_url, server.token)
        fits = (await client.call(list_fits=bundles_pb2.ListFitsRequest())).fits.fits
        assert [(f.fit_id, f.running, f.error.code) for f in fits] == [(first.fit_id, False, "CANCELLED")]
        assert not (server.core.bundles.models_dir / "gone.vatlas").exists()

        # detached: it outlives the socket, and a new connection lists it and follows it to the end
        start = bundles_pb2.StartFitRequest(upload_id=result.upload_id, name="kept", roi_json=json.dumps(ROI),
                                            preset="draft", iterations=8, detach=True)
        rid = await client.send(start_fit=start)
        event = (await client.recv_until(lambda r: r.request_id == rid)).fit
        fit_id = event.fit_id
        while not event.stage_number:  # the child's own progress has begun
            event = (await client.recv_until(lambda r: r.request_id == rid, timeout=120)).fit
        assert event.stage_count == 6
        await client.close()
        await asyncio.sleep(1.0)
        client = await WsClient.connect(server.ws_url, server.token)
        fits = (await client.call(list_fits=bundles_pb2.ListFitsRequest())).fits.fits
        assert fits[0].fit_id == fit_id and fits[0].running and fits[0].name == "kept" and fits[0].detached
        rid = await client.send(attach_fit=bundles_pb2.AttachFitRequest(fit_id=fit_id))
        events: list[bundles_pb2.FitProgress] = []
        while True:
            resp = await client.recv_until(lambda r: r.request_id == rid, timeout=300)
            assert resp.WhichOneof("result") == "fit", resp
            events.append(resp.fit)
            if resp.fit.done:
                break
        done = events[-1]
        assert done.bundle.name == "kept" and done.bundle.frames == 4 and done.fraction == 1.0
        assert all(e.fit_id == fit_id for e in events)
        fractions = [e.fraction for e in events]
        assert fractions == sorted(fractions) and any(0 < f < 1 for f in fractions)
        stages = {e.stage for e in events}
        assert {"main", "bake"} <= stages, stages
        assert any(e.eta_seconds > 0 for e in events) and any(e.readout.startswith("loss ") for e in events)
        gaps = np.diff([e.elapsed_seconds for e in events])
        assert gaps.max() < 2.5, gaps.max()  # nothing silent for more than the heartbeat
        previews = [e for e in events if e.preview]
        assert previews and all(decode(e.preview).shape == (48, 64, 3) and e.preview_frame == 1 for e in previews)
        bundles = (await client.call(list_bundles=bundles_pb2.ListBundlesRequest())).bundles.bundles
        assert "kept" in [b.name for b in bundles]
        # an ended fit still answers attach with its last event, and unknown ids are NOT_FOUND
        again = await client.call(attach_fit=bundles_pb2.AttachFitRequest(fit_id=fit_id))
        assert again.fit.done and again.fit.bundle.name == "kept"
        missing = await client.call(attach_fit=bundles_pb2.AttachFitRequest(fit_id="f-none"))
        assert missing.error.code == "NOT_FOUND"
        await client.close()

    run(scenario())


def test_a_detached_fit_is_cancelled_and_leaves_nothing(server, clip: bytes) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        result, _ = await upload(client, clip)
        start = bundles_pb2.StartFitRequest(upload_id=result.upload_id, name="stopped", roi_json=json.dumps(ROI),
                                            preset="draft", iterations=100_000, detach=True)
        rid = await client.send(start_fit=start)
        first = (await client.recv_until(lambda r: r.request_id == rid)).fit
        deadline = time.monotonic() + 60
        while server.core.jobs._fitting.get("stopped") is None:
            assert time.monotonic() < deadline, "the fit process did not start"
            await asyncio.sleep(0.1)
        other = await WsClient.connect(server.ws_url, server.token)  # anyone holding the server's token
        answer = await other.call(cancel_fit=bundles_pb2.CancelFitRequest(fit_id=first.fit_id))
        info = answer.fit_info
        assert answer.WhichOneof("result") == "fit_info", answer
        assert (info.fit_id, info.running, info.error.code) == (first.fit_id, False, "CANCELLED")
        assert "cancelled" in info.error.message
        assert not server.core.jobs._fitting and not (server.core.bundles.models_dir / "stopped.vatlas").exists()
        # the follower's stream ends with the same error; a second cancel and an unknown id are typed errors
        while True:
            resp = await client.recv_until(lambda r: r.request_id == rid, timeout=30)
            if resp.WhichOneof("result") == "error":
                assert resp.error.code == "CANCELLED"
                break
        again = await other.call(cancel_fit=bundles_pb2.CancelFitRequest(fit_id=first.fit_id))
        assert again.error.code == "FAILED_PRECONDITION"
        missing = await other.call(cancel_fit=bundles_pb2.CancelFitRequest(fit_id="f-none"))
        assert missing.error.code == "NOT_FOUND"
        await client.close()
        await other.close()

    run(scenario())


def test_the_fit_progress_sink_sees_what_the_bar_shows_without_a_bar() -> None:
    """models.fit.FitProgress(sink=...) hands its state to `vatlas fit --json` even with the bar off."""
    from vatlas.models.fit import FitProgress, StagePlan

    seen: list[dict] = []
    progress = FitProgress([StagePlan("flow", 4), StagePlan("main", 10), StagePlan("bake", 2)], enabled=False,
                           bake_seconds_per_main_iter=1.0, sink=seen.append)
    try:
        progress.begin("flow")
        progress.add(4)
        progress.finish("flow", 0.4)
        progress.begin("main")
        for i in range(1, 11):
            progress.set_readout(f"loss {1 / i:.4f}")
            progress.advance(i)
            time.sleep(0.06)
        progress.finish("main", 0.6)
        progress.complete()
    finally:
        progress.close()
    assert seen and set(seen[-1]) >= {"stage", "stage_number", "stage_count", "fraction", "eta_seconds",
                                      "elapsed_seconds", "readout"}
    assert seen[-1]["fraction"] == 1.0 and seen[-1]["stage_count"] == 3
    assert any(s["stage"] == "main" and s["readout"].startswith("loss ") for s in seen)
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions)


def test_a_stage_shorter_than_the_sink_interval_still_reports_its_last_readout() -> None:
    """A fast stage ends inside one SINK_S window: its finish sends what it showed last, not nothing."""
    from vatlas.models.fit import FitProgress, StagePlan

    seen: list[dict] = []
    progress = FitProgress([StagePlan("main", 8), StagePlan("refine", 8), StagePlan("bake", 2)], enabled=False,
                           bake_seconds_per_main_iter=1.0, sink=seen.append)
    try:
        for stage in ("main", "refine"):
            progress.begin(stage)
            progress.advance(8)
            progress.set_readout(f"loss 0.0100 ({stage})")
            progress.finish(stage, 0.01)
    finally:
        progress.close()
    readouts = {s["readout"] for s in seen}
    assert {"loss 0.0100 (main)", "loss 0.0100 (refine)"} <= readouts, readouts


def test_a_fit_job_that_refuses_its_input_says_why_in_one_line(server, tmp_path: Path) -> None:
    """Bad input only the fit job finds (one frame: nothing to fit) ends the stream with FAILED_PRECONDITION and
    the job's own sentence, without the server's paths."""
    scene = make_scene(frames=4, size=(64, 48), seed=3)
    one = tmp_path / "one.mp4"
    write_mp4(one, scene.frames[:1], scene.fps, crf=12)

    async def scenario() -> None:
        client = await WsClient.connect(server.ws_url, server.token)
        try:
            result, _ = await upload(client, one.read_bytes())
            roi = {"ref_frame": 0, "polygons": ROI["polygons"]}
            rid = await client.send(start_fit=bundles_pb2.StartFitRequest(
                upload_id=result.upload_id, name="single", roi_json=json.dumps(roi), preset="draft", iterations=4))
            while True:
                resp = await client.recv_until(lambda r: r.request_id == rid, timeout=120)
                if resp.WhichOneof("result") != "fit":
                    break
            assert resp.error.code == "FAILED_PRECONDITION", resp
            assert resp.error.message.startswith("fit failed: ") and "need at least 2 frames" in resp.error.message
            assert str(server.core.jobs.work_dir) not in resp.error.message
        finally:
            await client.close()

    run(scenario())
