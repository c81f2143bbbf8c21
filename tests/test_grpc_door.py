"""The gRPC door against the real in-process server: auth, health, reflection, bundles, sessions, rendering."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import TINY_BUNDLE, TINY_FRAMES, TINY_SIZE
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serve_helpers import AioStubs, GrpcSession, GrpcStubs, stroke_op
from vatlas.server.encoders import decode
from vatlas_wire.v1 import bundles_pb2, render_pb2, sessions_pb2


@pytest.fixture(scope="module")
def stubs(running_server):
    s = GrpcStubs(running_server.grpc_target, running_server.token)
    yield s
    s.close()


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code()


def test_token_is_required_and_checked(running_server) -> None:
    bare = GrpcStubs(running_server.grpc_target, None)
    wrong = GrpcStubs(running_server.grpc_target, "nope")
    try:
        with pytest.raises(grpc.RpcError) as info:
            bare.bundles.ListBundles(bundles_pb2.ListBundlesRequest())
        assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            wrong.sessions.ListSessions(sessions_pb2.ListSessionsRequest(), metadata=wrong.metadata)
        assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
        # health needs no token
        health = health_pb2_grpc.HealthStub(bare.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="vatlas.v1.Sessions"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        bare.close()
        wrong.close()


def test_protocol_metadata_mismatch_is_refused(stubs) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(),
                                  metadata=(*stubs.metadata, ("vatlas-protocol", "99")))
    assert _code(info) == grpc.StatusCode.FAILED_PRECONDITION
    ok = stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(), metadata=(*stubs.metadata,
                                                                               ("vatlas-protocol", "1")))
    assert [b.name for b in ok.bundles] == [TINY_BUNDLE]


def test_reflection_lists_the_services(stubs) -> None:
    refl = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"vatlas.v1.Bundles", "vatlas.v1.Sessions", "vatlas.v1.Render", "grpc.health.v1.Health"} <= names
    files = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="vatlas.v1.Sessions")])))
    assert files[0].file_descriptor_response.file_descriptor_proto  # grpcurl can describe the API


def test_bundles_list_info_load(stubs) -> None:
    listing = stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(), metadata=stubs.metadata)
    info = listing.bundles[0]
    assert (info.name, info.frames, info.width, info.height, info.atlas_size) == (TINY_BUNDLE, TINY_FRAMES,
                                                                                  *TINY_SIZE, 64)
    loaded = stubs.bundles.LoadBundle(bundles_pb2.LoadBundleRequest(name=TINY_BUNDLE), metadata=stubs.metadata)
    assert loaded.loaded and loaded.frames == TINY_FRAMES
    for name, code in (("nope", grpc.StatusCode.NOT_FOUND), ("../etc", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as info:
            stubs.bundles.GetBundleInfo(bundles_pb2.GetBundleInfoRequest(name=name), metadata=stubs.metadata)
        assert _code(info) == code


def test_fit_requests_are_validated_before_any_work(stubs) -> None:
    upload = stubs.bundles.UploadVideo(iter([bundles_pb2.UploadChunk(filename="c.mp4", data=b"x" * 10, last=True)]),
                                       metadata=stubs.metadata)
    roi = '{"ref_frame": 0, "polygons": [[[1, 1], [20, 1], [20, 20]]]}'
    cases = [
        (dict(upload_id="u0", name="x", roi_json=roi), {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}),
        (dict(upload_id=upload.upload_id, name=TINY_BUNDLE, roi_json=roi), {grpc.StatusCode.ALREADY_EXISTS}),
        (dict(upload_id=upload.upload_id, name="new", roi_json="{nope"), {grpc.StatusCode.INVALID_ARGUMENT}),
        (dict(upload_id=upload.upload_id, name="new", roi_json=roi, preset="ultra"),
         {grpc.StatusCode.INVALID_ARGUMENT}),
        (dict(upload_id=upload.upload_id, name="../x", roi_json=roi), {grpc.StatusCode.INVALID_ARGUMENT}),
        (dict(upload_id=upload.upload_id, name="new", roi_json=roi, width=64), {grpc.StatusCode.INVALID_ARGUMENT}),
    ]
    for fields, codes in cases:
        with pytest.raises(grpc.RpcError) as info:
            list(stubs.bundles.StartFit(bundles_pb2.StartFitRequest(**fields), metadata=stubs.metadata))
        assert _code(info) in codes, (fields, info.value.details())


def test_a_failing_fit_reports_its_error_in_the_stream(stubs) -> None:
    upload = stubs.bundles.UploadVideo(iter([bundles_pb2.UploadChunk(filename="c.mp4", data=b"not a video", last=True)]),
                                       metadata=stubs.metadata)
    roi = '{"ref_frame": 0, "polygons": [[[1, 1], [20, 1], [20, 20]]]}'
    events = []
    with pytest.raises(grpc.RpcError) as info:
        for event in stubs.bundles.StartFit(bundles_pb2.StartFitRequest(upload_id=upload.upload_id, name="broken",
                                                                        roi_json=roi), metadata=stubs.metadata):
            events.append(event)
    assert events and events[0].stage == "fitting"
    assert _code(info) == grpc.StatusCode.FAILED_PRECONDITION and "fit failed" in info.value.details()


def test_upload_is_stored(stubs) -> None:
    chunks = [bundles_pb2.UploadChunk(filename="clip.mp4", data=b"a" * 1000), bundles_pb2.UploadChunk(data=b"b" * 24, last=True)]
    result = stubs.bundles.UploadVideo(iter(chunks), metadata=stubs.metadata)
    assert result.bytes == 1024 and result.upload_id
    with pytest.raises(grpc.RpcError) as info:
        stubs.bundles.UploadVideo(iter([bundles_pb2.UploadChunk(data=b"x")]), metadata=stubs.metadata)
    assert _code(info) == grpc.StatusCode.INVALID_ARGUMENT


def _create(stubs, **kwargs) -> sessions_pb2.SessionInfo:
    return stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE, **kwargs),
                                        metadata=stubs.metadata)


def test_create_session_and_render_frames(stubs) -> None:
    info = _create(stubs)
    assert info.session_id and info.join_token and info.seq == 0
    listed = stubs.sessions.ListSessions(sessions_pb2.ListSessionsRequest(), metadata=stubs.metadata)
    mine = [s for s in listed.sessions if s.session_id == info.session_id]
    assert mine and mine[0].join_token == ""  # tokens are not listed
    req = render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token, frame=3, format="png",
                                   request_id=42)
    frame = stubs.render.RenderFrame(req, metadata=stubs.metadata)
    assert (frame.frame, frame.width, frame.height, frame.request_id, frame.format) == (3, *TINY_SIZE, 42, "png")
    assert decode(frame.data).shape == (TINY_SIZE[1], TINY_SIZE[0], 3)
    half = stubs.render.RenderFrame(render_pb2.RenderRequest(
        session_id=info.session_id, join_token=info.join_token, frame=0, scale=0.5,
        region=render_pb2.Region(x=8, y=8, width=32, height=24)), metadata=stubs.metadata)
    assert (half.width, half.height, half.format) == (16, 12, "jpeg")
    atlas = stubs.render.RenderFrame(render_pb2.RenderRequest(
        session_id=info.session_id, join_token=info.join_token, atlas=True, format="raw"), metadata=stubs.metadata)
    assert (atlas.width, atlas.height, len(atlas.data)) == (64, 64, 64 * 64 * 3)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"frame": TINY_FRAMES}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"quality": 101}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"scale": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"scale": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"format": "gif"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"region": render_pb2.Region(x=60, y=0, width=10, height=10)}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"region": render_pb2.Region(x=0, y=0, width=0, height=10)}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"join_token": "wrong"}, grpc.StatusCode.PERMISSION_DENIED),
        ({"session_id": "nope"}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_render_validation(stubs, fields, code) -> None:
    info = _create(stubs)
    base = {"session_id": info.session_id, "join_token": info.join_token, "frame": 0}
    with pytest.raises(grpc.RpcError) as exc_info:
        stubs.render.RenderFrame(render_pb2.RenderRequest(**{**base, **fields}), metadata=stubs.metadata)
    assert _code(exc_info) == code
    assert exc_info.value.details()


def test_playback_streams_paced_frames_and_validates(stubs) -> None:
    info = _create(stubs)
    frames = list(stubs.render.Playback(render_pb2.PlaybackRequest(
        session_id=info.session_id, join_token=info.join_token, fps=40, start_frame=2, end_frame=6),
        metadata=stubs.metadata))
    assert frames, "no frames"
    indices = [f.frame for f in frames]
    assert all(2 <= i < 6 for i in indices) and indices == sorted(indices)
    for bad in ({"fps": 1000.0}, {"fps": float("inf")}, {"start_frame": 5, "end_frame": 3},
                {"end_frame": TINY_FRAMES + 1}):
        with pytest.raises(grpc.RpcError) as exc_info:
            list(stubs.render.Playback(render_pb2.PlaybackRequest(
                session_id=info.session_id, join_token=info.join_token, **bad), metadata=stubs.metadata))
        assert _code(exc_info) == grpc.StatusCode.INVALID_ARGUMENT


def test_export_streams_progress_then_the_file(stubs) -> None:
    info = _create(stubs)
    events = list(stubs.render.Export(render_pb2.ExportRequest(
        session_id=info.session_id, join_token=info.join_token, format="png_zip", start_frame=0, end_frame=3),
        metadata=stubs.metadata))
    assert events[-1].done and events[-1].filename.endswith(".zip")
    data = b"".join(e.chunk for e in events)
    assert len(data) == events[-1].total_bytes and data[:2] == b"PK"
    assert any(e.stage == "rendering" for e in events)
    with pytest.raises(grpc.RpcError) as exc_info:
        list(stubs.render.Export(render_pb2.ExportRequest(session_id=info.session_id, join_token=info.join_token,
                                                          format="avi"), metadata=stubs.metadata))
    assert _code(exc_info) == grpc.StatusCode.INVALID_ARGUMENT


def test_connect_join_ops_undo_redo_and_resume(running_server) -> None:
    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        try:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
            alice = GrpcSession(stubs)
            alice.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token, name="alice",
                                              participant_id="alice"))
            snap = await alice.event("snapshot")
            assert snap.participant_id == "alice" and snap.session.seq == 0 and len(snap.document.ops) == 0
            alice.send_op(stroke_op("a1"))
            accepted = await alice.event("accepted")
            assert (accepted.op_id, accepted.seq) == ("a1", 1)
            applied = await alice.event("applied")
            assert applied.seq == 1 and applied.op.id == "a1" and applied.participant_id == "alice"
            # a bad op is rejected in-band, keyed by its id, and the stream goes on
            alice.send_op({**stroke_op("a2"), "frame": 999})
            rejected = await alice.event("rejected")
            assert rejected.op_id == "a2" and rejected.error.code == "INVALID_ARGUMENT"
            alice.send_op(stroke_op("a1"))
            dup = await alice.event("rejected")
            assert dup.error.code == "ALREADY_EXISTS"
            alice.send_op({"id": "u1", "type": "update", "target": "a1", "set": {"width": 9.0}})
            await alice.event("accepted", where=lambda a: a.op_id == "u1")
            alice.send(undo=sessions_pb2.Undo())
            undo = await alice.event("applied", where=lambda a: a.op.type == "update" and a.op.id.startswith("undo"))
            assert undo.op.set.width == 4.0  # back to the previous value
            alice.send(undo=sessions_pb2.Undo())
            undo2 = await alice.event("applied", where=lambda a: a.op.type == "delete")
            assert undo2.op.target == "a1"
            alice.send(redo=sessions_pb2.Redo())
            redo = await alice.event("applied", where=lambda a: a.op.type == "restore")
            assert redo.op.target == "a1"
            alice.send(redo=sessions_pb2.Redo())
            redo2 = await alice.event("applied", where=lambda a: a.op.type == "update" and a.seq > redo.seq)
            assert redo2.op.set.width == 9.0
            alice.send(redo=sessions_pb2.Redo())
            err = await alice.event("rejected", where=lambda r: r.op_id == "")
            assert err.error.code == "FAILED_PRECONDITION" and "redo" in err.error.message
            # a late joiner resuming after seq 1 gets the tail only; a fresh one the snapshot with a1 at width 9
            bob = GrpcSession(stubs)
            bob.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token, name="bob",
                                            last_seq=1))
            bsnap = await bob.event("snapshot")
            assert not bsnap.HasField("document") and {p.name for p in bsnap.participants} == {"alice", "bob"}
            tail = [await bob.event("applied") for _ in range(redo2.seq - 1)]
            assert [a.seq for a in tail] == list(range(2, redo2.seq + 1))
            carol = GrpcSession(stubs)
            carol.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
            csnap = await carol.event("snapshot")
            assert [(op.id, op.width) for op in csnap.document.ops] == [("a1", 9.0)]
            # presence reaches the others
            alice.send(presence=sessions_pb2.PresenceUpdate(frame=3, tool="brush", cursor={"x": 5, "y": 6}))
            seen = await bob.event("presence", where=lambda p: p.participant.participant_id == "alice"
                                   and p.participant.frame == 3)
            assert seen.participant.tool == "brush" and seen.participant.cursor.x == 5
            # wrong join token / unknown session end the stream with a status
            eve = GrpcSession(stubs)
            eve.send(join=sessions_pb2.Join(session_id=info.session_id, join_token="bad"))
            with pytest.raises(grpc.aio.AioRpcError) as exc_info:
                await eve.event("snapshot")
            assert exc_info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            for s in (alice, bob, carol):
                await s.close()
        finally:
            await stubs.close()

    asyncio.run(scenario())


def test_first_message_must_be_join(running_server) -> None:
    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        try:
            s = GrpcSession(stubs)
            s.send(undo=sessions_pb2.Undo())
            with pytest.raises(grpc.aio.AioRpcError) as exc_info:
                await s.event("snapshot")
            assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await stubs.close()

    asyncio.run(scenario())
