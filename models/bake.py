"""Bake a fitted model into a Bundle: dense uv, soft mask, low-resolution illumination, atlas texture and
coverage, the inverse-map grid, plus the source reference, configuration and quality metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from .uv_snap import UvSnap, fit_uv_snap
from .visibility import evidence_visibility

if TYPE_CHECKING:
    from .prepare import FitData


@dataclass(frozen=True)
class Delivery:
    """The bundle's pixel grid (the source's, by default) against the fit's working grid.

    The bundle's uv convention (models/bundle.py) is tied to its own frame size: x = W/2 + u * span/2 and
    y = H/2 + v * span/2 with one span. With sx, sy source pixels per working pixel, u is the model's u and
    the span scales by sx; v scales by k = sy / sx (1 up to the rounding of the working size).
    """

    width: int
    height: int
    sx: float = 1.0
    sy: float = 1.0

    @classmethod
    def of(cls, model_cfg: Any, width: int | None = None, height: int | None = None) -> Delivery:
        w, h = width or model_cfg.width, height or model_cfg.height
        return cls(int(w), int(h), w / model_cfg.width, h / model_cfg.height)

    @property
    def k(self) -> float:
        return self.sy / self.sx

    def span(self, model_span: float) -> float:
        return model_span * self.sx

    def to_model(self, uv: torch.Tensor) -> torch.Tensor:
        return uv if self.k == 1.0 else uv * uv.new_tensor([1.0, 1.0 / self.k])

    def from_model(self, uv: torch.Tensor) -> torch.Tensor:
        return uv if self.k == 1.0 else uv * uv.new_tensor([1.0, self.k])


def _pixel_grid(width: int, height: int, sx: float, sy: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Continuous frame coords of the centres of a width x height grid covering the frame (scale sx, sy)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return ((xs.reshape(-1) + 0.5) * sx, (ys.reshape(-1) + 0.5) * sy)


@torch.no_grad()
def evaluate_frames(model: RnaModel, potential: np.ndarray, ref_frame: int, delivery: Delivery | None = None,
                    show_progress: bool = False, snap: UvSnap | None = None) -> dict[str, np.ndarray]:
    """Per frame at the delivery size: uv (T,H,W,2, bundle convention), M gated by the potential footprint,
    shown = L*A(uv) (uint8), and light_ratio = L(uv, t) / L(uv, ref) (float16), the re-lighting of the
    reference frame's colours. The continuous networks are evaluated at the delivery's pixel centres, T plus
    the snap's correction (models/uv_snap.py) where one is given."""
    cfg = model.cfg
    out = delivery or Delivery.of(cfg)
    device = next(model.parameters()).device
    h, w, n = out.height, out.width, cfg.num_frames
    x, y = _pixel_grid(w, h, 1.0 / out.sx, 1.0 / out.sy, device)
    pot = torch.from_numpy(potential).to(device)
    size = pot.shape[0]
    uv_all = np.empty((n, h, w, 2), np.float32)
    mask_all = np.empty((n, h, w), np.float32)
    shown_all = np.empty((n, h, w, 3), np.uint8)
    ratio_all = np.empty((n, h, w, 3), np.float16)
    t_ref = cfg.normalize_t(torch.tensor(float(ref_frame), device=device)).item()
    for t in tqdm(range(n), desc="bake", disable=not show_progress, leave=False):
        xyt = cfg.normalize_xyt(x, y, torch.full_like(x, float(t)))
        uv = model.mapping(xyt)
        if snap is not None:
            uv = uv + snap.at(x, y, t)
        ij = ((uv + 1.0) * 0.5 * size).floor().long().clamp(0, size - 1)
        alpha = model.mask(xyt) * pot[ij[:, 1], ij[:, 0]].float()
        light = model.illumination(uv, xyt[:, 2:3])
        shown = light * model.atlas(uv)
        light_ref = model.illumination(uv, torch.full_like(xyt[:, 2:3], t_ref))
        ratio_all[t] = (light / light_ref.clamp_min(1e-3)).clamp(0.1, 10.0).reshape(h, w, 3).cpu().numpy()
        uv_all[t] = out.from_model(uv).reshape(h, w, 2).cpu().numpy()
        mask_all[t] = alpha.reshape(h, w).cpu().numpy()
        shown_all[t] = (shown.clamp(0, 1) * 255.0).round().to(torch.uint8).reshape(h, w, 3).cpu().numpy()
    return {"uv": uv_all, "mask": mask_all, "shown": shown_all, "light_ratio": ratio_all}


@torch.no_grad()
def bake_illumination(model: RnaModel, downscale: int, delivery: Delivery | None = None,
                      snap: UvSnap | None = None) -> np.ndarray:
    """(T, h, w, 3) float16 L at the centres of a grid `downscale` times coarser than the delivered frame."""
    cfg = model.cfg
    out_size = delivery or Delivery.of(cfg)
    device = next(model.parameters()).device
    lw, lh = max(1, math.ceil(out_size.width / downscale)), max(1, math.ceil(out_size.height / downscale))
    x, y = _pixel_grid(lw, lh, cfg.width / lw, cfg.height / lh, device)
    out = np.empty((cfg.num_frames, lh, lw, 3), np.float16)
    for t in range(cfg.num_frames):
        xyt = cfg.normalize_xyt(x, y, torch.full_like(x, float(t)))
        uv = model.mapping(xyt)
        if snap is not None:
            uv = uv + snap.at(x, y, t)
        light = model.illumination(uv, xyt[:, 2:3])
        out[t] = light.reshape(lh, lw, 3).cpu().numpy().astype(np.float16)
    return out


@torch.no_grad()
def bake_atlas(model: RnaModel, size: int, delivery: Delivery | None = None, chunk: int = 1 << 18) -> np.ndarray:
    """(S, S, 3) uint8: A at texel centres (bundle uv convention)."""
    out = delivery or Delivery.of(model.cfg)
    device = next(model.parameters()).device
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    uv = out.to_model(torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1))
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
    """(shown and rgb uint8) [frame, PSNR, visible pixels] of the frames that fit worst (frames showing >= 1 % of the visible ROI)."""
    pixels = visible.reshape(visible.shape[0], -1).sum(1)
    floor = 0.01 * pixels.sum()
    rows = [[t, round(_psnr(shown[t][visible[t]] / 255.0, rgb[t][visible[t]] / 255.0), 2), int(pixels[t])]
            for t in range(visible.shape[0]) if pixels[t] > 0 and pixels[t] >= floor]
    return sorted(rows, key=lambda row: row[1])[:count]


def upsample_flows(corr: Correspondences, delivery: Delivery) -> dict[str, np.ndarray] | None:
    """The adjacent flows and their validity at the delivery size (vectors scaled), for the motion test."""
    if corr.adj_fwd.shape[0] == 0:
        return None
    if delivery.sx == 1.0 and delivery.sy == 1.0:
        return {"adj_fwd": corr.adj_fwd, "adj_fwd_valid": corr.adj_fwd_valid, "adj_bwd": corr.adj_bwd,
                "adj_bwd_valid": corr.adj_bwd_valid}
    size = (delivery.width, delivery.height)
    scale = np.array([delivery.sx, delivery.sy], np.float32)

    def vectors(flows: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(f.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) * scale
                         for f in flows])

    def masks(valid: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(v.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for v in valid])

    return {"adj_fwd": vectors(corr.adj_fwd), "adj_fwd_valid": masks(corr.adj_fwd_valid),
            "adj_bwd": vectors(corr.adj_bwd), "adj_bwd_valid": masks(corr.adj_bwd_valid)}


def delivery_atlas_size(configured: int, span: float, limit: int = 4096) -> int:
    """The configured atlas size, doubled until a texel is at most 0.6 delivered pixels, capped at `limit`.

    Edits are resampled twice (image to atlas, atlas to frame): at 0.94 px per texel an image pasted on a
    768x432 frame came back at 33 dB on that frame with exact geometry, at 0.47 px at 39.9 dB.
    """
    size = configured
    while size < limit and span / size > 0.6:
        size *= 2
    return size


def bake_bundle(model: RnaModel, data: FitData, cfg: FitConfig, potential: np.ndarray, corr: Correspondences,
                *, show_progress: bool = False, best_psnr: float = float("nan")) -> Bundle:
    """Everything the render server needs, in one Bundle (see models/bundle.py for conventions).

    The bundle is at the source's size when the data carries source frames (fit small, deliver at full size):
    every field is evaluated at source pixel centres and the visibility is decided on the source frames.
    """
    model.eval()
    frames = data.delivered_frames
    roi = data.delivered_roi
    delivery = Delivery.of(model.cfg, frames.shape[2], frames.shape[1])
    span = delivery.span(model.cfg.atlas_span_px)
    width, height = delivery.width, delivery.height
    snap = None
    if cfg.bake.uv_snap and data.frames_np.shape[0] > 1:
        net = model.cfg
        snap = fit_uv_snap(model.mapping, net.normalize_xyt, ref_flow=corr.ref_flow, ref_valid=corr.ref_valid,
                           roi_mask=data.roi_mask, ref_frame=data.ref_frame, atlas_span_px=net.atlas_span_px,
                           device=next(model.parameters()).device)
    fields = evaluate_frames(model, potential, data.ref_frame, delivery, show_progress, snap)
    visibility_stats: dict[str, float] = {}
    illumination = bake_illumination(model, cfg.bake.illumination_downscale, delivery, snap)
    if cfg.bake.visibility == "evidence":
        roi_cov = roi_coverage(fields["uv"], roi, span, width, height)
        gain = np.ones(illumination.shape, np.float32) if cfg.bake.measured_light else None
        soft, visibility_stats = evidence_visibility(
            frames, fields["uv"], roi_cov, fields["light_ratio"], data.ref_frame, span,
            flows=upsample_flows(corr, delivery), reference_cover=reference_coverage(roi, width, height),
            light_gain=gain)
        if gain is not None:
            illumination = (illumination.astype(np.float32) * gain).astype(np.float16)
    else:
        soft = soft_masks(frames, fields["mask"], method=cfg.bake.matting, erode_iters=cfg.bake.trimap_erode,
                          dilate_iters=cfg.bake.trimap_dilate, radius=cfg.bake.matting_radius, eps=cfg.bake.matting_eps)
        if cfg.bake.roi_border == "polygon":
            soft = clip_to_footprint(soft, roi_coverage(fields["uv"], roi, span, width, height))
    del fields["light_ratio"]
    visible = soft >= 0.5
    atlas_size = delivery_atlas_size(cfg.bake.atlas_size, span)
    coverage = splat_coverage(fields["uv"], visible, atlas_size)
    grid = cfg.bake.inverse_grid
    domain = cv2.resize(coverage, (grid, grid), interpolation=cv2.INTER_NEAREST) > 0
    domain = cv2.dilate(domain.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    roi_mask = roi.mask(height, width)
    metrics: dict[str, Any] = {
        "roi_psnr": _psnr(fields["shown"][visible] / 255.0, frames[visible] / 255.0),
        "ref_roi_psnr": _psnr(fields["shown"][data.ref_frame][roi_mask] / 255.0,
                              frames[data.ref_frame][roi_mask] / 255.0),
        "best_eval_psnr": best_psnr,
        "visible_fraction": float(visible.mean()),
        "roi_psnr_worst_frames": _worst_frames(fields["shown"], frames, visible),
        "flow": dict(corr.stats),
        "visibility": {"method": cfg.bake.visibility, **visibility_stats},
        "working_size": [model.cfg.width, model.cfg.height],
        "uv_snap": snap.stats if snap is not None else None,
    }
    source = dict(data.source)
    source.setdefault("sha256", content_hash(frames))
    source.setdefault("size", [width, height])
    source.setdefault("frame_range", [0, int(frames.shape[0])])
    return Bundle(
        frames=frames,
        fps=data.fps,
        ref_frame=data.ref_frame,
        roi_polygons=roi.to_json()["polygons"],
        atlas=bake_atlas(model, atlas_size, delivery),
        atlas_coverage=coverage,
        uv=encode_uv(fields["uv"]),
        mask=np.clip(np.rint(soft * 255.0), 0, 255).astype(np.uint8),
        illumination=illumination,
        inverse_map=bake_inverse_map(model, grid, domain=domain, uv_to_model=(1.0, 1.0 / delivery.k),
                                     xy_scale=(delivery.sx, delivery.sy), snap=snap),
        atlas_span_px=float(span),
        source=source,
        config={**cfg.to_dict(), "model": model.cfg.to_dict()},  # FitConfig.from_bundle reads it back
        metrics=metrics,
    )
