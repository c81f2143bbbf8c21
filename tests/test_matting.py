"""Soft mask: trimap geometry and guided-filter matting."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from vatlas.models import matting


def test_trimap_band_reaches_two_pixels_into_the_occluder_and_one_into_the_roi():
    mask = np.ones((20, 20), np.float32)
    mask[:, 10:] = 0.0  # columns 10.. are occluded
    tri = matting.trimap(mask, erode_iters=2, dilate_iters=1)
    row = tri[10]
    assert row[:9].tolist() == [1.0] * 9
    assert row[9:12].tolist() == [0.5] * 3
    assert row[12:].tolist() == [0.0] * 8


def _soft_edge_scene() -> tuple[np.ndarray, np.ndarray]:
    """A frame whose true ROI alpha has a 4-pixel-wide linear ramp (a blurred occluder edge)."""
    h, w = 32, 48
    alpha = np.clip((np.arange(w) - 20.0) / 4.0, 0.0, 1.0)[None, :].repeat(h, 0).astype(np.float32)
    roi_colour, occluder = np.array([40, 200, 60], np.float32), np.array([220, 30, 200], np.float32)
    frame = alpha[..., None] * roi_colour + (1 - alpha[..., None]) * occluder
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8), alpha


def test_guided_matting_recovers_a_soft_edge_better_than_the_hard_mask():
    frame, alpha = _soft_edge_scene()
    hard = (alpha >= 0.5).astype(np.float32)
    soft = matting.soft_masks(frame[None], hard[None], erode_iters=3, dilate_iters=3, radius=4, eps=1e-4)[0]
    band = (alpha > 0) & (alpha < 1)
    assert np.abs(soft - alpha)[band].mean() < 0.5 * np.abs(hard - alpha)[band].mean()
    tri = matting.trimap(hard, erode_iters=3, dilate_iters=3)
    assert (soft[tri == 1.0] == 1.0).all() and (soft[tri == 0.0] == 0.0).all()
    assert soft.min() >= 0.0 and soft.max() <= 1.0


def test_matting_is_pluggable():
    frame, alpha = _soft_edge_scene()
    seen = []

    def blur_matting(img, tri, hard):
        seen.append(img.shape)
        return np.where(tri == 0.5, cv2.GaussianBlur(hard, (5, 5), 0), tri).astype(np.float32)

    matting.register_matting("blur", blur_matting)
    out = matting.soft_masks(frame[None], (alpha >= 0.5)[None].astype(np.float32), method="blur")
    assert seen == [frame.shape] and out.shape == (1, 32, 48)
    with pytest.raises(ValueError, match="unknown matting method"):
        matting.soft_masks(frame[None], alpha[None], method="vitmatte-missing")


def _reference_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s filter with a batched np.linalg.solve over the whole image (the textbook form)."""
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src[..., None]) - mean_i * mean_p[..., None]
    var = np.stack([np.stack([box(guide[..., a] * guide[..., b]) - mean_i[..., a] * mean_i[..., b]
                              for b in range(3)], -1) for a in range(3)], -2) + eps * np.eye(3, dtype=np.float32)
    coef = np.linalg.solve(var.astype(np.float64), cov_ip[..., None].astype(np.float64))[..., 0]
    offset = mean_p - (coef * mean_i).sum(-1)
    return (box(coef.astype(np.float32)) * guide).sum(-1) + box(offset.astype(np.float32))


def test_band_only_closed_form_matting_equals_the_whole_frame_textbook_filter():
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), (0, 0), 2)
    hard = np.zeros((60, 90), np.float32)
    cv2.circle(hard, (30, 40), 14, 1.0, -1)
    tri = matting.trimap(hard)
    ours = matting.guided_matting(frame, tri, hard, radius=4, eps=1e-3)
    soft = np.clip(_reference_guided_filter(frame.astype(np.float32) / 255.0, hard, 4, 1e-3), 0, 1)
    expected = np.where(tri == 0.5, soft, tri)
    assert np.abs(ours - expected).max() < 1e-3
    # a frame without an unknown band is returned as its trimap, untouched
    empty = np.zeros_like(hard)
    assert (matting.guided_matting(frame, matting.trimap(empty), empty) == 0.0).all()
