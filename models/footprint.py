"""The ROI's footprint in every frame, from the fitted uv: where the marked surface is, occluded or not.

M learns visibility and the ROI border together, and its hash grid blurs that border by about a pixel. The
border is known exactly once T is: a pixel shows the ROI surface when its reference-frame point T(p) lies in
the user's polygon. The baked mask therefore takes the border from the polygon (anti-aliased) and only the
occlusion from M.
"""

from __future__ import annotations

import cv2
import numpy as np

from vatlas.roi import Roi

SUPERSAMPLE = 8  # sub-pixel steps per reference pixel when the polygon is rasterized (fillPoly is inclusive:
# edges grow by half a step, 1/16 px here)
_SHIFT = 8  # fillPoly fixed-point bits


def reference_coverage(roi: Roi, width: int, height: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the fraction of each reference-frame pixel covered by the ROI."""
    if roi.raster is not None:
        return roi.mask(height, width).astype(np.float32)
    big = np.zeros((height * supersample, width * supersample), np.uint8)
    for poly in roi.polygons:
        # continuous coords: pixel centres at +0.5, so sub-pixel centre k sits at (k + 0.5) / supersample
        pts = np.rint((poly * supersample - 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(big, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    small = cv2.resize(big.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(small, 0.0, 1.0)


def sample_reference(image: np.ndarray, uv: np.ndarray, span: float, width: int, height: int,
                     shift: tuple[float, float] = (0.0, 0.0), border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Bilinear lookup of a reference-frame image at atlas points uv (bundle convention), optionally shifted (px)."""
    half = span / 2.0
    map_x = (uv[..., 0] * half + width / 2.0 - 0.5 + shift[0]).astype(np.float32)
    map_y = (uv[..., 1] * half + height / 2.0 - 0.5 + shift[1]).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border)


def roi_coverage(uv: np.ndarray, roi: Roi, span: float, width: int, height: int) -> np.ndarray:
    """(T, H, W) float32: ROI coverage at each pixel's reference point T(p) (uv in bundle convention)."""
    ref = reference_coverage(roi, width, height)
    out = np.empty(uv.shape[:3], np.float32)
    for t in range(uv.shape[0]):
        out[t] = sample_reference(ref, uv[t], span, width, height, border=cv2.BORDER_CONSTANT)
    return out


def clip_to_footprint(soft: np.ndarray, coverage: np.ndarray, band: int = 3) -> np.ndarray:
    """(T, H, W) soft mask whose ROI border comes from `coverage` and whose occlusion comes from `soft`.

    Within `band` pixels of the footprint border M's value mixes occlusion with its own blurred border, so
    the occlusion there is extended from the footprint's interior (normalized convolution) before it is
    multiplied by the coverage.
    """
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    out = np.empty(soft.shape, np.float32)
    for t in range(soft.shape[0]):
        inside = (coverage[t] >= 0.5).astype(np.uint8)
        interior = cv2.erode(inside, kernel) > 0
        weight = interior.astype(np.float32)
        num = cv2.GaussianBlur(soft[t] * weight, (0, 0), band)
        den = cv2.GaussianBlur(weight, (0, 0), band)
        filled = np.where(den > 1e-3, num / np.maximum(den, 1e-3), soft[t])
        occlusion = np.where(interior, soft[t], filled)
        out[t] = np.clip(coverage[t] * occlusion, 0.0, 1.0)
    return out
