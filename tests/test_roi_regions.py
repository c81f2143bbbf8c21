"""Several ROI polygons are separate regions: an op with `roi_region` k is placed by region k and drawn only on
it (engine, on a ground-truth bundle whose ROI is split into two polygons), the coarse mask says which region
each cell shows, and both doors carry the field (real server on loopback)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TEST_TOKEN, start_in_process_server
from serve_helpers import WsClient
from vatlas.models.bundle import Bundle, save_bundle
from vatlas.server.edits.engine import EditEngine
from vatlas.server.edits.roi_labels import frame_regions
from vatlas.server.errors import CoreError
from vatlas_client import Client, ops
from vatlas_wire.v1 import edits_pb2, render_pb2, sessions_pb2

from vatlas.errors import OUTSIDE_REGION
from vatlas.synth import make_scene

SIZE = (96, 64)


def two_region_bundle() -> Bundle:
    """The scene's exact bundle with its ROI split at the middle column into two polygons (left 1, right 2)."""
    scene = make_scene(frames=6, size=SIZE, seed=1)
    bundle = scene.ground_truth_bundle(atlas_size=128)
    pts = np.concatenate([np.asarray(p, np.float64) for p in bundle.roi_polygons])
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    mid = (x0 + x1) / 2.0
    bundle.roi_polygons = [[[x0, y0], [mid, y0], [mid, y1], [x0, y1]], [[mid, y0], [x1, y0], [x1, y1], [mid, y1]]]
    return bundle


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return two_region_bundle()


def labels(bundle: Bundle, frame: int) -> np.ndarray:
    ys, xs = np.mgrid[0:bundle.height, 0:bundle.width].astype(np.float64) + 0.5
    return frame_regions(bundle, frame, np.stack([xs, ys], -1))


def changed(engine: EditEngine, base: np.ndarray) -> np.ndarray:
    out = engine.render(list(range(engine.bundle.num_frames))).cpu().numpy()
    return np.abs(out.astype(int) - base.astype(int)).max(axis=-1) > 0


def near(mask: np.ndarray, px: float) -> np.ndarray:
    """Pixels within px of mask (the boundary band a bilinear render smears a region's edge over)."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5) <= px


def band(bundle: Bundle) -> tuple[float, float, float]:
    """(left x, split x, right x) of the visible ROI on frame 0 along its middle row, and that row's y."""
    ys, xs = np.nonzero(bundle.mask[0] >= 200)
    row = float(np.median(ys)) + 0.5
    return float(xs.min()) + 2.0, row, float(xs.max()) - 2.0


def test_labels_follow_the_polygons_on_the_reference_frame_and_through_the_clip(bundle: Bundle) -> None:
    split = np.asarray(bundle.roi_polygons[0], np.float64)[:, 0].max()
    lab = labels(bundle, bundle.ref_frame)
    xs = np.arange(bundle.width) + 0.5
    inside = lab > 0
    assert inside.any()
    assert ((lab == 1) == (inside & (xs[None, :] < split))).mean() > 0.99
    for t in range(bundle.num_frames):  # both regions stay present where the ROI shows
        shown = labels(bundle, t)[bundle.mask[t] >= 128]
        assert (shown == 1).any() and (shown == 2).any()


@pytest.mark.parametrize("kind", ["stroke", "texture", "adjustment"])
def test_an_op_kept_to_one_region_changes_only_that_region_on_every_frame(bundle: Bundle, kind: str) -> None:
    left, row, right = band(bundle)
    if kind == "stroke":
        op = {"id": "a", "type": "stroke", "frame": 0, "points": [[left, row], [right, row]], "width": 9.0,
              "color": [1, 0, 0, 1], "hardness": 1.0}
    elif kind == "texture":
        op = {"id": "a", "type": "texture", "frame": 0, "rect": [left, row - 6, right - left, 12],
              "image": cv2.imencode(".png", np.full((12, 40, 4), 255, np.uint8))[1].tobytes()}
    else:
        op = {"id": "a", "type": "adjustment", "frame": 0, "region": "polygon", "exposure": 1.5,
              "points": [[left, row - 6], [right, row - 6], [right, row + 6], [left, row + 6]]}
    engine = EditEngine(bundle, "cpu")
    base = engine.render(list(range(bundle.num_frames))).cpu().numpy()
    engine.apply(op)
    both = changed(engine, base)
    engine.apply({"id": "u", "type": "update", "target": "a", "set": {"roi_region": 2}})
    only_right = changed(engine, base)
    engine.apply({"id": "u2", "type": "update", "target": "a", "set": {"roi_region": 1}})
    only_left = changed(engine, base)
    for t in range(bundle.num_frames):
        lab = labels(bundle, t)
        assert both[t][lab == 1].any() and both[t][lab == 2].any(), t
        for got, keep, other in ((only_left[t], 1, 2), (only_right[t], 2, 1)):
            assert got[lab == keep].sum() >= 0.8 * both[t][lab == keep].sum(), (t, keep)
            stray = got & (lab == other) & ~near(lab == keep, 2.0)
            assert not stray.any(), (t, keep, int(stray.sum()))


def test_an_op_outside_its_region_or_naming_a_missing_one_is_refused(bundle: Bundle) -> None:
    left, row, right = band(bundle)
    engine = EditEngine(bundle, "cpu")
    right_only = {"id": "r", "type": "stroke", "frame": 0, "points": [[right - 3, row], [right, row]], "width": 3.0}
    with pytest.raises(CoreError) as refused:
        engine.apply({**right_only, "roi_region": 1})
    assert refused.value.code == "OUT_OF_RANGE" and refused.value.message == OUTSIDE_REGION
    with pytest.raises(CoreError) as missing:
        engine.apply({**right_only, "roi_region": 3})
    assert missing.value.code == "INVALID_ARGUMENT" and "2 regions" in missing.value.message
    engine.apply({**right_only, "roi_region": 2})  # where it lies: placed
    assert engine.get("r")["roi_region"] == 2


def test_the_coarse_mask_and_the_ops_carry_regions_over_both_doors(bundle: Bundle, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    save_bundle(bundle, models / "two.vatlas")
    server = start_in_process_server(models)
    try:
        left, row, right = band(bundle)

        async def over_websocket() -> None:
            ws = await WsClient.connect(server.ws_url, TEST_TOKEN)
            try:
                info = (await ws.call(create_session=sessions_pb2.CreateSessionRequest(bundle="two"))).session_info
                await ws.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
                    session_id=info.session_id, join_token=info.join_token, name="ws")))
                await ws.event("snapshot")
                frame = (await ws.call(render=render_pb2.RenderRequest(session_id=info.session_id, frame=3,
                                                                       roi_mask_side=48))).frame
                mask = frame.roi_mask
                cells = np.frombuffer(mask.regions, np.uint8).reshape(mask.height, mask.width)
                data = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
                assert set(np.unique(cells)) == {0, 1, 2} and not (cells[data == 0]).any()
                small = cv2.resize(labels(bundle, 3), (mask.width, mask.height), interpolation=cv2.INTER_NEAREST)
                firm = data >= 250
                assert (cells[firm] == small[firm]).mean() > 0.95
                op = edits_pb2.EditOp(id="w", type="stroke", space="frame", frame=0, width=3.0, roi_region=1,
                                      points=[edits_pb2.Vec2(x=right - 3, y=row), edits_pb2.Vec2(x=right, y=row)])
                await ws.send(session=sessions_pb2.ClientMessage(op=op))
                rejected = await ws.event("rejected", where=lambda r: r.op_id == "w")
                assert (rejected.error.code, rejected.error.message) == ("OUT_OF_RANGE", OUTSIDE_REGION)
            finally:
                await ws.close()

        server.call(over_websocket())

        with Client(server.grpc_target, token=TEST_TOKEN, timeout=20) as client, \
                client.open_session("two", name="py") as session:
            session.stroke([(left, row), (right, row)], frame=0, width=5.0, roi_region=2, id="g")
            with client.join(session.info, name="late") as late:  # its snapshot holds the op as stored
                assert [op.roi_region for op in late.document if op.id == "g"] == [2]
            assert ops.sticker(np.zeros((4, 4, 4), np.uint8), frame=0, position=(left, row),
                               roi_region=1).roi_region == 1
    finally:
        server.stop()
