"""Which ROI polygon (region) a point belongs to: each polygon marked on the reference frame is a region of its
own, 1-based in `Bundle.roi_polygons` order, and a point of any frame belongs to the region whose polygon holds its
atlas point T(p) (atlas points are reference-frame pixels)."""

from __future__ import annotations

import math

import numpy as np
from vatlas.models.bundle import Bundle, decode_uv

from vatlas.roi import Roi

_LABELS_ATTR = "_vatlas_region_labels"
MAX_REGIONS = 255  # labels are one byte


def _label_grid(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Every ROI polygon rasterised at one cell per reference-frame pixel over the atlas span (a later polygon
    wins where two overlap): (labels (n, n) uint8, the atlas point of cell (0, 0)'s corner)."""
    cached = getattr(bundle, _LABELS_ATTR, None)
    if cached is not None:
        return cached
    n = max(1, math.ceil(bundle.atlas_span_px))
    origin = np.array([bundle.width / 2.0, bundle.height / 2.0]) - bundle.atlas_span_px / 2.0
    polygons = [np.asarray(p, np.float64).reshape(-1, 2) - origin for p in bundle.roi_polygons[:MAX_REGIONS]]
    labels = Roi(0, polygons).label_mask(n, n)  # one cell per pixel, cell (0, 0) at the origin
    labels.setflags(write=False)
    setattr(bundle, _LABELS_ATTR, (labels, origin))
    return labels, origin


def region_count(bundle: Bundle) -> int:
    return min(len(bundle.roi_polygons), MAX_REGIONS)


def regions_at(bundle: Bundle, atlas_xy: np.ndarray) -> np.ndarray:
    """The ROI region (1-based polygon index, 0 for none) of atlas points (..., 2)."""
    labels, origin = _label_grid(bundle)
    idx = np.floor(np.asarray(atlas_xy, np.float64) - origin)
    idx = np.nan_to_num(idx, nan=-1.0)
    n = labels.shape[0]
    inside = (idx >= 0).all(axis=-1) & (idx < n).all(axis=-1)
    cols, rows = (np.clip(idx[..., i], 0, n - 1).astype(np.int64) for i in (0, 1))
    return np.where(inside, labels[rows, cols], 0).astype(np.uint8)


def frame_regions(bundle: Bundle, frame: int, xy: np.ndarray) -> np.ndarray:
    """The ROI region under frame pixels xy (..., 2) of `frame` (nearest baked uv)."""
    xy = np.asarray(xy, np.float64)
    cols = np.clip(np.floor(xy[..., 0]), 0, bundle.width - 1).astype(np.int64)
    rows = np.clip(np.floor(xy[..., 1]), 0, bundle.height - 1).astype(np.int64)
    return regions_at(bundle, bundle.uv_to_atlas(decode_uv(bundle.uv[frame][rows, cols])))
