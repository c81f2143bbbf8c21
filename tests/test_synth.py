"""vatlas.synth: the ground truth must agree with the rendered pixels, with itself and with the bundle format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from vatlas.models.bundle import Bundle, decode_uv, load_bundle, save_bundle

from vatlas.metrics import point_drift, psnr
from vatlas.synth import SynthScene, apply_homography, make_scene
from vatlas.video import content_hash

SIZE = (160, 96)


@pytest.fixture(scope="module")
def scene() -> SynthScene:
    return make_scene(frames=24, size=SIZE, seed=5, occluders=2)


@pytest.fixture(scope="module")
def bundle(scene: SynthScene) -> Bundle:
    return scene.ground_truth_bundle(atlas_size=512)


def pixel_centres(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return np.stack([xs, ys], axis=-1)


def sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup at continuous coordinates (pixel centres at +0.5)."""
    map_x = (xy[..., 0] - 0.5).astype(np.float32)
    map_y = (xy[..., 1] - 0.5).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def sample_atlas(atlas: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """grid_sample(align_corners=False) semantics: texel j has its centre at u = (j + 0.5) / S * 2 - 1."""
    size = atlas.shape[0]
    map_x = ((uv[..., 0] + 1) / 2 * size - 0.5).astype(np.float32)
    map_y = ((uv[..., 1] + 1) / 2 * size - 0.5).astype(np.float32)
    return cv2.remap(atlas.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_shapes_dtypes_and_ranges(scene: SynthScene) -> None:
    t, (w, h) = 24, SIZE
    assert scene.frames.shape == (t, h, w, 3) and scene.frames.dtype == np.uint8
    assert scene.gt_uv.shape == (t, h, w, 2) and scene.gt_uv.dtype == np.float32
    assert scene.gt_visibility.shape == (t, h, w) and scene.gt_visibility.dtype == np.float32
    assert scene.gt_illumination.shape == (t, h, w, 3) and scene.gt_illumination.dtype == np.float32
    assert scene.atlas_span_px == 1.25 * max(w, h)
    assert scene.gt_visibility.min() >= 0.0 and scene.gt_visibility.max() <= 1.0
    assert scene.roi.ref_frame == 0
    scene.roi.validate(w, h, t)


def test_deterministic_per_seed() -> None:
    a = make_scene(frames=6, size=(64, 48), seed=11)
    b = make_scene(frames=6, size=(64, 48), seed=11)
    c = make_scene(frames=6, size=(64, 48), seed=12)
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.gt_uv, b.gt_uv) and np.array_equal(a.gt_visibility, b.gt_visibility)
    assert np.array_equal(a.gt_illumination, b.gt_illumination)
    assert not np.array_equal(a.frames, c.frames)


def test_reference_frame_uv_is_identity(scene: SynthScene) -> None:
    h, w = scene.height, scene.width
    atlas_xy = scene.gt_uv[0] * (scene.atlas_span_px / 2) + np.array([w / 2, h / 2])
    np.testing.assert_allclose(atlas_xy, pixel_centres(h, w), atol=1e-3)


def test_optical_flow_agrees_with_ground_truth_motion(scene: SynthScene) -> None:
    """The rendered pixels really move as gt_uv says: DIS flow matches the ground-truth motion."""
    h, w = scene.height, scene.width
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in scene.frames]
    centres = pixel_centres(h, w)
    for t in (1, 4):
        flow = dis.calc(gray[0], gray[t], None)
        truth = apply_homography(scene.atlas_to_frame[t], centres) - centres
        usable = (scene.gt_visibility[0] > 0.99) & (scene.gt_visibility[t] > 0.99)
        error = np.linalg.norm(flow - truth, axis=-1)[usable]
        motion = np.linalg.norm(truth, axis=-1)[usable]
        assert np.median(motion) > 0.1 * t  # the camera really moves
        assert np.median(error) < 0.15


def test_visibility_semantics(scene: SynthScene) -> None:
    h, w = scene.height, scene.width
    roi = scene.roi.mask(h, w)
    interior = cv2.erode(roi.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert scene.gt_visibility[0][interior].min() == 1.0  # frame 0 shows the whole ROI
    around = cv2.dilate(roi.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert scene.gt_visibility[0][~around].max() == 0.0
    visible = scene.gt_visibility.sum(axis=(1, 2)) / scene.gt_visibility[0].sum()
    assert visible.min() < 0.85  # an occluder crosses the ROI
    soft = (scene.gt_visibility > 0.05) & (scene.gt_visibility < 0.95)
    assert soft.sum() > 0  # anti-aliased edges
    # Visibility is zero wherever the pixel's surface point lies outside the ROI.
    for t in (0, 10, 20):
        atlas_xy = scene.gt_uv[t] * (scene.atlas_span_px / 2) + np.array([w / 2, h / 2])
        ix = np.clip(np.floor(atlas_xy).astype(int), 0, [w - 1, h - 1])
        outside_roi = ~cv2.dilate(roi.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)[
            ix[..., 1], ix[..., 0]
        ]
        far_outside = outside_roi & (atlas_xy[..., 0] >= 0) & (atlas_xy[..., 1] >= 0)
        assert scene.gt_visibility[t][far_outside].max() == 0.0


def bilinear_reference(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Plain float64 bilinear lookup at continuous coordinates, independent of OpenCV's conventions."""
    x = np.clip(xy[..., 0] - 0.5, 0, image.shape[1] - 1.000001)
    y = np.clip(xy[..., 1] - 0.5, 0, image.shape[0] - 1.000001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_frames_show_the_world_through_the_homographies(scene: SynthScene) -> None:
    """Pixel p of frame t is illumination * texture(G_t p): checked against an independent bilinear lookup."""
    centres = pixel_centres(scene.height, scene.width)
    for t in (0, 9, 23):
        world = apply_homography(scene.frame_to_world[t], centres)
        lit = scene.gt_illumination[t] * bilinear_reference(scene.world_texture, world)
        bare = scene.gt_visibility[t] == 1.0
        diff = np.abs(scene.frames[t].astype(np.float64) - lit)[bare]
        assert diff.max() <= 0.51  # only the final rounding
        assert np.abs(scene.background(t) - bilinear_reference(scene.world_texture, world)).max() < 0.02
    means = scene.gt_illumination.mean(axis=(1, 2, 3))
    assert means.std() > 0.01  # lighting changes over time
    assert scene.gt_illumination.min() > 0.3


def test_no_lighting_and_no_occluders() -> None:
    plain = make_scene(frames=8, size=(64, 48), seed=3, occluders=0, lighting=False)
    assert np.all(plain.gt_illumination == 1.0)
    # Nothing hides the ROI: every pixel whose surface point is inside the ROI (away from its border) is visible.
    # (5x5 erosion: bilinear lookups of the anti-aliased border reach about 2 px in.)
    interior = cv2.erode(plain.roi.mask(48, 64).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    for t in range(8):
        atlas_xy = plain.gt_uv[t] * (plain.atlas_span_px / 2) + np.array([32, 24])
        inside_frame = (atlas_xy >= 0).all(-1) & (atlas_xy[..., 0] < 64) & (atlas_xy[..., 1] < 48)
        ix = np.clip(np.floor(atlas_xy).astype(int), 0, [63, 47])
        on_roi = inside_frame & interior[ix[..., 1], ix[..., 0]]
        assert on_roi.sum() > 100 and plain.gt_visibility[t][on_roi].min() == 1.0
    assert np.abs(plain.frames[3].astype(np.float32) - plain.background(3)).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_every_seed_crosses_the_roi_after_a_clean_reference(seed: int) -> None:
    s = make_scene(frames=16, size=(96, 64), seed=seed, occluders=1)
    roi = s.roi.mask(64, 96)
    interior = cv2.erode(roi.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert s.gt_visibility[0][interior].min() == 1.0
    assert (s.gt_visibility.sum(axis=(1, 2)) / s.gt_visibility[0].sum()).min() < 0.9


def test_tracks_agree_with_uv(scene: SynthScene) -> None:
    points = np.array([[70.3, 40.7], [85.0, 50.25], [60.0, 55.5], [120.5, 20.5]])
    tracks = scene.gt_track(points)
    assert tracks.shape == (24, 4, 2)
    np.testing.assert_allclose(tracks[0], points, atol=1e-4)
    centre = np.array([scene.width / 2, scene.height / 2])
    checked = 0
    for t in range(24):
        inside = (
            (tracks[t] > 1).all(-1)
            & (tracks[t][:, 0] < scene.width - 1)
            & (tracks[t][:, 1] < scene.height - 1)
        )
        uv = np.stack([sample(scene.gt_uv[t][..., c], tracks[t][None]) for c in (0, 1)], axis=-1)[0]
        np.testing.assert_allclose((uv * scene.atlas_span_px / 2 + centre)[inside], points[inside], atol=2e-3)
        checked += int(inside.sum())
    assert checked > 60
    assert point_drift(tracks[-1], tracks[0])["mean"] > 1.0  # the points do move


def test_bundle_reconstructs_the_frames(scene: SynthScene, bundle: Bundle) -> None:
    """L * A(uv) from the baked bundle reproduces the frames where the ROI is visible."""
    bundle.validate()
    assert bundle.ref_frame == 0 and bundle.fps == scene.fps
    assert bundle.illumination.shape == (24, 48, 80, 3)
    for t in (0, 7, 16, 23):
        atlas_colour = sample_atlas(bundle.atlas, decode_uv(bundle.uv[t]))
        light = cv2.resize(bundle.illumination[t].astype(np.float32), SIZE, interpolation=cv2.INTER_LINEAR)
        reconstruction = np.clip(np.rint(light * atlas_colour), 0, 255)
        visible = bundle.mask[t] == 255
        assert visible.sum() > 500
        assert psnr(reconstruction, scene.frames[t].astype(np.float64), visible, data_range=255) > 45


def test_bundle_atlas_coverage_and_inverse_map(scene: SynthScene, bundle: Bundle) -> None:
    size = bundle.atlas_size
    area_px = float(bundle.atlas_coverage.astype(bool).sum()) * (scene.atlas_span_px / size) ** 2
    roi_area = scene.roi.mask(scene.height, scene.width).sum()
    assert abs(area_px / roi_area - 1) < 0.1
    grid = bundle.inverse_map.shape[1]
    assert bundle.inverse_map.shape == (24, 64, 64, 2)
    centres = (np.arange(grid) + 0.5) / grid * 2 - 1
    uv = np.stack(np.meshgrid(centres, centres), axis=-1)
    expected = scene.gt_track(bundle.uv_to_atlas(uv).reshape(-1, 2)).reshape(24, grid, grid, 2)
    known = np.isfinite(bundle.inverse_map[..., 0])
    assert known.mean() > 0.3 and (~known).any()
    np.testing.assert_allclose(bundle.inverse_map[known], expected[known], atol=1e-3)
    # A known point lies inside the frame, and the frame's uv there is the grid point's uv.
    t = 12
    points = bundle.inverse_map[t][known[t]]
    assert points.min() >= 0 and points[:, 0].max() <= scene.width and points[:, 1].max() <= scene.height
    inner = (
        (points[:, 0] > 1)
        & (points[:, 0] < scene.width - 1)
        & (points[:, 1] > 1)
        & (points[:, 1] < scene.height - 1)
    )
    looked_up = np.stack([sample(scene.gt_uv[t][..., c], points[inner][None]) for c in (0, 1)], axis=-1)[0]
    np.testing.assert_allclose(looked_up, uv[known[t]][inner], atol=1e-4)


def test_bundle_save_load_round_trip(bundle: Bundle, tmp_path: Path) -> None:
    path = save_bundle(bundle, tmp_path / "gt.vatlas")
    loaded = load_bundle(path)
    for name in ("frames", "atlas", "atlas_coverage", "uv", "mask", "illumination"):
        assert np.array_equal(getattr(loaded, name), getattr(bundle, name)), name
    np.testing.assert_array_equal(loaded.inverse_map, bundle.inverse_map)  # NaN == NaN here
    assert loaded.roi_polygons == bundle.roi_polygons and loaded.atlas_span_px == bundle.atlas_span_px
    assert loaded.source["synthetic"]["seed"] == 5
    assert loaded.source["sha256"] == content_hash(bundle.frames)
    assert loaded.info()["atlas_size"] == 512


def test_render_edited_transparent_is_identity(scene: SynthScene) -> None:
    assert np.array_equal(scene.render_edited(np.zeros((20, 30, 4), np.uint8), at=(60, 35)), scene.frames)


def test_render_edited_opaque_patch(scene: SynthScene) -> None:
    red = np.zeros((16, 24, 4), np.uint8)
    red[...] = (230, 20, 10, 255)
    at = (scene.roi.polygons[0].mean(axis=0) - np.array([12, 8])).tolist()
    edited = scene.render_edited(red, at=tuple(at))
    vis = scene.gt_visibility
    assert np.array_equal(edited[vis == 0], scene.frames[vis == 0])  # bit-exact outside the visible ROI
    # Inside the patch on the reference frame: illumination * red, to rounding.
    x0, y0 = int(np.ceil(at[0])) + 1, int(np.ceil(at[1])) + 1
    region = (slice(y0, y0 + 12), slice(x0, x0 + 20))
    assert np.all(vis[0][region] == 1.0)
    expected = scene.gt_illumination[0][region] * np.array([230, 20, 10], np.float32)
    assert np.abs(edited[0][region].astype(np.float32) - expected).max() <= 1.0
    # Every frame: where the ROI is fully visible, pixels whose surface point is inside the pasted rectangle
    # (1 px from its edge) show illumination * red, and pixels whose surface point is 1 px or more outside it
    # are untouched bit for bit.
    centre = np.array([scene.width / 2, scene.height / 2])
    for t in range(0, 24, 3):
        atlas_xy = scene.gt_uv[t] * (scene.atlas_span_px / 2) + centre
        rel = atlas_xy - np.array(at)
        inside = (rel[..., 0] > 1) & (rel[..., 0] < 23) & (rel[..., 1] > 1) & (rel[..., 1] < 15)
        outside = (rel[..., 0] < -1) | (rel[..., 0] > 25) | (rel[..., 1] < -1) | (rel[..., 1] > 17)
        full = vis[t] == 1.0
        expected = scene.gt_illumination[t] * np.array([230, 20, 10], np.float32)
        got = edited[t].astype(np.float32)
        assert np.abs(got - expected)[inside & full].max(initial=0) <= 1.0
        assert np.array_equal(edited[t][outside], scene.frames[t][outside])
        if t in (0, 12):
            assert (inside & full).sum() > 50


def test_render_edited_outside_roi_changes_nothing(scene: SynthScene) -> None:
    patch = np.full((6, 6, 4), 255, np.uint8)
    far_corner = (1.0, 1.0)
    assert not scene.roi.mask(scene.height, scene.width)[:10, :10].any()
    assert np.array_equal(scene.render_edited(patch, at=far_corner), scene.frames)


def test_render_edited_matches_bundle_compositing(scene: SynthScene, bundle: Bundle) -> None:
    """DESIGN.md's formula on the baked bundle (edit rasterized into the atlas) agrees with the oracle."""
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    rgba[..., 1] = 200
    rgba[..., 2] = np.linspace(255, 0, 30, dtype=np.uint8)[:, None]
    rgba[..., 3] = 180
    at = (55.0, 30.0)
    oracle = scene.render_edited(rgba, at=at)
    size = bundle.atlas_size
    texel = scene.atlas_span_px / size
    origin = np.array([scene.width / 2, scene.height / 2]) - scene.atlas_span_px / 2
    # Edit image pixel -> atlas texel: x_atlas = at + p, texel = (x_atlas - origin) / texel.
    to_texel = np.array(
        [[1 / texel, 0, (at[0] - origin[0]) / texel], [0, 1 / texel, (at[1] - origin[1]) / texel]]
    )
    to_texel_idx = to_texel.copy()
    to_texel_idx[:, 2] += 0.5 / texel - 0.5  # pixel-index conventions on both sides
    alpha = rgba[..., 3:4].astype(np.float32) / 255
    premultiplied = np.concatenate([rgba[..., :3] * alpha, alpha], axis=2)
    layer = cv2.warpAffine(premultiplied, to_texel_idx, (size, size), flags=cv2.INTER_LINEAR)
    atlas = bundle.atlas.astype(np.float32)
    atlas_edit = layer[..., :3] + (1 - layer[..., 3:4]) * atlas
    for t in (0, 11, 23):
        uv = decode_uv(bundle.uv[t])
        a_edit, a = sample_atlas(atlas_edit, uv), sample_atlas(atlas, uv)
        light = cv2.resize(bundle.illumination[t].astype(np.float32), SIZE, interpolation=cv2.INTER_LINEAR)
        m = bundle.mask[t].astype(np.float32)[..., None] / 255
        composite = np.clip(np.rint(scene.frames[t] + m * light * (a_edit - a)), 0, 255)
        touched = (np.abs(oracle[t].astype(int) - scene.frames[t].astype(int)).sum(-1) > 0) | (m[..., 0] > 0)
        if touched.sum() < 50:
            continue
        assert psnr(composite, oracle[t].astype(np.float64), touched, data_range=255) > 35


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="frames"):
        make_scene(frames=1)
    with pytest.raises(ValueError, match="size"):
        make_scene(size=(16, 100))
    with pytest.raises(ValueError, match="occluders"):
        make_scene(occluders=-1)
    with pytest.raises(ValueError, match="fps"):
        make_scene(fps=0)
    small = make_scene(frames=3, size=(48, 32), seed=1)
    with pytest.raises(ValueError, match=r"\(h, w, 4\) uint8"):
        small.render_edited(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="atlas_size"):
        small.ground_truth_bundle(atlas_size=1)
