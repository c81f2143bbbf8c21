"""The editable region and the update op against the real server: gRPC and WebSocket doors, the CLI, the
Python client, on the tiny synthetic bundle.

Every tool refuses an edit entirely outside the region with the same plain sentence; BundleInfo carries the
ROI and renders its per-frame mask on request; update ops move and restack objects, are validated, undone
and broadcast; a late joiner's snapshot says who made each layer.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TEST_TOKEN, TINY_BUNDLE
from serve_helpers import AioStubs, GrpcSession, WsClient
from test_edits_fixtures import png_bytes, solid_rgba
from vatlas.server.edits.region import visible_boxes
from vatlas.server.encoders import decode
from vatlas.server.session.bundles import BundleRegistry
from vatlas_client import AsyncClient, Client
from vatlas_wire.v1 import bundles_pb2, edits_pb2, mirror, render_pb2, sessions_pb2

from vatlas.cli import main
from vatlas.errors import OUTSIDE_REGION

BLUE = png_bytes(solid_rgba(8, 8, (0, 0, 255, 255)))
RED = png_bytes(solid_rgba(8, 8, (255, 0, 0, 255)))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def far_outside(bundle: Any, frame: int = 0) -> tuple[float, float]:
    """A pixel 10+ px from every pixel of frame `frame` where the region shows at all."""
    import cv2

    visible = (np.asarray(bundle.mask[frame]) > 0).astype(np.uint8)
    far = cv2.distanceTransform(1 - visible, cv2.DIST_L2, 5) >= 10
    far[:4], far[-4:], far[:, :4], far[:, -4:] = False, False, False, False
    ys, xs = np.nonzero(far)
    return float(xs[len(xs) // 2]), float(ys[len(ys) // 2])


def centre(bundle: Any, frame: int = 0) -> tuple[float, float]:
    x, y, w, h = visible_boxes(bundle)[frame]
    return float(x + w / 2), float(y + h / 2)


def outside_ops(bundle: Any) -> list[dict]:
    """One op per tool, each entirely outside the region of frame 0."""
    ox, oy = far_outside(bundle)
    return [
        {"id": "o-stroke", "type": "stroke", "space": "frame", "frame": 0, "points": [[ox - 2, oy], [ox + 2, oy]],
         "width": 3.0, "color": [0, 1, 0, 1]},
        {"id": "o-erase", "type": "stroke", "space": "frame", "frame": 0, "points": [[ox, oy]], "width": 3.0,
         "mode": "erase"},
        {"id": "o-texture", "type": "texture", "space": "frame", "frame": 0, "image": BLUE,
         "rect": [ox - 3, oy - 3, 6, 6]},
        {"id": "o-atlas", "type": "texture", "space": "atlas", "image": BLUE, "position": [-5000.0, -5000.0]},
        {"id": "o-sticker", "type": "sticker", "frame": 0, "image": BLUE, "position": [ox, oy], "size": [4, 4]},
        {"id": "o-adj-path", "type": "adjustment", "space": "frame", "frame": 0, "region": "path",
         "points": [[ox - 2, oy], [ox + 2, oy]], "width": 3.0, "exposure": 1.0},
        {"id": "o-adj-poly", "type": "adjustment", "space": "frame", "frame": 0, "region": "polygon",
         "points": [[ox - 2, oy - 2], [ox + 2, oy - 2], [ox, oy + 2]], "exposure": 1.0},
    ]


async def _grpc_session(server: Any, stubs: AioStubs, name: str,
                        info: sessions_pb2.SessionInfo | None = None) -> tuple[GrpcSession, Any, Any]:
    if info is None:
        info = await stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                                  metadata=stubs.metadata)
    session = GrpcSession(stubs)
    session.send(join=sessions_pb2.Join(session_id=info.session_id, join_token=info.join_token, name=name))
    snapshot = await session.event("snapshot")
    return session, info, snapshot


# ---------------------------------------------------------------- outside the region


def test_every_tool_outside_the_region_gets_one_plain_sentence_over_grpc(running_server: Any, tiny_bundle: Any) -> None:
    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        try:
            alice, _, _ = await _grpc_session(running_server, stubs, "alice")
            for op in outside_ops(tiny_bundle):
                alice.send_op(op)
                rejected = await alice.event("rejected", where=lambda r, i=op["id"]: r.op_id == i)
                assert (rejected.error.code, rejected.error.message) == ("OUT_OF_RANGE", OUTSIDE_REGION), op["id"]
            # a texture that is in, moved out by an update: the same sentence, and it stays where it was
            cx, cy = centre(tiny_bundle)
            alice.send_op({"id": "in", "type": "texture", "space": "frame", "frame": 0, "image": BLUE,
                           "rect": [cx - 3, cy - 3, 6, 6]})
            await alice.event("accepted", where=lambda a: a.op_id == "in")
            ox, oy = far_outside(tiny_bundle)
            alice.send_op({"id": "out", "type": "update", "target": "in", "set": {"rect": [ox - 3, oy - 3, 6, 6]}})
            rejected = await alice.event("rejected", where=lambda r: r.op_id == "out")
            assert rejected.error.message == OUTSIDE_REGION
            await alice.close()
        finally:
            await stubs.close()

    run(scenario())


def test_every_tool_outside_the_region_gets_one_plain_sentence_over_websocket(running_server: Any,
                                                                             tiny_bundle: Any) -> None:
    async def scenario() -> None:
        ws = await WsClient.connect(running_server.ws_url, running_server.token)
        try:
            info = (await ws.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
            await ws.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token, name="web")))
            await ws.event("snapshot")
            for op in outside_ops(tiny_bundle):
                await ws.send(session=sessions_pb2.ClientMessage(op=mirror.from_mirror(op, edits_pb2.EditOp)))
                rejected = await ws.event("rejected", where=lambda r, i=op["id"]: r.op_id == i)
                assert (rejected.error.code, rejected.error.message) == ("OUT_OF_RANGE", OUTSIDE_REGION), op["id"]
            # a session seeded with a document holding such an op is not made
            seeded = await ws.call(create_session=sessions_pb2.CreateSessionRequest(
                bundle=TINY_BUNDLE, document=edits_pb2.EditDocument(version=1, ops=[
                    mirror.from_mirror(outside_ops(tiny_bundle)[0], edits_pb2.EditOp)])))
            assert seeded.error.code == "OUT_OF_RANGE" and seeded.error.message == f"document op 0: {OUTSIDE_REGION}"
        finally:
            await ws.close()

    run(scenario())


def test_cli_render_and_export_refuse_a_document_edit_outside_the_region(tiny_models_dir: Path, tiny_bundle: Any,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    ox, oy = far_outside(tiny_bundle)
    doc = tmp_path / "edits.json"
    doc.write_text(json.dumps({"version": 1, "ops": [
        {"id": "far", "type": "stroke", "space": "frame", "frame": 0, "points": [[ox, oy], [ox + 2, oy]]}]}))
    bundle = str(tiny_models_dir / f"{TINY_BUNDLE}.vatlas")
    for argv in (["render", bundle, "--edits", str(doc), "--frame", "0", "-o", str(tmp_path / "x.png")],
                 ["export", bundle, "--edits", str(doc), "-o", str(tmp_path / "x.mp4")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(f"op far: {OUTSIDE_REGION}"), err


# ---------------------------------------------------------------- the ROI in BundleInfo and renders


def test_bundle_info_and_renders_carry_the_region(running_server: Any, tiny_bundle: Any,
                                                  tiny_models_dir: Path) -> None:
    boxes = [[int(v) for v in box] for box in visible_boxes(tiny_bundle)]

    def check(roi: bundles_pb2.Roi, *, loaded: bool) -> None:
        assert roi.ref_frame == tiny_bundle.ref_frame
        got = [[[p.x, p.y] for p in poly.points] for poly in roi.polygons]
        assert np.allclose(np.asarray(got, dtype=np.float64), np.asarray(tiny_bundle.roi_polygons), atol=1e-4)
        assert [[b.x, b.y, b.width, b.height] for b in roi.visible] == (boxes if loaded else [])

    # from the file's manifest (not loaded): the polygons only
    check(BundleRegistry(tiny_models_dir).info(TINY_BUNDLE).roi, loaded=False)

    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        ws = await WsClient.connect(running_server.ws_url, running_server.token)
        try:
            check((await stubs.bundles.LoadBundle(bundles_pb2.LoadBundleRequest(name=TINY_BUNDLE),
                                                  metadata=stubs.metadata)).roi, loaded=True)
            check((await ws.call(bundle_info=bundles_pb2.GetBundleInfoRequest(name=TINY_BUNDLE))).bundle_info.roi,
                  loaded=True)
            info = (await ws.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
            last = tiny_bundle.num_frames - 1
            frame = (await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=last,
                                                                   roi_mask_side=32))).frame
            mask = frame.roi_mask
            assert max(mask.width, mask.height) == 32 and len(mask.data) == mask.width * mask.height
            assert [mask.visible.x, mask.visible.y, mask.visible.width, mask.visible.height] == boxes[last]
            coarse = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
            import cv2

            want = cv2.resize(tiny_bundle.mask[last], (mask.width, mask.height), interpolation=cv2.INTER_AREA)
            assert np.abs(coarse.astype(int) - want).max() <= 1
            plain = (await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=0))).frame
            assert not plain.HasField("roi_mask")  # only when asked
            grpc_frame = await stubs.render.RenderFrame(render_pb2.RenderRequest(
                session_id=info.session_id, join_token=info.join_token, frame=0, roi_mask_side=16),
                metadata=stubs.metadata)
            assert max(grpc_frame.roi_mask.width, grpc_frame.roi_mask.height) == 16
            bad = await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=0,
                                                                roi_mask_side=5000))
            assert bad.error.code == "INVALID_ARGUMENT" and "roi_mask_side" in bad.error.message
        finally:
            await ws.close()
            await stubs.close()

    run(scenario())


def test_python_clients_expose_the_region(running_server: Any, tiny_bundle: Any) -> None:
    boxes = [tuple(int(v) for v in box) for box in visible_boxes(tiny_bundle)]
    with Client(running_server.grpc_target, token=TEST_TOKEN, timeout=20) as client:
        with client.open_session(TINY_BUNDLE, name="py") as session:
            roi = session.roi()
            assert roi.visible == boxes and len(roi.polygons) == len(tiny_bundle.roi_polygons)
            assert roi.box(0) == boxes[0] and roi.centre(0) == centre(tiny_bundle)
            x, y = roi.centre(0)
            assert session.sticker(BLUE, frame=0, position=(x, y), size=[4, 4]) > 0
        assert client.bundle_info(TINY_BUNDLE).roi == roi

    async def scenario() -> None:
        async with AsyncClient(running_server.grpc_target, token=TEST_TOKEN) as client:
            info = await client.create_session(TINY_BUNDLE)
            async with await client.join(info, name="a") as session:
                assert (await session.roi()).visible == boxes

    run(scenario())


# ---------------------------------------------------------------- update: move, restack, undo, broadcast


def test_updates_move_and_restack_are_validated_undone_and_broadcast(running_server: Any, tiny_bundle: Any) -> None:
    cx, cy = centre(tiny_bundle)
    rect = [cx - 4, cy - 4, 8, 8]
    at = (int(cy), int(cx))

    async def scenario() -> None:
        stubs = AioStubs(running_server.grpc_target, running_server.token)
        ws = await WsClient.connect(running_server.ws_url, running_server.token)
        try:
            alice, info, _ = await _grpc_session(running_server, stubs, "alice")
            await ws.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                session_id=info.session_id, join_token=info.join_token, name="bob")))
            await ws.event("snapshot")

            async def pixel() -> np.ndarray:
                frame = (await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=0,
                                                                       format="png"))).frame
                return decode(frame.data)[at].astype(int)

            for op_id, image in (("blue", BLUE), ("red", RED)):
                alice.send_op({"id": op_id, "type": "texture", "space": "frame", "frame": 0, "image": image,
                               "rect": rect})
            blue = await ws.event("applied", where=lambda a: a.op.id == "blue")
            red = await ws.event("applied", where=lambda a: a.op.id == "red")
            assert (blue.op.z, red.op.z) == (1.0, 2.0)  # each new object goes on top
            assert (await pixel())[0] > 150  # red over blue

            # Bob brings blue to the front: one update, Alice sees it, the pixels follow.
            await ws.send(session=sessions_pb2.ClientMessage(op=edits_pb2.EditOp(
                id="front", type="update", target="blue", set=edits_pb2.EditOp(z=3.0))))
            await ws.event("accepted", where=lambda a: a.op_id == "front")
            seen = await alice.event("applied", where=lambda a: a.op.id == "front")
            assert seen.op.set.z == 3.0
            assert (await pixel())[2] > 150

            # Alice moves red away and back by undo.
            alice.send_op({"id": "move", "type": "update", "target": "red",
                           "set": {"rect": [rect[0] + 2, rect[1] + 1, 8, 8]}})
            await alice.event("accepted", where=lambda a: a.op_id == "move")
            alice.send(undo=sessions_pb2.Undo())
            undo = await ws.event("applied", where=lambda a: a.op.type == "update" and a.op.target == "red"
                                  and a.op.id.startswith("undo"))
            assert list(undo.op.set.rect) == pytest.approx(rect)

            # Validation: a property the object lacks, a z out of range.
            for op in ({"id": "bad1", "type": "update", "target": "red", "set": {"width": 3.0}},
                       {"id": "bad2", "type": "update", "target": "red", "set": {"z": 1e12}}):
                alice.send_op(op)
                rejected = await alice.event("rejected", where=lambda r, i=op["id"]: r.op_id == i)
                assert rejected.error.code == "INVALID_ARGUMENT", rejected.error.message

            # A late joiner's snapshot names the author of each layer, also after the author left.
            alice_id = blue.participant_id
            await alice.close()
            carol, _, snapshot = await _grpc_session(running_server, stubs, "carol", info)
            authors = {a.op_id: a for a in snapshot.authors}
            assert authors["blue"].participant_id == alice_id and authors["blue"].name == "alice"
            assert authors["blue"].color.startswith("#")
            assert [op.z for op in snapshot.document.ops] == [3.0, 2.0]
            await carol.close()
        finally:
            await ws.close()
            await stubs.close()

    run(scenario())
