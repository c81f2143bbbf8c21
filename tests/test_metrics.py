"""vatlas.metrics against values computed by hand."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from vatlas.metrics import (
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    binarize,
    iou,
    point_drift,
    psnr,
    ssim,
    union_error_shares,
)


def test_psnr_uint8_by_hand() -> None:
    a = np.zeros((2, 2), np.uint8)
    b = a.copy()
    b[0, 1] = 10
    # MSE = 100 / 4 = 25 -> 10 log10(255^2 / 25) = 10 log10(2601)
    assert psnr(a, b) == pytest.approx(10 * math.log10(2601))
    mask = np.array([[0, 1], [1, 0]])
    # Two pixels selected, one with error 10: MSE = 50.
    assert psnr(a, b, mask) == pytest.approx(10 * math.log10(65025 / 50))
    assert psnr(a, b, mask=np.array([[1, 0], [0, 0]])) == math.inf


def test_psnr_float_and_channels() -> None:
    a = np.full((4, 4, 3), 0.5)
    b = a + 0.1  # MSE 0.01 with data range 1 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, b, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))
    c = a.copy()
    c[..., 0] += 0.3  # only the first channel differs: MSE = 0.09 / 3 = 0.03
    mask = np.zeros((4, 4))
    mask[1:3, 1:3] = 1  # a mask without the channel axis applies to every channel
    assert psnr(a, c, mask) == pytest.approx(10 * math.log10(1 / 0.03))


def test_psnr_errors() -> None:
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="no pixel"):
        psnr(a, a, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mask shape"):
        psnr(a, a, np.ones((3, 3)))


def test_ssim_constants_by_hand() -> None:
    a = np.full((24, 24), 100, np.uint8)
    b = np.full((24, 24), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    # Constant images: zero variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_ramps_by_hand() -> None:
    # A ramp a = 0.2 + s x and its mirror b = 1 - a: inside the image the Gaussian window sees
    # mu = the ramp value, var_a = var_b = s^2 * sum_i g_i i^2, cov = -var.
    width, s = 48, 0.01
    xs = np.arange(width, dtype=np.float64)
    a = np.tile(0.2 + s * xs, (32, 1))
    b = 1.0 - a
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA)[:, 0]
    offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    var = s**2 * float(np.sum(kernel * offsets**2))
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = a, b
    expected_map = (2 * mu_a * mu_b + c1) * (-2 * var + c2) / ((mu_a**2 + mu_b**2 + c1) * (2 * var + c2))
    interior = np.zeros(a.shape, bool)
    r = SSIM_WINDOW // 2
    interior[r:-r, r:-r] = True
    assert ssim(a, b, interior) == pytest.approx(float(expected_map[interior].mean()), rel=1e-6)
    # Same ramp shifted in level: the structure term is 1, only luminance remains.
    shifted = a + 0.1
    expected_map = (2 * a * shifted + c1) / (a**2 + shifted**2 + c1)
    assert ssim(a, shifted, interior) == pytest.approx(float(expected_map[interior].mean()), rel=1e-6)


def test_ssim_mask_channels_and_batches() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, 16:] = 255 - b[:, 16:]
    left = np.zeros((32, 32), bool)
    left[:, :10] = True  # more than a window radius away from the changed half
    assert ssim(a, b, left) == pytest.approx(1.0)
    assert ssim(a, b) < 0.6
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    batch_a, batch_b = np.stack([a, a]), np.stack([a, b])
    both = ssim(batch_a, batch_b)
    assert both == pytest.approx((1.0 + ssim(a, b)) / 2)
    first_only = np.zeros((2, 32, 32), bool)
    first_only[0] = True
    assert ssim(batch_a, batch_b, first_only) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected"):
        ssim(np.zeros(5), np.zeros(5))


def test_iou_by_hand() -> None:
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 0], bool)
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    # Floats at 0.5, uint8 at 128 (half of 255), other integers above 0.
    assert binarize(np.array([0.5, 0.49])).tolist() == [True, False]
    assert binarize(np.array([128, 127], np.uint8)).tolist() == [True, False]
    assert binarize(np.array([2, 0], np.int32)).tolist() == [True, False]
    soft = np.array([0.9, 0.6, 0.2, 0.0])
    hard = np.array([255, 0, 200, 0], np.uint8)
    # soft -> [1, 1, 0, 0], hard -> [1, 0, 1, 0]: intersection 1, union 3.
    assert iou(soft, hard) == pytest.approx(1 / 3)
    # a = [1, 1, 0, 0] vs b = [0, 1, 1, 0]: one false positive and one false negative in a union of 3.
    assert union_error_shares(a, b) == pytest.approx((1 / 3, 1 / 3))
    assert union_error_shares(np.array([1, 1, 1, 0], bool), b) == pytest.approx((1 / 3, 0.0))
    assert union_error_shares(np.zeros(4, bool), np.zeros(4, bool)) == (0.0, 0.0)
    with pytest.raises(ValueError):
        union_error_shares(a, np.zeros(3, bool))


def test_point_drift_by_hand() -> None:
    p = np.array([[0.0, 0.0], [3.0, 4.0], [np.nan, 1.0], [1.0, 1.0]])
    q = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [7.0, 9.0]])
    # Distances 0, 5, (skipped), 10.
    drift = point_drift(p, q)
    assert drift == {"mean": 5.0, "median": 5.0, "max": 10.0, "count": 3}
    tracks = np.zeros((2, 3, 2))
    moved = tracks.copy()
    moved[1, :, 0] = [1.0, 2.0, 6.0]
    drift = point_drift(tracks, moved)
    assert drift["mean"] == pytest.approx(9 / 6) and drift["median"] == 0.5 and drift["max"] == 6.0
    empty = point_drift(np.full((2, 2), np.nan), np.zeros((2, 2)))
    assert empty["count"] == 0 and math.isnan(empty["mean"])
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        point_drift(np.zeros((3, 3)), np.zeros((3, 3)))
