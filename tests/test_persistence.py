"""Op log durability: framed records, torn-tail repair, and SIGKILL of the real server while clients edit."""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from pathlib import Path

import grpc
import pytest
from conftest import TINY_BUNDLE
from serve_helpers import AioStubs, GrpcSession, WsClient, stroke_op
from vatlas.server.session.oplog import HEADER, OpLog, SessionStore, encode_record, read_records
from vatlas_wire.v1 import edits_pb2, sessions_pb2


def _records(n: int) -> list[dict]:
    return [{"seq": i + 1, "participant_id": "p", "kind": "op", "op": {"id": f"s{i}", "type": "stroke",
                                                                          "image": bytes([i % 256]) * 5}}
            for i in range(n)]


def test_records_round_trip(tmp_path: Path) -> None:
    log = OpLog(tmp_path / "ops.log")
    assert log.open().records == []
    for record in _records(5):
        log.append(record)
    log.close()
    again = OpLog(tmp_path / "ops.log")
    replay = again.open()
    assert replay.records == _records(5) and replay.truncated_bytes == 0
    again.close()


@pytest.mark.parametrize("damage", ["half_header", "half_payload", "crc_flip", "garbage_length", "zeros"])
def test_torn_or_corrupt_tail_is_truncated(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ops.log"
    good = b"".join(encode_record(r) for r in _records(3))
    extra = encode_record({"seq": 4, "op": {"id": "x"}})
    tail = {
        "half_header": extra[:5],
        "half_payload": extra[:-3],
        "crc_flip": extra[:6] + bytes([extra[6] ^ 0xFF]) + extra[7:],
        "garbage_length": struct.pack("<II", 2**31, 0) + b"zz",
        "zeros": b"\0" * 64,
    }[damage]
    path.write_bytes(good + tail)
    log = OpLog(path)
    replay = log.open()
    assert replay.records == _records(3)
    assert path.stat().st_size == len(good) or damage == "zeros"
    log.append({"seq": 4, "op": {"id": "after"}})
    log.close()
    records, valid = read_records(path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4] and valid == path.stat().st_size


def test_zero_length_records_are_not_mistaken_for_data(tmp_path: Path) -> None:
    # an all-zero tail decodes as length 0 / crc 0; crc32(b"") == 0, so it must still be rejected as a record
    assert zlib.crc32(b"") == 0
    path = tmp_path / "ops.log"
    path.write_bytes(encode_record({"seq": 1}) + b"\0" * HEADER.size)
    records, valid = read_records(path)
    assert records == [{"seq": 1}] and valid == len(encode_record({"seq": 1}))


def test_session_store_lists_metadata(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.save_meta("s1", {"bundle": "b", "join_token": "t", "created": 2.0})
    store.save_meta("s0", {"bundle": "b", "join_token": "t", "created": 1.0})
    (tmp_path / "sessions" / "broken").mkdir()
    (tmp_path / "sessions" / "broken" / "meta.json").write_text("{nope")
    assert [sid for sid, _ in store.stored_sessions()] == ["s0", "s1"]


async def _edit_until_killed(target: str, ws_url: str, token: str, info: sessions_pb2.SessionInfo, round_no: int,
                             acked: dict[str, int]) -> None:
    """Two clients (gRPC and WebSocket) stream ops without waiting; record every acknowledgement they get."""

    async def grpc_editor() -> None:
        stubs = AioStubs(target, token)
        try:
            s = GrpcSession(stubs)
            s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
            await s.event("snapshot")
            for n in range(10_000):
                s.send_op(stroke_op(f"g{round_no}-{n}", n % 8, x=26.0 + n % 5))
                while True:  # drain whatever acknowledgements have arrived
                    try:
                        acc = await s.event("accepted", timeout=0.02)
                    except TimeoutError:
                        break
                    acked[acc.op_id] = acc.seq
        except (grpc.aio.AioRpcError, EOFError, asyncio.CancelledError, ConnectionError):
            return
        finally:
            await stubs.close()

    async def ws_editor() -> None:
        try:
            client = await WsClient.connect(ws_url, token)
            await client.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token)))
            await client.event("snapshot")
            for n in range(10_000):
                await client.send(session=sessions_pb2.ClientMessage(op=edits_pb2.EditOp(
                    id=f"w{round_no}-{n}", type="set_visible", target="base", visible=bool(n % 2))))
                while True:
                    try:
                        acc = await client.event("accepted", timeout=0.02)
                    except TimeoutError:
                        break
                    acked[acc.op_id] = acc.seq
        except Exception:  # noqa: BLE001 - the server was killed under us: that is the point
            return

    await asyncio.gather(grpc_editor(), ws_editor())


def test_sigkill_loses_no_acknowledged_op(server_process_factory, tmp_path: Path) -> None:
    rng = random.Random(1234)
    server = server_process_factory(data_dir=tmp_path / "data")
    stubs = GrpcStubsSync(server.grpc_target, server.token)
    info = stubs.create()
    acked: dict[str, int] = {}
    # one object everybody toggles, created before the storm
    asyncio.run(_seed(server.grpc_target, server.token, info, acked))
    for round_no in range(3):
        delay = rng.uniform(0.05, 0.8)

        async def storm(target: str = server.grpc_target, ws_url: str = server.ws_url, r: int = round_no,
                        d: float = delay) -> None:
            before = len(acked)
            editors = asyncio.create_task(_edit_until_killed(target, ws_url, server.token, info, r, acked))
            for _ in range(600):  # a loaded machine may be slow: start the clock at the round's first ack
                if len(acked) > before or editors.done():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(d)
            server.kill()  # SIGKILL at a random moment, ops in flight
            await asyncio.wait_for(editors, 60)

        asyncio.run(storm())
        server.restart()
    assert len(acked) > 5, "the clients got too few acknowledgements to prove anything"
    # every acknowledged op is in the restarted server's log, with its sequence number, nothing corrupted
    log_path = next((tmp_path / "data" / "sessions").glob("*/ops.log"))
    records, valid = read_records(log_path)
    assert valid == log_path.stat().st_size
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(records) + 1))
    by_id = {r["op"].get("id"): r["seq"] for r in records}
    missing = {op_id: seq for op_id, seq in acked.items() if by_id.get(op_id) != seq}
    assert not missing, f"acknowledged ops lost or renumbered: {list(missing.items())[:5]}"
    # and the server replays them: a fresh joiner sees the session at the log's last seq
    snap = asyncio.run(_join(server.grpc_target, server.token, info))
    assert snap.session.seq == len(records) >= max(acked.values())
    live_ids = {op.id for op in snap.document.ops}
    assert "base" in live_ids and {i for i in acked if i.startswith("g")} <= live_ids
    assert server.terminate() == 0  # graceful stop after all that


class GrpcStubsSync:
    def __init__(self, target: str, token: str) -> None:
        from serve_helpers import GrpcStubs

        self.stubs = GrpcStubs(target, token)

    def create(self) -> sessions_pb2.SessionInfo:
        try:
            return self.stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                     metadata=self.stubs.metadata)
        finally:
            self.stubs.close()


async def _seed(target: str, token: str, info: sessions_pb2.SessionInfo, acked: dict[str, int]) -> None:
    stubs = AioStubs(target, token)
    try:
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        await s.event("snapshot")
        s.send_op(stroke_op("base"))
        acked["base"] = (await s.event("accepted")).seq
        await s.close()
    finally:
        await stubs.close()


async def _join(target: str, token: str, info: sessions_pb2.SessionInfo) -> sessions_pb2.Snapshot:
    stubs = AioStubs(target, token)
    try:
        s = GrpcSession(stubs)
        s.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token))
        snap = await s.event("snapshot")
        await s.close()
        return snap
    finally:
        await stubs.close()
