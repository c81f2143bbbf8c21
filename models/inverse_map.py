"""INVE's inverse map B(u, v, t) -> (x, y): trained on forward-map samples, baked to a G x G grid per frame."""

from __future__ import annotations

import numpy as np
import torch

from .networks import RnaModel
from .uv_snap import UvSnap


def inverse_loss(model: RnaModel, uv: torch.Tensor, t_n: torch.Tensor, xy_n: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between B(T(p), t) and p (normalized coords), optionally weighted; uv comes from a frozen T."""
    err = (model.inverse(uv.detach(), t_n) - xy_n).abs().sum(-1)
    return (err * weight).mean() if weight is not None else err.mean()


def grid_uv(grid: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(G*G, 2) uv of cell centres, row-major with row i following v (bundle convention)."""
    centres = (torch.arange(grid, dtype=torch.float32, device=device) + 0.5) / grid * 2.0 - 1.0
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


@torch.no_grad()
def bake_inverse_map(model: RnaModel, grid: int, *, domain: np.ndarray | None = None, cycle_px: float = 2.0,
                     uv_to_model: tuple[float, float] = (1.0, 1.0), xy_scale: tuple[float, float] = (1.0, 1.0),
                     chunk: int = 1 << 16, snap: UvSnap | None = None, snap_steps: int = 3) -> np.ndarray:
    """(T, G, G, 2) float32 frame pixels (x, y) of B at the grid's uv; NaN outside the fitted domain.

    A cell is in the domain for frame t when B lands inside the frame, T(B(uv, t), t) returns to uv within
    `cycle_px` reference pixels (B is only trusted where it inverts T), and `domain[i, j]` (an atlas-space
    footprint at G x G, if given) is set. uv_to_model and xy_scale carry a bundle delivered at another size
    than the fit's (models/bake.py Delivery): the grid's uv times uv_to_model is the model's, and the frame
    pixels come back times xy_scale. With a snap (models/uv_snap.py) B inverts T plus its correction c: the
    fixed point of p = B(uv - c(p)), a few steps from B(uv) since c is smooth and small against T's scale.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    uv = grid_uv(grid, device) * torch.tensor(uv_to_model, device=device)
    half = cfg.atlas_span_px / 2.0
    out = np.empty((cfg.num_frames, grid, grid, 2), np.float32)
    for t in range(cfg.num_frames):
        t_n = cfg.normalize_t(torch.tensor(float(t)))
        xy_parts = []
        ok_parts = []
        for start in range(0, uv.shape[0], chunk):
            part = uv[start:start + chunk]
            xy_n = model.inverse(part, t_n.to(device))
            for _ in range(snap_steps if snap is not None else 0):
                xy = cfg.denormalize_xy(xy_n)
                xy_n = model.inverse(part - snap.at(xy[:, 0], xy[:, 1], t), t_n.to(device))
            back = model.mapping(torch.cat([xy_n, t_n.to(device).expand(part.shape[0], 1)], dim=1))
            xy = cfg.denormalize_xy(xy_n)
            if snap is not None:
                back = back + snap.at(xy[:, 0], xy[:, 1], t)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] <= cfg.width) & (xy[:, 1] >= 0) & (xy[:, 1] <= cfg.height)
            cycle = (back - part).norm(dim=-1) * half < cycle_px
            xy_parts.append(xy)
            ok_parts.append(inside & cycle)
        xy = torch.cat(xy_parts).cpu().numpy().reshape(grid, grid, 2) * np.asarray(xy_scale, np.float32)
        ok = torch.cat(ok_parts).cpu().numpy().reshape(grid, grid)
        if domain is not None:
            ok &= domain
        xy[~ok] = np.nan
        out[t] = xy
    return out
