"""`vatlas info BUNDLE`: a bundle's summary in a few lines; `--all` or `--json` for everything (Bundle.info())."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print a bundle's summary")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--all", action="store_true", help="every field, training setting and metric")
    parser.add_argument("--json", action="store_true", help="everything, as JSON")
    parser.set_defaults(func=run)


def _lines(data: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:")
            out += _lines(value, indent + 1)
        elif isinstance(value, float):
            out.append(f"{pad}{key}: {value:.4g}")
        else:
            out.append(f"{pad}{key}: {value}")
    return out


def _size(pair: Any) -> str:
    return f"{pair[0]}x{pair[1]}" if isinstance(pair, list | tuple) and len(pair) == 2 else str(pair)


def summary(info: dict[str, Any], path: Path) -> list[str]:
    """What a user needs to pick and use a bundle; the training settings stay behind --all."""
    from vatlas.models.config import flat_config

    source, metrics = info.get("source") or {}, info.get("metrics") or {}
    config = flat_config(info.get("config") or {})  # bundles store it by section; before the sections, flat
    lines = [f"bundle: {path}"]
    clip = f"frames: {info['frames']} at {info['fps']:.4g} fps"
    if source.get("path"):
        span = source.get("frame_range")
        clip += f" ({source['path']}" + (f", frames {span[0]}:{span[1]}" if span else "") + ")"
    lines.append(clip)
    size = f"size: {_size(info['size'])}"
    if metrics.get("working_size") and list(metrics["working_size"]) != list(info["size"]):
        size += f" (fitted at {_size(metrics['working_size'])})"
    lines.append(size)
    roi = info.get("roi") or {}
    polygons = roi.get("polygons") or []
    count = len(polygons) or info["roi_polygons"]
    line = f"ROI: {count} polygon{'s' if count != 1 else ''} on reference frame {info['ref_frame']}"
    if polygons:
        pts = [p for polygon in polygons for p in polygon]
        x0, y0 = min(p[0] for p in pts), min(p[1] for p in pts)
        x1, y1 = max(p[0] for p in pts), max(p[1] for p in pts)
        line += f", box x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}"
    boxes = roi.get("visible_boxes")
    if boxes is not None:
        line += f"; visible on {sum(1 for b in boxes if b[2] > 0)} of {len(boxes)} frames"
    lines.append(line)
    lines.append(f"atlas: {info['atlas_size']}x{info['atlas_size']}, {info['atlas_coverage'] * 100:.3g} % covered")
    quality = []
    if isinstance(metrics.get("roi_psnr"), int | float):
        quality.append(f"ROI PSNR {metrics['roi_psnr']:.2f} dB")
    worst = metrics.get("roi_psnr_worst_frames") or []
    if worst:
        quality.append("worst frames " + ", ".join(f"{int(w[0])} ({w[1]:.1f} dB)" for w in worst[:3]))
    if isinstance(metrics.get("total_seconds"), int | float):
        quality.append(f"{metrics['total_seconds']:.0f} s")
    if "iters_main" in config:
        quality.append(f"{config['iters_main']} main iterations, batch {config.get('batch_size', '?')}")
    elif config.get("kind"):
        quality.append(str(config["kind"]))
    if quality:
        lines.append("fit: " + ", ".join(quality))
    total = sum((info.get("bytes") or {}).values())
    lines.append(f"arrays: {total / 2**20:.1f} MB in memory")
    lines.append("(--all for every setting and metric, --json for JSON)")
    return lines


def roi_summary(bundle: Any) -> dict[str, Any]:
    """The editable region as BundleInfo.roi has it: polygons on the reference frame and, per frame, the box
    [x, y, w, h] of the pixels where it is visible (w = 0: nowhere), in pixels of the bundle's frames."""
    from vatlas.server.edits.region import visible_boxes

    return {"ref_frame": bundle.ref_frame, "polygons": bundle.roi_polygons,
            "visible_boxes": visible_boxes(bundle).tolist()}


def run(args: argparse.Namespace) -> int:
    from vatlas.models.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    info = bundle.info()
    info["roi"] = roi_summary(bundle)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    elif args.all:
        print("\n".join(_lines(info)))
    else:
        print("\n".join(summary(info, args.bundle)))
    return 0
