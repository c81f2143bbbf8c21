"""The WebSocket door and HTTP port against the real in-process server; gRPC and WebSocket users edit together."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from conftest import TINY_BUNDLE, TINY_FRAMES, TINY_SIZE
from serve_helpers import AioStubs, GrpcSession, WsClient, stroke_op
from vatlas.server.encoders import decode
from vatlas_wire.v1 import bundles_pb2, edits_pb2, mirror, render_pb2, sessions_pb2
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def run(coro):
    return asyncio.run(coro)


def test_hello_welcome_and_listing(running_server) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(running_server.ws_url, running_server.token)
        resp = await client.call(list_bundles=bundles_pb2.ListBundlesRequest())
        assert [b.name for b in resp.bundles.bundles] == [TINY_BUNDLE]
        resp = await client.call(bundle_info=bundles_pb2.GetBundleInfoRequest(name=TINY_BUNDLE))
        assert resp.bundle_info.frames == TINY_FRAMES
        resp = await client.call(load_bundle=bundles_pb2.LoadBundleRequest(name="missing"))
        assert resp.error.code == "NOT_FOUND" and "missing" in resp.error.message
        await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"hello": {"protocol_version": 2, "token": "test-token"}}, "FAILED_PRECONDITION"),
        ({"hello": {"protocol_version": 1, "token": "wrong"}}, "UNAUTHENTICATED"),
        ({"hello": {"protocol_version": 1}}, "UNAUTHENTICATED"),
        ({"list_bundles": {}}, "FAILED_PRECONDITION"),
        ({"hello": {"protocol_version": "1"}}, "INVALID_ARGUMENT"),
    ],
)
def test_bad_hello_gets_a_typed_error_then_close(running_server, hello, code) -> None:
    async def scenario() -> None:
        async with connect(running_server.ws_url) as ws:
            await ws.send(msgpack.packb({"request_id": 5, **hello}))
            resp = mirror.unpack(await ws.recv(), sessions_pb2.WsResponse)
            assert resp.request_id == 5 and resp.error.code == code and resp.error.message
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008

    run(scenario())


def test_render_needs_join_token_unless_created_here(running_server) -> None:
    async def scenario() -> None:
        creator = await WsClient.connect(running_server.ws_url, running_server.token)
        other = await WsClient.connect(running_server.ws_url, running_server.token)
        info = (await creator.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
        resp = await creator.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=1, format="png"))
        assert resp.WhichOneof("result") == "frame", resp
        assert (resp.frame.width, resp.frame.height) == TINY_SIZE
        assert decode(resp.frame.data).shape == (TINY_SIZE[1], TINY_SIZE[0], 3)
        resp = await other.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=1))
        assert resp.error.code == "PERMISSION_DENIED"
        resp = await other.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=1,
                                                                join_token=info.join_token))
        assert resp.WhichOneof("result") == "frame"
        resp = await other.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=1, quality=500,
                                                                join_token=info.join_token))
        assert resp.error.code == "INVALID_ARGUMENT" and "quality" in resp.error.message
        await creator.close()
        await other.close()

    run(scenario())


def test_renders_coalesce_latest_wins(running_server) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(running_server.ws_url, running_server.token)
        info = (await client.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
        ids = [await client.send(render=render_pb2.RenderRequest(session_id=info.session_id, frame=i % TINY_FRAMES,
                                                                 format="png"))
               for i in range(40)]
        answers = {}
        while len(answers) < len(ids):
            resp = await client.recv()
            answers[resp.request_id] = resp
        frames = [r for r in answers.values() if r.WhichOneof("result") == "frame"]
        aborted = [r for r in answers.values() if r.WhichOneof("result") == "error"]
        assert answers[ids[-1]].WhichOneof("result") == "frame"  # the latest request always gets its frame
        assert all(r.error.code == "ABORTED" for r in aborted)
        assert len(frames) + len(aborted) == 40
        await client.close()

    run(scenario())


def test_playback_and_stop(running_server) -> None:
    async def scenario() -> None:
        client = await WsClient.connect(running_server.ws_url, running_server.token)
        info = (await client.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
        rid = await client.send(playback=render_pb2.PlaybackRequest(session_id=info.session_id, fps=30, loop=True,
                                                                    format="jpeg", quality=50))
        got = [await client.recv_until(lambda r: r.request_id == rid) for _ in range(5)]
        assert all(r.WhichOneof("result") == "frame" for r in got)
        await client.send(stop_playback=sessions_pb2.StopPlayback())
        await asyncio.sleep(0.3)
        client.backlog.clear()
        # after stop, no more playback frames arrive
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await client.recv_until(lambda r: r.request_id == rid, timeout=0.5)
        await client.close()

    run(scenario())


def test_grpc_and_websocket_users_edit_one_session(running_server, tiny_bundle) -> None:
    ys, xs = np.nonzero(tiny_bundle.mask[0] > 200)  # draw inside the ROI, where edits show
    cx, cy = float(xs.mean()), float(ys.mean())
    stroke = {**stroke_op("py-1"), "points": [[cx - 6, cy], [cx + 6, cy]], "width": 3.0}

    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        ws = await WsClient.connect(running_server.ws_url, running_server.token)
        try:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
            before = await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id,
                                                                   join_token=info.join_token, frame=0,
                                                                   format="png"))
            py = GrpcSession(stubs)
            py.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token, name="py"))
            await py.event("snapshot")
            join_rid = await ws.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token, name="web", color="#00ff00")))
            snap = await ws.event("snapshot")
            assert snap.session.session_id == info.session_id
            joined = await py.event("presence", where=lambda p: p.participant.name == "web")
            assert joined.participant.color == "#00ff00" and not joined.left
            # gRPC user draws, the web user sees it; the web user updates it, the gRPC user sees that
            py.send_op(stroke)
            await py.event("accepted", where=lambda a: a.op_id == "py-1")
            seen = await ws.event("applied", where=lambda a: a.op.id == "py-1")
            assert seen.participant_id == snap.participants[0].participant_id or seen.seq == 1
            await ws.send(session=sessions_pb2.ClientMessage(op=edits_pb2.EditOp(
                id="web-1", type="update", target="py-1", set=edits_pb2.EditOp(opacity=0.5))))
            acc = await ws.event("accepted", where=lambda a: a.op_id == "web-1")
            got = await py.event("applied", where=lambda a: a.op.id == "web-1")
            assert got.seq == acc.seq == 2 and got.op.set.opacity == 0.5
            # both see the same sequence; the web user's undo is an op everyone receives
            await ws.send(session=sessions_pb2.ClientMessage(undo=sessions_pb2.Undo()))
            undone = await py.event("applied", where=lambda a: a.seq == 3)
            assert undone.op.type == "update" and undone.op.set.opacity == 1.0
            # rendered pixels show the stroke for a WebSocket viewer
            plain = await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=0, format="png"))
            assert plain.frame.seq >= 3
            img = decode(plain.frame.data).astype(int)
            base = decode(before.frame.data).astype(int)
            assert before.frame.seq == 0
            # the red stroke changed pixels along its path, towards red
            changed = img - base
            assert (abs(changed).sum(axis=2) > 30).sum() >= 5
            assert changed[..., 0].sum() > changed[..., 1].sum()
            # the web user leaves: the gRPC user is told
            await ws.send(session=sessions_pb2.ClientMessage(leave=sessions_pb2.Leave()))
            left = await py.event("presence", where=lambda p: p.left)
            assert left.participant.name == "web"
            assert join_rid > 0
            await py.close()
        finally:
            await ws.close()
            await stubs.close()

    run(scenario())


def test_static_web_client_and_health(running_server) -> None:
    with urllib.request.urlopen(running_server.http_url + "/healthz", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"ok\n"
    try:
        with urllib.request.urlopen(running_server.http_url + "/", timeout=10) as resp:
            body = resp.read()
            assert resp.status == 200 and b"<html" in body.lower()
            assert resp.headers["Content-Type"].startswith("text/html")
    except urllib.error.HTTPError as exc:  # the web client is not built in this checkout
        assert exc.code == 404 and b"not installed" in exc.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(running_server.http_url + "/../../etc/passwd.txt", timeout=10)
    assert info.value.code == 404
