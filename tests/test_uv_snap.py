"""The bake-time snap of T onto the checked reference matches (models/uv_snap.py)."""

from __future__ import annotations

import numpy as np
import torch
from vatlas.models.uv_snap import UvSnap, fit_uv_snap

W, H, FRAMES, SPAN = 160, 96, 6, 200.0
HALF = SPAN / 2.0


def normalize_xyt(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.stack([(x - W / 2) / HALF, (y - H / 2) / HALF, t], dim=-1)


def true_ref_point(x: np.ndarray, y: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t pixel -> reference pixel: a pan with a slight zoom and rotation."""
    a = 0.01 * t
    s = 1.0 + 0.01 * t
    cx, cy = x - W / 2, y - H / 2
    return (s * (np.cos(a) * cx - np.sin(a) * cy) + W / 2 + 3.0 * t,
            s * (np.sin(a) * cx + np.cos(a) * cy) + H / 2 - 1.5 * t)


def fitted_error_px(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the 'fit' got wrong: a 1 px smooth bias everywhere, and a 40 px fork on frames 3 and 4."""
    bias = torch.stack([0.8 + 0.4 * x / W, -0.6 + 0.3 * y / H], dim=-1) * (t[:, None] > 0)
    fork = torch.tensor([40.0, -12.0]) * ((t == 3) | (t == 4))[:, None]
    return bias + fork


def mapping(xyt: torch.Tensor) -> torch.Tensor:
    x = xyt[:, 0].double() * HALF + W / 2
    y = xyt[:, 1].double() * HALF + H / 2
    t = xyt[:, 2].round().long()
    out = torch.empty(xyt.shape[0], 2, dtype=torch.float64)
    for k in t.unique().tolist():
        sel = t == k
        rx, ry = true_ref_point(x[sel].numpy(), y[sel].numpy(), k)
        out[sel] = torch.from_numpy(np.stack([rx, ry], -1))
    out = out + fitted_error_px(x, y, t).double()
    return ((out - torch.tensor([W / 2, H / 2], dtype=torch.float64)) / HALF).float()


def matches(outliers: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    flow = np.zeros((FRAMES, H, W, 2), np.float32)
    valid = np.ones((FRAMES, H, W), bool)
    for t in range(FRAMES):
        rx, ry = true_ref_point(xs, ys, t)
        flow[t] = np.stack([rx - xs, ry - ys], -1)
        wrong = rng.random((H, W)) < outliers
        flow[t][wrong] += rng.normal(0, 15, (int(wrong.sum()), 2)).astype(np.float32)
    valid[4, :, : W // 2] = False  # frame 4: half of it occluded, no matches there
    roi = np.zeros((H, W), bool)
    roi[8:H - 8, 8:W - 8] = True
    return flow, valid, roi


def corrected_error(snap: UvSnap, t: int) -> np.ndarray:
    ys, xs = np.mgrid[12:H - 12:3, 12:W - 12:3].astype(np.float32) + 0.5
    x, y = torch.from_numpy(xs.reshape(-1)), torch.from_numpy(ys.reshape(-1))
    xyt = normalize_xyt(x, y, torch.full_like(x, float(t)))
    uv = mapping(xyt) + snap.at(x, y, t)
    rx, ry = true_ref_point(xs.reshape(-1), ys.reshape(-1), t)
    ref_uv = mapping(normalize_xyt(torch.from_numpy(rx).float(), torch.from_numpy(ry).float(),
                                   torch.zeros(x.shape[0])))
    return ((uv - ref_uv).norm(dim=-1) * HALF).numpy()


def test_the_snap_removes_a_bias_and_a_fork() -> None:
    flow, valid, roi = matches()
    snap = fit_uv_snap(mapping, normalize_xyt, ref_flow=flow, ref_valid=valid, roi_mask=roi, ref_frame=0,
                       atlas_span_px=SPAN)
    assert snap.stats["frames"] == FRAMES - 1 and snap.stats["shift_px_max"] > 30
    assert not snap.fields[0].any()  # the reference frame is T's own definition of the atlas
    for t in range(1, FRAMES):
        err = corrected_error(snap, t)
        assert np.median(err) < 0.1 and np.percentile(err, 99) < 0.5, (t, np.median(err))


def test_wrong_matches_are_outvoted() -> None:
    flow, valid, roi = matches(outliers=0.2, seed=1)
    snap = fit_uv_snap(mapping, normalize_xyt, ref_flow=flow, ref_valid=valid, roi_mask=roi, ref_frame=0,
                       atlas_span_px=SPAN)
    for t in range(1, FRAMES):
        err = corrected_error(snap, t)
        assert np.median(err) < 0.2, (t, np.median(err))


def test_a_frame_without_matches_is_left_as_fitted() -> None:
    flow, valid, roi = matches()
    valid[2] = False
    snap = fit_uv_snap(mapping, normalize_xyt, ref_flow=flow, ref_valid=valid, roi_mask=roi, ref_frame=0,
                       atlas_span_px=SPAN)
    assert not snap.fields[2].any() and snap.stats["frames"] == FRAMES - 2
