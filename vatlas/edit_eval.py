"""Edit evaluation: what the product's edit engine outputs, scored against ground truth (issue 15).

Edits go through ``vatlas.server.edits.engine.EditEngine`` (frame-space ``texture`` ops, ``render`` in its default
mode), never through a compositor of our own, so the scores follow whatever the product renders.

Metric functions (numpy; clips are (T, H, W, 3) uint8, masks (T, H, W)):

* ``region_psnr(out, truth, region) -> (pooled dB, per-frame dB)``: PSNR over ``region``, NaN for empty frames.
* ``error_split(out, truth, region, wrong) -> (share, dB)``: the share of that error on the pixels the mask gets
  wrong, and the pooled dB with them exact (``edit_err_visibility_share``, ``edit_psnr_vis_exact``): visibility
  against geometry and light.
* ``visibility_scores(pred, truth, occlusion) -> (dict, per-frame IoU)``: IoU pooled and per frame, false-visible
  and false-hidden shares of the union, and the median / 90th percentile distance (px between pixel centres) of
  those pixels from the nearest ground-truth occluder edge (capped at the frame diagonal, also when no occluder
  is in the frame).
* ``cover_share(frame, source, rgba, rect)``: share of an opaque paste's interior (inset 1 px: a texture resampled
  twice legitimately blends its outermost pixels) that shows: within ``COVER_TOL`` levels of the pasted pixel and
  moved at least half way from the source towards it (so a source pixel that happens to lie near the paste's
  colour does not count as shown).
* ``untouched_share(out, source, footprint, radius=3) -> (share, count)``: pixels outside the footprint dilated
  by ``radius`` px that are bit-identical to the source (must be 1.0). The drivers pass the edit's footprint by
  the product's own geometry (``atlas_footprint``), so the share isolates layering (DESIGN.md: untouched pixels
  are the source's) from geometry, which the fidelity metrics measure.
* ``changed_pixels(out, source)``: some channel differs by more than ``CHANGE_THRESHOLD`` levels.
* ``share_inside(changed, region)``, ``presence(changed, expected, min_area)``, ``worst_frames(values)``.

Drivers: ``synth_edit_metrics(bundle, scene, device)`` (a logo on frame 0 against ``scene.render_pasted``, the
mask against ``gt_visibility``, reference-frame cover, an image pasted on a middle frame, untouched pixels),
``real_edit_metrics(bundle, masks, device)`` (an opaque checkerboard over background on the reference frame:
share of changed pixels on the objects, frames where the edit is missing) and
``object_edit_metrics(bundle, masks, device)`` (an ROI around a moving object: ``object_roi(mask)``). Each returns
``(scalars, worst)``: a flat dict of floats and, per per-frame metric, its worst frames as ``[frame, value]``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from vatlas import metrics
from vatlas.roi import Roi
from vatlas.server.errors import CoreError

COVER_TOL = 24  # levels (max over channels): twice-resampled flat colour and re-lighting stay well inside
CHANGE_THRESHOLD = 2  # levels: a pixel changed by an edit, not by re-encoding or rounding noise
MISSING_RATIO = 0.5  # a frame where less than half of the expected area shows the edit "misses" it
WORST = 5  # worst frames reported per metric
REAL_KEYS = ("edit_on_object", "edit_on_object_fixed", "edit_eligible_frames", "edit_missing_frames",
             "edit_shown_min_ratio", "edit_shown_median_ratio", "untouched", "untouched_changed_px", "ref_cover")
OBJECT_KEYS = ("obj_ref_cover", "obj_on_object", "obj_on_object_fixed", "obj_area_ratio_median")
Rect = tuple[int, int, int, int]  # x, y, w, h in frame pixels (x, y: the top-left pixel's corner)


# ---------------------------------------------------------------------------------------------------------
# Edit images


def logo_rgba(width: int, height: int) -> np.ndarray:
    """A logo: anti-aliased rounded badge with a gradient, a ring, a bar and fine stripes (straight alpha)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    nx, ny = (xs - width / 2) / (width / 2 - 1), (ys - height / 2) / (height / 2 - 1)
    r = np.hypot(nx, ny)
    alpha = np.clip((1.0 - r) * min(width, height) / 2, 0.0, 1.0)
    rgb = np.stack([210 * xs / width + 30, 170 * ys / height + 60, 230 - 150 * xs / width], -1)
    ring = np.abs(r - 0.62) < 0.07
    bar = np.abs(nx - ny) < 0.12
    stripes = (np.floor(xs / 2) % 2 == 0) & (np.abs(ny) < 0.25) & (np.abs(nx) < 0.35)
    rgb[ring] = (250, 240, 60)
    rgb[bar] = (20, 20, 30)
    rgb[stripes] = (245, 245, 245)
    rgb = np.where((r > 0.85)[..., None], rgb * 0.45, rgb)
    return np.clip(np.rint(np.concatenate([rgb, alpha[..., None] * 255], -1)), 0, 255).astype(np.uint8)


def photo_rgba(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An opaque "photo": smooth colourful noise with a few sharp-edged shapes."""
    rng = np.random.default_rng(seed)
    total = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((16, 0.6), (6, 0.3), (3, 0.1)):
        grid = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        total += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = np.clip(total * 255.0, 0, 255).astype(np.uint8)
    for _ in range(4):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(canvas, centre, int(rng.integers(2, max(3, min(width, height) // 4))), colour, -1, cv2.LINE_AA)
    return np.concatenate([canvas, np.full((height, width, 1), 255, np.uint8)], axis=2)


def checker_rgba(width: int, height: int, cell: int = 8) -> np.ndarray:
    """An opaque two-colour checkerboard."""
    ys, xs = np.mgrid[0:height, 0:width]
    board = ((xs // cell + ys // cell) % 2).astype(bool)
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[board] = (235, 40, 40, 255)
    rgba[~board] = (30, 60, 225, 255)
    return rgba


def solid_rgba(width: int, height: int, rgb: Sequence[int]) -> np.ndarray:
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[...] = (*(int(c) for c in rgb), 255)
    return rgba


def far_colour(pixels: np.ndarray) -> tuple[int, int, int]:
    """A saturated colour far from the mean of ``pixels`` (..., 3): a paste that cannot pass for the source."""
    mean = pixels.reshape(-1, 3).mean(axis=0)
    return tuple(int(230 if m < 128 else 25) for m in mean)  # type: ignore[return-value]


def png_bytes(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Placements


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) or (T, H, W) bool dilated by a disc of ``radius`` px."""
    if radius <= 0:
        return np.asarray(mask, bool)
    kernel = _disc(radius)
    masks = np.asarray(mask, bool).reshape((-1,) + mask.shape[-2:])
    out = np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])
    return out.reshape(mask.shape)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) or (T, H, W) bool eroded by a disc of ``radius`` px (outside the frame counts as outside)."""
    if radius <= 0:
        return np.asarray(mask, bool)
    kernel = _disc(radius)
    masks = np.asarray(mask, bool).reshape((-1,) + mask.shape[-2:])
    out = np.stack(
        [cv2.erode(m.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0 for m in masks]
    )
    return out.reshape(mask.shape)


def rect_positions(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) bool: top-left pixels where a ``width`` x ``height`` rectangle lies inside ``mask``."""
    kernel = np.ones((height, width), np.uint8)
    return cv2.erode(np.asarray(mask, np.uint8), kernel, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT,
                     borderValue=0) > 0


def _nearest(valid: np.ndarray, width: int, height: int, near: np.ndarray) -> Rect:
    ys, xs = np.nonzero(valid)
    d2 = (xs + width / 2 - near[0]) ** 2 + (ys + height / 2 - near[1]) ** 2
    k = int(np.argmin(d2))
    return int(xs[k]), int(ys[k]), int(width), int(height)


def largest_rect(mask: np.ndarray, aspect: float = 4 / 3, max_height: int | None = None,
                 near: Sequence[float] | None = None, min_height: int = 4) -> Rect | None:
    """The tallest ``aspect`` (w / h) rectangle inside ``mask``, nearest ``near`` (default: the mask's centroid)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if near is None else np.asarray(near, float)
    lo, hi = min_height, max_height or mask.shape[0]
    if not rect_positions(mask, max(1, round(lo * aspect)), lo).any():
        return None
    while lo < hi:  # fitting is monotone in the size: bisect on the height
        mid = (lo + hi + 1) // 2
        if rect_positions(mask, max(1, round(mid * aspect)), mid).any():
            lo = mid
        else:
            hi = mid - 1
    width = max(1, round(lo * aspect))
    return _nearest(rect_positions(mask, width, lo), width, lo, centre)


def rect_mask(rect: Rect, height: int, width: int) -> np.ndarray:
    x, y, w, h = rect
    out = np.zeros((height, width), bool)
    out[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# Metric functions


def _squared_errors(out: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the sum of squared colour differences over ``region`` and the count of values summed."""
    if out.shape != truth.shape or out.shape[:3] != region.shape:
        raise ValueError(f"shapes differ: {out.shape}, {truth.shape}, region {region.shape}")
    sq = np.zeros(out.shape[0])
    count = np.zeros(out.shape[0])
    for t in range(out.shape[0]):
        sel = region[t]
        diff = out[t][sel].astype(np.float64) - truth[t][sel].astype(np.float64)
        sq[t], count[t] = float((diff * diff).sum()), diff.size
    return sq, count


def _db(sq: float, count: float) -> float:
    if count == 0:
        return math.nan
    return math.inf if sq <= 0 else 10.0 * math.log10(255.0**2 * count / sq)


def region_psnr(out: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[float, np.ndarray]:
    """PSNR (dB) over ``region`` (T, H, W): pooled over every frame, and per frame (NaN where it is empty)."""
    sq, count = _squared_errors(out, truth, region)
    per_frame = np.array([_db(s, n) for s, n in zip(sq, count, strict=True)])
    return _db(float(sq.sum()), float(count.sum())), per_frame


def error_split(out: np.ndarray, truth: np.ndarray, region: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    """How much of the edit's error is visibility: the share of the squared error over ``region`` that lies on
    the ``wrong`` pixels (T, H, W; the mask disagrees with the truth), and the pooled dB were they exact."""
    sq, count = _squared_errors(out, truth, region)
    on_wrong = float(_squared_errors(out, truth, region & wrong)[0].sum())
    total = float(sq.sum())
    if count.sum() == 0:
        return math.nan, math.nan
    return (on_wrong / total if total > 0 else 0.0), _db(total - on_wrong, float(count.sum()))


def edge_distance(occluded: np.ndarray) -> np.ndarray:
    """(H, W) float32: distance (px) of each pixel from the nearest edge of the bool occluder mask."""
    h, w = occluded.shape
    cap = float(math.hypot(h, w))
    if not occluded.any() or occluded.all():
        return np.full((h, w), cap, np.float32)
    occ = occluded.astype(np.uint8)
    outside = cv2.distanceTransform(1 - occ, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest occluded
    inside = cv2.distanceTransform(occ, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest free pixel
    return np.minimum(np.where(occluded, inside, outside), cap).astype(np.float32)


def _quantiles(values: list[np.ndarray]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    allv = np.concatenate(values)
    if allv.size == 0:
        return math.nan, math.nan
    return float(np.median(allv)), float(np.percentile(allv, 90))


def visibility_scores(pred: np.ndarray, truth: np.ndarray, occlusion: np.ndarray
                      ) -> tuple[dict[str, float], np.ndarray]:
    """The visibility mask against the truth (binarized as ``metrics.binarize``); see the module docstring."""
    p, g = metrics.binarize(pred), metrics.binarize(truth)
    if p.shape != g.shape or g.shape != occlusion.shape:
        raise ValueError(f"shapes differ: {p.shape}, {g.shape}, occlusion {occlusion.shape}")
    occ = metrics.binarize(occlusion)
    per_frame = np.array([metrics.iou(p[t], g[t]) for t in range(p.shape[0])])
    false_visible, false_hidden = metrics.union_error_shares(p, g)
    fv_d: list[np.ndarray] = []
    fh_d: list[np.ndarray] = []
    for t in range(p.shape[0]):
        fv, fh = p[t] & ~g[t], g[t] & ~p[t]
        if fv.any() or fh.any():
            d = edge_distance(occ[t])
            fv_d.append(d[fv])
            fh_d.append(d[fh])
    fv_med, fv_p90 = _quantiles(fv_d)
    fh_med, fh_p90 = _quantiles(fh_d)
    scores = {
        "mask_iou": float(metrics.iou(p, g)),
        "mask_iou_worst": float(per_frame.min()),
        "mask_false_visible": float(false_visible),
        "mask_false_hidden": float(false_hidden),
        "false_hidden_edge_px_median": fh_med,
        "false_hidden_edge_px_p90": fh_p90,
        "false_visible_edge_px_median": fv_med,
        "false_visible_edge_px_p90": fv_p90,
    }
    return scores, per_frame


def cover_share(frame: np.ndarray, source: np.ndarray, rgba: np.ndarray, rect: Rect) -> float:
    """Share of an opaque paste's interior (rect inset 1 px) that shows on ``frame``; NaN if nothing is left."""
    x, y, w, h = rect
    if rgba.shape[:2] != (h, w):
        raise ValueError(f"the paste must have the rect's size {w}x{h}, got {rgba.shape[1]}x{rgba.shape[0]}")
    inner = (slice(y + 1, y + h - 1), slice(x + 1, x + w - 1))
    got = frame[inner].astype(np.int32)
    src = source[inner].astype(np.int32)
    want = rgba[1:-1, 1:-1, :3].astype(np.int32)
    if got.size == 0 or got.shape != want.shape:
        return math.nan
    close = np.abs(got - want).max(axis=-1) <= COVER_TOL
    moved = 2 * np.abs(got - src).sum(axis=-1) >= np.abs(want - src).sum(axis=-1)
    return float((close & moved).mean())


def untouched_share(out: np.ndarray, source: np.ndarray, footprint: np.ndarray, radius: int = 3
                    ) -> tuple[float, int]:
    """(share, count): pixels outside ``footprint`` dilated by ``radius`` px that equal / differ from the source."""
    outside = ~dilate(np.asarray(footprint, bool), radius)
    same = (out == source).all(axis=-1)
    total = int(outside.sum())
    if total == 0:
        return math.nan, 0
    differ = int((outside & ~same).sum())
    return 1.0 - differ / total, differ


def changed_pixels(out: np.ndarray, source: np.ndarray, threshold: int = CHANGE_THRESHOLD) -> np.ndarray:
    """(T, H, W) bool: some channel differs from the source by more than ``threshold`` levels."""
    return (np.abs(out.astype(np.int16) - source.astype(np.int16)).max(axis=-1) > threshold)


def share_inside(changed: np.ndarray, region: np.ndarray) -> float:
    """Share of the changed pixels that lie in ``region`` (NaN when nothing changed)."""
    total = int(changed.sum())
    return math.nan if total == 0 else int((changed & region).sum()) / total


def presence(changed: np.ndarray, expected: np.ndarray, min_area: float, skip: Sequence[int] = ()
             ) -> tuple[dict[str, float], np.ndarray]:
    """Frames whose expected edit area (uncovered, in view) is at least ``min_area`` px: shown / expected ratio.

    Returns {"edit_eligible_frames", "edit_missing_frames" (ratio < MISSING_RATIO), "edit_shown_min_ratio",
    "edit_shown_median_ratio"} and the per-frame ratio (NaN where not eligible).
    """
    ratio = np.full(changed.shape[0], math.nan)
    for t in range(changed.shape[0]):
        area = int(expected[t].sum())
        if t in skip or area < max(min_area, 1.0):
            continue
        ratio[t] = int((changed[t] & expected[t]).sum()) / area
    valid = ratio[np.isfinite(ratio)]
    return {
        "edit_eligible_frames": float(valid.size),
        "edit_missing_frames": float((valid < MISSING_RATIO).sum()),
        "edit_shown_min_ratio": float(valid.min()) if valid.size else math.nan,
        "edit_shown_median_ratio": float(np.median(valid)) if valid.size else math.nan,
    }, ratio


def worst_frames(values: np.ndarray, k: int = WORST) -> list[list[float]]:
    """The ``k`` lowest finite values as [frame, value], lowest first."""
    values = np.asarray(values, np.float64)
    idx = [int(i) for i in np.argsort(values, kind="stable") if np.isfinite(values[i])][:k]
    return [[i, round(float(values[i]), 4)] for i in idx]


# ---------------------------------------------------------------------------------------------------------
# Through the product's edit engine


def texture_op(op_id: str, frame: int, rgba: np.ndarray, rect: Sequence[float]) -> dict[str, Any]:
    """A frame-space texture op: ``rgba`` stretched over ``rect`` = [x, y, w, h] on ``frame``."""
    return {"id": op_id, "type": "texture", "space": "frame", "frame": int(frame), "image": png_bytes(rgba),
            "rect": [float(v) for v in rect]}


def render_edit(bundle: Any, ops: Sequence[dict[str, Any]], device: str = "auto", batch: int = 16) -> np.ndarray:
    """Every frame rendered by a fresh ``EditEngine`` holding ``ops``, in its default mode, as numpy uint8."""
    from vatlas.server.edits.engine import EditEngine

    engine = EditEngine(bundle, device)
    for op in ops:
        engine.apply(op)
    out = np.empty_like(bundle.frames)
    for start in range(0, bundle.num_frames, batch):
        frames = list(range(start, min(bundle.num_frames, start + batch)))
        out[frames[0]:frames[-1] + 1] = engine.render(frames).cpu().numpy()
    return out


def _roi_mask(bundle: Any) -> np.ndarray:
    roi = Roi(bundle.ref_frame, [np.asarray(p, np.float64) for p in bundle.roi_polygons])
    return roi.mask(bundle.height, bundle.width)


def atlas_footprint(bundle: Any, rect: Rect, frame: int | None = None) -> np.ndarray:
    """(T, H, W) bool: the edit's footprint by the product's own T: pixels whose uv lands where ``rect`` on
    ``frame`` (default: the reference frame) maps into the atlas."""
    x, y, w, h = rect
    ref_uv = bundle.uv_float(bundle.ref_frame if frame is None else frame)
    corners_px = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]])
    corners_px = np.clip(corners_px, 0, [bundle.width - 1, bundle.height - 1])
    # Outer corners of the corner pixels, in atlas coordinates (reference-frame pixels).
    quad = bundle.uv_to_atlas(ref_uv[corners_px[:, 1], corners_px[:, 0]])
    quad += np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    # Rasterize the quad at 4x on a window around it, then look every pixel's atlas point up in it.
    fine = 4
    lo = np.floor(quad.min(axis=0)) - 2
    size = (np.ceil(quad.max(axis=0)) + 2 - lo).astype(int) * fine
    raster = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(raster, [np.rint((quad - lo) * fine * 16).astype(np.int32)], 1, shift=4)
    out = np.zeros(bundle.mask.shape, bool)
    for t in range(bundle.num_frames):
        xy = (bundle.uv_to_atlas(bundle.uv_float(t)) - lo) * fine
        ix, iy = np.floor(xy[..., 0]).astype(np.int64), np.floor(xy[..., 1]).astype(np.int64)
        inside = (ix >= 0) & (iy >= 0) & (ix < size[0]) & (iy < size[1])
        out[t][inside] = raster[iy[inside], ix[inside]] > 0
    return out


def inverse_quads(bundle: Any, rect: Rect) -> np.ndarray:
    """(T, H, W) bool: the rect's corners carried by the inverse map B into every frame, filled (empty if unknown)."""
    x, y, w, h = rect
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    tracked = sample_inverse(bundle, bundle.atlas_to_uv(corners))
    out = np.zeros(bundle.mask.shape, bool)
    for t in range(bundle.num_frames):
        if not np.isfinite(tracked[t]).all():
            continue
        canvas = np.zeros((bundle.height, bundle.width), np.uint8)
        cv2.fillPoly(canvas, [np.rint((tracked[t] - 0.5) * 16).astype(np.int32)], 1, shift=4)
        out[t] = canvas > 0
    return out


def sample_inverse(bundle: Any, uv: np.ndarray) -> np.ndarray:
    """(T, N, 2) frame positions of uv points via the baked inverse map (bilinear; NaN where unknown)."""
    g = bundle.inverse_map.shape[1]
    gx = np.clip((uv[:, 0] + 1.0) * g / 2.0 - 0.5, 0, g - 1)
    gy = np.clip((uv[:, 1] + 1.0) * g / 2.0 - 0.5, 0, g - 1)
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    x1, y1 = np.minimum(x0 + 1, g - 1), np.minimum(y0 + 1, g - 1)
    fx, fy = (gx - x0)[None, :, None], (gy - y0)[None, :, None]
    m = bundle.inverse_map
    return ((m[:, y0, x0] * (1 - fx) + m[:, y0, x1] * fx) * (1 - fy)
            + (m[:, y1, x0] * (1 - fx) + m[:, y1, x1] * fx) * fy)


def _visible_paste(scene: Any, width: int, height: int) -> tuple[int, Rect] | None:
    """A middle frame N (searched outward from T/2) and a rect there on fully visible surface, near the ROI."""
    t_count = scene.num_frames
    order = sorted(range(1, t_count), key=lambda t: (abs(t - t_count // 2), t))
    centre_ref = scene.roi.polygons[0].mean(axis=0, keepdims=True)
    track = scene.gt_track(centre_ref)[:, 0]
    for t in order:  # the frame nearest the middle first, with a smaller image if need be
        free = erode(scene.gt_visibility[t] >= 0.999, 2)
        for scale in (1.0, 0.75, 0.5):
            w, h = max(4, round(width * scale)), max(4, round(height * scale))
            valid = rect_positions(free, w, h)
            if valid.any():
                return t, _nearest(valid, w, h, track[t])
    return None


def synth_edit_metrics(bundle: Any, scene: Any, device: str = "auto") -> tuple[dict[str, float],
                                                                            dict[str, list[list[float]]]]:
    """Issue 15's synthetic metrics for a bundle of ``scene`` (fitted or ``scene.ground_truth_bundle()``)."""
    if bundle.num_frames != scene.num_frames or bundle.frames.shape[1:3] != scene.frames.shape[1:3]:
        raise ValueError("the bundle is not of this scene (frame count or size differ)")
    height, width = scene.height, scene.width
    region = scene.roi_footprint()
    roi0 = scene.gt_visibility[0] >= 0.999
    out: dict[str, float] = {}
    worst: dict[str, list[list[float]]] = {}
    untouched: list[tuple[float, int]] = []

    # A logo inside the ROI on frame 0, against the ground-truth edited clip.
    logo_w = max(12, width // 8)
    logo_h = max(9, round(logo_w * 0.75))
    rect = largest_rect(erode(roi0, 2), logo_w / logo_h, max_height=logo_h)
    if rect is not None:
        logo = logo_rgba(rect[2], rect[3])
        truth, alpha = scene.render_pasted(logo, frame=0, rect=rect, return_alpha=True)
        ours = render_edit(bundle, [texture_op("logo", 0, logo, rect)], device)
        out["edit_psnr"], per_frame = region_psnr(ours, truth, region)
        out["edit_psnr_worst"] = float(np.nanmin(per_frame))
        worst["edit_psnr"] = worst_frames(per_frame)
        out["edit_psnr_logo"], per_logo = region_psnr(ours, truth, dilate(alpha > 0, 3) & region)
        worst["edit_psnr_logo"] = worst_frames(per_logo)
        wrong = metrics.binarize(bundle.mask) != metrics.binarize(scene.gt_visibility)
        out["edit_err_visibility_share"], out["edit_psnr_vis_exact"] = error_split(ours, truth, region, wrong)
        del wrong
        untouched.append(untouched_share(ours, scene.frames, atlas_footprint(bundle, rect, 0), 3))
        del truth, ours

    # The mask against the ground-truth visibility.
    scores, per_iou = visibility_scores(bundle.mask, scene.gt_visibility, scene.gt_occlusion)
    out.update(scores)
    worst["mask_iou"] = worst_frames(per_iou)

    # Reference-frame cover: the largest opaque rectangle inside the ROI on frame 0.
    rect = largest_rect(erode(roi0, 2), 4 / 3)
    if rect is not None:
        x, y, w, h = rect
        solid = solid_rgba(w, h, far_colour(scene.frames[0, y:y + h, x:x + w]))
        ours = render_edit(bundle, [texture_op("cover", 0, solid, rect)], device)
        out["ref_cover"] = cover_share(ours[0], scene.frames[0], solid, rect)
        untouched.append(untouched_share(ours, scene.frames, atlas_footprint(bundle, rect, 0), 3))
        del ours

    # An image pasted on a middle frame N, measured on frame N (and re-lit over the clip).
    found = _visible_paste(scene, max(8, width // 10), max(6, height // 8))
    if found is not None:
        n, rect = found
        photo = photo_rgba(rect[2], rect[3], seed=n)
        truth, alpha = scene.render_pasted(photo, frame=n, rect=rect, return_alpha=True)
        out["paste_frame"] = float(n)
        try:
            ours = render_edit(bundle, [texture_op("photo", n, photo, rect)], device)
        except CoreError:  # the fit calls that visible surface outside the region: the user cannot paste there
            out["paste_refused"] = 1.0
            out["paste_psnr"] = out["paste_clip_psnr"] = math.nan
        else:
            shown = rect_mask(rect, height, width) & (scene.gt_visibility[n] >= 0.5)
            out["paste_refused"] = 0.0
            out["paste_psnr"] = float(metrics.psnr(ours[n], truth[n], mask=shown, data_range=255.0))
            out["paste_clip_psnr"], per_paste = region_psnr(ours, truth, dilate(alpha > 0, 3) & region)
            worst["paste_clip_psnr"] = worst_frames(per_paste)
            untouched.append(untouched_share(ours, scene.frames, atlas_footprint(bundle, rect, n), 3))
            del ours
        del truth

    if untouched:
        out["untouched"] = min(u[0] for u in untouched)
        out["untouched_changed_px"] = float(sum(u[1] for u in untouched))
    return out, worst


def background_rect(bundle: Any, masks: np.ndarray, width: int, height: int) -> Rect | None:
    """A rect inside the ROI, clear of the objects on the reference frame, that the objects cross (cover 2-60 %
    of it, through the product's own T) in as many frames as possible; else the one nearest the ROI's centre."""
    ref = bundle.ref_frame
    free = erode(_roi_mask(bundle) & ~dilate(masks[ref], 8), 2)
    # Per frame, which reference-frame points an object covers.
    hits = []
    for t in range(bundle.num_frames):
        if t == ref or not masks[t].any():
            continue
        xy = bundle.uv_to_atlas(bundle.uv_float(t)[masks[t]])
        ix, iy = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
        ok = (ix >= 0) & (iy >= 0) & (ix < bundle.width) & (iy < bundle.height)
        frame_hits = np.zeros((bundle.height, bundle.width), np.float32)
        frame_hits[iy[ok], ix[ok]] = 1.0
        hits.append(cv2.integral(frame_hits, sdepth=cv2.CV_64F))
    ys, xs = np.nonzero(free)
    near = np.array([xs.mean(), ys.mean()]) if xs.size else np.zeros(2)
    for scale in (1.0, 0.8, 0.64, 0.5, 0.4):
        w, h = max(8, round(width * scale)), max(8, round(height * scale))
        valid = rect_positions(free, w, h)
        if not valid.any():
            continue
        score = np.zeros((bundle.height - h + 1, bundle.width - w + 1))
        for integral in hits:
            cover = (integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]) / (w * h)
            score += (cover > 0.02) & (cover < 0.6)
        score = np.where(valid[: score.shape[0], : score.shape[1]], score, -1.0)
        if score.max() <= 0:
            return _nearest(valid, w, h, near)
        best = np.argwhere(score == score.max())
        k = int(np.argmin(((best[:, ::-1] + [w / 2, h / 2] - near) ** 2).sum(axis=1)))
        return int(best[k, 1]), int(best[k, 0]), w, h
    return None


def real_edit_metrics(bundle: Any, masks: np.ndarray, device: str = "auto") -> tuple[dict[str, float],
                                                                                   dict[str, list[list[float]]]]:
    """An opaque checkerboard over background (inside the ROI) on the reference frame of a real clip."""
    ref, height, width = bundle.ref_frame, bundle.height, bundle.width
    out: dict[str, float] = {}
    worst: dict[str, list[list[float]]] = {}
    rect = background_rect(bundle, masks, max(16, width // 8), max(12, height // 6))
    if rect is None:  # no background inside the ROI on the reference frame
        return {k: math.nan for k in REAL_KEYS}, worst
    x, y, w, h = rect
    checker = checker_rgba(w, h, cell=max(4, w // 12))
    ours = render_edit(bundle, [texture_op("checker", ref, checker, rect)], device)
    changed = changed_pixels(ours, bundle.frames)
    on_object = erode(masks, 5)
    out["edit_on_object"] = share_inside(changed, on_object)
    fixed = np.broadcast_to(rect_mask(rect, height, width), changed.shape)
    out["edit_on_object_fixed"] = share_inside(fixed, on_object)  # a paste that ignores motion, for scale
    footprint = atlas_footprint(bundle, rect)
    near_b = dilate(inverse_quads(bundle, rect), 8)
    known = near_b.any(axis=(1, 2))
    expected = erode(footprint, 1) & ~dilate(masks, 3)
    expected[known] &= near_b[known]  # drop stray uv far from where B puts the rect
    stats, ratio = presence(changed, expected, 0.25 * w * h, skip=(ref,))
    out.update(stats)
    worst["edit_shown_ratio"] = worst_frames(ratio)
    out["untouched"], changed_px = untouched_share(ours, bundle.frames, footprint, 3)
    out["untouched_changed_px"] = float(changed_px)
    del ours

    cover = largest_rect(erode(_roi_mask(bundle) & ~dilate(masks[ref], 4), 2), 4 / 3, max_height=height // 3)
    if cover is not None:
        cx, cy, cw, ch = cover
        solid = solid_rgba(cw, ch, far_colour(bundle.frames[ref, cy:cy + ch, cx:cx + cw]))
        shown = render_edit(bundle, [texture_op("cover", ref, solid, cover)], device)
        out["ref_cover"] = cover_share(shown[ref], bundle.frames[ref], solid, cover)
    return out, worst


def object_roi(mask: np.ndarray, ref_frame: int = 0) -> Roi:
    """The outline of the largest region of a (H, W) object mask as a one-polygon ROI."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise ValueError("the object mask is empty")
    largest = max(contours, key=cv2.contourArea)
    # Contour points are pixel indices; +0.5 puts them at pixel centres (vatlas.roi's convention).
    return Roi(ref_frame, [largest[:, 0, :].astype(np.float64) + 0.5])


def object_square(mask: np.ndarray, margin: int = 6) -> Rect | None:
    """An axis-aligned square well inside a (H, W) mask (``margin`` px clear), at its deepest point."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    depth = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    half = int((float(depth[y, x]) - margin) / math.sqrt(2.0))
    half = min(half, min(mask.shape) // 8)
    if half < 3:
        return None
    return int(x) - half, int(y) - half, 2 * half, 2 * half


def object_edit_metrics(bundle: Any, masks: np.ndarray, device: str = "auto") -> tuple[dict[str, float],
                                                                                     dict[str, list[list[float]]]]:
    """A bundle fitted with ``object_roi(masks[ref])``: an opaque square pasted well inside the object."""
    ref = bundle.ref_frame
    out: dict[str, float] = {}
    worst: dict[str, list[list[float]]] = {}
    rect = object_square(masks[ref])
    if rect is None:  # no square fits well inside: say so in every column rather than drop them
        return {k: math.nan for k in OBJECT_KEYS}, worst
    x, y, w, h = rect
    solid = solid_rgba(w, h, far_colour(bundle.frames[ref, y:y + h, x:x + w]))
    ours = render_edit(bundle, [texture_op("square", ref, solid, rect)], device)
    changed = changed_pixels(ours, bundle.frames)
    later = np.ones(bundle.num_frames, bool)
    later[ref] = False
    on_object = dilate(masks, 4)
    out["obj_ref_cover"] = cover_share(ours[ref], bundle.frames[ref], solid, rect)
    out["obj_on_object"] = share_inside(changed[later], on_object[later])
    fixed = np.broadcast_to(rect_mask(rect, bundle.height, bundle.width), changed[later].shape)
    out["obj_on_object_fixed"] = share_inside(fixed, on_object[later])
    area = changed.sum(axis=(1, 2)).astype(np.float64)
    ratio = area / area[ref] if area[ref] > 0 else np.full(bundle.num_frames, math.nan)
    out["obj_area_ratio_median"] = float(np.median(ratio[later])) if later.any() else math.nan
    on_share = np.array([share_inside(changed[t], on_object[t]) if later[t] else math.nan
                         for t in range(bundle.num_frames)])
    worst["obj_on_object"] = worst_frames(on_share)
    worst["obj_area_ratio"] = worst_frames(np.where(later, ratio, math.nan))
    return out, worst
