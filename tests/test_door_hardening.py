"""Front-door hardening against a real server on loopback: connection caps and the idle timeout before hello
(M3), the frame 81 91 00 00 (L1), strict ids and names (L4), typed statuses without internals (L5)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from conftest import TINY_BUNDLE, start_in_process_server
from serve_helpers import AioStubs, GrpcSession, WsClient, stroke_op
from vatlas.server.session.limits import ServerLimits
from vatlas_wire.v1 import bundles_pb2, edits_pb2, sessions_pb2
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

CAPS = ServerLimits(max_ws_connections=6, max_ws_connections_per_ip=4, hello_timeout=1.5)


@pytest.fixture(scope="module")
def capped_server(tiny_models_dir: Path):
    server = start_in_process_server(tiny_models_dir, limits=CAPS)
    yield server
    server.stop()


def test_connection_caps_and_the_idle_timeout_before_hello(capped_server) -> None:
    url = capped_server.ws_url

    async def refused(**kwargs) -> int:
        with pytest.raises(InvalidStatus) as info:
            await connect(url, **kwargs)
        return info.value.response.status_code

    async def scenario() -> None:
        idle = [await connect(url) for _ in range(CAPS.max_ws_connections_per_ip)]  # never say hello
        assert await refused() == 503  # per address
        others = [await connect(url, local_addr=("127.0.0.2", 0)) for _ in range(2)]
        assert await refused(local_addr=("127.0.0.3", 0)) == 503  # in all
        stubs = AioStubs(capped_server.grpc_target, capped_server.token)  # gRPC is not locked out
        listing = await stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(), metadata=stubs.metadata)
        assert listing.bundles[0].name == TINY_BUNDLE
        await stubs.close()
        for ws in idle + others:  # silent connections are closed after hello_timeout
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1008
        await asyncio.sleep(0.2)
        client = await WsClient.connect(url, capped_server.token)  # the slots are free again
        assert (await client.call(list_sessions=sessions_pb2.ListSessionsRequest())).WhichOneof("result") == \
            "sessions"
        await client.close()

    asyncio.run(scenario())


def test_an_unhashable_msgpack_key_gets_a_typed_error(capped_server) -> None:
    frame = bytes.fromhex("81910000")  # {[0]: 0}: a map whose key is an array

    async def scenario() -> None:
        client = await WsClient.connect(capped_server.ws_url, capped_server.token)
        await client.send_raw(frame)
        resp = await client.recv()
        assert resp.WhichOneof("result") == "error" and resp.error.code == "INVALID_ARGUMENT", resp
        assert (await client.call(list_sessions=sessions_pb2.ListSessionsRequest())).WhichOneof("result") == \
            "sessions"  # the connection stays open
        await client.close()
        first = await WsClient.connect(capped_server.ws_url, None, hello=False)  # as the very first frame
        await first.send_raw(frame)
        resp = await first.recv()
        assert resp.error.code == "INVALID_ARGUMENT"
        await asyncio.wait_for(first.ws.wait_closed(), 10)
        assert first.ws.close_code == 1008  # refused hello, not 1011 (a server crash)

    asyncio.run(scenario())


def test_ids_and_names_with_a_trailing_newline_are_refused(capped_server) -> None:
    async def scenario() -> None:
        stubs = AioStubs(capped_server.grpc_target, capped_server.token)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE + "\n"),
                                                   metadata=stubs.metadata)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs.bundles.GetBundleInfo(bundles_pb2.GetBundleInfoRequest(name=TINY_BUNDLE + "\n"),
                                                  metadata=stubs.metadata)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info_ = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                       metadata=stubs.metadata)
            s = GrpcSession(stubs)
            s.send(join=sessions_pb2.Join(session_id=info_.session_id, join_token=info_.join_token))
            await s.event("snapshot")
            s.send_op(stroke_op("base"))
            await s.event("accepted")
            s.send_op(stroke_op("s1\n"))
            assert (await s.event("rejected", where=lambda r: r.op_id == "s1\n")).error.code == "INVALID_ARGUMENT"
            s.send(op=edits_pb2.EditOp(id="u1", type="set_visible", target="base\n", visible=False))
            assert (await s.event("rejected", where=lambda r: r.op_id == "u1")).error.code == "INVALID_ARGUMENT"
            await s.close()
            bad = GrpcSession(stubs)
            bad.send(join=sessions_pb2.Join(session_id=info_.session_id, join_token=info_.join_token,
                                            participant_id="alice\n"))
            with pytest.raises((grpc.aio.AioRpcError, EOFError)):
                await bad.event("snapshot")
            assert await bad.call.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await stubs.close()

    asyncio.run(scenario())


def test_server_bugs_answer_internal_without_internals(tiny_models_dir: Path) -> None:
    server = start_in_process_server(tiny_models_dir)

    def broken(*_: object) -> None:
        raise RuntimeError("/very/secret/server/path exploded")

    server.core.list_bundles = broken  # a bug anywhere behind a door
    server.core.list_sessions = broken

    async def scenario() -> None:
        stubs = AioStubs(server.grpc_target, server.token)
        try:
            for call, request in ((stubs.bundles.ListBundles, bundles_pb2.ListBundlesRequest()),
                                  (stubs.sessions.ListSessions, sessions_pb2.ListSessionsRequest())):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(request, metadata=stubs.metadata)
                assert info.value.code() == grpc.StatusCode.INTERNAL  # not UNKNOWN
                assert "secret" not in (info.value.details() or "") and "RuntimeError" not in info.value.details()
        finally:
            await stubs.close()
        client = await WsClient.connect(server.ws_url, server.token)
        resp = await client.call(list_bundles=bundles_pb2.ListBundlesRequest())
        assert resp.error.code == "INTERNAL" and "secret" not in resp.error.message
        assert "RuntimeError" not in resp.error.message
        await client.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_participant_ids_cannot_be_taken_over(capped_server) -> None:
    """L3: ids are visible to everyone; only the holder of the snapshot's resume_key may take one back."""

    async def scenario() -> None:
        stubs = AioStubs(capped_server.grpc_target, capped_server.token)
        try:
            info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                      metadata=stubs.metadata)
            join = sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token)
            alice = GrpcSession(stubs)
            alice.send(join=join)
            snap = await alice.event("snapshot")
            pid, key = snap.participant_id, snap.resume_key
            assert pid and len(key) >= 32
            alice.send_op(stroke_op("mine"))
            await alice.event("accepted")
            mallory = GrpcSession(stubs)
            forged = sessions_pb2.Join()
            forged.CopyFrom(join)
            forged.participant_id = pid
            mallory.send(join=forged)
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await mallory.event("snapshot")
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            forged.resume_key = "0" * 32
            wrong = GrpcSession(stubs)
            wrong.send(join=forged)
            with pytest.raises(grpc.aio.AioRpcError):
                await wrong.event("snapshot")
            alice.send_op(stroke_op("still-mine", 1))  # alice was not kicked
            assert (await alice.event("accepted", where=lambda a: a.op_id == "still-mine")).seq == 2
            await alice.close()
            again = GrpcSession(stubs)  # alice back with her key: her id and her undo history
            forged.resume_key = key
            again.send(join=forged)
            assert (await again.event("snapshot")).participant_id == pid
            again.send(undo=sessions_pb2.Undo())
            undone = await again.event("applied", where=lambda a: a.op.type == "delete")
            assert undone.op.target == "still-mine"
            await again.close()
        finally:
            await stubs.close()

    asyncio.run(scenario())


def test_a_share_link_join_token_opens_only_its_session(capped_server) -> None:
    """L6: the web client's share link carries the join token only; hello accepts it for that one session."""

    async def scenario() -> None:
        owner = await WsClient.connect(capped_server.ws_url, capped_server.token)
        info = (await owner.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
        other = (await owner.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
        guest = await WsClient.connect(capped_server.ws_url, info.join_token)  # hello with the join token
        await guest.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
            session_id=info.session_id, join_token=info.join_token)))
        await guest.event("snapshot")
        frame = await guest.call(render={"session_id": info.session_id, "frame": 0})
        assert frame.WhichOneof("result") == "frame"
        assert (await guest.call(bundle_info={"name": TINY_BUNDLE})).WhichOneof("result") == "bundle_info"
        for call in ({"list_sessions": {}}, {"list_bundles": {}}, {"create_session": {"bundle": TINY_BUNDLE}},
                     {"render": {"session_id": other.session_id, "join_token": other.join_token, "frame": 0}}):
            resp = await guest.call(**call)
            assert resp.error.code == "PERMISSION_DENIED", (call, resp)
        await guest.close()
        await owner.close()

    asyncio.run(scenario())
