"""vatlas.synth's hard preset (issue 15's conditions) and the ground-truth edited clip of a paste on frame N."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vatlas.synth import PRESET_DEFAULTS, SynthScene, apply_homography, make_scene

SMALL = (192, 108)


def longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


@pytest.fixture(scope="module", params=[0, 3], ids=["seed0-one-occluder", "seed3-two-occluders"])
def full(request: pytest.FixtureRequest) -> SynthScene:
    """Full size (768x432, 70 frames): about 4 s each."""
    return make_scene(preset="hard", seed=request.param)


@pytest.fixture(scope="module")
def small() -> SynthScene:
    return make_scene(preset="hard", seed=1, frames=24, size=SMALL)


def test_hard_defaults(full: SynthScene) -> None:
    assert PRESET_DEFAULTS["hard"][:2] == (70, (768, 432))
    assert full.frames.shape == (70, 432, 768, 3)
    assert full.gt_occlusion is not None and full.gt_occlusion.shape == (70, 432, 768)
    assert full.params["preset"] == "hard" and full.params["occluders"] in (1, 2)
    full.roi.validate(768, 432, 70)


def test_hard_camera_pans_zooms_and_rotates_within_range(full: SynthScene) -> None:
    w, h = full.width, full.height
    centre = np.array([w / 2, h / 2])
    f = full.frame_to_world
    pan = np.linalg.norm(apply_homography(f[-1], centre) - apply_homography(f[0], centre)) / w
    assert 0.15 <= pan <= 0.25
    assert pan == pytest.approx(full.params["hard"]["pan_fraction"], abs=1e-9)

    def jacobian(hom: np.ndarray) -> np.ndarray:
        eps = 0.5
        p = apply_homography(hom, np.array([centre, centre + [eps, 0], centre + [0, eps]]))
        return np.stack([(p[1] - p[0]) / eps, (p[2] - p[0]) / eps], axis=1)

    j0 = jacobian(f[0])
    zooms, angles = [], []
    for t in range(full.num_frames):
        rel = jacobian(f[t]) @ np.linalg.inv(j0)  # frame t's view relative to frame 0's, at the frame centre
        zooms.append(np.sqrt(abs(np.linalg.det(rel))))
        angles.append(np.degrees(np.arctan2(rel[1, 0], rel[0, 0])))
    assert min(zooms) >= 0.88 and max(zooms) <= 1.12  # 0.9-1.1 plus the mild perspective
    assert max(abs(a) for a in angles) <= 5.5
    assert max(abs(z - 1) for z in zooms) > 0.005 or max(abs(a) for a in angles) > 0.3  # it really moves
    # The ROI stays mostly in view.
    area = full.roi_footprint().sum(axis=(1, 2))
    assert area.min() > 0.6 * area[0]


def test_hard_occluders_cover_then_leave(full: SynthScene) -> None:
    share = full.occluded_roi_share()
    roi0 = full.roi_coverage(0)
    # Frame 0 shows the whole ROI: visibility is exactly the ROI's coverage, no occluder touches it.
    assert np.array_equal(full.gt_visibility[0], roi0)
    assert full.gt_occlusion[0][roi0 > 0].max(initial=0.0) == 0.0
    assert 0.55 <= float(np.mean(share > 0)) <= 0.90  # part of it covered in 55-90 % of the frames
    assert longest_run(share > 0.5) >= 10  # most of it for ten frames or more in a row
    # ... and then the occluders leave: the surface is uncovered again at the end.
    last = full.num_frames - 1
    assert share[last] == 0.0 and share[last - 1] == 0.0
    assert np.array_equal(full.gt_visibility[last], full.roi_coverage(last))
    first_mostly = int(np.argmax(share > 0.5))
    assert first_mostly > 0 and (share[first_mostly:] == 0).any()


def test_hard_illumination(full: SynthScene) -> None:
    light = full.gt_illumination
    per_frame_max = light.reshape(full.num_frames, -1).max(axis=1)  # unshadowed pixels: the global gain
    assert light.max() <= 1.2 + 1e-5 and per_frame_max.min() >= 0.8 - 1e-5
    assert per_frame_max.max() - per_frame_max.min() > 0.05  # the gain changes over time
    per_frame_min = light.reshape(full.num_frames, -1).min(axis=1)
    assert (per_frame_min < 0.8 * per_frame_max).mean() > 0.3  # a shadow is in view for much of the clip
    # The shadow moves: the darkest pixel wanders across the frame.
    darkest = [np.unravel_index(np.argmin(light[t, ..., 0]), light.shape[1:3]) for t in (0, 35, 69)]
    assert len({d for d in darkest}) == 3


def test_hard_small_scenes_keep_the_rules() -> None:
    """Fast sizes for CPU tests: still clear on frame 0 and at the end, and partly covered in between."""
    for seed in range(4):
        s = make_scene(preset="hard", seed=seed, frames=24, size=SMALL)
        share = s.occluded_roi_share()
        assert share[0] == 0.0 and share[-1] == 0.0, seed
        assert share.max() > 0.5 and 0.5 <= np.mean(share > 0) <= 0.9, seed


def test_hard_is_deterministic_per_seed() -> None:
    a = make_scene(preset="hard", seed=4, frames=16, size=(128, 72))
    b = make_scene(preset="hard", seed=4, frames=16, size=(128, 72))
    c = make_scene(preset="hard", seed=5, frames=16, size=(128, 72))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.gt_visibility, b.gt_visibility)
    assert np.array_equal(a.gt_illumination, b.gt_illumination)
    assert not np.array_equal(a.frames, c.frames)


def test_default_preset_defaults_unchanged() -> None:
    assert PRESET_DEFAULTS["default"] == (48, (256, 144), 1)
    s = make_scene(frames=4, size=(64, 48), seed=2)
    assert s.params["preset"] == "default" and s.params["occluders"] == 1
    assert s.gt_illumination.reshape(4, -1).max(axis=1)[0] <= 1.0 + 1e-6  # frame 0 has gain 1 there


def test_bad_preset_arguments() -> None:
    with pytest.raises(ValueError, match="preset"):
        make_scene(preset="extreme")
    with pytest.raises(ValueError, match="frames >= 16"):
        make_scene(preset="hard", frames=8, size=SMALL)
    with pytest.raises(ValueError, match="occluders"):
        make_scene(preset="hard", frames=16, size=SMALL, occluders=0)


# ---- the ground-truth edited clip ------------------------------------------------------------------------


def paste_image(w: int, h: int) -> np.ndarray:
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = np.linspace(20, 240, w, dtype=np.uint8)[None, :]
    rgba[..., 1] = np.linspace(240, 30, h, dtype=np.uint8)[:, None]
    rgba[..., 2] = 90
    rgba[..., 3] = 255
    rgba[: h // 3, : w // 3, 3] = 110  # a half-transparent corner
    return rgba


def expected_on_own_frame(scene: SynthScene, rgba: np.ndarray, n: int, x: int, y: int) -> np.ndarray:
    """The image alpha-over the source where the surface is visible, computed by hand."""
    h, w = rgba.shape[:2]
    src = scene.frames[n].astype(np.float32)
    vis = scene.gt_visibility[n][y:y + h, x:x + w, None]
    alpha = rgba[..., 3:4].astype(np.float32) / 255
    out = src.copy()
    out[y:y + h, x:x + w] = (1 - vis * alpha) * src[y:y + h, x:x + w] + vis * alpha * rgba[..., :3]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("n", [0, 11])
def test_paste_on_its_frame_is_the_paste_over_the_source(small: SynthScene, n: int) -> None:
    rgba = paste_image(30, 20)
    cx, cy = small.gt_track(small.roi.polygons[0].mean(axis=0, keepdims=True))[n, 0]
    x, y = int(cx) - 15, int(cy) - 10
    edited, alpha = small.render_pasted(rgba, frame=n, rect=(x, y, 30, 20), return_alpha=True)
    assert np.array_equal(edited[n], expected_on_own_frame(small, rgba, n, x, y))
    assert (edited[n] != small.frames[n]).any()
    assert alpha.shape == small.gt_visibility.shape and alpha[n][y:y + 20, x:x + 30].min() > 0.4
    assert alpha[n].sum() == pytest.approx(rgba[..., 3].sum() / 255, rel=1e-5)
    # Where the surface is hidden (or outside the ROI), every frame is the source bit for bit.
    hidden = small.gt_visibility == 0
    assert np.array_equal(edited[hidden], small.frames[hidden])


def test_paste_is_carried_by_the_geometry_and_relit(small: SynthScene) -> None:
    """Frame t shows the albedo rgb / l_N of the surface point the paste covered on frame N, times l_t."""
    n = 6
    colour = np.array([200.0, 120.0, 40.0])
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[...] = (*colour.astype(int), 255)
    cx, cy = small.gt_track(small.roi.polygons[0].mean(axis=0, keepdims=True))[n, 0]
    x, y = int(cx) - 16, int(cy) - 12
    edited = small.render_pasted(rgba, frame=n, rect=(x, y, 32, 24))
    ys, xs = np.mgrid[0:small.height, 0:small.width].astype(np.float64) + 0.5
    centres = np.stack([xs, ys], axis=-1)
    checked = 0
    for t in range(small.num_frames):
        if t == n:
            continue
        # Where each pixel's surface point was on frame N, and frame N's light there.
        q = apply_homography(np.linalg.inv(small.frame_to_world[n]) @ small.frame_to_world[t], centres)
        inner = (q[..., 0] > x + 1) & (q[..., 0] < x + 31) & (q[..., 1] > y + 1) & (q[..., 1] < y + 23)
        inner &= small.gt_visibility[t] == 1.0
        if inner.sum() < 20:
            continue
        light_n = cv2.remap(small.gt_illumination[n], (q[..., 0] - 0.5).astype(np.float32),
                            (q[..., 1] - 0.5).astype(np.float32), cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        want = colour / light_n * small.gt_illumination[t]
        err = np.abs(edited[t].astype(np.float64) - want).max(axis=-1)[inner]
        assert np.median(err) <= 1.0 and np.percentile(err, 99) <= 4.0, t
        checked += 1
    assert checked >= 8
    # The light at the paste changes over the clip, so being re-lit (not copied) is what the test sees.
    assert np.ptp(small.gt_illumination[:, y + 12, x + 16, 0]) > 0.05


def test_paste_transparent_or_outside_changes_nothing(small: SynthScene) -> None:
    clear = np.zeros((10, 12, 4), np.uint8)
    assert np.array_equal(small.render_pasted(clear, frame=3, rect=(80, 40, 12, 10)), small.frames)
    opaque = np.full((6, 6, 4), 255, np.uint8)
    assert not small.roi.mask(small.height, small.width)[:8, :8].any()
    corner = small.render_pasted(opaque, frame=0, rect=(1, 1, 6, 6))
    assert np.array_equal(corner, small.frames)


def test_paste_arguments(small: SynthScene) -> None:
    with pytest.raises(ValueError, match="frame"):
        small.render_pasted(np.zeros((4, 4, 4), np.uint8), frame=99)
    with pytest.raises(ValueError, match=r"\(h, w, 4\) uint8"):
        small.render_pasted(np.zeros((4, 4, 3), np.uint8), frame=0)
    with pytest.raises(ValueError, match="positive"):
        small.render_pasted(np.zeros((4, 4, 4), np.uint8), frame=0, rect=(0, 0, 0, 4))
