"""Fit benchmark: synthetic scenes and real clips, from frames to bundle, with quality metrics.

Per clip: stage times, total seconds, peak GPU memory, ROI PSNR, visibility-mask IoU, tracked-point drift
through the inverse map, and (synthetic scenes) edit fidelity against the scene's exact edited render.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

DEFAULT_CLIPS = ("blackswan", "libby", "car-shadow", "bmx-trees", "camel")
# the team checkout keeps the real clips in ../shared/data beside it (VATLAS_SHARED_DATA overrides)
DATA_DIR = Path(os.environ.get("VATLAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def checker_rgba(size: tuple[int, int] = (24, 16), cell: int = 4) -> np.ndarray:
    """A harsh test edit: opaque two-colour checkerboard (4 px cells) with a half-transparent corner."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    board = ((xs // cell + ys // cell) % 2).astype(bool)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[board] = (230, 40, 40, 255)
    rgba[~board] = (30, 60, 220, 255)
    rgba[: h // 3, : w // 3, 3] = 96
    return rgba


def sticker_rgba(size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A typical sticker edit: an anti-aliased ellipse with a colour gradient and a darker rim."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    r = np.hypot((xs - w / 2) / (w / 2 - 1), (ys - h / 2) / (h / 2 - 1))
    alpha = np.clip((1.0 - r) * min(w, h) / 2, 0.0, 1.0)
    rgb = np.stack([200 * xs / w + 40, 180 * ys / h + 50, 220 - 120 * xs / w], -1)
    rgb = np.where((r > 0.8)[..., None], rgb * 0.5, rgb)
    return np.clip(np.rint(np.concatenate([rgb, alpha[..., None] * 255], -1)), 0, 255).astype(np.uint8)


def edit_to_atlas(rgba: np.ndarray, at: tuple[float, float], size: int, span: float, width: int, height: int
                  ) -> np.ndarray:
    """A straight-alpha (S, S, 4) uint8 atlas layer holding `rgba` pasted at reference-frame point `at`."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    u, v = np.meshgrid(centres, centres)
    px = u * (span / 2.0) + width / 2.0 - at[0] - 0.5
    py = v * (span / 2.0) + height / 2.0 - at[1] - 0.5
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    premult = np.concatenate([rgba[..., :3].astype(np.float32) * alpha, alpha * 255.0], axis=2)
    sampled = cv2.remap(premult, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = sampled[..., 3:4] / 255.0
    rgb = np.where(a > 1e-6, sampled[..., :3] / np.maximum(a, 1e-6), 0.0)
    return np.clip(np.rint(np.concatenate([rgb, a * 255.0], axis=2)), 0, 255).astype(np.uint8)


def composite(bundle: Any, atlas_layer: np.ndarray) -> np.ndarray:
    """All frames edited with an atlas layer by RNA eq. 13 (l * A_edit where m = 1, the delta form elsewhere),
    through the float64 reference compositor."""
    from .reference_compositor import reference_composite, to_uint8

    out = []
    for t in range(bundle.num_frames):
        full = bundle.mask[t][..., None] == 255
        delta = reference_composite(bundle, t, atlas_layer, mode="delta")
        shown = reference_composite(bundle, t, atlas_layer, mode="reconstruct")
        out.append(to_uint8(np.where(full, shown, delta)))
    return np.stack(out)


def roi_footprint(scene: Any) -> np.ndarray:
    """(T, H, W) bool: pixels whose surface point lies in the reference ROI (occluded or not)."""
    size = (scene.width, scene.height)
    ref_mask = scene.roi.mask(scene.height, scene.width).astype(np.uint8)
    out = []
    for t in range(scene.num_frames):
        warp = scene.atlas_to_frame[t]
        # ref pixel grid warped to frame t; nearest is enough for a region mask
        out.append(cv2.warpPerspective(ref_mask, _index_h(warp), size, flags=cv2.INTER_NEAREST) > 0)
    return np.stack(out)


def _index_h(h: np.ndarray) -> np.ndarray:
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    return np.linalg.inv(shift) @ h @ shift


def edit_fidelity(bundle: Any, scene: Any, rgba: np.ndarray | None = None) -> float:
    """PSNR (dB) inside the ROI footprint between our edited video and the scene's exact edited render."""
    from vatlas import metrics

    rgba = sticker_rgba() if rgba is None else rgba
    ys, xs = np.nonzero(scene.roi.mask(scene.height, scene.width))
    at = (float(xs.mean()) - rgba.shape[1] / 2.0, float(ys.mean()) - rgba.shape[0] / 2.0)
    truth = scene.render_edited(rgba, at=at)
    layer = edit_to_atlas(rgba, at, bundle.atlas_size, bundle.atlas_span_px, bundle.width, bundle.height)
    ours = composite(bundle, layer)
    region = roi_footprint(scene)
    return float(metrics.psnr(ours, truth, mask=region, data_range=255.0))


def sample_inverse(bundle: Any, uv: np.ndarray) -> np.ndarray:
    """(T, N, 2) frame positions of uv points via the baked inverse map (bilinear; NaN where unknown)."""
    g = bundle.inverse_map.shape[1]
    gx = np.clip((uv[:, 0] + 1.0) * g / 2.0 - 0.5, 0, g - 1)
    gy = np.clip((uv[:, 1] + 1.0) * g / 2.0 - 0.5, 0, g - 1)
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    x1, y1 = np.minimum(x0 + 1, g - 1), np.minimum(y0 + 1, g - 1)
    fx, fy = (gx - x0)[None, :, None], (gy - y0)[None, :, None]
    m = bundle.inverse_map
    return ((m[:, y0, x0] * (1 - fx) + m[:, y0, x1] * fx) * (1 - fy)
            + (m[:, y1, x0] * (1 - fx) + m[:, y1, x1] * fx) * fy)


def track_drift(bundle: Any, scene: Any, points: int = 64) -> float:
    """Mean distance (px) between B-tracked ROI points and their true positions, over frames where visible."""
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(scene.roi.mask(scene.height, scene.width))
    pick = rng.choice(len(xs), size=min(points, len(xs)), replace=False)
    ref_pts = np.stack([xs[pick], ys[pick]], 1).astype(np.float64) + 0.5
    truth = scene.gt_track(ref_pts)
    ours = sample_inverse(bundle, bundle.atlas_to_uv(ref_pts))
    ix = np.clip(truth[..., 0].astype(int), 0, scene.width - 1)
    iy = np.clip(truth[..., 1].astype(int), 0, scene.height - 1)
    vis = np.stack([scene.gt_visibility[t, iy[t], ix[t]] > 0.5 for t in range(scene.num_frames)])
    dist = np.linalg.norm(ours - truth, axis=-1)[vis]
    dist = dist[np.isfinite(dist)]
    return float(dist.mean()) if dist.size else math.nan


def synth_quality(bundle: Any, scene: Any) -> dict[str, float]:
    """ROI PSNR (from the fit), mask IoU vs ground truth, drift (px) and edit fidelity (dB) for a sticker and
    for a harsh 4 px checkerboard."""
    from vatlas import metrics

    false_visible, false_hidden = metrics.union_error_shares(bundle.mask, scene.gt_visibility)
    return {
        "roi_psnr": float(bundle.metrics.get("roi_psnr", math.nan)),
        "roi_psnr_rna": composite_psnr(bundle),
        "mask_iou": float(metrics.iou(bundle.mask, scene.gt_visibility)),
        "mask_false_visible": false_visible,
        "mask_false_hidden": false_hidden,
        "drift_px": track_drift(bundle, scene),
        "edit_psnr": edit_fidelity(bundle, scene),
        "edit_psnr_checker": edit_fidelity(bundle, scene, checker_rgba()),
    }


def composite_psnr(bundle: Any) -> float:
    """RNA's reconstruction PSNR (its Table 1): the soft composite m * L * A(uv) + (1 - m) * c against the
    input c, over the ROI footprint (every pixel whose reference point lies in the ROI, occluded or not)."""
    from vatlas.roi import Roi

    from .footprint import roi_coverage
    from .reference_compositor import reference_composite

    roi = Roi(bundle.ref_frame, [np.asarray(p, np.float64) for p in bundle.roi_polygons])
    cov = roi_coverage(bundle.uv_float(), roi, bundle.atlas_span_px, bundle.width, bundle.height) >= 0.5
    sq, count = 0.0, 0
    for t in range(bundle.num_frames):
        if not cov[t].any():
            continue
        out = reference_composite(bundle, t, mode="reconstruct")
        diff = out[cov[t]] - bundle.frames[t][cov[t]].astype(np.float64)
        sq += float((diff ** 2).sum())
        count += diff.size
    if not count:
        return math.nan
    # an empty mask reproduces the input exactly: RNA's definition then reads infinite
    return 10.0 * math.log10(255.0 ** 2 * count / sq) if sq > 0 else math.inf


def real_quality(bundle: Any, gt_object_masks: np.ndarray | None) -> dict[str, float]:
    """Real clips: ROI PSNR (ours: L * A on the visible ROI; RNA's: the soft composite over the footprint),
    and mask IoU of our visible ROI vs (ROI footprint minus the annotated objects)."""
    from vatlas import metrics

    out = {"roi_psnr": float(bundle.metrics.get("roi_psnr", math.nan)), "roi_psnr_rna": composite_psnr(bundle),
           "mask_iou": math.nan}
    if gt_object_masks is not None:
        ref_roi = np.zeros((bundle.height, bundle.width), np.uint8)
        for poly in bundle.roi_polygons:
            cv2.fillPoly(ref_roi, [np.rint(np.asarray(poly) - 0.5).astype(np.int32)], 1)
        xy = bundle.uv_to_atlas(bundle.uv_float())
        ix = np.clip(np.floor(xy[..., 0]).astype(int), 0, bundle.width - 1)
        iy = np.clip(np.floor(xy[..., 1]).astype(int), 0, bundle.height - 1)
        footprint = ref_roi[iy, ix] > 0
        truth = footprint & ~gt_object_masks
        out["mask_iou"] = float(metrics.iou(bundle.mask >= 128, truth))
    return out


def load_clip(name: str, data_dir: Path, size: tuple[int, int], max_frames: int
              ) -> tuple[np.ndarray, Any, float, np.ndarray | None]:
    """Frames at `size`, the ROI scaled to it, fps and GT object masks (if the clip has them)."""
    from vatlas.roi import load_roi
    from vatlas.video import read_video

    clip = data_dir / name
    src = clip / "frames" if (clip / "frames").is_dir() else clip / "clip.mp4"
    video = read_video(src, size=size)  # then cut: a clip may be shorter than max_frames
    video.frames = video.frames[:max_frames]
    roi = load_roi(clip / "roi.json").scaled(size[0] / video.source_size[0], size[1] / video.source_size[1])
    masks = None
    if (clip / "masks").is_dir():
        files = sorted((clip / "masks").glob("*.png"))[: len(video.frames)]
        masks = np.stack([cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), size,
                                     interpolation=cv2.INTER_NEAREST) > 127 for f in files])
    return video.frames, roi, video.fps, masks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", nargs="*", default=list(DEFAULT_CLIPS), help="real clips under --data")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--size", default="768x432", help="working size of real clips")
    parser.add_argument("--max-frames", type=int, default=70)
    parser.add_argument("--synth", type=int, default=2, help="number of synthetic scenes")
    parser.add_argument("--synth-size", default="256x144")
    parser.add_argument("--synth-frames", type=int, default=24)
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "best"))
    parser.add_argument("--iters", type=int, default=None, help="main-stage iterations")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--hash-backend", default="auto", choices=("auto", "tcnn", "triton", "torch"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--out-dir", type=Path, default=None, help="also keep the bundles here")


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vatlas.synth import make_scene

    from .config import FitConfig
    from .fit import fit, resolve_device

    device = resolve_device(args.device)
    rows: list[dict[str, Any]] = []

    def one(name: str, frames: np.ndarray, roi: Any, fps: float, quality: Any, read_s: float = 0.0) -> None:
        cfg = FitConfig.preset(args.preset, hash_backend=args.hash_backend)
        if args.batch_size:
            cfg.batch_size = args.batch_size
        if args.iters:
            cfg = cfg.scaled_iters(args.iters)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = args.out_dir / f"{name}.vatlas" if args.out_dir else None
        if out is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        bundle, m = fit(frames, roi, config=cfg, fps=fps, device=str(device.type), out=out,
                        show_progress=args.progress, log=lambda msg: print(f"[{name}] {msg}", flush=True))
        q = quality(bundle)
        row = {"clip": name, "frames": int(frames.shape[0]), "size": f"{frames.shape[2]}x{frames.shape[1]}"}
        row["t_read"] = round(read_s, 3)
        row.update({f"t_{k}": v for k, v in m["stage_seconds"].items()})
        row.update({"total_s": round(m["total_seconds"] + read_s, 3), "peak_gpu_mb": m.get("peak_gpu_mb", 0.0),
                    "ref_valid": m["flow"]["ref_valid"], **{k: round(v, 3) for k, v in q.items()}})
        rows.append(row)
        print(json.dumps(row), flush=True)

    for k in range(args.synth):
        scene = make_scene(frames=args.synth_frames, size=_size(args.synth_size), seed=100 + k, occluders=2,
                           lighting=True)
        one(f"synth{k}", scene.frames, scene.roi, scene.fps, lambda b, s=scene: synth_quality(b, s))
    for name in args.clips:
        began = time.perf_counter()
        frames, roi, fps, masks = load_clip(name, args.data, _size(args.size), args.max_frames)
        one(name, frames, roi, fps, lambda b, gt=masks: real_quality(b, gt), time.perf_counter() - began)
    keys = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "iters": args.iters,
    }
    return {"rows": rows, "meta": meta}
