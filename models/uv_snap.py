"""Snap T to the checked reference matches at bake time: a smooth per-frame correction of the fitted uv.

The fit's T can sit a pixel or two off the reference correspondences it was given, and under a long, heavy
occlusion it can fork to a second copy of the surface tens of pixels away (issue 15: on the hard preset the
matches were right to 0.02-0.07 px on every frame while T was 1.6 px off, and 74 px off on frames 21-32).
An edit pasted on the reference frame lands where T says, so that error is the edit's error.

For each frame t, a match p -> q (FB- and NCC-checked, q in the reference ROI) says T(p, t) should equal
T(q, ref). The residual r(p) = T(q, ref) - T(p, t) is fitted by a bilinear grid of offsets (cells of `cell_px`
working pixels), with a membrane (first-difference) smoothness term, so a sparse, occluded frame is filled from its
visible part, and a Huber loss by iteratively reweighted least squares, so wrong matches are outvoted. The
bake adds the frame's field to T wherever it evaluates it (models/bake.py). The reference frame is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Mapping = Callable[[torch.Tensor], torch.Tensor]  # (N, 3) normalized xyt -> (N, 2) model uv


@dataclass
class UvSnap:
    """Per-frame uv offsets (model units) on a grid over the working frame; zero fields are no-ops."""

    fields: torch.Tensor  # (T, 2, gh, gw)
    width: int  # working frame size the grid covers
    height: int
    stats: dict[str, Any] = field(default_factory=dict)

    def at(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        """(N, 2) offsets at continuous working-pixel coordinates of frame t (bilinear, clamped at the edges)."""
        gx = (x / self.width * 2.0 - 1.0).clamp(-1.0, 1.0)
        gy = (y / self.height * 2.0 - 1.0).clamp(-1.0, 1.0)
        grid = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2).to(self.fields)
        out = F.grid_sample(self.fields[t:t + 1], grid, mode="bilinear", align_corners=True)
        return out[0, :, 0].transpose(0, 1).to(x.dtype)


def _bilinear_weights(x: torch.Tensor, y: torch.Tensor, width: int, height: int, gw: int, gh: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) node indices and weights of each point on a gw x gh grid whose corner nodes sit on the frame corners."""
    gx = (x / width * (gw - 1)).clamp(0, gw - 1)
    gy = (y / height * (gh - 1)).clamp(0, gh - 1)
    x0 = gx.floor().clamp(max=gw - 2)
    y0 = gy.floor().clamp(max=gh - 2)
    fx, fy = gx - x0, gy - y0
    i0 = (y0 * gw + x0).long()
    idx = torch.stack([i0, i0 + 1, i0 + gw, i0 + gw + 1], dim=1)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    return idx, w


def _membrane(gw: int, gh: int, device: torch.device) -> torch.Tensor:
    """(N, N) graph Laplacian of the 4-neighbour grid: sum over edges of (c_i - c_j)^2."""
    n = gw * gh
    lap = torch.zeros(n, n, dtype=torch.float64, device=device)
    ids = torch.arange(n, device=device).reshape(gh, gw)
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        a, b = a.reshape(-1), b.reshape(-1)
        lap[a, a] += 1
        lap[b, b] += 1
        lap[a, b] -= 1
        lap[b, a] -= 1
    return lap


def solve_field(idx: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, n: int, lap: torch.Tensor, *,
                smooth: float, huber: float, iters: int) -> torch.Tensor:
    """(n, 2) node offsets minimizing sum Huber(r - A c) + smooth * mean_weight * c^T L c (IRLS)."""
    a = w.double()
    r = residual.double()
    pair_i = idx[:, :, None].expand(-1, 4, 4).reshape(-1)
    pair_j = idx[:, None, :].expand(-1, 4, 4).reshape(-1)
    robust = torch.ones(r.shape[0], dtype=torch.float64, device=r.device)
    c = torch.zeros(n, 2, dtype=torch.float64, device=r.device)
    for _ in range(max(1, iters)):
        aw = a * robust[:, None]
        normal = torch.zeros(n * n, dtype=torch.float64, device=r.device)
        normal.index_add_(0, pair_i * n + pair_j, (aw[:, :, None] * a[:, None, :]).reshape(-1))
        normal = normal.reshape(n, n)
        rhs = torch.zeros(n, 2, dtype=torch.float64, device=r.device)
        rhs.index_add_(0, idx.reshape(-1), (aw[:, :, None] * r[:, None, :]).reshape(-1, 2))
        scale = float(robust.sum()) / n  # the smoothness holds its strength whatever the sample count
        system = normal + smooth * scale * lap + 1e-6 * scale * torch.eye(n, dtype=torch.float64, device=r.device)
        c = torch.linalg.solve(system, rhs)
        err = (r - (a[:, :, None] * c[idx]).sum(1)).norm(dim=-1)
        robust = torch.clamp(huber / err.clamp_min(1e-12), max=1.0)
    return c


@torch.no_grad()
def fit_uv_snap(mapping: Mapping, normalize_xyt: Callable[..., torch.Tensor], *, ref_flow: np.ndarray,
                ref_valid: np.ndarray, roi_mask: np.ndarray, ref_frame: int, atlas_span_px: float,
                device: torch.device | str = "cpu", cell_px: float = 24.0, stride: int = 2, smooth: float = 1.0,
                huber_px: float = 0.5, iters: int = 4, min_matches: int = 64, chunk: int = 1 << 16) -> UvSnap:
    """The per-frame corrections that bring T(p, t) onto T(q, ref) for the checked matches p -> q into the ROI.

    ref_flow (T, H, W, 2) and ref_valid (T, H, W) are the fit's reference correspondences at the working size,
    roi_mask (H, W) the reference ROI there; normalize_xyt(x, y, t) turns pixel centres and a frame index into
    the mapping's input."""
    device = torch.device(device)
    num, height, width = ref_valid.shape
    gw = max(2, math.ceil(width / cell_px) + 1)
    gh = max(2, math.ceil(height / cell_px) + 1)
    n = gw * gh
    lap = _membrane(gw, gh, device)
    half = atlas_span_px / 2.0
    fields = torch.zeros(num, 2, gh, gw, dtype=torch.float32, device=device)
    ys, xs = np.mgrid[0:height:stride, 0:width:stride]
    used: list[int] = []
    shifts: list[float] = []

    def evaluate(x: np.ndarray, y: np.ndarray, t: float) -> torch.Tensor:
        xt = torch.from_numpy(x.astype(np.float32)).to(device)
        yt = torch.from_numpy(y.astype(np.float32)).to(device)
        parts = [mapping(normalize_xyt(xt[s:s + chunk], yt[s:s + chunk], torch.full_like(xt[s:s + chunk], t)))
                 for s in range(0, xt.shape[0], chunk)]
        return torch.cat(parts).float()

    for t in range(num):
        if t == ref_frame:
            continue
        ok = ref_valid[t, ys, xs]
        px, py = xs[ok] + 0.5, ys[ok] + 0.5
        flow = ref_flow[t, ys[ok], xs[ok]]
        qx, qy = px + flow[:, 0], py + flow[:, 1]
        qi, qj = np.floor(qy).astype(np.int64), np.floor(qx).astype(np.int64)
        inside = (qi >= 0) & (qi < height) & (qj >= 0) & (qj < width)
        keep = np.zeros_like(inside)
        keep[inside] = roi_mask[qi[inside], qj[inside]]
        if keep.sum() < min_matches:
            continue
        px, py, qx, qy = px[keep], py[keep], qx[keep], qy[keep]
        residual = evaluate(qx, qy, float(ref_frame)) - evaluate(px, py, float(t))
        idx, w = _bilinear_weights(torch.from_numpy(px).to(device), torch.from_numpy(py).to(device),
                                   width, height, gw, gh)
        c = solve_field(idx, w, residual, n, lap, smooth=smooth, huber=huber_px / half, iters=iters)
        fields[t] = c.T.reshape(2, gh, gw).float()
        used.append(t)
        shifts.append(float(c.norm(dim=-1).median()) * half)
    stats = {"frames": len(used), "cell_px": cell_px,
             "shift_px_median": float(np.median(shifts)) if shifts else 0.0,
             "shift_px_max": float(np.max(shifts)) if shifts else 0.0}
    return UvSnap(fields, width, height, stats)
