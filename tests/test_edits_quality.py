"""Edit quality on ground-truth synthetic scenes (vatlas.synth): textures, strokes and stickers vs the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from test_edits_fixtures import png_bytes, solid_rgba
from vatlas.server.edits.engine import EditEngine

from vatlas.metrics import psnr
from vatlas.synth import make_scene

FRAMES = 24


@pytest.fixture(scope="module")
def scene():
    return make_scene(frames=FRAMES, size=(160, 96), seed=5)


@pytest.fixture(scope="module")
def bundle(scene):
    return scene.ground_truth_bundle(atlas_size=512)


def _logo() -> np.ndarray:
    h, w = 20, 28
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 0] = np.linspace(20, 250, w)[None].astype(np.uint8)
    img[..., 1] = 180
    img[..., 2] = np.linspace(250, 10, h)[:, None].astype(np.uint8)
    img[..., 3] = 255
    img[:3, :, 3] = 100  # a semi-transparent band
    return img


def test_texture_on_the_reference_frame_matches_the_oracle(scene, bundle) -> None:
    logo = _logo()
    centre = scene.roi.polygons[0].mean(axis=0)
    at = (float(centre[0]) - 14.3, float(centre[1]) - 9.6)
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "logo", "type": "texture", "space": "frame", "frame": 0, "image": png_bytes(logo),
                  "rect": [at[0], at[1], logo.shape[1], logo.shape[0]]})
    out = engine.render(list(range(FRAMES))).numpy()
    truth = scene.render_edited(logo, at=at)
    roi = scene.gt_visibility > 0
    changed = np.abs(truth.astype(int) - scene.frames).max(-1) > 0
    assert changed.sum() > FRAMES * 200  # the logo is visible in every frame
    assert psnr(out, truth, mask=roi) >= 30.0
    assert psnr(out, truth, mask=changed) >= 30.0
    # The unedited input is far from the oracle, so the metric can fail.
    assert psnr(scene.frames, truth, mask=changed) < 25.0


def test_strokes_from_first_and_last_frame_hit_the_same_surface_points(scene, bundle) -> None:
    last = FRAMES - 1
    # Reference points inside the ROI that stay well inside the picture on the last frame.
    ys, xs = np.mgrid[8:scene.height - 8:4, 8:scene.width - 8:4]
    candidates = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64) + 0.3
    roi = scene.roi.mask(scene.height, scene.width)
    tracked = scene.gt_track(candidates)[last]
    keep = roi[candidates[:, 1].astype(int), candidates[:, 0].astype(int)] & (
        (tracked >= 8) & (tracked < [scene.width - 8, scene.height - 8])).all(axis=1)
    pool = candidates[keep]
    assert len(pool) >= 8
    ref_points = pool[np.linspace(0, len(pool) - 1, 4).astype(int)]
    on_last = scene.gt_track(ref_points)[last].astype(np.float64)
    first_engine, last_engine = EditEngine(bundle, "cpu"), EditEngine(bundle, "cpu")
    first_engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": 0, "points": ref_points.tolist(),
                        "width": 5, "hardness": 1.0})
    last_engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": last, "points": on_last.tolist(),
                       "width": 5, "hardness": 1.0})
    a = first_engine.layers.prepare(first_engine.get("s"))
    b = last_engine.layers.prepare(last_engine.get("s"))
    # Vertices in atlas space: both land on the reference-frame points (atlas space = reference frame here).
    assert np.abs(a.points.numpy()[[0, -1]] - ref_points[[0, -1]]).max() < 0.25
    assert np.abs(b.points.numpy()[[0, -1]] - ref_points[[0, -1]]).max() < 0.5
    cover_a = first_engine.layers.layer[0, 3] > 0.05
    cover_b = last_engine.layers.layer[0, 3] > 0.05
    iou = float((cover_a & cover_b).sum() / (cover_a | cover_b).sum())
    assert iou > 0.8
    # Width in frame pixels follows T's local scale: the camera zooms, so the atlas widths differ accordingly.
    assert a.width == pytest.approx(5.0, rel=0.05)


@pytest.mark.parametrize("anchor_frame", [0, 11])
def test_stickers_follow_ground_truth_tracks(scene, bundle, anchor_frame: int) -> None:
    centre = scene.roi.polygons[0].mean(axis=0)
    truth = scene.gt_track(centre[None])[:, 0].astype(np.float64)  # (T, 2)
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "k", "type": "sticker", "frame": anchor_frame, "position": truth[anchor_frame].tolist(),
                  "image": png_bytes(solid_rgba(8, 8, (255, 0, 255, 255))), "follow_scale": True,
                  "follow_rotation": True})
    pos = engine.sticker_positions("k")
    inside = ((truth >= 0) & (truth < [scene.width, scene.height])).all(axis=1)
    assert inside.sum() >= FRAMES // 2
    err = np.linalg.norm(pos[inside] - truth[inside], axis=1)
    assert np.isfinite(err).all() and err.mean() <= 1.5
    assert err[anchor_frame] < 1e-3 if inside[anchor_frame] else True
    # Hidden where the ROI is occluded: fully occluded pixels keep the input.
    out = engine.render(list(range(FRAMES))).numpy()
    hidden = scene.gt_visibility == 0
    assert np.array_equal(out[hidden], scene.frames[hidden])
    magenta = (out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] > 200)
    assert magenta.sum() > FRAMES * 10
