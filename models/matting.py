"""Soft ROI mask (RNA 3.4): trimap from the refined hard mask by erosion/dilation, then matting in the band.

The offline default is a guided filter (He et al.) guided by the frame; a learned matting model (ViTMatte in RNA)
can be registered with `register_matting` and selected by FitConfig.matting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

# A matting function: (frame (H, W, 3) uint8, trimap (H, W) float32 in {0, 0.5, 1}, hard mask float32) -> alpha
MattingFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

_KERNEL = np.ones((3, 3), np.uint8)


def trimap(mask: np.ndarray, *, erode_iters: int = 2, dilate_iters: int = 1) -> np.ndarray:
    """(H, W) mask in [0, 1] -> trimap: 1 sure ROI, 0 sure not, 0.5 unknown.

    As in RNA the mask is inverted first (occluder/outside = 1): the unknown band reaches `erode_iters`
    pixels into the occluder side and `dilate_iters` pixels into the ROI side.
    """
    outside = (np.asarray(mask) < 0.5).astype(np.uint8)
    sure_outside = cv2.erode(outside, _KERNEL, iterations=erode_iters) if erode_iters else outside
    maybe_outside = cv2.dilate(outside, _KERNEL, iterations=dilate_iters) if dilate_iters else outside
    tri = np.full(outside.shape, 0.5, np.float32)
    tri[maybe_outside == 0] = 1.0
    tri[sure_outside == 1] = 0.0
    return tri


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour-guided filter of a single-channel `src` (He et al. 2010); guide (H, W, 3) float32 in [0, 1]."""
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i = box(guide)
    mean_p = box(src)
    cov_ip = box(guide * src[..., None]) - mean_i * mean_p[..., None]
    # 3x3 covariance of the guide per pixel
    var = np.empty(guide.shape[:2] + (3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            v = box(guide[..., a] * guide[..., b]) - mean_i[..., a] * mean_i[..., b]
            var[..., a, b] = v
            var[..., b, a] = v
    var += eps * np.eye(3, dtype=np.float32)
    coef = np.linalg.solve(var, cov_ip[..., None])[..., 0]
    offset = mean_p - (coef * mean_i).sum(-1)
    return (box(coef) * guide).sum(-1) + box(offset)


def guided_matting(frame: np.ndarray, tri: np.ndarray, hard: np.ndarray, *, radius: int = 4,
                   eps: float = 1e-3) -> np.ndarray:
    """Alpha in the unknown band from a guided filter of the hard mask; known regions keep the trimap."""
    guide = frame.astype(np.float32) / 255.0
    soft = np.clip(guided_filter(guide, hard.astype(np.float32), radius, eps), 0.0, 1.0)
    return np.where(tri == 0.5, soft, tri).astype(np.float32)


_MATTING: dict[str, MattingFn] = {"guided": guided_matting}


def register_matting(name: str, fn: MattingFn) -> None:
    """Make a matting method (e.g. a learned one) selectable by name."""
    _MATTING[name] = fn


def soft_masks(frames: np.ndarray, masks: np.ndarray, *, method: str = "guided", erode_iters: int = 2,
               dilate_iters: int = 1, **kwargs: float) -> np.ndarray:
    """(T, H, W) refined masks in [0, 1] -> (T, H, W) float32 soft masks."""
    if method not in _MATTING:
        raise ValueError(f"unknown matting method {method!r} (registered: {', '.join(sorted(_MATTING))})")
    fn = _MATTING[method]
    out = np.empty(masks.shape, np.float32)

    def one(t: int) -> None:
        hard = (masks[t] >= 0.5).astype(np.float32)
        tri = trimap(hard, erode_iters=erode_iters, dilate_iters=dilate_iters)
        out[t] = fn(frames[t], tri, hard, **kwargs) if method == "guided" else fn(frames[t], tri, hard)

    # frames are independent and OpenCV/LAPACK release the GIL
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        list(pool.map(one, range(masks.shape[0])))
    return out
