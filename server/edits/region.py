"""The editable region: where a bundle's ROI surface is visible on each frame, and whether an op lands on it.

A pixel is in the region on frame t when the soft mask there is at least one half (`VISIBLE`); an atlas-space
op lands on the region where the atlas is covered. An op whose footprint (stroke or brush path with its width,
texture or sticker rectangle, adjustment polygon) touches no such pixel is refused with one plain sentence,
`OUTSIDE_REGION`, the same for every tool and every door. Clients see the region as per-frame bounding boxes
(BundleInfo.roi) and a coarse per-frame mask (RenderedFrame.roi_mask).

Each ROI polygon is a region of its own (1-based, in BundleInfo.roi.polygons order): a point of any frame
belongs to the region whose reference-frame polygon holds its atlas point T(p). An op with `roi_region` k is
placed only where it touches region k and drawn only on it; the coarse mask says which region each cell shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from vatlas.models.bundle import Bundle
from vatlas.server.edits.layers import DEFAULT_STROKE_WIDTH
from vatlas.server.edits.ops import decode_image
from vatlas.server.edits.raster import rotation_matrix
from vatlas.server.edits.roi_labels import frame_regions, region_count, regions_at
from vatlas.server.errors import CoreError

from vatlas.errors import OUTSIDE_REGION

VISIBLE = 128  # soft mask (0..255) from which a pixel counts as showing the region
MAX_MASK_SIDE = 256  # longest side of a RoiMask a client may ask for
MAX_CHECK_PIXELS = 1 << 20  # the footprint test looks at no more cells than this (coarser for huge ops)
_BOXES_ATTR = "_vatlas_visible_boxes"


def outside_region(op_id: str = "") -> CoreError:
    """The refusal of an op that lies entirely outside the editable region (OUT_OF_RANGE, plain words)."""
    return CoreError("OUT_OF_RANGE", OUTSIDE_REGION, op_id)


def visible_boxes(bundle: Bundle) -> np.ndarray:
    """(T, 4) int [x, y, w, h] of each frame's visible pixels (all zero where none); computed once per bundle."""
    cached = getattr(bundle, _BOXES_ATTR, None)
    if cached is not None:
        return cached
    boxes = np.zeros((bundle.num_frames, 4), dtype=np.int64)
    for t in range(bundle.num_frames):
        boxes[t] = _box(bundle.mask[t] >= VISIBLE)
    boxes.setflags(write=False)
    setattr(bundle, _BOXES_ATTR, boxes)
    return boxes


def _box(visible: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_preview(bundle: Bundle, frame: int, side: int) -> tuple[int, int, bytes]:
    """Frame `frame`'s soft mask averaged down so its long side is at most `side` cells: (w, h, bytes)."""
    side = max(1, min(int(side), MAX_MASK_SIDE))
    h, w = bundle.height, bundle.width
    k = min(1.0, side / max(h, w))
    size = (max(1, round(w * k)), max(1, round(h * k)))
    small = cv2.resize(bundle.mask[frame], size, interpolation=cv2.INTER_AREA) if k < 1.0 else bundle.mask[frame]
    return size[0], size[1], np.ascontiguousarray(small, dtype=np.uint8).tobytes()


def mask_regions(bundle: Bundle, frame: int, width: int, height: int, cells: bytes) -> bytes:
    """RoiMask.regions: the region each cell of a (width x height) coarse mask shows (0 where it shows none);
    empty when the ROI is one region."""
    if region_count(bundle) < 2:
        return b""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    xy = np.stack([xs * bundle.width / width, ys * bundle.height / height], axis=-1)
    labels = frame_regions(bundle, frame, xy)
    shows = np.frombuffer(cells, np.uint8).reshape(height, width) > 0
    return np.where(shows, labels, 0).astype(np.uint8).tobytes()


def check_roi_region(bundle: Bundle, op: dict[str, Any]) -> int:
    """The op's `roi_region` (0: the whole ROI); INVALID_ARGUMENT when the ROI has no such region."""
    region = int(op.get("roi_region", 0))
    count = region_count(bundle)
    if region > count:
        raise CoreError("INVALID_ARGUMENT", f"roi_region {region} does not exist: the ROI has {count} "
                      f"region{'s' if count != 1 else ''} (1..{count}, or 0 for all)", op.get("id", ""))
    return region


def check_on_region(bundle: Bundle, op: dict[str, Any]) -> None:
    """Raise `outside_region` when an object op's footprint touches no visible pixel of its frame (frame
    space) or no covered atlas texel (atlas space), of its `roi_region` when it names one."""
    region = check_roi_region(bundle, op)
    if op.get("space", "frame") == "atlas":
        grid = bundle.atlas_coverage
        k = bundle.atlas_size / bundle.atlas_span_px  # reference-frame pixels -> atlas texels
        offset = np.array([bundle.atlas_size / 2.0 - bundle.width / 2.0 * k,
                           bundle.atlas_size / 2.0 - bundle.height / 2.0 * k])
        threshold = 1

        def labels(centres: np.ndarray) -> np.ndarray:
            return regions_at(bundle, (centres - offset) / k)
    else:
        frame = int(op["frame"])
        grid, k, offset, threshold = bundle.mask[frame], 1.0, np.zeros(2), VISIBLE

        def labels(centres: np.ndarray) -> np.ndarray:
            return frame_regions(bundle, frame, centres)
    shapes = [(pts * k + offset, width * k, closed) for pts, width, closed in _footprint(op)]
    if not _touches(grid, shapes, threshold, (region, labels) if region else None):
        raise outside_region(op.get("id", ""))


def _footprint(op: dict[str, Any]) -> list[tuple[np.ndarray, float, bool]]:
    """The op's footprint as (points (n, 2), line width, filled polygon?) pieces in its space's pixels."""
    kind = op["type"]
    if kind == "stroke" or (kind == "adjustment" and op.get("region", "polygon") == "path"):
        return [(np.asarray(op["points"], np.float64), float(op.get("width", DEFAULT_STROKE_WIDTH)), False)]
    if kind == "adjustment":
        return [(np.asarray(op["points"], np.float64), 0.0, True)]
    if kind == "texture" and op.get("space", "frame") == "frame":
        x, y, w, h = (float(v) for v in op["rect"])
        centre, size = np.array([x + w / 2, y + h / 2]), np.array([w, h])
    else:  # a sticker, or a texture in atlas space: an image of `size` (or its own) times scale, about position
        rgba = decode_image(op["image"], op_id=op.get("id", ""))
        size = np.asarray(op.get("size", [rgba.shape[1], rgba.shape[0]]), np.float64) * float(op.get("scale", 1.0))
        centre = np.asarray(op["position"], np.float64)
    corners = (np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * size) @ rotation_matrix(
        float(op.get("rotation", 0.0))).T
    return [(corners + centre, 0.0, True)]


def _touches(grid: np.ndarray, shapes: list[tuple[np.ndarray, float, bool]], threshold: int,
             only: tuple[int, Callable[[np.ndarray], np.ndarray]] | None = None) -> bool:
    """Whether the shapes cover any cell of grid (H, W) at or above threshold; with `only` = (region, labels of
    cell centres), only cells of that ROI region count (labelled over the shapes' box alone)."""
    pts = np.concatenate([p for p, _, _ in shapes])
    reach = max(w for _, w, _ in shapes) / 2.0 + 1.0
    x0, y0 = (max(int(math.floor(v - reach)), 0) for v in pts.min(axis=0))
    x1, y1 = int(math.ceil(pts[:, 0].max() + reach)) + 1, int(math.ceil(pts[:, 1].max() + reach)) + 1
    x1, y1 = min(x1, grid.shape[1]), min(y1, grid.shape[0])
    if x1 <= x0 or y1 <= y0:
        return False
    crop = grid[y0:y1, x0:x1]
    if only is not None:
        region, labels = only
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
        crop = np.where(labels(np.stack([xs, ys], -1)) == region, crop, 0)
    f = max(1, math.ceil(math.sqrt(crop.size / MAX_CHECK_PIXELS)))
    if f > 1:  # any visible cell of an f x f block keeps the block (a thin visible sliver is not lost)
        hh, ww = math.ceil(crop.shape[0] / f) * f, math.ceil(crop.shape[1] / f) * f
        padded = np.zeros((hh, ww), crop.dtype)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        crop = padded.reshape(hh // f, f, ww // f, f).max(axis=(1, 3))
    canvas = np.zeros(crop.shape, np.uint8)
    shift = 4  # cv2's fixed-point sub-pixel bits
    for p, width, closed in shapes:
        q = np.round((p - [x0, y0]) / f * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
        if closed and len(p) >= 3:
            cv2.fillPoly(canvas, [q], 1, lineType=cv2.LINE_8, shift=shift)
        thickness = max(1, int(round(width / f)))
        if len(p) == 1:
            cv2.circle(canvas, tuple(int(v) for v in q[0, 0]), max(1, thickness // 2) << shift, 1, -1, shift=shift)
        else:
            cv2.polylines(canvas, [q], closed, 1, thickness=thickness, lineType=cv2.LINE_8, shift=shift)
    return bool(((canvas > 0) & (crop >= threshold)).any())
