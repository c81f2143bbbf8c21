"""Render benchmark: compositor fps, composite + JPEG fps, stroke latency, resident bytes, accuracy.

Builds a synthetic bundle in memory at each size (a smooth warp of a random atlas, a moving soft occluder in
the mask, half-resolution illumination), applies a texture and strokes, then times:

* composite only (frames resident on the device, output left there), single frames and batches, with the
  default backend (the fused Triton kernel on CUDA) and, on CUDA, also the torch.compile backend it replaced;
* composite + JPEG + bytes on the host (nvJPEG on CUDA, OpenCV on CPU);
* a new stroke op until its atlas layer is ready (ms, p50/p95);
* resident bytes per pixel-frame; and the fraction of pixels within 1 level of the float64 reference.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vatlas.models.bundle import Bundle, encode_uv, load_bundle
from vatlas.models.reference_compositor import reference_composite, to_uint8
from vatlas.server.compositor import Compositor, resolve_device, triton_available
from vatlas.server.edits.engine import EditEngine
from vatlas.server.encoders import encode, nvjpeg_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1920x1080,768x432", help="comma-separated WxH (default 1080p, 432p)")
    parser.add_argument("--frames", type=int, default=16, help="resident frames per bundle (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the batched rows (default 8)")
    parser.add_argument("--atlas", type=int, default=1024, help="atlas size (default 1024)")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing budget per row (default 1.5)")
    parser.add_argument("--strokes", type=int, default=60, help="strokes for the latency figure (default 60)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--backend", default="auto", choices=("auto", "triton", "compile", "eager"),
                        help="compositor backend under test (default: Triton on CUDA, eager on CPU)")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the torch.compile comparison rows (CUDA with the Triton backend only)")
    parser.add_argument("--bundle", type=Path, action="append", default=None,
                        help="also time this fitted bundle (repeatable); its size is its delivered size")
    parser.add_argument("--quick", action="store_true", help="tiny CPU-sized run (tests)")


def synthetic_bundle(width: int, height: int, frames: int, atlas: int, seed: int = 0,
                     device: torch.device | None = None) -> Bundle:
    """A coherent in-memory bundle: frames are the atlas seen through a smooth, moving warp."""
    dev = device or torch.device("cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    coarse = torch.rand((1, 3, max(atlas // 16, 2), max(atlas // 16, 2)), generator=gen)
    tex = F.interpolate(coarse, size=(atlas, atlas), mode="bicubic", align_corners=False).clamp(0.02, 0.98)
    span = 1.25 * max(width, height)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5).view(-1, 1).expand(height, width)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5).view(1, -1).expand(height, width)
    uv = torch.empty((frames, height, width, 2))
    mask = torch.empty((frames, height, width), dtype=torch.uint8)
    for t in range(frames):
        phase = 2 * np.pi * t / max(frames, 1)
        ax = xs + 0.04 * width * np.sin(phase) + 3.0 * torch.sin(ys / 37.0 + phase)
        ay = ys + 0.03 * height * np.cos(phase) + 3.0 * torch.sin(xs / 41.0)
        uv[t, ..., 0] = (ax - width / 2) / (span / 2)
        uv[t, ..., 1] = (ay - height / 2) / (span / 2)
        cx, cy = width * (0.3 + 0.4 * t / max(frames - 1, 1)), height * 0.5
        r = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        soft = ((r - 0.08 * height) / (0.03 * height)).clamp(0, 1)
        mask[t] = (soft * 255 + 0.5).to(torch.uint8)
    mask[:, :, : max(width // 20, 1)] = 0  # outside the ROI: must pass through bit for bit
    uvq = encode_uv(uv.numpy())
    ih, iw = max(height // 2, 1), max(width // 2, 1)
    illum = 0.8 + 0.4 * torch.rand((frames, 3, 4, 4), generator=gen)
    illum = F.interpolate(illum, size=(ih, iw), mode="bilinear", align_corners=False)
    uv_dec = torch.from_numpy(uvq.astype(np.float32) * (2 / 65535.0) - 1)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        s = F.grid_sample(tex, uv_dec[t:t + 1], mode="bilinear", padding_mode="border", align_corners=False)
        light = F.interpolate(illum[t:t + 1], size=(height, width), mode="bilinear", align_corners=False)
        out[t] = (s * light * 255 + 0.5).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    del dev
    grid = 16
    return Bundle(
        frames=out, fps=30.0, ref_frame=0, roi_polygons=[[[0, 0], [width, 0], [width, height], [0, height]]],
        atlas=(tex[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8),
        atlas_coverage=np.full((atlas, atlas), 255, np.uint8), uv=uvq, mask=mask.numpy(),
        illumination=illum.permute(0, 2, 3, 1).numpy().astype(np.float16),
        inverse_map=np.full((frames, grid, grid, 2), np.nan, np.float32),  # unused by this benchmark
        atlas_span_px=float(span),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Any, per_call: int, seconds: float, device: torch.device, warmup: int = 3) -> float:
    """Frames per second of fn() (which handles `per_call` frames), timed over about `seconds`."""
    for _ in range(warmup):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(8):
            fn()
        calls += 8
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * per_call / elapsed


Box = tuple[float, float, float, float]  # x0, y0, width, height (pixels)


def _edit_box(bundle: Bundle, synthetic: bool) -> Box:
    """Where the bench's edits go: the whole frame of a synthetic bundle (all of it is the surface), or the middle
    half of a fitted bundle's ROI on its reference frame (edits outside the editable region are refused)."""
    if synthetic or not bundle.roi_polygons:
        return 0.0, 0.0, float(bundle.width), float(bundle.height)
    pts = np.concatenate([np.asarray(poly, np.float64) for poly in bundle.roi_polygons])
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return x0 + 0.25 * (x1 - x0), y0 + 0.25 * (y1 - y0), 0.5 * (x1 - x0), 0.5 * (y1 - y0)


def _edits(engine: EditEngine, box: Box) -> None:
    x0, y0, width, height = box
    rng = np.random.default_rng(1)
    img = (rng.uniform(0, 255, (64, 96, 4))).astype(np.uint8)
    img[..., 3] = 200
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "RGBA").save(buf, format="PNG")
    engine.apply({"id": "logo", "type": "texture", "space": "atlas", "image": buf.getvalue(),
                  "position": [x0 + width * 0.5, y0 + height * 0.45], "scale": max(width, height) / 400.0,
                  "rotation": 15.0})
    engine.apply({"id": "warm", "type": "adjustment", "space": "atlas", "exposure": 0.3, "temperature": 0.4,
                  "points": [[x0 + width * 0.1, y0 + height * 0.1], [x0 + width * 0.4, y0 + height * 0.1],
                             [x0 + width * 0.3, y0 + height * 0.6]]})


def _random_stroke(rng: np.random.Generator, k: int, box: Box, frames: list[int]) -> dict[str, Any]:
    x0, y0, width, height = box
    start = rng.uniform([x0 + 0.1 * width, y0 + 0.1 * height], [x0 + 0.9 * width, y0 + 0.9 * height])
    pts = start + np.cumsum(rng.normal(0, 0.02 * width, (6, 2)), axis=0)
    pts = np.clip(pts, [x0 + 1, y0 + 1], [x0 + width - 1, y0 + height - 1])
    return {"id": f"stroke{k}", "type": "stroke", "space": "frame", "frame": int(frames[k % len(frames)]),
            "points": pts.tolist(), "width": 0.01 * width + 2, "color": [0.9, 0.2, 0.1, 1.0], "hardness": 0.7}


def bench_size(width: int, height: int, args: argparse.Namespace, device: torch.device,
               bundle: Bundle | None = None, label: str = "") -> list[dict[str, Any]]:
    """Rows for one bundle: the synthetic one at width x height, or `bundle` (a fitted one) at its own size."""
    t0 = time.perf_counter()
    synthetic = bundle is None
    if bundle is None:
        bundle = synthetic_bundle(width, height, args.frames, args.atlas)
    build_s = time.perf_counter() - t0
    box = _edit_box(bundle, synthetic)
    stroke_frames = list(range(bundle.num_frames)) if synthetic else [bundle.ref_frame]
    frames = bundle.num_frames
    engine = EditEngine(bundle, device)
    if args.backend != "auto":
        engine.compositor = Compositor(bundle, engine.device, backend=args.backend)
    comp = engine.compositor
    _edits(engine, box)
    # Stroke latency: op in -> atlas layer ready (synchronised).
    rng = np.random.default_rng(0)
    lat = []
    for k in range(args.strokes + 3):
        op = _random_stroke(rng, k, box, stroke_frames)
        _sync(device)
        s = time.perf_counter()
        engine.apply(op)
        _sync(device)
        lat.append((time.perf_counter() - s) * 1e3)
    lat_ms = np.array(lat[3:])  # the first strokes include one-off allocations
    tex, adjust = engine.layers.layer, engine.layers.adjust  # the texture and an adjustment: the full kernel
    n = min(args.batch, frames)
    singles = [comp.frame_index([t]) for t in range(frames)]
    batches = [comp.frame_index([(b * n + i) % frames for i in range(n)]) for b in range(4)]
    counter = {"k": 0}

    def one(c: Compositor = comp) -> torch.Tensor:
        counter["k"] += 1
        return c.composite(singles[counter["k"] % len(singles)], tex, adjust)

    def many(c: Compositor = comp) -> torch.Tensor:
        counter["k"] += 1
        return c.composite(batches[counter["k"] % len(batches)], tex, adjust)

    def one_jpeg() -> list[bytes]:
        return encode(one(), "jpeg", 85)

    def many_jpeg() -> list[bytes]:
        return encode(many(), "jpeg", 85)

    secs = args.seconds
    rows = []
    fps = {
        "composite_1": _rate(one, 1, secs, device),
        f"composite_{n}": _rate(many, n, secs, device),
        "composite+jpeg+host_1": _rate(one_jpeg, 1, secs, device, warmup=2),
        f"composite+jpeg+host_{n}": _rate(many_jpeg, n, secs, device, warmup=2),
    }
    if device.type == "cuda" and comp.backend == "triton" and not args.no_compare:
        # The backend the Triton kernel replaced, on the same caches and texture, for the before/after table.
        old = Compositor(bundle, engine.device, backend="compile")  # compiles in _rate's warm-up calls
        fps["composite (torch.compile)_1"] = _rate(lambda: one(old), 1, secs, device)
        fps[f"composite (torch.compile)_{n}"] = _rate(lambda: many(old), n, secs, device)
        agree = (old.composite(batches[0], tex, adjust).int() - comp.composite(batches[0], tex, adjust).int()).abs()
        common_cmp = f"{(agree <= 1).float().mean().item():.6f} (max {int(agree.max())})"
        del old
    else:
        common_cmp = ""
    # Accuracy against the float64 reference on a few frames.
    layer, transform = engine.edit_layer(), engine.adjust_transform()
    within, total, worst = 0, 0, 0
    for t in range(0, frames, max(frames // 3, 1))[:3]:
        ref = to_uint8(reference_composite(bundle, t, layer=layer, adjust=transform)).astype(np.int16)
        got = comp.composite([t], tex, adjust)[0].cpu().numpy().astype(np.int16)
        err = np.abs(got - ref).max(axis=-1)
        within += int((err <= 1).sum())
        total += err.size
        worst = max(worst, int(err.max()))
    common = {
        "size": f"{width}x{height}{label}",
        "stroke_ms_p50": float(np.percentile(lat_ms, 50)),
        "stroke_ms_p95": float(np.percentile(lat_ms, 95)),
        "bytes_per_px_frame": round(comp.bytes_per_pixel_frame, 3),
        "within_1_level": within / total,
        "max_err_levels": worst,
        "build_s": round(build_s, 2),
    }
    for name, value in fps.items():
        what, batch = name.rsplit("_", 1)
        rows.append({"size": common["size"], "what": what, "batch": int(batch), "fps": value})
    rows.append({"size": common["size"], "what": "stroke apply ms p50/p95", "batch": 1,
                 "fps": f"{common['stroke_ms_p50']:.3f} / {common['stroke_ms_p95']:.3f}"})
    rows.append({"size": common["size"], "what": "resident bytes per pixel-frame", "batch": 0,
                 "fps": common["bytes_per_px_frame"]})
    rows.append({"size": common["size"], "what": "compositor backend", "batch": 0, "fps": comp.backend})
    if common_cmp:
        rows.append({"size": common["size"], "what": "pixels within 1 level of torch.compile path", "batch": n,
                     "fps": common_cmp})
    rows.append({"size": common["size"], "what": "pixels within 1 level of float64 ref", "batch": 0,
                 "fps": f"{common['within_1_level']:.6f} (max {worst})"})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.quick:
        args.sizes, args.frames, args.atlas, args.seconds, args.strokes = "96x64", 4, 128, 0.05, 6
        args.batch = min(args.batch, 4)
    sizes = []
    for text in args.sizes.split(","):
        w, _, h = text.strip().lower().partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) < 16 or int(h) < 16:
            raise ValueError(f"--sizes entries must look like 1920x1080, got {text!r}")
        sizes.append((int(w), int(h)))
    torch.manual_seed(0)
    rows = []
    for w, h in sizes:
        rows.extend(bench_size(w, h, args, device))
    for path in args.bundle or []:
        fitted = load_bundle(path)
        rows.extend(bench_size(fitted.width, fitted.height, args, device, fitted,
                               f" fitted ({path.stem}, {fitted.num_frames} frames, atlas {fitted.atlas_size})"))
    meta = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "jpeg": "nvJPEG (torchvision)" if device.type == "cuda" and nvjpeg_available() else "OpenCV",
        "frames": args.frames, "atlas": args.atlas, "batch": args.batch,
    }
    return {"rows": rows, "meta": meta}


def _triton_version() -> str:
    if not triton_available():
        return "absent"
    import triton

    return str(triton.__version__)
