"""`vatlas synth OUT_DIR`: render a synthetic clip with exact ground truth (see vatlas.synth)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

GT_FILES = {
    "video.mp4": "the clip, H.264 (yuv420p, crf 12): lossy, so compare against frames/ when bit-exactness matters",
    "roi.json": 'the ROI on the reference frame: {"ref_frame": 0, "polygons": [[[x, y], ...]]} in pixels',
    "gt_uv.npy": "(T, H, W, 2) float32 uv of the background surface at each pixel, bundle convention "
    "(x = W/2 + u * atlas_span_px/2, y = H/2 + v * atlas_span_px/2 in reference-frame pixels)",
    "gt_visibility.npy": "(T, H, W) float32 in [0, 1]: the pixel shows the ROI surface (soft at edges)",
    "gt_illumination.npy": "(T, H, W, 3) float32 multiplicative illumination of the background",
    "gt_tracks.npy": "(T, N, 2) float32 ground-truth positions of the roi polygon vertices in every frame",
}


def parse_size(text: str) -> tuple[int, int]:
    """'256x144' -> (256, 144)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like WxH (e.g. 256x144), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (32 <= width <= 4096 and 32 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"size must be between 32x32 and 4096x4096, got {text!r}")
    return width, height


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in (0, 1000], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render a synthetic clip with exact ground truth (uv, visibility, illumination)",
        description="Render a synthetic clip (textured plane under a moving camera, occluders crossing the ROI, "
        "changing light) and write video.mp4, roi.json, ground-truth arrays and meta.json to OUT_DIR.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--frames", type=_int_in(2, 10000), default=48, help="number of frames (default 48)")
    parser.add_argument("--size", type=parse_size, default=(256, 144), help="WxH (default 256x144)")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0, help="random seed (default 0)")
    parser.add_argument("--occluders", type=_int_in(0, 16), default=1, help="occluders crossing the ROI")
    parser.add_argument("--no-lighting", action="store_true", help="constant illumination")
    parser.add_argument("--fps", type=_positive_float, default=30.0, help="frame rate (default 30)")
    parser.add_argument(
        "--png", action="store_true", help="also write the exact frames as frames/00000.png ..."
    )
    parser.add_argument(
        "--bundle", action="store_true", help="also write the ground-truth bundle as ground_truth.vatlas"
    )
    parser.add_argument("--atlas-size", type=_int_in(16, 8192), default=1024, help="atlas size for --bundle")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vatlas.cli import CliError
    from vatlas.models.bundle import save_bundle
    from vatlas.synth import make_scene
    from vatlas.video import write_mp4, write_png_sequence

    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        occluders=args.occluders,
        lighting=not args.no_lighting,
        fps=args.fps,
    )
    write_mp4(out / "video.mp4", scene.frames, scene.fps, crf=12)
    scene.roi.save(out / "roi.json")
    np.save(out / "gt_uv.npy", scene.gt_uv)
    np.save(out / "gt_visibility.npy", scene.gt_visibility)
    np.save(out / "gt_illumination.npy", scene.gt_illumination)
    np.save(out / "gt_tracks.npy", scene.gt_track(np.concatenate(scene.roi.polygons)))
    files = dict(GT_FILES)
    if args.png:
        write_png_sequence(out / "frames", scene.frames)
        files["frames/"] = "the exact rendered frames (lossless PNG), which the ground truth describes"
    if args.bundle:
        save_bundle(scene.ground_truth_bundle(args.atlas_size), out / "ground_truth.vatlas")
        files["ground_truth.vatlas"] = "a bundle baked from the ground truth (a perfect fit)"
    meta = {
        "generator": "vatlas.synth.make_scene",
        "params": scene.params,
        "frames": scene.num_frames,
        "size": [scene.width, scene.height],
        "fps": scene.fps,
        "ref_frame": 0,
        "atlas_span_px": scene.atlas_span_px,
        "coordinates": "continuous pixel coordinates, pixel centres at integer + 0.5",
        "files": files,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {scene.num_frames} frames of {scene.width}x{scene.height} and ground truth to {out}")
    return 0
