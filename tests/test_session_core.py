"""The session core without any transport: document checks, undo inverses, sequencing, limits, rendering."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from conftest import TINY_BUNDLE, TINY_FRAMES
from serve_helpers import stroke_op
from vatlas.server.edits.ops import validate_op
from vatlas.server.errors import CoreError
from vatlas.server.session.core import CoreConfig, ServerCore
from vatlas.server.session.document import Document
from vatlas.server.session.limits import ServerLimits, TokenBucket
from vatlas_wire.v1 import render_pb2, sessions_pb2


def drain(participant) -> list:
    events = []
    while not participant.events.empty():
        events.append(participant.events.get_nowait())
    return events


def kinds(events) -> list[str]:
    return [e.WhichOneof("kind") if e is not None else "end" for e in events]


async def make_core(models: Path, data: Path | None = None, **limits) -> ServerCore:
    core = ServerCore(CoreConfig(models_dir=models, data_dir=data, device="cpu", limits=ServerLimits(**limits)))
    await core.start()
    return core


async def session_with(core: ServerCore, *names: str):
    info = await core.create_session(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))
    people = []
    for name in names:
        people.append(await core.join(sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                                        name=name, participant_id=name)))
    return info, people


# ---------------------------------------------------------------- document and inverses


def test_inverse_of_every_op_kind() -> None:
    doc = Document()
    create = validate_op(stroke_op("a"))
    assert doc.inverse(create) == {"type": "delete", "target": "a"}
    doc.apply(create)
    update = validate_op({"type": "update", "id": "u", "target": "a", "set": {"width": 8.0, "opacity": 0.3}})
    # width was set before: restored; opacity was not: back to its neutral value
    assert doc.inverse(update) == {"type": "update", "target": "a", "set": {"width": 4.0, "opacity": 1.0}}
    doc.apply(update)
    hide = validate_op({"type": "set_visible", "target": "a", "visible": False})
    assert doc.inverse(hide) == {"type": "set_visible", "target": "a", "visible": True}
    doc.apply(hide)
    assert doc.live_ops()[0]["visible"] is False and doc.live_ops()[0]["width"] == 8.0
    delete = validate_op({"type": "delete", "target": "a"})
    assert doc.inverse(delete) == {"type": "restore", "target": "a"}
    doc.apply(delete)
    assert doc.live_ops() == []
    restore = validate_op({"type": "restore", "target": "a"})
    assert doc.inverse(restore) == {"type": "delete", "target": "a"}


@pytest.mark.parametrize(
    ("op", "code"),
    [
        (stroke_op("a"), "ALREADY_EXISTS"),
        ({"type": "delete", "target": "zzz"}, "NOT_FOUND"),
        ({"type": "restore", "target": "a"}, "FAILED_PRECONDITION"),
        ({"type": "update", "target": "a", "set": {"exposure": 1.0}}, "INVALID_ARGUMENT"),  # strokes have none
    ],
)
def test_document_checks(op, code) -> None:
    doc = Document()
    doc.apply(validate_op(stroke_op("a")))
    with pytest.raises(CoreError) as info:
        doc.check(validate_op(op))
    assert info.value.code == code


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=0.001, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


# ---------------------------------------------------------------- sequencing and broadcast


def test_ops_are_sequenced_and_broadcast_in_order(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            _, (alice, bob) = await session_with(core, "alice", "bob")
            drain(alice)
            drain(bob)
            await asyncio.gather(*(core.submit(alice if i % 2 else bob, stroke_op(f"s{i}", i % TINY_FRAMES))
                                   for i in range(10)))
            a_events, b_events = drain(alice), drain(bob)
            seq_a = [e.applied.seq for e in a_events if e.WhichOneof("kind") == "applied"]
            seq_b = [e.applied.seq for e in b_events if e.WhichOneof("kind") == "applied"]
            assert seq_a == seq_b == list(range(1, 11))
            accepted = [e.accepted for e in a_events if e.WhichOneof("kind") == "accepted"]
            assert len(accepted) == 5 and all(a.op_id.startswith("s") for a in accepted)
        finally:
            await core.close()

    asyncio.run(scenario())


def test_undo_after_someone_else_deleted_reports_and_moves_on(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            _, (alice, bob) = await session_with(core, "alice", "bob")
            await core.submit(alice, stroke_op("a"))
            await core.submit(alice, {"id": "u", "type": "update", "target": "a", "set": {"width": 7.0}})
            await core.submit(bob, {"id": "d", "type": "delete", "target": "a"})
            drain(alice)
            await core.undo(alice)  # undo the update: the object is gone -> an error, the step is dropped
            events = drain(alice)
            assert kinds(events) == ["rejected"] and "cannot undo" in events[0].rejected.error.message
            assert events[0].rejected.op_id == "" and events[0].rejected.error.code == "FAILED_PRECONDITION"
            await core.undo(alice)  # the next step (delete the stroke) is also impossible: already deleted
            assert kinds(drain(alice)) == ["rejected"]
            await core.undo(alice)
            assert drain(alice)[0].rejected.error.message == "nothing to undo"
            # bob's own undo restores it, and everyone sees the restore
            await core.undo(bob)
            restored = [e.applied.op for e in drain(alice) if e.WhichOneof("kind") == "applied"]
            assert restored[0].type == "restore" and restored[0].target == "a"
        finally:
            await core.close()

    asyncio.run(scenario())


def test_rate_limit_rejects_only_the_flooder(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir, ops_per_second=0.001, ops_burst=3)
        try:
            _, (flooder, calm) = await session_with(core, "flooder", "calm")
            for i in range(6):
                await core.submit(flooder, stroke_op(f"f{i}"))
            await core.submit(calm, stroke_op("c0"))
            f_events = drain(flooder)
            rejected = [e.rejected for e in f_events if e.WhichOneof("kind") == "rejected"]
            assert len(rejected) == 3 and all(r.error.code == "RESOURCE_EXHAUSTED" for r in rejected)
            assert [r.op_id for r in rejected] == ["f3", "f4", "f5"]
            c_events = drain(calm)
            assert any(e.WhichOneof("kind") == "accepted" and e.accepted.op_id == "c0" for e in c_events)
        finally:
            await core.close()

    asyncio.run(scenario())


def test_a_participant_that_never_reads_is_cut_off(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir, max_event_backlog=5)
        try:
            _, (writer, sleeper) = await session_with(core, "writer", "sleeper")
            for i in range(8):
                drain(writer)
                await core.submit(writer, stroke_op(f"w{i}", i % TINY_FRAMES))
            events = drain(sleeper)
            assert kinds(events) == ["error", "end"] and events[0].error.code == "RESOURCE_EXHAUSTED"
            assert sleeper.closed and not writer.closed
        finally:
            await core.close()

    asyncio.run(scenario())


def test_join_checks(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            info, _ = await session_with(core)
            cases = [
                (dict(session_id="nope", join_token=info.join_token), "NOT_FOUND"),
                (dict(session_id=info.session_id, join_token="x"), "PERMISSION_DENIED"),
                (dict(session_id=info.session_id, join_token=info.join_token, last_seq=5), "OUT_OF_RANGE"),
                (dict(session_id=info.session_id, join_token=info.join_token, color="red"), "INVALID_ARGUMENT"),
                (dict(session_id=info.session_id, join_token=info.join_token, participant_id="a b"),
                 "INVALID_ARGUMENT"),
                (dict(session_id=info.session_id, join_token=info.join_token, name="x" * 100), "INVALID_ARGUMENT"),
            ]
            for fields, code in cases:
                with pytest.raises(CoreError) as exc:
                    await core.join(sessions_pb2.Join(**fields))
                assert exc.value.code == code, fields
            # a second connection of one participant replaces the first, given the id's resume key
            first = await core.join(sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                                      participant_id="same"))
            key = first.events.get_nowait().snapshot.resume_key
            with pytest.raises(CoreError) as exc:  # the id alone (everyone sees it) is not enough
                await core.join(sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                                  participant_id="same"))
            assert exc.value.code == "PERMISSION_DENIED" and not first.closed
            await core.join(sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token,
                                              participant_id="same", resume_key=key))
            assert first.closed and kinds(drain(first))[-2:] == ["error", "end"]
        finally:
            await core.close()

    asyncio.run(scenario())


def test_initial_document_is_validated_and_sequenced(tiny_models_dir: Path) -> None:
    from vatlas_wire.v1 import edits_pb2, mirror

    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            doc = edits_pb2.EditDocument(version=1, ops=[mirror.from_mirror(stroke_op("d1"), edits_pb2.EditOp),
                                                         mirror.from_mirror({**stroke_op("d2"), "visible": False},
                                                                          edits_pb2.EditOp)])
            info = await core.create_session(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE, document=doc))
            assert info.seq == 3  # two creates and the set_visible of the hidden one
            bad = edits_pb2.EditDocument(ops=[mirror.from_mirror({**stroke_op("x"), "width": -1.0}, edits_pb2.EditOp)])
            with pytest.raises(CoreError) as exc:
                await core.create_session(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE, document=bad))
            assert exc.value.code == "INVALID_ARGUMENT" and "document op 0" in exc.value.message
        finally:
            await core.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- rendering


def test_render_coalesces_per_client(tiny_models_dir: Path) -> None:
    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            info, _ = await session_with(core)
            reqs = [render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token, frame=i,
                                             request_id=i) for i in range(6)]
            results = await asyncio.gather(*(core.viewing.render("viewer", r) for r in reqs), return_exceptions=True)
            assert not isinstance(results[-1], Exception) and results[-1].request_id == 5
            aborted = [r for r in results if isinstance(r, CoreError)]
            assert aborted and all(r.code == "ABORTED" for r in aborted)
            # another client's request is never aborted by this one's
            a, b = await asyncio.gather(core.viewing.render("viewer", reqs[0]), core.viewing.render("other", reqs[1]))
            assert (a.frame, b.frame) == (0, 1)
        finally:
            await core.close()

    asyncio.run(scenario())


def test_playback_skips_frames_for_a_slow_consumer(tiny_models_dir: Path) -> None:
    async def scenario() -> list[int]:
        core = await make_core(tiny_models_dir)
        try:
            info, _ = await session_with(core)
            frames = await core.viewing.playback("viewer", render_pb2.PlaybackRequest(
                session_id=info.session_id, join_token=info.join_token, fps=40))
            got = []
            async for frame in frames:
                got.append(frame.frame)
                await asyncio.sleep(0.1)  # 10 fps reader against 40 fps playback of 8 frames (0.2 s)
            return got
        finally:
            await core.close()

    got = asyncio.run(scenario())
    assert 1 <= len(got) < TINY_FRAMES and got == sorted(got), got  # frames were dropped, never queued


def test_sessions_replay_from_the_data_dir(tiny_models_dir: Path, tmp_path: Path) -> None:
    async def first_run() -> tuple[str, bytes]:
        core = await make_core(tiny_models_dir, tmp_path)
        info, (alice,) = await session_with(core, "alice")
        await core.submit(alice, stroke_op("a"))
        await core.submit(alice, {"id": "u", "type": "update", "target": "a", "set": {"opacity": 0.5}})
        frame = await core.viewing.render("v", render_pb2.RenderRequest(session_id=info.session_id,
                                                                join_token=info.join_token, format="png"))
        await core.close()
        return info.session_id, frame.data

    async def second_run(session_id: str) -> tuple[int, bytes]:
        core = await make_core(tiny_models_dir, tmp_path)
        try:
            session = core.sessions[session_id]
            frame = await core.viewing.render("v", render_pb2.RenderRequest(session_id=session_id,
                                                                    join_token=session.join_token, format="png"))
            return session.seq, frame.data
        finally:
            await core.close()

    session_id, before = asyncio.run(first_run())
    seq, after = asyncio.run(second_run(session_id))
    assert seq == 2 and after == before  # the replayed session renders the same pixels


def test_concurrent_renders_of_several_sessions_stay_apart(tiny_models_dir: Path, tiny_bundle) -> None:
    import numpy as np

    ys, xs = np.nonzero(tiny_bundle.mask[0] > 200)
    cx, cy = float(xs.mean()), float(ys.mean())

    async def scenario() -> None:
        core = await make_core(tiny_models_dir)
        try:
            (info_a, (alice,)), (info_b, _) = await session_with(core, "alice"), await session_with(core)
            await core.submit(alice, {**stroke_op("a"), "points": [[cx - 6, cy], [cx + 6, cy]]})

            def req(info, fmt: str) -> render_pb2.RenderRequest:
                return render_pb2.RenderRequest(session_id=info.session_id, join_token=info.join_token, frame=0,
                                                format=fmt)

            alone_a = await core.viewing.render("x", req(info_a, "png"))
            alone_b = await core.viewing.render("x", req(info_b, "png"))
            assert alone_a.data != alone_b.data and (alone_a.seq, alone_b.seq) == (1, 0)
            together = await asyncio.gather(*(core.viewing.render(f"v{i}", req(info, fmt)) for i, (info, fmt) in
                                              enumerate([(info_a, "png"), (info_b, "png"), (info_a, "jpeg"),
                                                         (info_b, "png")])))
            assert together[0].data == alone_a.data and together[1].data == alone_b.data
            assert together[3].data == alone_b.data and together[2].data[:2] == b"\xff\xd8"
        finally:
            await core.close()

    asyncio.run(scenario())


def test_a_client_vanishing_mid_commit_never_reuses_a_sequence_number(tiny_models_dir: Path, tmp_path: Path) -> None:
    from vatlas.server.session.oplog import read_records

    async def scenario() -> None:
        core = await make_core(tiny_models_dir, tmp_path)
        try:
            info, (alice,) = await session_with(core, "alice")
            session = core.sessions[info.session_id]
            for k in range(40):  # cancel the submitting task at every point of the commit in turn
                task = asyncio.create_task(core.submit(alice, stroke_op(f"c{k}", k % TINY_FRAMES)))
                await asyncio.sleep(0.0004 * k)  # 0..16 ms: inside engine.apply, the log append, or after
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):  # it may also have finished already
                    await task
                await core.submit(alice, stroke_op(f"n{k}", k % TINY_FRAMES))
            records, _ = read_records(tmp_path / "sessions" / info.session_id / "ops.log")
            assert [r["seq"] for r in records] == list(range(1, len(records) + 1)) == [r["seq"] for r in
                                                                                      session.records]
            assert session.seq == len(records) and len(session.doc.objects) == len(records)
            assert len(session.engine.objects()) == len(records)  # the engine holds exactly the logged ops
        finally:
            await core.close()

    asyncio.run(scenario())
