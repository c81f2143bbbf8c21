"""Fit benchmark: synthetic scenes and real clips, from frames to bundle, with quality metrics.

Per clip: stage times, total seconds, peak GPU memory, ROI PSNR, tracked-point drift through the inverse map,
and the edit metrics of vatlas.edit_eval (edits made through the product's edit engine; per-frame metrics
pooled and worst, with the worst frames printed and under "worst_frames" in the JSON). This module is the
driver; the metrics live in vatlas.edit_eval.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

DEFAULT_CLIPS = ("blackswan", "libby", "car-shadow", "bmx-trees", "camel")
# the team checkout keeps the real clips in ../shared/data beside it (VATLAS_SHARED_DATA overrides)
DATA_DIR = Path(os.environ.get("VATLAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def track_drift(bundle: Any, scene: Any, points: int = 64) -> float:
    """Mean distance (px) between B-tracked ROI points and their true positions, over frames where visible."""
    from vatlas.edit_eval import sample_inverse

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


def uv_error(bundle: Any, scene: Any) -> tuple[float, list[list[float]]]:
    """T's error per frame: the median distance (reference-frame px) between the bundle's atlas point and the
    true one over the frame's visible ROI pixels. Returns (median over frames, the three worst [frame, px])."""
    from vatlas.synth import apply_homography

    h, w = scene.height, scene.width
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    pixels = np.stack([xs, ys], -1).reshape(-1, 2)
    per_frame: list[list[float]] = []
    for t in range(scene.num_frames):
        seen = ((scene.gt_visibility[t] > 0.5) & (scene.roi_coverage(t) > 0.5)).reshape(-1)
        if seen.sum() < 10:
            continue
        truth = apply_homography(np.linalg.inv(scene.atlas_to_frame[t]), pixels[seen])
        ours = bundle.uv_to_atlas(bundle.uv_float(t).reshape(-1, 2)[seen])
        per_frame.append([t, float(np.median(np.linalg.norm(ours - truth, axis=1)))])
    if not per_frame:
        return math.nan, []
    worst = sorted(per_frame, key=lambda row: -row[1])[:3]
    return float(np.median([e for _, e in per_frame])), [[t, round(e, 3)] for t, e in worst]


Worst = dict[str, list[list[float]]]


def synth_report(bundle: Any, scene: Any, device: str = "cpu") -> tuple[dict[str, float], Worst]:
    """ROI PSNR (from the fit and RNA's), drift (px), T's error against the truth (`uv_error_px`, median over
    frames, and its worst frame) and vatlas.edit_eval's metrics: edits made through the product's edit engine
    against the scene's ground-truth edited clip, the mask against its visibility."""
    from vatlas.edit_eval import synth_edit_metrics

    out = {
        "roi_psnr": float(bundle.metrics.get("roi_psnr", math.nan)),
        "roi_psnr_rna": composite_psnr(bundle),
        "drift_px": track_drift(bundle, scene),
    }
    out["uv_error_px"], uv_worst = uv_error(bundle, scene)
    out["uv_error_px_worst"] = uv_worst[0][1] if uv_worst else math.nan
    edits, worst = synth_edit_metrics(bundle, scene, device)
    out.update(edits)
    return out, {**worst, "uv_error_px": uv_worst}


def synth_quality(bundle: Any, scene: Any, device: str = "cpu") -> dict[str, float]:
    """The scalars of ``synth_report``."""
    return synth_report(bundle, scene, device)[0]


def composite_psnr(bundle: Any) -> float:
    """RNA's reconstruction PSNR (its Table 1): the soft composite m * L * A(uv) + (1 - m) * c against the
    input c, over the ROI footprint (every pixel whose reference point lies in the ROI, occluded or not)."""
    from vatlas.models.footprint import roi_coverage
    from vatlas.models.reference_compositor import reference_composite
    from vatlas.roi import Roi

    roi = Roi(bundle.ref_frame, [np.asarray(p, np.float64) for p in bundle.roi_polygons])
    cov = roi_coverage(bundle.uv_float(), roi, bundle.atlas_span_px, bundle.width, bundle.height) >= 0.5
    sq, count = 0.0, 0
    for t in range(bundle.num_frames):
        if not cov[t].any():
            continue
        out = reference_composite(bundle, t, mode="reconstruction")
        diff = out[cov[t]] - bundle.frames[t][cov[t]].astype(np.float64)
        sq += float((diff ** 2).sum())
        count += diff.size
    if not count:
        return math.nan
    # an empty mask reproduces the input exactly: RNA's definition then reads infinite
    return 10.0 * math.log10(255.0 ** 2 * count / sq) if sq > 0 else math.inf


def real_report(bundle: Any, gt_object_masks: np.ndarray | None, device: str = "cpu"
                ) -> tuple[dict[str, float], Worst]:
    """Real clips: ROI PSNR (ours: L * A on the visible ROI; RNA's: the soft composite over the footprint), mask
    IoU of our visible ROI vs (ROI footprint minus the annotated objects) and, with masks, vatlas.edit_eval's
    real-clip metrics (an opaque checkerboard over background on the reference frame)."""
    from vatlas import metrics
    from vatlas.edit_eval import real_edit_metrics

    out = {"roi_psnr": float(bundle.metrics.get("roi_psnr", math.nan)), "roi_psnr_rna": composite_psnr(bundle),
           "mask_iou": math.nan}
    worst: Worst = {}
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
        edits, worst = real_edit_metrics(bundle, gt_object_masks, device)
        out.update(edits)
    return out, worst


def real_quality(bundle: Any, gt_object_masks: np.ndarray | None, device: str = "cpu") -> dict[str, float]:
    """The scalars of ``real_report``."""
    return real_report(bundle, gt_object_masks, device)[0]


def object_report(bundle: Any, gt_object_masks: np.ndarray, device: str = "cpu") -> tuple[dict[str, float], Worst]:
    """A clip fitted with its frame-0 object outline as the ROI: vatlas.edit_eval.object_edit_metrics."""
    from vatlas.edit_eval import object_edit_metrics

    out = {"roi_psnr": float(bundle.metrics.get("roi_psnr", math.nan))}
    edits, worst = object_edit_metrics(bundle, gt_object_masks, device)
    out.update(edits)
    return out, worst


def load_clip(name: str, data_dir: Path, size: tuple[int, int], max_frames: int) -> dict[str, Any]:
    """A real clip: working frames at `size` and the ROI scaled to them (None without roi.json), the source
    frames and ROI at their own size (the bundle is delivered there), fps and GT object masks at the source size
    (if the clip has one per frame)."""
    from vatlas.roi import load_roi
    from vatlas.video import read_video

    clip = data_dir / name
    src = clip / "frames" if (clip / "frames").is_dir() else clip / "clip.mp4"
    video = read_video(src)  # then cut: a clip may be shorter than max_frames
    source = video.frames[:max_frames]
    sw, sh = video.source_size
    frames = source if (sw, sh) == size else np.stack(
        [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in source])
    roi = source_roi = None
    if (clip / "roi.json").is_file():
        source_roi = load_roi(clip / "roi.json")
        roi = source_roi.scaled(size[0] / sw, size[1] / sh)
    masks = None
    if (clip / "masks").is_dir():
        files = sorted((clip / "masks").glob("*.png"))[: len(source)]
        if len(files) == len(source):  # the edit metrics compare frame by frame
            masks = np.stack([cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (sw, sh),
                                         interpolation=cv2.INTER_NEAREST) > 127 for f in files])
    return {"frames": frames, "roi": roi, "fps": video.fps, "masks": masks, "source_frames": source,
            "source_roi": source_roi}


# --synth-preset -> (scenes, size, frames, occluders) when not given
SYNTH_PRESETS = {"default": (2, "256x144", 24, 2), "hard": (6, "768x432", 70, None)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", nargs="*", default=list(DEFAULT_CLIPS), help="real clips under --data")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--size", default="768x432", help="working size of real clips")
    parser.add_argument("--max-frames", type=int, default=70)
    parser.add_argument("--synth-preset", default="default", choices=tuple(SYNTH_PRESETS),
                        help="vatlas.synth preset of the synthetic scenes (hard: issue 15's conditions)")
    parser.add_argument("--synth", type=int, default=None,
                        help="number of synthetic scenes, seeds 100, 101, ... (default 2; hard: 6)")
    parser.add_argument("--synth-size", default=None, help="default 256x144; hard: 768x432")
    parser.add_argument("--synth-frames", type=int, default=None, help="default 24; hard: 70")
    parser.add_argument("--object-roi", action="store_true",
                        help="fit each real clip with masks with its frame-0 object outline as the ROI (a moving "
                        "object) and report the object metrics instead of the background ones")
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "best"))
    parser.add_argument("--iters", type=int, default=None, help="main-stage iterations")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--hash-backend", default="auto", choices=("auto", "tcnn", "triton", "torch"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--out-dir", type=Path, default=None, help="also keep the bundles here")
    parser.add_argument("--seeds", default=None, help="synthetic scene indices to run, e.g. 0,1,2 (default all)")
    parser.add_argument("--set", default=None, help="FitConfig overrides as JSON, by section or by flat key: "
                        "'{\"bake\": {\"visibility\": \"learned\"}}' or '{\"visibility\": \"learned\"}'")
    parser.add_argument("--compare-visibility", action="store_true",
                        help="also bake each fit with the learned visibility and report its metrics (suffix _learned)")
    parser.add_argument("--working-size-delivery", action="store_true",
                        help="deliver real clips at the working size (default: at the source's size)")


class GpuBusy:
    """The GPU's utilization over time (nvidia-smi every `period_ms`, a reader thread): the busy share of a
    stage is the mean utilization of the samples inside its span. Nothing is sampled without nvidia-smi."""

    def __init__(self, device: torch.device, period_ms: int = 200) -> None:
        self.samples: list[tuple[float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        if device.type != "cuda" or shutil.which("nvidia-smi") is None:
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        self._process = subprocess.Popen(
            ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             f"--loop-ms={period_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip()) / 100.0))
            except ValueError:
                continue

    def share(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return round(float(np.mean(inside)), 3) if inside else None

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)


def fit_clip(frames: np.ndarray, roi: Any, cfg: Any, fps: float, device: torch.device, out: Path | None, *,
             show_progress: bool, log: Any, source_frames: np.ndarray | None = None, source_roi: Any = None
             ) -> tuple[Any, dict[str, Any], Any]:
    """One fit: (bundle, metrics, rebake(cfg) -> the same fit baked again with other bake settings); on CUDA the
    metrics carry each stage's GPU busy share (`gpu_busy`)."""
    from vatlas.models.fit import Fitter
    from vatlas.models.prepare import FitData

    data = FitData(np.ascontiguousarray(frames), roi, float(fps), {}, source_frames, source_roi)
    fitter = Fitter(data, cfg, device, show_progress=show_progress, log=log)
    busy = GpuBusy(device)
    try:
        bundle, metrics = fitter.run(out)
    finally:
        busy.close()
    if busy.samples:
        spans = fitter.stage_spans
        metrics = {**metrics, "gpu_busy": {k: busy.share(a, b) for k, (a, b) in spans.items()}}
        metrics["gpu_busy"]["all"] = busy.share(min(a for a, _ in spans.values()), max(b for _, b in spans.values()))
    return bundle, metrics, fitter.bake


def _at_size(masks: np.ndarray | None, bundle: Any) -> np.ndarray | None:
    """Object masks (T, H, W) bool at the bundle's frame size."""
    if masks is None or masks.shape[1:] == (bundle.height, bundle.width):
        return masks
    return np.stack([cv2.resize(m.astype(np.uint8), (bundle.width, bundle.height),
                                interpolation=cv2.INTER_NEAREST) > 0 for m in masks])


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _print_worst(name: str, worst: Worst) -> None:
    for metric, frames in worst.items():
        if frames:
            listed = "  ".join(f"{int(t)}:{v:.4g}" for t, v in frames)
            print(f"[{name}] worst frames, {metric} (frame:value): {listed}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vatlas.edit_eval import object_roi
    from vatlas.models.config import ConfigError, FitConfig, working_size
    from vatlas.models.fit import resolve_device
    from vatlas.synth import make_scene

    device = resolve_device(args.device)
    try:  # flat keys ({"visibility": "learned"}) or sections ({"bake": {"visibility": "learned"}}), checked first
        overrides = json.loads(args.set) if args.set else {}
        if not isinstance(overrides, dict):
            raise ValueError(f"a JSON object of FitConfig keys, got {type(overrides).__name__}")
        FitConfig.preset(args.preset, hash_backend=args.hash_backend, **overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--set: {exc}") from None
    seeds = None if args.seeds is None else {int(k) for k in args.seeds.split(",")}
    engine_device = str(device.type)
    rows: list[dict[str, Any]] = []
    worst_frames: dict[str, Worst] = {}

    def one(name: str, frames: np.ndarray, roi: Any, fps: float, quality: Any, read_s: float = 0.0,
            source_frames: np.ndarray | None = None, source_roi: Any = None) -> None:
        cfg = FitConfig.preset(args.preset, hash_backend=args.hash_backend, **overrides)
        if args.batch_size:
            cfg.schedule.batch_size = args.batch_size
        if args.iters:
            cfg = cfg.scaled_iters(args.iters)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = args.out_dir / f"{name.replace(':', '-')}.vatlas" if args.out_dir else None
        if out is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        if args.working_size_delivery:
            source_frames = source_roi = None
        bundle, m, rebake = fit_clip(frames, roi, cfg, fps, device, out, show_progress=args.progress,
                                     log=lambda msg: print(f"[{name}] {msg}", flush=True),
                                     source_frames=source_frames, source_roi=source_roi)
        began = time.perf_counter()
        q, worst = quality(bundle)
        if args.compare_visibility:
            learned = rebake(cfg.updated({"bake": {"visibility": "learned"}}))
            q.update({f"{k}_learned": v for k, v in quality(learned)[0].items()})
            del learned
        row = {"clip": name, "frames": int(frames.shape[0]), "size": f"{frames.shape[2]}x{frames.shape[1]}"}
        row["t_read"] = round(read_s, 3)
        row.update({f"t_{k}": v for k, v in m["stage_seconds"].items()})
        row.update({f"gpu_busy_{k}": v for k, v in m.get("gpu_busy", {}).items()})
        row.update({"total_s": round(m["total_seconds"] + read_s, 3), "peak_gpu_mb": m.get("peak_gpu_mb", 0.0),
                    "ref_valid": m["flow"]["ref_valid"], **{k: round(v, 4) for k, v in q.items()}})
        row["t_metrics"] = round(time.perf_counter() - began, 3)  # not part of total_s
        rows.append(row)
        worst_frames[name] = worst
        print(json.dumps(row), flush=True)
        _print_worst(name, worst)

    count, synth_size, synth_frames, occluders = SYNTH_PRESETS[args.synth_preset]
    count = count if args.synth is None else args.synth
    size = _size(args.synth_size or synth_size)
    synth_frames = args.synth_frames or synth_frames
    for k in range(count):
        if seeds is not None and k not in seeds:
            continue
        scene = make_scene(frames=synth_frames, size=size, seed=100 + k, occluders=occluders, lighting=True,
                           preset=args.synth_preset)
        label = f"synth{k}" if args.synth_preset == "default" else f"{args.synth_preset}{k}"
        frames, roi = scene.frames, scene.roi
        working = working_size((scene.width, scene.height), None, FitConfig.from_dict(overrides).max_side)
        if working != (scene.width, scene.height):  # fit small, deliver (and score) at the scene's size
            frames = np.stack([cv2.resize(f, working, interpolation=cv2.INTER_AREA) for f in scene.frames])
            roi = scene.roi.scaled(working[0] / scene.width, working[1] / scene.height)
        one(label, frames, roi, scene.fps, lambda b, s=scene: synth_report(b, s, engine_device),
            source_frames=None if frames is scene.frames else scene.frames,
            source_roi=None if frames is scene.frames else scene.roi)
        del scene
    for name in args.clips:
        began = time.perf_counter()
        clip = load_clip(name, args.data, _size(args.size), args.max_frames)
        frames, masks, source = clip["frames"], clip["masks"], clip["source_frames"]
        if args.object_roi:
            if masks is None or not masks[0].any():
                print(f"[{name}] skipped: --object-roi needs an object mask on every frame", flush=True)
                continue
            source_roi = object_roi(masks[0])
            roi = source_roi.scaled(frames.shape[2] / source.shape[2], frames.shape[1] / source.shape[1])
            one(f"{name}:object", frames, roi, clip["fps"],
                lambda b, gt=masks: object_report(b, _at_size(gt, b), engine_device), time.perf_counter() - began,
                source, source_roi)
        elif clip["roi"] is None:
            print(f"[{name}] skipped: no roi.json", flush=True)
        else:
            one(name, frames, clip["roi"], clip["fps"],
                lambda b, gt=masks: real_report(b, _at_size(gt, b), engine_device), time.perf_counter() - began,
                source, clip["source_roi"])
    keys = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "iters": args.iters,
        "synth_preset": args.synth_preset,
        "object_roi": bool(args.object_roi),
    }
    return {"rows": rows, "worst_frames": worst_frames, "meta": meta}
