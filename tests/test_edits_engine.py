"""EditEngine on a hand-built bundle with an exact shift mapping: ops, incremental layers, document state."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_edits_fixtures import SHIFTS, png_bytes, shifted_bundle, solid_rgba
from vatlas.server.edits.engine import EditEngine
from vatlas.server.errors import CoreError

from vatlas.errors import OUTSIDE_REGION

ALL = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def bundle():
    return shifted_bundle()


@pytest.fixture
def engine(bundle) -> EditEngine:
    return EditEngine(bundle, "cpu")


def _stroke(op_id: str, frame: int, points: list, **kw) -> dict:
    return {"id": op_id, "type": "stroke", "space": "frame", "frame": frame, "points": points, "width": 6,
            "color": [1, 0, 0, 1], "hardness": 1.0, **kw}


def _changed(engine: EditEngine, bundle) -> np.ndarray:
    return np.abs(engine.render(ALL).numpy().astype(int) - bundle.frames).max(-1) > 0


def _atlas_texel(engine: EditEngine, xy) -> tuple[int, int]:
    col, row = engine.geometry.atlas_to_texel(np.asarray([xy], dtype=float))[0]
    return int(round(row)), int(round(col))


def test_no_edits_is_the_input_bit_for_bit(engine, bundle) -> None:
    assert np.array_equal(engine.render(ALL).numpy(), bundle.frames)
    assert engine.render_atlas().shape == (64, 64, 3)
    assert np.array_equal(engine.render_atlas().numpy(), bundle.atlas)


def test_frame_stroke_lands_at_T_of_its_points(engine, bundle) -> None:
    engine.apply(_stroke("s", 1, [[20, 20], [40, 20]]))
    atlas = engine.render_atlas().numpy().astype(int)
    dx, dy = SHIFTS[1]
    r, c = _atlas_texel(engine, (30 + dx, 20 + dy))
    assert atlas[r, c, 0] >= 250 and atlas[r, c, 1] <= 5
    r_off, c_off = _atlas_texel(engine, (30 + dx, 32 + dy))
    assert np.array_equal(atlas[r_off, c_off], bundle.atlas[r_off, c_off])
    # Width in frame pixels becomes atlas pixels through T's local scale (1 here): about 6 px thick.
    red = engine.layers.paint[:, c, 3].numpy() >= 0.5  # at least half covered
    thickness_px = red.sum() * engine.geometry.texel_px
    assert 4.0 <= thickness_px <= 8.5
    # Every frame shows the stroke at the same surface point; nothing changes where the mask is 0.
    out = engine.render(ALL).numpy()
    for t, (sx, sy) in enumerate(SHIFTS):
        x, y = int(30 + dx - sx), int(20 + dy - sy)
        assert out[t, y, x, 0] >= 200, t
    changed = _changed(engine, bundle)
    assert not changed[bundle.mask == 0].any()
    assert changed.sum() > 4 * 60


def test_same_surface_from_different_frames(bundle) -> None:
    a, b = EditEngine(bundle, "cpu"), EditEngine(bundle, "cpu")
    pts = np.array([[15.0, 25.0], [30.0, 35.0], [45.0, 28.0]])
    a.apply(_stroke("s", 0, pts.tolist()))
    shifted = pts + np.subtract(SHIFTS[0], SHIFTS[3])  # the same surface points seen on frame 3
    b.apply(_stroke("s", 3, shifted.tolist()))
    # The same coverage; the colours are each frame's red divided by that frame's light (albedo).
    assert torch.allclose(a.layers.layer[:, 3], b.layers.layer[:, 3], atol=2e-3)
    covered = a.layers.layer[0, 3] > 0.99
    ratio = a.layers.layer[0, 0][covered] / b.layers.layer[0, 0][covered]
    gain = bundle.illumination[3].astype(float).mean((0, 1)) / bundle.illumination[0].astype(float).mean((0, 1))
    assert float(ratio.median()) == pytest.approx(gain[0], rel=0.05) and abs(gain[0] - 1.0) > 0.02


def test_incremental_layers_equal_a_full_replay(engine, bundle) -> None:
    img = png_bytes(solid_rgba(12, 8, (0, 200, 40, 180)))
    ops = [
        {"id": "t1", "type": "texture", "space": "frame", "frame": 0, "rect": [20, 10, 12, 8], "image": img},
        _stroke("s1", 0, [[10, 10], [50, 30]]),
        {"id": "a1", "type": "adjustment", "space": "atlas", "points": [[10, 5], [50, 5], [30, 40]],
         "exposure": 0.5, "saturation": 0.4, "hue": 20, "hardness": 0.5, "width": 6},
        _stroke("s2", 2, [[15, 30], [45, 12]], color=[0, 0, 1, 0.7], hardness=0.3, width=9),
        _stroke("e1", 0, [[25, 5], [25, 40]], mode="erase", width=5),
        {"id": "t2", "type": "texture", "space": "atlas", "position": [40, 30], "scale": 1.5, "rotation": 30,
         "image": img, "opacity": 0.8},
        {"id": "a2", "type": "adjustment", "space": "frame", "frame": 1, "region": "path",
         "points": [[5, 40], [60, 40]], "width": 8, "contrast": 0.5, "temperature": -0.6},
        {"type": "update", "target": "s1", "set": {"width": 3, "color": [0, 1, 1, 1]}},
        {"type": "delete", "target": "t1"},
        {"type": "set_visible", "target": "s2", "visible": False},
        {"type": "update", "target": "t2", "set": {"position": [20, 20]}},
    ]
    for op in ops:
        engine.apply(op)
    replay = EditEngine(bundle, "cpu")
    for op in engine.document()["ops"]:
        replay.apply(op)
    assert torch.allclose(engine.layers.layer, replay.layers.layer, atol=1e-5)
    assert engine.layers.adjust is not None and replay.layers.adjust is not None
    assert torch.allclose(engine.layers.adjust, replay.layers.adjust, atol=1e-5)
    assert [o["id"] for o in engine.objects()] == ["s1", "a1", "s2", "e1", "t2", "a2"]
    assert engine.get("s2")["visible"] is False
    assert engine.get("t1")["deleted"] is True
    # Undoing everything returns the input bit for bit.
    for o in engine.objects():
        engine.apply({"type": "delete", "target": o["id"]})
    assert float(engine.layers.layer.abs().max()) == 0.0 and engine.layers.adjust is None
    assert np.array_equal(engine.render(ALL).numpy(), bundle.frames)


def test_delete_restore_and_visibility(engine, bundle) -> None:
    engine.apply(_stroke("s", 0, [[10, 20], [50, 20]]))
    painted = engine.layers.layer.clone()
    engine.apply({"type": "delete", "target": "s"})
    assert engine.objects() == [] and float(engine.layers.layer.abs().max()) == 0.0
    engine.apply({"type": "restore", "target": "s"})
    assert torch.equal(engine.layers.layer, painted)
    engine.apply({"type": "set_visible", "target": "s", "visible": False})
    assert np.array_equal(engine.render(ALL).numpy(), bundle.frames)
    engine.apply({"type": "update", "target": "s", "set": {"visible": True}})
    assert torch.equal(engine.layers.layer, painted)


def test_update_is_last_writer_wins_per_property(engine) -> None:
    engine.apply(_stroke("s", 0, [[10, 20], [50, 20]]))
    engine.apply({"type": "update", "target": "s", "set": {"width": 2}})
    engine.apply({"type": "update", "target": "s", "set": {"color": [0, 1, 0, 1]}})
    engine.apply({"type": "update", "target": "s", "set": {"width": 4}})
    state = engine.get("s")
    assert state["width"] == 4.0 and state["color"] == [0.0, 1.0, 0.0, 1.0] and state["hardness"] == 1.0


def test_errors(engine) -> None:
    engine.apply(_stroke("s", 0, [[10, 20], [50, 20]]))
    before = engine.layers.layer.clone()
    with pytest.raises(CoreError) as info:
        engine.apply({"type": "delete", "target": "missing"})
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(CoreError) as info:
        engine.apply(_stroke("s", 0, [[1, 1]]))
    assert info.value.code == "ALREADY_EXISTS"
    with pytest.raises(CoreError) as info:
        engine.apply({"type": "update", "target": "s", "set": {"rect": [0, 0, 2, 2]}})
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CoreError):
        engine.apply(_stroke("t", 9, [[1, 1]]))  # frame out of range
    assert torch.equal(engine.layers.layer, before) and engine.get("s")["width"] == 6.0
    with pytest.raises(IndexError):
        engine.render([4])
    with pytest.raises(ValueError):
        engine.render([0], scale=0)


def test_erase_removes_paint_beneath(engine, bundle) -> None:
    engine.apply(_stroke("p", 0, [[10, 20], [50, 20]], width=8))
    engine.apply(_stroke("e", 0, [[5, 20], [55, 20]], width=20, mode="erase"))
    assert float(engine.layers.layer.abs().max()) < 1e-6


def test_adjustment_changes_only_its_region(engine, bundle) -> None:
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "points": [[10, 10], [40, 10], [40, 30],
                                                                             [10, 30]], "exposure": 1.0,
                  "hardness": 1.0})
    edited = engine.render_atlas().numpy().astype(int)
    r, c = _atlas_texel(engine, (25, 20))
    assert (edited[r, c] >= np.minimum(bundle.atlas[r, c].astype(int) * 2 - 3, 252)).all()
    r, c = _atlas_texel(engine, (55, 45))
    assert np.array_equal(edited[r, c], bundle.atlas[r, c])


def test_atlas_texture_rotation(engine) -> None:
    img = png_bytes(solid_rgba(20, 4, (0, 0, 255, 255)))
    engine.apply({"id": "t", "type": "texture", "space": "atlas", "position": [40, 30], "rotation": 90,
                  "image": img})
    blue = engine.render_atlas().numpy()[..., 2] > 240
    rows, cols = np.nonzero(blue)
    assert (rows.max() - rows.min()) > 2 * (cols.max() - cols.min())  # the 20x4 strip stands upright


def test_sticker_follows_B_and_hides_behind_occluders(engine, bundle) -> None:
    img = png_bytes(solid_rgba(6, 6, (0, 0, 255, 255)))
    engine.apply({"id": "k", "type": "sticker", "frame": 1, "position": [30, 25], "image": img})
    pos = engine.sticker_positions("k")
    dx, dy = SHIFTS[1]
    expected = np.array([[30 + dx - sx, 25 + dy - sy] for sx, sy in SHIFTS])
    assert np.abs(pos - expected).max() < 1e-3
    out = engine.render(ALL).numpy()
    for t in ALL:
        x, y = int(expected[t, 0]), int(expected[t, 1])
        assert out[t, y, x, 2] > 240 and out[t, y, x, 0] < 15
    # Over the mask's hole (centre at 0.7 W, 0.3 H) the sticker is hidden: the input shows through.
    engine.apply({"type": "update", "target": "k", "set": {"position": [44.8, 14.4], "frame": 0, "size": [16, 16]}})
    out = engine.render([0]).numpy()
    assert np.array_equal(out[0, 13:16, 43:47], bundle.frames[0, 13:16, 43:47])
    assert engine.render([0], region=[40, 10, 8, 8]).shape == (1, 8, 8, 3)
    assert engine.render(ALL, scale=0.5).shape == (4, 24, 32, 3)


def test_concurrent_apply_and_render(bundle) -> None:
    engine = EditEngine(bundle, "cpu")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(8):
                engine.apply(_stroke(f"w{k}_{i}", i % 4, [[5 + i * 5, 10 + k * 8], [20 + i * 4, 12 + k * 8]]))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(10):
                assert engine.render([0, 2]).shape == (2, 48, 64, 3)
                engine.objects()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)] + [threading.Thread(target=reader)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(engine.objects()) == 24
    replay = EditEngine(bundle, "cpu")
    for op in engine.document()["ops"]:
        replay.apply(op)
    assert torch.allclose(engine.layers.layer, replay.layers.layer, atol=1e-5)


def test_sticker_outside_the_mapped_surface_is_refused(bundle) -> None:
    unknown = shifted_bundle()
    unknown.inverse_map[:] = np.nan
    engine = EditEngine(unknown, "cpu")
    with pytest.raises(CoreError) as info:
        engine.apply({"id": "k", "type": "sticker", "frame": 0, "position": [30, 20],
                      "image": png_bytes(solid_rgba(4, 4))})
    assert info.value.code == "OUT_OF_RANGE" and info.value.message == OUTSIDE_REGION
    assert engine.objects() == []


def test_z_stacks_objects_and_an_update_restacks_them(engine) -> None:
    rect = [14, 24, 10, 10]
    red, blue = png_bytes(solid_rgba(8, 8, (255, 0, 0, 255))), png_bytes(solid_rgba(8, 8, (0, 0, 255, 255)))
    engine.apply({"id": "red", "type": "texture", "frame": 0, "image": red, "rect": rect, "z": 2.0})
    engine.apply({"id": "blue", "type": "texture", "frame": 0, "image": blue, "rect": rect, "z": 1.0})
    assert engine.render([0]).numpy()[0, 29, 19, 0] > 200  # made later, stacked lower: red stays on top
    engine.apply({"type": "update", "target": "blue", "set": {"z": 3.0}})
    assert engine.render([0]).numpy()[0, 29, 19, 2] > 200
    for name, z, colour in (("k1", 1.0, (0, 255, 0, 255)), ("k2", 0.0, (255, 0, 255, 255))):
        engine.apply({"id": name, "type": "sticker", "frame": 0, "position": [19, 29], "size": [6, 6], "z": z,
                      "image": png_bytes(solid_rgba(6, 6, colour))})
    assert tuple(engine.render([0]).numpy()[0, 29, 19]) == (0, 255, 0)  # stickers by z too


def test_a_frame_texture_turns_about_its_centre(engine) -> None:
    base = engine.render([0]).numpy()[0].astype(int)
    bar = png_bytes(solid_rgba(20, 4, (0, 0, 255, 255)))
    engine.apply({"id": "bar", "type": "texture", "frame": 0, "image": bar, "rect": [9, 28, 20, 4]})

    def changed(y: int, x: int) -> bool:
        return bool(np.abs(engine.render([0]).numpy()[0, y, x].astype(int) - base[y, x]).max() > 40)

    assert changed(30, 26) and not changed(22, 19)  # lying: right of the centre, not above it
    engine.apply({"type": "update", "target": "bar", "set": {"rotation": 90.0}})
    assert changed(22, 19) and not changed(30, 26)  # standing: above the centre, not right of it


def test_a_placed_image_has_its_own_colour_grade(engine) -> None:
    """Textures and stickers take the adjustment's colour fields as the image's colour control; an update sets
    them and undoing it (an update back) restores the pixels exactly."""
    rect = [14, 24, 10, 10]
    engine.apply({"id": "pic", "type": "texture", "frame": 0, "image": png_bytes(solid_rgba(8, 8, (200, 60, 40, 255))),
                  "rect": rect})
    before = engine.render([0]).numpy()[0, 29, 19].astype(int)
    engine.apply({"type": "update", "target": "pic", "set": {"saturation": -1.0}})
    grey = engine.render([0]).numpy()[0, 29, 19].astype(int)
    assert grey.max() - grey.min() <= 3 and before.max() - before.min() > 100
    engine.apply({"type": "update", "target": "pic", "set": {"saturation": 0.0, "hue": 180.0}})
    turned = engine.render([0]).numpy()[0, 29, 19].astype(int)
    assert turned[2] > turned[0]  # red-orange turned towards cyan
    engine.apply({"type": "update", "target": "pic", "set": {"hue": 0.0}})
    assert np.array_equal(engine.render([0]).numpy()[0, 29, 19], before)
    engine.apply({"id": "dot", "type": "sticker", "frame": 0, "position": [19, 29], "size": [6, 6],
                  "image": png_bytes(solid_rgba(6, 6, (200, 200, 200, 255)))})
    plain = int(engine.render([0]).numpy()[0, 29, 19, 0])
    engine.apply({"type": "update", "target": "dot", "set": {"exposure": -1.0}})
    assert abs(int(engine.render([0]).numpy()[0, 29, 19, 0]) - plain / 2) <= 3  # one stop darker
    with pytest.raises(CoreError, match="exposure"):
        engine.apply({"type": "update", "target": "pic", "set": {"exposure": 99.0}})


def test_an_image_is_graded_band_by_band_as_if_whole() -> None:
    import torch
    from vatlas.server.edits.adjust import GRADE_ROWS, apply_adjustment, graded_image

    rgba = np.random.default_rng(0).integers(0, 256, (2 * GRADE_ROWS + 7, 24, 4), np.uint8)
    params = {"exposure": 0.3, "saturation": -0.5, "hue": 40.0}
    whole = apply_adjustment(torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0), params)
    expected = (whole * 255.0).round().to(torch.uint8).numpy()
    graded = graded_image({"id": "g", "image": png_bytes(rgba), **params})
    assert np.array_equal(graded[..., :3], expected) and np.array_equal(graded[..., 3], rgba[..., 3])
