"""Hostile ops against the edit engine (issue 17, H1-H3): clipped before rasterising, budgeted, and a refused
op leaves no trace for anyone; pasted images are kept at the resolution the atlas shows them."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_edits_fixtures import png_bytes, shifted_bundle, solid_rgba
from vatlas.server.edits import layers as layers_module
from vatlas.server.edits.engine import EditEngine
from vatlas.server.edits.ops import OpLimits
from vatlas.server.errors import CoreError

from vatlas.errors import OUTSIDE_REGION

ALL = [0, 1, 2, 3]
HUGE_POLYGON = {"id": "huge", "type": "adjustment", "space": "frame", "frame": 0,
                "points": [[0, 0], [1e6, 0], [0, 1e6]], "exposure": 0.5}


@pytest.fixture(scope="module")
def bundle():
    return shifted_bundle()


def _stroke(op_id: str, points: list, frame: int = 0, **kw) -> dict:
    return {"id": op_id, "type": "stroke", "space": "frame", "frame": frame, "points": points, "width": 4,
            "color": [1, 0, 0, 1], "hardness": 1.0, **kw}


def _timed(engine: EditEngine, op: dict) -> float:
    start = time.perf_counter()
    engine.apply(op)
    return time.perf_counter() - start


def _big_png(side: int = 4096) -> bytes:
    """A 4096 x 4096 PNG of some 75 KB (flat colour with a few lines: it compresses well)."""
    img = np.zeros((side, side, 4), np.uint8)
    img[..., 1] = 200
    img[..., 3] = 255
    img[::64, :, 0] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


# ---- H1: the repro and what comes after it -------------------------------------------------------------------
def test_huge_polygon_is_clipped_to_the_frame_and_the_session_carries_on(bundle) -> None:
    engine = EditEngine(bundle, "cpu")
    seconds = _timed(engine, HUGE_POLYGON)
    print(f"\nadjustment polygon [(0,0),(1e6,0),(0,1e6)] on frame 0: {seconds * 1e3:.0f} ms")
    # It covers the whole frame, exactly like the frame's own rectangle (the part of it that T can map).
    frame_sized = EditEngine(bundle, "cpu")
    w, h = bundle.width, bundle.height
    frame_sized.apply({**HUGE_POLYGON, "points": [[0, 0], [w, 0], [w, h], [0, h]]})
    assert engine.layers.adjust is not None and frame_sized.layers.adjust is not None
    assert torch.allclose(engine.layers.adjust, frame_sized.layers.adjust, atol=1e-5)
    # Everything else still works, undo (delete) included.
    engine.apply(_stroke("s", [[10, 10], [40, 30]]))
    engine.apply({"id": "t", "type": "texture", "space": "frame", "frame": 1, "rect": [5, 5, 10, 8],
                  "image": png_bytes(solid_rgba(6, 4))})
    engine.apply({"id": "u", "type": "delete", "target": "huge"})
    assert engine.layers.adjust is None
    assert [o["id"] for o in engine.objects()] == ["s", "t"]


def test_a_failed_draw_leaves_no_trace(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = EditEngine(bundle, "cpu")
    engine.apply(_stroke("a", [[10, 20], [50, 20]]))
    engine.apply(_stroke("z", [[30, 10], [30, 40]]))  # crosses a: redrawing a's rectangle draws z too
    engine.apply({"id": "adj", "type": "adjustment", "space": "atlas", "points": [[5, 5], [30, 5], [20, 30]],
                  "exposure": 0.3})
    layer, adjust, used = engine.layers.layer.clone(), engine.layers.adjust.clone(), engine.edit_bytes()
    real_paint, real_weight = layers_module.AtlasLayers._paint_into, layers_module.AtlasLayers._coverage_weight

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    def half_then_fail(self, target, aop, sub):  # writes into the scratch copy, then fails
        target.fill_(0.5)
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(layers_module.AtlasLayers, "_paint_into", half_then_fail)
    with pytest.raises(CoreError) as info:
        engine.apply(_stroke("b", [[10, 30], [50, 30]]))
    assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.op_id == "b"
    for change in ({"id": "c1", "type": "update", "target": "a", "set": {"width": 9, "color": [0, 0, 1, 1]}},
                   {"id": "c2", "type": "delete", "target": "a"},
                   {"id": "c3", "type": "set_visible", "target": "a", "visible": False}):
        with pytest.raises(CoreError) as info:
            engine.apply(change)
        assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.op_id == change["id"]
    monkeypatch.setattr(layers_module.AtlasLayers, "_paint_into", real_paint)
    monkeypatch.setattr(layers_module.AtlasLayers, "_coverage_weight", out_of_memory)
    with pytest.raises(CoreError):
        engine.apply({"id": "adj2", "type": "adjustment", "space": "atlas", "points": [[40, 40], [60, 40], [50, 60]],
                      "saturation": 0.5})
    monkeypatch.setattr(layers_module.AtlasLayers, "_coverage_weight", real_weight)
    # Nothing of the failed ops is left: not in the document, the layers, the memory count or later rebuilds.
    assert [o["id"] for o in engine.objects()] == ["a", "z", "adj"]
    assert engine.get("b") is None and engine.get("adj2") is None
    assert engine.get("a")["width"] == 4.0 and engine.get("a")["visible"] is True
    assert torch.equal(engine.layers.layer, layer) and torch.equal(engine.layers.adjust, adjust)
    assert engine.edit_bytes() == used
    # The same ids go through now (no ALREADY_EXISTS), and undo (delete) rebuilds without them.
    engine.apply(_stroke("b", [[10, 30], [50, 30]]))
    for op_id in ("adj", "a", "z", "b"):
        engine.apply({"type": "delete", "target": op_id})
    assert float(engine.layers.layer.abs().max()) == 0.0 and engine.layers.adjust is None
    assert np.array_equal(engine.render(ALL).numpy(), bundle.frames)


def test_over_the_raster_budget_is_refused_without_trace(bundle) -> None:
    engine = EditEngine(bundle, "cpu", limits=OpLimits.for_bundle(bundle, max_raster_work=20_000))
    engine.apply(_stroke("small", [[10, 10], [14, 12]]))
    before = engine.layers.layer.clone()
    zigzag = [[x, 5 + (x % 2) * 40] for x in range(2, 62)]
    for op in (_stroke("wide", zigzag, width=60), {**HUGE_POLYGON, "id": "poly", "points": zigzag}):
        with pytest.raises(CoreError) as info:
            engine.apply(op)
        assert info.value.code == "RESOURCE_EXHAUSTED" and "texel-segment" in info.value.message
    assert [o["id"] for o in engine.objects()] == ["small"]
    assert torch.equal(engine.layers.layer, before) and engine.layers.adjust is None


# ---- H2: long strokes are clipped before they are densified ------------------------------------------------------
@pytest.mark.parametrize("reach", [1e6, 1000.0])
def test_a_two_point_stroke_across_the_world_is_fast_and_right(bundle, reach: float) -> None:
    engine = EditEngine(bundle, "cpu")
    seconds = _timed(engine, _stroke("s", [[-reach, 10], [reach, 10]]))
    print(f"\nstroke [(-{reach:g},10),({reach:g},10)]: {seconds * 1e3:.0f} ms")
    aop = engine._objects["s"].atlas_op
    assert aop.segs is not None and len(aop.segs) <= 40  # the frame's 64 px, not 2e6 px, at 4 px a step
    # Identical to the same stroke drawn across the frame only (T clamps at the frame's edge anyway).
    inside = EditEngine(bundle, "cpu")
    inside.apply(_stroke("s", [[-3, 10], [bundle.width + 3, 10]]))
    assert torch.allclose(engine.layers.layer, inside.layers.layer, atol=1e-4)
    assert float(engine.layers.layer[0, 3].max()) > 0.99


def test_points_per_op_are_capped_after_densifying(bundle) -> None:
    limits = OpLimits.for_bundle(bundle, max_raster_points=500)
    engine = EditEngine(bundle, "cpu", limits=limits)
    rng = np.random.default_rng(1)
    scribble = rng.uniform(0, [bundle.width, bundle.height], (400, 2)).tolist()  # some 10k px of path
    engine.apply(_stroke("s", scribble, width=1))
    assert len(engine._objects["s"].atlas_op.segs) <= limits.max_raster_points
    # A stroke wholly outside the frame is outside the editable region: refused, in plain words.
    with pytest.raises(CoreError) as refused:
        engine.apply(_stroke("out", [[-500, -500], [-100, -400]]))
    assert refused.value.message == OUTSIDE_REGION and "out" not in engine._objects


def test_clipping_keeps_what_is_inside_bit_for_bit() -> None:
    from vatlas.server.edits.raster import clip_polygon, clip_polyline

    box = (0.0, 0.0, 10.0, 10.0)
    inside = np.array([[1.0, 1.0], [9.0, 2.0], [3.0, 8.5]])
    assert len(clip_polyline(inside, box)) == 1 and np.array_equal(clip_polyline(inside, box)[0], inside)
    assert np.array_equal(clip_polygon(inside, box), inside)
    # Out and back in: two pieces, with the parts outside cut at the box.
    pieces = clip_polyline(np.array([[5.0, 5.0], [20.0, 5.0], [20.0, 8.0], [5.0, 8.0]]), box)
    assert [p.tolist() for p in pieces] == [[[5.0, 5.0], [10.0, 5.0]], [[10.0, 8.0], [5.0, 8.0]]]
    tri = clip_polygon(np.array([[0.0, 0.0], [1e6, 0.0], [0.0, 1e6]]), box)
    assert tri.min() >= 0.0 and tri.max() <= 10.0 and len(tri) == 4


# ---- H3: images at the resolution they cover, and a memory budget --------------------------------------------
def test_a_4096_png_keeps_what_the_atlas_can_show(bundle) -> None:
    data = _big_png()
    assert len(data) < 150_000
    engine = EditEngine(bundle, "cpu")
    for i, op in enumerate([
        {"type": "texture", "space": "frame", "frame": 0, "rect": [10, 10, 30, 20]},
        {"type": "texture", "space": "atlas", "position": [30, 30], "scale": 1.0},  # mostly off the atlas
        {"type": "texture", "space": "frame", "frame": 1, "rect": [-1e5, -1e5, 2e5, 2e5]},
    ]):
        before = engine.edit_bytes()
        engine.apply({"id": f"t{i}", "image": data, **op})
        kept = engine.edit_bytes() - before
        image = engine._objects[f"t{i}"].atlas_op.image
        print(f"\n4096x4096 PNG ({len(data)} B) as {op['space']} texture: keeps {tuple(image.shape)}, {kept} B")
        # The 64 x 64 atlas shows it at most 64 texels wide: 2 image pixels a texel, a 4 MB image at most.
        assert max(image.shape[:2]) <= 2 * 64 + 8 and kept < 256 * 1024
    engine.apply({"id": "k", "type": "sticker", "frame": 0, "position": [30, 20], "size": [12, 12], "image": data})
    assert max(engine._objects["k"].sticker.image.shape[:2]) <= 24


def test_a_downsampled_paste_looks_like_the_small_image(bundle) -> None:
    yy, xx = np.mgrid[0:1024, 0:1536]
    img = np.zeros((1024, 1536, 4), np.uint8)
    img[..., 0] = 40 + xx * 150 // 1536
    img[..., 2] = 200 - yy * 150 // 1024
    img[..., 3] = 255
    small = np.asarray(Image.fromarray(img).resize((24, 16), Image.Resampling.BOX))
    big_engine, small_engine = EditEngine(bundle, "cpu"), EditEngine(bundle, "cpu")
    op = {"id": "t", "type": "texture", "space": "frame", "frame": 0, "rect": [12, 10, 30, 20]}
    big_engine.apply({**op, "image": png_bytes(img)})
    small_engine.apply({**op, "image": png_bytes(small)})
    assert max(big_engine._objects["t"].atlas_op.image.shape[:2]) < 64
    assert torch.allclose(big_engine.layers.layer, small_engine.layers.layer, atol=0.02)


def test_edit_memory_has_a_budget_and_deleting_frees_it(bundle) -> None:
    img = png_bytes(np.full((256, 256, 4), 255, np.uint8))

    def paste(op_id: str, scale: float) -> dict:
        return {"id": op_id, "type": "texture", "space": "atlas", "position": [32, 32], "scale": scale, "image": img}

    probe = EditEngine(bundle, "cpu")
    probe.apply(paste("p", 0.1))  # some 20 texels wide: kept at about 40 x 40
    one = probe.edit_bytes()
    budget = int(2.5 * one)  # room for two
    engine = EditEngine(bundle, "cpu", limits=OpLimits.for_bundle(bundle, max_edit_bytes=budget))
    with pytest.raises(CoreError) as info:  # the whole atlas: kept at about 128 x 128, over the budget
        engine.apply(paste("big", 0.4))
    assert info.value.code == "RESOURCE_EXHAUSTED" and f"limit {budget}" in info.value.message
    assert engine.get("big") is None and engine.edit_bytes() == 0
    engine.apply(paste("p0", 0.1))
    engine.apply(paste("p1", 0.1))
    with pytest.raises(CoreError):
        engine.apply(paste("p2", 0.1))
    engine.apply({"type": "delete", "target": "p0"})  # deleting gives its memory back
    assert engine.edit_bytes() == one
    engine.apply(paste("p2", 0.1))
    with pytest.raises(CoreError) as info:  # restoring p0 would go over: refused, p0 stays deleted
        engine.apply({"type": "restore", "target": "p0"})
    assert info.value.code == "RESOURCE_EXHAUSTED" and engine.get("p0")["deleted"] is True
    engine.apply({"type": "delete", "target": "p2"})
    engine.apply({"type": "restore", "target": "p0"})
    assert "deleted" not in engine.get("p0") and engine.edit_bytes() == 2 * one
