"""Soft ROI mask (RNA 3.4): trimap from the refined hard mask by erosion/dilation, then matting in the band.

The offline default is a guided filter (He et al.) guided by the frame; a learned matting model (ViTMatte in RNA)
can be registered with `register_matting` and selected by FitConfig.bake.matting.
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
    # 3x3 symmetric covariance of the guide per pixel (+ eps I), solved in closed form (adjugate / det):
    # several times faster than a batched np.linalg.solve
    def cov(a: int, b: int) -> np.ndarray:
        return box(guide[..., a] * guide[..., b]) - mean_i[..., a] * mean_i[..., b] + (eps if a == b else 0.0)

    s00, s01, s02, s11, s12, s22 = cov(0, 0), cov(0, 1), cov(0, 2), cov(1, 1), cov(1, 2), cov(2, 2)
    i00 = s11 * s22 - s12 * s12
    i01 = s02 * s12 - s01 * s22
    i02 = s01 * s12 - s02 * s11
    i11 = s00 * s22 - s02 * s02
    i12 = s01 * s02 - s00 * s12
    i22 = s00 * s11 - s01 * s01
    det = s00 * i00 + s01 * i01 + s02 * i02
    c0, c1, c2 = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    coef = np.stack([i00 * c0 + i01 * c1 + i02 * c2,
                     i01 * c0 + i11 * c1 + i12 * c2,
                     i02 * c0 + i12 * c1 + i22 * c2], axis=-1) / det[..., None]
    offset = mean_p - (coef * mean_i).sum(-1)
    return (box(coef) * guide).sum(-1) + box(offset)


def guided_matting(frame: np.ndarray, tri: np.ndarray, hard: np.ndarray, *, radius: int = 4,
                   eps: float = 1e-3) -> np.ndarray:
    """Alpha in the unknown band from a guided filter of the hard mask; known regions keep the trimap.

    Only the band's bounding box (plus the filter's 2r support) is filtered: the result is the same as
    filtering the whole frame, and frames without a band cost nothing.
    """
    out = tri.astype(np.float32)
    unknown = tri == 0.5
    if not unknown.any():
        return out
    ys, xs = np.nonzero(unknown)
    pad = 2 * radius + 1
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, tri.shape[0])
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, tri.shape[1])
    guide = frame[y0:y1, x0:x1].astype(np.float32) / 255.0
    soft = np.clip(guided_filter(guide, hard[y0:y1, x0:x1].astype(np.float32), radius, eps), 0.0, 1.0)
    window = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = np.where(unknown[y0:y1, x0:x1], soft, window)
    return out


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
