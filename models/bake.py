"""Bake a fitted model into a Bundle: dense uv, soft mask, low-resolution illumination, atlas texture and
coverage, the inverse-map grid, plus the source reference, configuration and quality metrics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from vatlas.video import content_hash

from .bundle import Bundle, encode_uv
from .config import FitConfig
from .correspondence import Correspondences
from .footprint import clip_to_footprint, reference_coverage, roi_coverage
from .inverse_map import bake_inverse_map
from .matting import soft_masks
from .networks import RnaModel
from .visibility import evidence_visibility

if TYPE_CHECKING:
    from .fit import FitData


def _pixel_grid(width: int, height: int, sx: float, sy: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Continuous frame coords of the centres of a width x height grid covering the frame (scale sx, sy)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return ((xs.reshape(-1) + 0.5) * sx, (ys.reshape(-1) + 0.5) * sy)


@torch.no_grad()
def evaluate_frames(model: RnaModel, potential: np.ndarray, ref_frame: int, show_progress: bool = False
                    ) -> dict[str, np.ndarray]:
    """Per frame at full resolution: uv (T,H,W,2), mask gated by the potential footprint, shown = L*A(uv), and
    light_ratio = L(uv, t) / L(uv, ref) (float16), the re-lighting of the reference frame's colours."""
    cfg = model.cfg
    device = next(model.parameters()).device
    h, w, n = cfg.height, cfg.width, cfg.num_frames
    x, y = _pixel_grid(w, h, 1.0, 1.0, device)
    pot = torch.from_numpy(potential).to(device)
    size = pot.shape[0]
    uv_all = np.empty((n, h, w, 2), np.float32)
    mask_all = np.empty((n, h, w), np.float32)
    shown_all = np.empty((n, h, w, 3), np.float32)
    ratio_all = np.empty((n, h, w, 3), np.float16)
    t_ref = cfg.normalize_t(torch.tensor(float(ref_frame), device=device)).item()
    for t in tqdm(range(n), desc="bake", disable=not show_progress, leave=False):
        xyt = cfg.normalize_xyt(x, y, torch.full_like(x, float(t)))
        uv = model.mapping(xyt)
        ij = ((uv + 1.0) * 0.5 * size).floor().long().clamp(0, size - 1)
        alpha = model.mask(xyt) * pot[ij[:, 1], ij[:, 0]].float()
        light = model.illumination(uv, xyt[:, 2:3])
        shown = light * model.atlas(uv)
        light_ref = model.illumination(uv, torch.full_like(xyt[:, 2:3], t_ref))
        ratio_all[t] = (light / light_ref.clamp_min(1e-3)).clamp(0.1, 10.0).reshape(h, w, 3).cpu().numpy()
        uv_all[t] = uv.reshape(h, w, 2).cpu().numpy()
        mask_all[t] = alpha.reshape(h, w).cpu().numpy()
        shown_all[t] = shown.clamp(0, 1).reshape(h, w, 3).cpu().numpy()
    return {"uv": uv_all, "mask": mask_all, "shown": shown_all, "light_ratio": ratio_all}


@torch.no_grad()
def bake_illumination(model: RnaModel, downscale: int) -> np.ndarray:
    """(T, h, w, 3) float16 L at the centres of a grid `downscale` times coarser than the frame."""
    cfg = model.cfg
    device = next(model.parameters()).device
    lw, lh = max(1, math.ceil(cfg.width / downscale)), max(1, math.ceil(cfg.height / downscale))
    x, y = _pixel_grid(lw, lh, cfg.width / lw, cfg.height / lh, device)
    out = np.empty((cfg.num_frames, lh, lw, 3), np.float16)
    for t in range(cfg.num_frames):
        xyt = cfg.normalize_xyt(x, y, torch.full_like(x, float(t)))
        light = model.illumination(model.mapping(xyt), xyt[:, 2:3])
        out[t] = light.reshape(lh, lw, 3).cpu().numpy().astype(np.float16)
    return out


@torch.no_grad()
def bake_atlas(model: RnaModel, size: int, chunk: int = 1 << 18) -> np.ndarray:
    """(S, S, 3) uint8: A at texel centres (bundle uv convention)."""
    device = next(model.parameters()).device
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)
    rgb = torch.cat([model.atlas(uv[s:s + chunk]) for s in range(0, uv.shape[0], chunk)])
    return (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).reshape(size, size, 3).cpu().numpy()


def splat_coverage(uv: np.ndarray, visible: np.ndarray, size: int) -> np.ndarray:
    """(S, S) uint8 255 where some visible pixel's uv lands (holes from sparse sampling closed)."""
    pts = uv[visible]
    idx = np.clip(np.floor((pts + 1.0) * 0.5 * size).astype(np.int64), 0, size - 1)
    hits = np.bincount(idx[:, 1] * size + idx[:, 0], minlength=size * size).reshape(size, size) > 0
    cover = hits.astype(np.uint8) * 255
    # Neighbouring pixels land about one pixel's footprint apart in the atlas: close gaps of that width.
    # (A square kernel keeps this linear-time in OpenCV; large elliptic kernels took minutes.)
    radius = int(np.clip(np.ceil(_texels_per_pixel(uv, size)), 1, 64))
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.morphologyEx(cover, cv2.MORPH_CLOSE, kernel)


def _texels_per_pixel(uv: np.ndarray, size: int) -> float:
    """Median atlas distance (texels) between horizontally adjacent pixels of the first frame."""
    step = np.linalg.norm(uv[0, :, 1:] - uv[0, :, :-1], axis=-1) * 0.5 * size
    return float(np.median(step)) if step.size else 1.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _worst_frames(shown: np.ndarray, rgb: np.ndarray, visible: np.ndarray, count: int = 5
                  ) -> list[list[float]]:
    """[frame, PSNR, visible pixels] of the frames that fit worst (frames showing >= 1 % of the visible ROI)."""
    pixels = visible.reshape(visible.shape[0], -1).sum(1)
    floor = 0.01 * pixels.sum()
    rows = [[t, round(_psnr(shown[t][visible[t]], rgb[t][visible[t]]), 2), int(pixels[t])]
            for t in range(visible.shape[0]) if pixels[t] > 0 and pixels[t] >= floor]
    return sorted(rows, key=lambda row: row[1])[:count]


def bake_bundle(model: RnaModel, data: FitData, cfg: FitConfig, potential: np.ndarray, corr: Correspondences,
                *, show_progress: bool = False, best_psnr: float = float("nan")) -> Bundle:
    """Everything the render server needs, in one Bundle (see models/bundle.py for conventions)."""
    model.eval()
    fields = evaluate_frames(model, potential, data.ref_frame, show_progress)
    frames = data.frames_np
    visibility_stats: dict[str, float] = {}
    if cfg.visibility == "evidence":
        roi_cov = roi_coverage(fields["uv"], data.roi, model.cfg.atlas_span_px, model.cfg.width, model.cfg.height)
        flows = {"adj_fwd": corr.adj_fwd, "adj_fwd_valid": corr.adj_fwd_valid, "adj_bwd": corr.adj_bwd,
                 "adj_bwd_valid": corr.adj_bwd_valid} if frames.shape[0] > 1 else None
        soft, visibility_stats = evidence_visibility(frames, fields["uv"], roi_cov, fields["light_ratio"],
                                                     data.ref_frame, model.cfg.atlas_span_px, flows=flows,
                                                     reference_cover=reference_coverage(
                                                         data.roi, model.cfg.width, model.cfg.height))
    else:
        soft = soft_masks(frames, fields["mask"], method=cfg.matting, erode_iters=cfg.trimap_erode,
                          dilate_iters=cfg.trimap_dilate, radius=cfg.matting_radius, eps=cfg.matting_eps)
        if cfg.roi_border == "polygon":
            roi_cov = roi_coverage(fields["uv"], data.roi, model.cfg.atlas_span_px, model.cfg.width,
                                   model.cfg.height)
            soft = clip_to_footprint(soft, roi_cov)
    visible = soft >= 0.5
    coverage = splat_coverage(fields["uv"], visible, cfg.atlas_size)
    grid = cfg.inverse_grid
    domain = cv2.resize(coverage, (grid, grid), interpolation=cv2.INTER_NEAREST) > 0
    domain = cv2.dilate(domain.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    rgb = frames.astype(np.float32) / 255.0
    metrics: dict[str, Any] = {
        "roi_psnr": _psnr(fields["shown"][visible], rgb[visible]),
        "ref_roi_psnr": _psnr(fields["shown"][data.ref_frame][data.roi_mask], rgb[data.ref_frame][data.roi_mask]),
        "best_eval_psnr": best_psnr,
        "visible_fraction": float(visible.mean()),
        "roi_psnr_worst_frames": _worst_frames(fields["shown"], rgb, visible),
        "flow": dict(corr.stats),
        "visibility": {"method": cfg.visibility, **visibility_stats},
    }
    source = dict(data.source)
    source.setdefault("sha256", content_hash(frames))
    source.setdefault("size", [int(frames.shape[2]), int(frames.shape[1])])
    source.setdefault("frame_range", [0, int(frames.shape[0])])
    return Bundle(
        frames=frames,
        fps=data.fps,
        ref_frame=data.ref_frame,
        roi_polygons=data.roi.to_json()["polygons"],
        atlas=bake_atlas(model, cfg.atlas_size),
        atlas_coverage=coverage,
        uv=encode_uv(fields["uv"]),
        mask=np.clip(np.rint(soft * 255.0), 0, 255).astype(np.uint8),
        illumination=bake_illumination(model, cfg.illumination_downscale),
        inverse_map=bake_inverse_map(model, grid, domain=domain),
        atlas_span_px=float(model.cfg.atlas_span_px),
        source=source,
        config={**cfg.to_dict(), "network": model.cfg.to_dict()},
        metrics=metrics,
    )
