"""Per-frame visibility of the ROI surface, decided from the evidence in each frame (RNA 3.3's occlusion test).

A pixel shows the ROI's surface when T maps it inside the ROI's footprint *and* the surface explains its colour
and its motion there:

* appearance: the reference frame (where the user marked the ROI, so the surface is uncovered there) warped
  through T, re-lit by the fitted illumination ratio L(uv, t) / L(uv, ref) and a smooth local gain, is compared
  with the frame over small patches, at the best of a few sub-pixel shifts (so T's sub-pixel error does not
  read as occlusion);
* motion: where the adjacent optical flow is forward-backward consistent, the frame's pixel and its flow target
  in the neighbour frame must map to the same atlas point; an occluder moves with itself, not with the surface.

Each frame is judged on its own evidence: nothing is inherited from earlier frames, the learned mask M or the
chained flows' initial masks, so a surface an occluder has uncovered shows again at once. On the reference frame
the ROI is, by definition, the visible surface. The boundary is then refined per pixel in a thin band and matted
there (models/matting.py).

The model's own reconstruction L * A(T(p)) is not used: a fit can absorb a slow, wide occluder into the atlas,
and the occlusion test would then pass it (docs/BENCHMARKS.md, sixth session).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from .footprint import sample_reference
from .matting import guided_matting, trimap

# sub-pixel shifts (px) of the warped reference tried per patch: T's residual error is ~0.3-0.6 px
_SHIFTS = tuple((dx, dy) for dy in (-0.75, 0.0, 0.75) for dx in (-0.75, 0.0, 0.75))


@dataclass(frozen=True)
class VisibilitySettings:
    """Thresholds of the occlusion test (colours in [0, 1], distances in working pixels)."""

    tau: float = 0.05  # patch mean abs colour residual above which a pixel is occluded (raised to the clip's noise)
    noise_factor: float = 2.5  # tau >= noise_factor x the clip's 30th-percentile residual inside the footprint
    patch: int = 5  # side of the residual's averaging patch
    pixel_tau: float = 0.04  # per-pixel residual that decides the boundary band
    motion_px: float = 1.0  # atlas disagreement along the flow (px) that marks occlusion...
    motion_support: float = 0.4  # ...where the colour residual is at least this fraction of tau
    motion_strong_px: float = 8.0  # atlas disagreement that marks occlusion whatever the colours say (3 and 5 px cost
    # 0.4 and 0.3 % IoU on hard synthetic scenes through flow errors, 8 px nothing; a passing car moves more)
    gain_sigma: float = 8.0  # px: the smooth local gain that absorbs illumination the fitted L missed
    # the local gain is re-estimated gain_rounds times, the trusted set growing each round by the pixels that now
    # agree within grow x tau, and texture down to structure_std counts as structure: with an L that missed the
    # shadow (hard preset, 384x216, 70 frames, seeds 100-102) pooled IoU 0.929/0.923/0.874 -> 0.968/0.940/0.944,
    # within 0.0012 of before where L was right (docs/BENCHMARKS.md)
    gain_rounds: int = 3
    grow: float = 0.5
    structure_std: float = 0.01
    # px: the finer gain measured on the pixels finally called visible, which re-lights edits (hard preset, exact
    # geometry and visibility, one L gain per frame: a logo at 43.6 dB with 8 px, 48.1 with 3 px, 49.8 with 1.5)
    light_sigma: float = 3.0
    matting_radius: int = 2
    matting_eps: float = 1e-3


def appearance_residual(frame: np.ndarray, reference: np.ndarray, uv: np.ndarray, gain: np.ndarray, span: float,
                        patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(patch residual, per-pixel residual at the patch's best shift), both (H, W) float32 mean abs colour."""
    h, w = frame.shape[:2]
    best_patch: np.ndarray | None = None
    best_pixel: np.ndarray | None = None
    for shift in _SHIFTS:
        predicted = sample_reference(reference, uv, span, w, h, shift) * gain
        pixel = np.abs(frame - predicted).mean(-1)
        local = cv2.blur(pixel, (patch, patch))
        if best_patch is None or best_pixel is None:
            best_patch, best_pixel = local, pixel
            continue
        better = local < best_patch
        best_patch = np.where(better, local, best_patch)
        best_pixel = np.where(better, pixel, best_pixel)
    assert best_patch is not None and best_pixel is not None
    return best_patch, best_pixel


def motion_residual(uv: np.ndarray, uv_next: np.ndarray, flow: np.ndarray, valid: np.ndarray, span: float
                    ) -> np.ndarray:
    """(H, W) px between T(p) and T at p's flow target in the neighbour frame; NaN where the flow is not valid."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    target = cv2.remap(uv_next.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan))
    dist = np.linalg.norm(target - uv, axis=-1) * (span / 2.0)
    return np.where(valid, dist, np.nan).astype(np.float32)


def structure_agrees(frame: np.ndarray, predicted: np.ndarray, size: int = 7, min_ncc: float = 0.8,
                     min_std: float = 0.02) -> np.ndarray:
    """(H, W) bool: the local luma patterns correlate (normalized cross-correlation, blind to gain and offset)."""
    a = frame.mean(-1)
    b = predicted.mean(-1)
    k = (size, size)
    ma, mb = cv2.blur(a, k), cv2.blur(b, k)
    va = cv2.blur(a * a, k) - ma * ma
    vb = cv2.blur(b * b, k) - mb * mb
    cov = cv2.blur(a * b, k) - ma * mb
    textured = (va > min_std ** 2) & (vb > min_std ** 2)
    ncc = cov / np.sqrt(np.maximum(va * vb, 1e-12))
    return textured & (ncc >= min_ncc)


def _local_gain(frame: np.ndarray, predicted: np.ndarray, trusted: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth per-pixel colour gain frame / predicted over trusted pixels (normalized convolution at sigma, and
    at 4 sigma where trusted pixels are sparse, e.g. inside a wide shadow), in [0.5, 2]."""
    weight = trusted.astype(np.float32)
    gain = np.ones_like(frame)
    for scale in (4.0 * sigma, sigma):  # the finer estimate overrides where it has support
        num = cv2.GaussianBlur(frame * weight[..., None], (0, 0), scale)
        den = cv2.GaussianBlur(predicted * weight[..., None], (0, 0), scale)
        support = cv2.GaussianBlur(weight, (0, 0), scale)[..., None]
        gain = np.where((support > 0.05) & (den > 1e-3), num / np.maximum(den, 1e-3), gain)
    return np.clip(gain, 0.5, 2.0).astype(np.float32)


@dataclass
class FrameEvidence:
    """Inputs of one frame's occlusion test."""

    frame: np.ndarray  # (H, W, 3) float32 in [0, 1]
    uv: np.ndarray  # (H, W, 2)
    light_ratio: np.ndarray  # (H, W, 3) L(uv, t) / L(uv, ref)
    motion: np.ndarray | None  # (H, W) px, NaN where unknown (the smaller of the two neighbours)


def _robust_gain(frame: np.ndarray, predicted: np.ndarray, select: np.ndarray) -> np.ndarray:
    """(3,) median colour ratio frame / predicted over selected pixels (1 where too few)."""
    ok = select & (predicted.min(-1) > 0.03)
    if ok.sum() < 64:
        return np.ones(3, np.float32)
    return np.clip(np.median(frame[ok] / predicted[ok], axis=0), 0.5, 2.0).astype(np.float32)


def corrected_residuals(ev: FrameEvidence, reference: np.ndarray, span: float, tau: float, footprint: np.ndarray,
                        s: VisibilitySettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patch residual, per-pixel residual, extra gain) after re-lighting the reference by L's ratio, a per-frame
    colour gain and a smooth local gain, each estimated from the pixels that already agree (illumination the
    fitted L missed: a global gain change, a soft shadow). The extra gain (H, W, 3) is those two gains' product:
    the light the evidence measured beyond L's ratio."""
    h, w = ev.frame.shape[:2]
    warped = sample_reference(reference, ev.uv, span, w, h)
    patch_res, _ = appearance_residual(ev.frame, reference, ev.uv, ev.light_ratio, span, s.patch)
    agree = footprint & (patch_res < 2.0 * tau)
    # more than half of the footprint may be covered: take the gain from the pixels that nearly agree
    select = agree if agree.sum() >= 0.05 * max(int(footprint.sum()), 1) else footprint
    extra = np.broadcast_to(_robust_gain(ev.frame, warped * ev.light_ratio, select), ev.frame.shape)
    gain = ev.light_ratio * extra
    patch_res, _ = appearance_residual(ev.frame, reference, ev.uv, gain, span, s.patch)
    # trusted: colours agree, or (under light the gains missed) the local patterns still correlate
    trusted = footprint & ((patch_res < tau) | structure_agrees(ev.frame, warped * gain, min_std=s.structure_std))
    base = extra
    for _ in range(max(1, s.gain_rounds)):
        # each round the trusted set grows into a shadow's penumbra, as far as the light there is smooth
        extra = base * _local_gain(ev.frame, warped * ev.light_ratio * base, trusted, s.gain_sigma)
        patch_res, pixel_res = appearance_residual(ev.frame, reference, ev.uv, ev.light_ratio * extra, span,
                                                   s.patch)
        trusted = footprint & ((patch_res < s.grow * tau) | trusted)
    return patch_res, pixel_res, extra.astype(np.float32)


def frame_occlusion(ev: FrameEvidence, reference: np.ndarray, span: float, tau: float, footprint: np.ndarray,
                    s: VisibilitySettings) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool: the pixel does not show the surface that T maps it to; and the extra gain (see
    corrected_residuals)."""
    patch_res, pixel_res, extra = corrected_residuals(ev, reference, span, tau, footprint, s)
    occluded = patch_res >= tau
    if ev.motion is not None:
        moving = cv2.medianBlur(np.nan_to_num(ev.motion, nan=0.0), 5)
        # an occluder moves with itself, not with the surface: a large disagreement decides alone (an
        # occluder the re-lighting explains, e.g. a dark car on asphalt), a small one with some colour support
        occluded |= moving > s.motion_strong_px
        occluded |= (moving > s.motion_px) & (patch_res >= s.motion_support * tau)
    # the patch average spreads an occluder's residual by patch/2 px: decide that band pixel by pixel
    kernel = np.ones((s.patch, s.patch), np.uint8)
    occ8 = occluded.astype(np.uint8)
    band = (cv2.dilate(occ8, kernel) > 0) & ~(cv2.erode(occ8, kernel) > 0)
    occluded = np.where(band, (pixel_res >= s.pixel_tau) & (cv2.dilate(occ8, kernel) > 0), occluded)
    occ8 = cv2.morphologyEx(occluded.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    occ8 = cv2.morphologyEx(occ8, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    occluded = occ8 > 0
    # the light, measured again where the surface is now known to show (off its edge, where mattes blend)
    shows = cv2.erode((footprint & ~occluded).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    h, w = ev.frame.shape[:2]
    predicted = sample_reference(reference, ev.uv, span, w, h) * ev.light_ratio * extra
    return occluded, extra * _local_gain(ev.frame, predicted, shows, s.light_sigma)


def clip_noise(residuals: list[np.ndarray], footprints: list[np.ndarray]) -> float:
    """The clip's residual floor: the 30th percentile of the patch residual inside the ROI footprint."""
    values = [r[f] for r, f in zip(residuals, footprints, strict=True) if f.any()]
    return float(np.percentile(np.concatenate(values), 30)) if values else 0.0


def evidence_visibility(frames: np.ndarray, uv: np.ndarray, coverage: np.ndarray, light_ratio: np.ndarray,
                        ref_frame: int, span: float, *, reference_cover: np.ndarray | None = None,
                        flows: dict[str, np.ndarray] | None = None, settings: VisibilitySettings | None = None,
                        light_gain: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """(T, H, W) float32 soft visibility in [0, 1] and stats.

    frames (T, H, W, 3) uint8, uv (T, H, W, 2), coverage (T, H, W) the ROI footprint (polygon at T(p)),
    light_ratio (T, H, W, 3) L(uv, t) / L(uv, ref); reference_cover (H, W): the ROI's own coverage of the
    reference frame's pixels (default: coverage[ref_frame], which goes through T); flows (optional): adj_fwd, adj_fwd_valid, adj_bwd,
    adj_bwd_valid as in models/correspondence.py. light_gain (T, h, w, 3) float32, if given, is filled with each
    frame's extra gain at its own size (area-averaged; 1 on the reference frame): the bake multiplies the
    illumination by it, so an edit is re-lit by the light measured in the frame, not only by the fitted L.
    """
    s = settings or VisibilitySettings()
    n, h, w = frames.shape[:3]
    reference = frames[ref_frame].astype(np.float32) / 255.0
    footprints = [coverage[t] >= 0.5 for t in range(n)]
    threads = min(os.cpu_count() or 1, 16)

    def as_float(t: int) -> np.ndarray:
        return frames[t].astype(np.float32) / 255.0

    def noise_sample(t: int) -> np.ndarray:
        ev = FrameEvidence(as_float(t), uv[t], light_ratio[t].astype(np.float32), None)
        return corrected_residuals(ev, reference, span, s.tau, footprints[t], s)[0]

    sample = sorted(set(np.linspace(0, n - 1, min(n, 12)).round().astype(int).tolist()) - {ref_frame})
    with ThreadPoolExecutor(max_workers=threads) as pool:
        residuals = list(pool.map(noise_sample, sample))
    noise = clip_noise(residuals, [footprints[t] for t in sample])
    tau = max(s.tau, s.noise_factor * noise)

    def motion(t: int) -> np.ndarray | None:
        if flows is None or n < 2:
            return None
        parts = []
        if t < n - 1:
            parts.append(motion_residual(uv[t], uv[t + 1], flows["adj_fwd"][t], flows["adj_fwd_valid"][t], span))
        if t > 0:
            parts.append(motion_residual(uv[t], uv[t - 1], flows["adj_bwd"][t - 1], flows["adj_bwd_valid"][t - 1],
                                         span))
        stack = np.stack(parts)
        known = np.isfinite(stack)
        # the smaller disagreement: a pixel about to be covered (or just uncovered) agrees with one neighbour
        return np.where(known.any(0), np.nanmin(np.where(known, stack, np.inf), axis=0), np.nan).astype(np.float32)

    out = np.empty((n, h, w), np.float32)
    occluded_share = np.zeros(n, np.float64)

    def one(t: int) -> None:
        if t == ref_frame:
            # the user marked the ROI on this frame: it is the visible surface, whatever T's error
            out[t] = np.clip(coverage[t] if reference_cover is None else reference_cover, 0.0, 1.0)
            if light_gain is not None:
                light_gain[t] = 1.0
            return
        ev = FrameEvidence(as_float(t), uv[t], light_ratio[t].astype(np.float32), motion(t))
        occluded, extra = frame_occlusion(ev, reference, span, tau, footprints[t], s)
        if light_gain is not None:
            light_gain[t] = cv2.resize(extra, (light_gain.shape[2], light_gain.shape[1]), interpolation=cv2.INTER_AREA)
        visible = (~occluded).astype(np.float32)
        # a thin soft edge along the occluder, aligned with the frame's colour edges
        tri = trimap(visible, erode_iters=1, dilate_iters=1)
        soft = guided_matting(frames[t], tri, visible, radius=s.matting_radius, eps=s.matting_eps)
        out[t] = np.clip(coverage[t] * soft, 0.0, 1.0)
        if footprints[t].any():
            occluded_share[t] = float(occluded[footprints[t]].mean())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(n)))
    return out, {"tau": round(tau, 4), "noise": round(noise, 4),
                 "occluded_share_mean": round(float(occluded_share.mean()), 4)}
