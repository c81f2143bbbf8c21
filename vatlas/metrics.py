"""Image and tracking quality metrics used by tests, fit reports and benchmarks.

* ``psnr(a, b, mask=None, data_range=None) -> float`` in dB over the pixels where ``mask > 0`` (all channels);
  ``data_range`` defaults to 255 for uint8 inputs and 1.0 for floats; ``inf`` when the images agree exactly.
* ``ssim(a, b, mask=None, data_range=None) -> float``: SSIM of Wang et al. (2004): Gaussian window
  (sigma 1.5, 11 x 11), K1 = 0.01, K2 = 0.03, computed per channel, averaged over the pixels where
  ``mask > 0``. Accepts (H, W), (H, W, C) or (T, H, W, C) with a mask of the leading shape (H, W) / (T, H, W).
* ``iou(a, b) -> float`` of two masks after binarization: bool as is, floats ``>= 0.5``, uint8 ``>= 128``
  (i.e. 0.5 of 255), other integers ``> 0``. Two empty masks agree perfectly: 1.0.
* ``point_drift(p, q) -> dict``: Euclidean distances between matching (..., 2) points in pixels; points with a
  NaN coordinate in either array are skipped. Returns ``{"mean", "median", "max", "count"}`` (NaN, 0 if none).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _range(a: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    return 255.0 if a.dtype == np.uint8 else 1.0


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _pixel_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask broadcast to ``shape`` (a mask may leave out the channel axis)."""
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask) > 0
    if mask.shape != shape:
        if mask.shape != shape[: mask.ndim]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
        mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)
    if not mask.any():
        raise ValueError("mask selects no pixel")
    return mask


def psnr(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None
) -> float:
    """Peak signal-to-noise ratio in dB over the masked pixels."""
    a, b = _check_pair(a, b)
    selected = _pixel_mask(mask, a.shape)
    diff = a.astype(np.float64)[selected] - b.astype(np.float64)[selected]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_range(a, data_range) ** 2 / mse)


def _ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Per-pixel SSIM of two (H, W) float64 images."""

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(
            x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, sigmaY=SSIM_SIGMA, borderType=cv2.BORDER_REFLECT
        )

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float | None = None
) -> float:
    """Structural similarity, averaged over masked pixels and channels."""
    a, b = _check_pair(a, b)
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"expected (H, W), (H, W, C) or (T, H, W, C) images, got shape {a.shape}")
    value_range = _range(a, data_range)
    images_a = a.reshape((-1,) + a.shape[-3:]) if a.ndim == 4 else a.reshape((1,) + a.shape[:2] + (-1,))
    images_b = b.reshape(images_a.shape)
    maps = np.empty(images_a.shape, np.float64)
    for k in range(images_a.shape[0]):
        for c in range(images_a.shape[3]):
            maps[k, ..., c] = _ssim_map(
                images_a[k, ..., c].astype(np.float64), images_b[k, ..., c].astype(np.float64), value_range
            )
    selected = _pixel_mask(mask, a.shape)
    return float(maps.reshape(a.shape)[selected].mean())


def binarize(mask: np.ndarray) -> np.ndarray:
    """bool as is; floats >= 0.5; uint8 >= 128; other integers > 0."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask >= 0.5
    if mask.dtype == np.uint8:
        return mask >= 128
    return mask > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (binarized as in ``binarize``)."""
    a, b = _check_pair(binarize(a), binarize(b))
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def union_error_shares(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Where ``iou`` loses: (pred and not truth, truth and not pred) as shares of the union; IoU = 1 - both."""
    pred, truth = _check_pair(binarize(pred), binarize(truth))
    union = max(int(np.count_nonzero(pred | truth)), 1)
    return np.count_nonzero(pred & ~truth) / union, np.count_nonzero(truth & ~pred) / union


def point_drift(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Mean, median and max Euclidean distance (px) between matching points, ignoring NaN points."""
    p, q = _check_pair(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
    if p.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    distance = np.linalg.norm(p - q, axis=-1).ravel()
    distance = distance[np.isfinite(distance)]
    if distance.size == 0:
        return {"mean": math.nan, "median": math.nan, "max": math.nan, "count": 0}
    return {
        "mean": float(distance.mean()),
        "median": float(np.median(distance)),
        "max": float(distance.max()),
        "count": int(distance.size),
    }
