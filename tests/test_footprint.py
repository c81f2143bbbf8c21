"""The ROI footprint from uv and the polygon, checked against the synthetic scenes' exact visibility."""

from __future__ import annotations

import cv2
import numpy as np
from vatlas.models.footprint import clip_to_footprint, reference_coverage, roi_coverage

from vatlas import metrics
from vatlas.roi import Roi
from vatlas.synth import make_scene


def test_reference_coverage_is_the_polygon_with_fractional_edges():
    roi = Roi(0, [np.array([[10.25, 5.0], [30.75, 5.0], [30.75, 20.5], [10.25, 20.5]])])
    cov = reference_coverage(roi, 40, 30)
    assert cov[10, 20] == 1.0 and cov[0, 0] == 0.0
    # the left edge at x = 10.25 cuts pixel 10 (spanning 10..11) leaving 3/4 of it inside
    assert abs(cov[10, 10] - 0.75) < 0.07
    assert abs(cov.sum() - 20.5 * 15.5) < 5.0  # fillPoly's inclusive edges: ~1/16 px outward
    assert ((cov >= 0.5) == roi.mask(30, 40)).mean() > 0.99


def test_coverage_through_the_true_uv_matches_the_scene_visibility():
    scene = make_scene(frames=8, size=(128, 72), seed=5, occluders=0, lighting=False)
    cov = roi_coverage(scene.gt_uv, scene.roi, scene.atlas_span_px, scene.width, scene.height)
    assert metrics.iou(cov >= 0.5, scene.gt_visibility >= 0.5) > 0.97
    assert np.abs(cov - scene.gt_visibility).mean() < 0.01


def test_clipping_a_blurred_mask_restores_the_border_and_keeps_occlusion():
    scene = make_scene(frames=8, size=(128, 72), seed=6, occluders=2, lighting=False)
    truth = scene.gt_visibility
    # M's typical failure: its border is blurred and leaks ~2 px outside the ROI
    blurred = np.stack([np.clip(cv2.GaussianBlur(v, (0, 0), 1.5) * 1.8, 0, 1) for v in truth])
    cov = roi_coverage(scene.gt_uv, scene.roi, scene.atlas_span_px, scene.width, scene.height)
    clipped = clip_to_footprint(blurred, cov)
    before = metrics.iou(blurred >= 0.5, truth >= 0.5)
    after = metrics.iou(clipped >= 0.5, truth >= 0.5)
    assert after > before + 0.03 and after > 0.9
    # occluded pixels well inside the ROI stay hidden
    inner = (cov == 1.0) & (truth < 0.05)
    inner &= np.stack([cv2.erode((t < 0.05).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for t in truth])
    assert inner.any() and (clipped[inner] < 0.5).all()
