"""Edits as layers over the source (docs/DESIGN.md, "Editing and compositing"), on ground-truth scenes.

Untouched pixels are the source's bit for bit (inside the ROI too); an image pasted on frame N comes back on
frame N as pasted and is re-lit on the others; an opaque texture replaces the surface; erase removes paint;
adjustments recolour the source and their per-texel affine form matches apply_adjustment.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_edits_fixtures import SHIFTS, png_bytes, shifted_bundle, solid_rgba
from vatlas.models.reference_compositor import upsample_bilinear
from vatlas.server.edits.adjust import adjustment_affine, apply_adjustment
from vatlas.server.edits.engine import EditEngine

from vatlas.metrics import psnr
from vatlas.synth import apply_homography, make_scene

FRAMES = 12
PASTE_FRAME = 6  # the scene's light is about 0.8 there, 1.0 on frame 0


@pytest.fixture(scope="module")
def lit_scene():
    """No occluder, a global gain that falls to about 0.78 mid-clip: pastes off frame 0 must be divided by it."""
    scene = make_scene(frames=FRAMES, size=(128, 96), seed=2, occluders=0)
    return scene, scene.ground_truth_bundle(atlas_size=512)


@pytest.fixture(scope="module")
def occluded_scene():
    scene = make_scene(frames=FRAMES, size=(128, 96), seed=5, occluders=1)
    return scene, scene.ground_truth_bundle(atlas_size=256)


def _smooth_image(w: int = 20, h: int = 14) -> np.ndarray:
    """Smooth and darker than the source's light range, so re-lighting it by up to 1.6x does not clip."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 0] = 30 + 6 * xx
    img[..., 1] = 90 + 40 * np.sin(yy / 3.0)
    img[..., 2] = 140 - 5 * yy
    img[..., 3] = 255
    return img


def _rect_at(scene, frame: int, w: int, h: int) -> tuple[int, int]:
    """Integer top-left corner of a w x h rectangle centred on the ROI's centre as seen on `frame`."""
    centre = scene.gt_track(scene.roi.polygons[0].mean(axis=0)[None])[frame, 0]
    return int(round(float(centre[0]))) - w // 2, int(round(float(centre[1]))) - h // 2


def _to_frame(scene, points: np.ndarray, source: int | None, t: int) -> np.ndarray:
    """Frame-`source` points (reference/atlas points when source is None) -> frame t."""
    ref = points if source is None else apply_homography(scene.atlas_to_frame_inv(source), points)
    return apply_homography(scene.atlas_to_frame[t], ref)


def _bilinear(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """field (H, W, C) at continuous frame points xy (N, 2), pixel centres at +0.5, edge-clamped."""
    mx = (xy[:, 0] - 0.5).astype(np.float32).reshape(-1, 1)
    my = (xy[:, 1] - 0.5).astype(np.float32).reshape(-1, 1)
    return cv2.remap(field.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]


def test_untouched_pixels_are_the_source_bit_for_bit_inside_the_roi_too(occluded_scene) -> None:
    scene, bundle = occluded_scene
    engine = EditEngine(bundle, "cpu")
    w, h = 14, 10
    x0, y0 = _rect_at(scene, 3, w, h)
    engine.apply({"id": "t", "type": "texture", "space": "frame", "frame": 3, "rect": [x0, y0, w, h],
                  "image": png_bytes(_smooth_image(w, h))})
    centre = scene.roi.polygons[0].mean(axis=0)
    stroke = (centre + [[-12.0, 6.0], [10.0, 8.0]]).tolist()
    engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": 0, "points": stroke, "width": 4,
                  "color": [0.1, 0.9, 0.2, 1.0], "hardness": 0.8})
    polygon = centre + np.array([[-16.0, -14.0], [-4.0, -14.0], [-10.0, -4.0]])
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "points": polygon.tolist(), "exposure": 0.5,
                  "hue": 30, "hardness": 0.7, "width": 3})
    out = engine.render(list(range(FRAMES))).numpy()
    recon = engine.render(list(range(FRAMES)), mode="reconstruction").numpy()
    corners = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], dtype=np.float64)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))  # 3 px around every footprint pixel
    kept_roi = 0
    for t in range(FRAMES):
        footprint = np.zeros((bundle.height, bundle.width), np.uint8)
        cv2.fillPoly(footprint, [np.round(_to_frame(scene, corners, 3, t)).astype(np.int32)], 1)
        cv2.fillPoly(footprint, [np.round(_to_frame(scene, polygon, None, t)).astype(np.int32)], 1)
        line = np.round(_to_frame(scene, np.asarray(stroke), 0, t)).astype(np.int32)
        cv2.polylines(footprint, [line], False, 1, thickness=5)
        outside = cv2.dilate(footprint, kernel) == 0
        assert np.array_equal(out[t][outside], bundle.frames[t][outside]), t
        kept = outside & (bundle.mask[t] == 255)
        kept_roi += int(kept.sum())
        # The model's reconstruction differs from the source there, so a re-rendering would have failed this.
        assert (recon[t][kept] != bundle.frames[t][kept]).any(axis=-1).mean() > 0.2, t
    assert kept_roi > FRAMES * 200
    assert (out != bundle.frames).any(axis=-1).sum() > FRAMES * 100  # the edits did change their footprints


def test_an_image_pasted_on_frame_n_comes_back_as_pasted_and_is_relit_elsewhere(lit_scene) -> None:
    scene, bundle = lit_scene
    img = _smooth_image()
    h, w = img.shape[:2]
    x0, y0 = _rect_at(scene, PASTE_FRAME, w, h)
    light_n = upsample_bilinear(bundle.illumination[PASTE_FRAME].astype(np.float64), bundle.height, bundle.width)
    assert np.abs(light_n[y0:y0 + h, x0:x0 + w] - 1.0).min() > 0.1  # frame N is not lit like the reference
    assert (bundle.mask[PASTE_FRAME, y0:y0 + h, x0:x0 + w] == 255).all()
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "t", "type": "texture", "space": "frame", "frame": PASTE_FRAME, "rect": [x0, y0, w, h],
                  "image": png_bytes(img)})
    out = engine.render(list(range(FRAMES))).numpy().astype(np.float64)

    # Frame N: the image alpha-over the source, over the whole pasted rectangle.
    alpha = img[..., 3:] / 255.0
    pasted = alpha * img[..., :3] + (1.0 - alpha) * bundle.frames[PASTE_FRAME, y0:y0 + h, x0:x0 + w]
    assert psnr(out[PASTE_FRAME, y0:y0 + h, x0:x0 + w], pasted, data_range=255.0) >= 40.0
    # Without the division by frame N's light it would come back shaded by it.
    assert psnr(light_n[y0:y0 + h, x0:x0 + w] * pasted, pasted, data_range=255.0) < 30.0

    # Another frame: the same surface points, re-lit by l_t / l_N.
    t = 0
    ys, xs = np.mgrid[0:bundle.height, 0:bundle.width]
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5
    on_n = _to_frame(scene, pixels, t, PASTE_FRAME)
    local = on_n - [x0, y0]
    inside = ((local >= 1.0) & (local <= [w - 1.0, h - 1.0])).all(axis=1)
    inside &= bundle.mask[t].ravel() == 255
    assert inside.sum() > 150
    colour = _bilinear(img[..., :3], local[inside])
    light_t = upsample_bilinear(bundle.illumination[t].astype(np.float64), bundle.height, bundle.width)
    ratio = light_t.reshape(-1, 3)[inside] / _bilinear(light_n, on_n[inside])
    assert np.abs(ratio - 1.0).mean() > 0.15
    got = out[t].reshape(-1, 3)[inside]
    assert psnr(got, colour * ratio, data_range=255.0) >= 38.0
    assert psnr(got, colour, data_range=255.0) < 25.0  # the re-lighting is really there


def test_a_stroke_drawn_on_frame_n_shows_its_colour_there(lit_scene) -> None:
    scene, bundle = lit_scene
    x0, y0 = _rect_at(scene, PASTE_FRAME, 20, 0)
    colour = np.array([0.2, 0.55, 0.35])
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": PASTE_FRAME, "hardness": 1.0,
                  "points": [[x0 + 0.5, y0 + 0.5], [x0 + 20.5, y0 + 0.5]], "width": 6, "color": [*colour, 1.0]})
    out = engine.render([0, PASTE_FRAME]).numpy().astype(np.float64)
    line = out[1, y0, x0 + 2:x0 + 19]
    assert np.abs(line - colour * 255.0).max() <= 1.0  # as drawn, although frame N's light is about 0.6-0.8
    # On frame 0 (lit about 1.0) the same surface points are brighter by l_0 / l_N.
    points = _to_frame(scene, np.array([[x0 + 10.5, y0 + 0.5]]), PASTE_FRAME, 0)[0]
    light = [upsample_bilinear(bundle.illumination[t].astype(np.float64), bundle.height, bundle.width)
             for t in (0, PASTE_FRAME)]
    want = colour * 255.0 * light[0][int(points[1]), int(points[0])] / light[1][y0, x0 + 10]
    assert np.abs(out[0, int(points[1]), int(points[0])] - want).max() <= 3.0
    assert np.abs(want - colour * 255.0).min() > 15.0


def test_an_opaque_texture_replaces_the_surface() -> None:
    clean = shifted_bundle()
    noisy = shifted_bundle()
    rng = np.random.default_rng(4)
    noise = rng.integers(-40, 41, size=noisy.frames.shape)
    noisy.frames = np.clip(noisy.frames.astype(int) + noise, 0, 255).astype(np.uint8)
    op = {"id": "t", "type": "texture", "space": "frame", "frame": 1, "rect": [12, 26, 20, 14],
          "image": png_bytes(solid_rgba(20, 14, (230, 40, 90, 255)))}
    outs = []
    for bundle in (clean, noisy):
        engine = EditEngine(bundle, "cpu")
        engine.apply(op)
        outs.append(engine.render([0, 1, 2, 3]).numpy())
    dx1, dy1 = SHIFTS[1]
    for t, (dx, dy) in enumerate(SHIFTS):
        # The pasted rectangle on frame t, 2 px inside its edge: the layer is fully opaque there (texels are
        # 1.25 px in this atlas, and an edge texel is anti-aliased).
        x0, y0 = int(np.ceil(12 + 2 + dx1 - dx)), int(np.ceil(26 + 2 + dy1 - dy))
        x1, y1 = int(np.floor(12 + 18 + dx1 - dx)), int(np.floor(26 + 12 + dy1 - dy))
        box = (slice(y0, y1), slice(x0, x1))
        assert (clean.mask[t][box] == 255).all()
        assert (clean.frames[t][box] != noisy.frames[t][box]).any()
        # No residual of the source: two different sources give the same pixels under the texture.
        assert np.array_equal(outs[0][t][box], outs[1][t][box]), t
        if t == 1:
            assert np.abs(outs[0][t][box].astype(int) - [230, 40, 90]).max() <= 1


def test_erase_removes_paint_and_returns_the_source() -> None:
    bundle = shifted_bundle()
    engine = EditEngine(bundle, "cpu")
    paint = {"id": "p", "type": "stroke", "space": "frame", "frame": 2, "points": [[10, 30], [50, 30]],
             "width": 8, "color": [0.0, 0.3, 1.0, 1.0], "hardness": 1.0}
    engine.apply(paint)
    painted = engine.render([0, 1, 2, 3]).numpy()
    assert (painted != bundle.frames).any(axis=-1).sum() > 4 * 100
    peak = float(engine.layers.layer[0, 3].max())
    engine.apply({"id": "half", "type": "stroke", "space": "frame", "frame": 2, "points": [[5, 30], [55, 30]],
                  "width": 20, "mode": "erase", "hardness": 1.0, "opacity": 0.5})
    assert float(engine.layers.layer[0, 3].max()) == pytest.approx(0.5 * peak, abs=1e-5)  # scaled by 1 - 0.5
    engine.apply({"id": "e", "type": "stroke", "space": "frame", "frame": 0, "points": [[5, 30], [55, 30]],
                  "width": 20, "mode": "erase", "hardness": 1.0})
    assert float(engine.layers.layer.abs().max()) < 1e-6
    assert np.array_equal(engine.render([0, 1, 2, 3]).numpy(), bundle.frames)
    # Erase only removes what lies beneath: paint laid after it shows again.
    engine.apply({**paint, "id": "p2"})
    assert np.array_equal(engine.render([0, 1, 2, 3]).numpy(), painted)


PARAMS = {"exposure": 0.4, "temperature": -0.3, "contrast": 0.25, "saturation": -0.4, "hue": 35.0}


def test_adjustments_recolour_the_source_where_they_apply() -> None:
    bundle = shifted_bundle()
    engine = EditEngine(bundle, "cpu")
    square = [[14, 14], [44, 14], [44, 40], [14, 40]]
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "points": square, "hardness": 1.0,
                  **PARAMS})
    out = engine.render([0, 1, 2, 3]).numpy().astype(int)
    for t, (dx, dy) in enumerate(SHIFTS):
        # Deep inside the square (atlas = frame + shift) the weight is 1: the source's pixels, adjusted.
        box = (slice(int(17 - dy), int(37 - dy)), slice(int(17 - dx), int(41 - dx)))
        full = bundle.mask[t][box] == 255
        assert full.sum() > 200
        c = torch.from_numpy(bundle.frames[t][box][full].astype(np.float32) / 255.0)
        want = torch.floor(apply_adjustment(c, PARAMS) * 255.0 + 0.5).numpy()
        assert np.abs(out[t][box][full] - want).max() <= 1
        assert np.abs(out[t][box][full] - bundle.frames[t][box][full]).max() > 30  # it did change them
        # Away from the square the source is untouched.
        away = np.ones(bundle.mask[t].shape, bool)
        away[int(8 - dy):int(47 - dy), int(8 - dx):int(51 - dx)] = False
        assert np.array_equal(out[t][away], bundle.frames[t][away])


def test_affine_form_matches_apply_adjustment() -> None:
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.uniform(0.35, 0.6, (500, 3)).astype(np.float32))  # no clamp bites here
    for params in (PARAMS, {"hue": -120.0}, {"saturation": 0.8, "contrast": -0.5}, {"exposure": -1.0},
                   {"temperature": 0.9, "contrast": 0.3}):
        m, b = adjustment_affine(params)
        assert torch.allclose(rgb @ m.T + b, apply_adjustment(rgb, params), atol=2e-6), params
    m, b = adjustment_affine({})
    assert torch.equal(m, torch.eye(3)) and torch.equal(b, torch.zeros(3))


def test_adjustments_compose_in_op_order_with_their_weights() -> None:
    bundle = shifted_bundle()
    square = [[10, 10], [50, 10], [50, 40], [10, 40]]
    first = {"contrast": 0.6}
    second = {"temperature": 0.8}
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "points": square, "hardness": 1.0, **first})
    engine.apply({"id": "b", "type": "adjustment", "space": "atlas", "points": square, "hardness": 1.0,
                  "opacity": 0.5, **second})
    k = engine.adjust_transform()
    assert k is not None
    r, c = (int(v) for v in np.round(engine.geometry.atlas_to_texel(np.array([[30.0, 25.0]]))[0][::-1]))
    x = torch.tensor([[0.4, 0.5, 0.45]])
    one = apply_adjustment(x, first)
    want = 0.5 * one + 0.5 * apply_adjustment(one, second)  # the second op's weight is its opacity
    got = torch.from_numpy(k[r, c, :, :3]).float() @ x[0] + torch.from_numpy(k[r, c, :, 3]).float()
    assert torch.allclose(got, want[0], atol=1e-5)
    swapped = apply_adjustment(0.5 * x + 0.5 * apply_adjustment(x, second), first)
    assert not torch.allclose(got, swapped[0], atol=1e-3)  # the order matters, and it is the ops' order
    corner = engine.geometry.atlas_to_texel(np.array([[60.0, 46.0]]))[0]
    assert np.array_equal(k[int(corner[1]), int(corner[0])], np.eye(3, 4))  # identity where none applies
