"""`vatlas synth OUT_DIR`: render a synthetic clip with exact ground truth (see vatlas.synth)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

# vatlas.synth.PRESETS, repeated so that building the CLI does not import OpenCV (tests/test_synth_cli.py checks)
PRESETS = ("default", "hard")

GT_FILES = {
    "video.mp4": "the clip, H.264 (yuv420p, crf 12): lossy, so compare against frames/ when bit-exactness matters",
    "roi.json": 'the ROI on the reference frame: {"ref_frame": 0, "polygons": [[[x, y], ...]]} in pixels',
    "gt_uv.npy": "(T, H, W, 2) float32 uv of the background surface at each pixel, bundle convention "
    "(x = W/2 + u * atlas_span_px/2, y = H/2 + v * atlas_span_px/2 in reference-frame pixels)",
    "gt_visibility.npy": "(T, H, W) float32 in [0, 1]: the pixel shows the ROI surface (soft at edges)",
    "gt_occlusion.npy": "(T, H, W) float32 in [0, 1]: coverage by any occluder, inside the ROI or not",
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


def parse_rect(text: str) -> tuple[float, float, float | None, float | None]:
    """'X,Y' or 'X,Y,W,H' (frame pixels) -> (x, y, w or None, h or None)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,W,H, got {text!r}") from None
    if len(values) not in (2, 4) or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,W,H, got {text!r}")
    if len(values) == 4 and (values[2] <= 0 or values[3] <= 0):
        raise argparse.ArgumentTypeError(f"W and H must be positive, got {text!r}")
    return (values[0], values[1], None, None) if len(values) == 2 else tuple(values)  # type: ignore[return-value]


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
    parser.add_argument(
        "--preset", choices=PRESETS, default="default",
        help="default: 48 frames of 256x144, one occluder; hard: 70 frames of 768x432, a 16-24 %% pan, zoom, "
        "rotation, 1-2 occluders that hide most of the ROI for 10+ frames, gain 0.8-1.2 and a moving shadow",
    )  # fmt: skip
    parser.add_argument("--frames", type=_int_in(2, 10000), default=None, help="number of frames (preset's)")
    parser.add_argument("--size", type=parse_size, default=None, help="WxH (preset's: 256x144 or 768x432)")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--occluders", type=_int_in(0, 16), default=None,
        help="occluders crossing the ROI (default: 1; hard: 1 or 2 from the seed, 1..4 allowed)",
    )  # fmt: skip
    parser.add_argument("--no-lighting", action="store_true", help="constant illumination")
    parser.add_argument("--fps", type=_positive_float, default=30.0, help="frame rate (default 30)")
    parser.add_argument(
        "--png", action="store_true", help="also write the exact frames as frames/00000.png ..."
    )
    parser.add_argument(
        "--bundle", action="store_true", help="also write the ground-truth bundle as ground_truth.vatlas"
    )
    parser.add_argument("--atlas-size", type=_int_in(16, 8192), default=1024, help="atlas size for --bundle")
    parser.add_argument(
        "--paste", type=Path, default=None, metavar="IMAGE",
        help="also write the ground-truth edited clip of this image (PNG/JPEG, alpha kept) pasted in frame "
        "space as gt_edited/00000.png ...",
    )  # fmt: skip
    parser.add_argument("--paste-frame", type=_int_in(0, 9999), default=0, help="frame the image is pasted on")
    parser.add_argument(
        "--paste-rect", type=parse_rect, default=None, metavar="X,Y[,W,H]",
        help="where on that frame (frame pixels; default: the image's size, centred on the ROI)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _read_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    from vatlas.cli import CliError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: not a readable image ({exc})") from None


def run(args: argparse.Namespace) -> int:
    from vatlas.cli import CliError
    from vatlas.models.bundle import save_bundle
    from vatlas.synth import make_scene
    from vatlas.video import write_mp4, write_png_sequence

    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder")
    paste = _read_rgba(args.paste) if args.paste is not None else None
    try:
        scene = make_scene(
            frames=args.frames,
            size=args.size,
            seed=args.seed,
            occluders=args.occluders,
            lighting=not args.no_lighting,
            fps=args.fps,
            preset=args.preset,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if paste is not None and args.paste_frame >= scene.num_frames:
        raise CliError(f"--paste-frame {args.paste_frame} is beyond the clip's {scene.num_frames} frames")
    out.mkdir(parents=True, exist_ok=True)
    write_mp4(out / "video.mp4", scene.frames, scene.fps, crf=12)
    scene.roi.save(out / "roi.json")
    np.save(out / "gt_uv.npy", scene.gt_uv)
    np.save(out / "gt_visibility.npy", scene.gt_visibility)
    np.save(out / "gt_illumination.npy", scene.gt_illumination)
    np.save(out / "gt_occlusion.npy", scene.gt_occlusion)
    np.save(out / "gt_tracks.npy", scene.gt_track(np.concatenate(scene.roi.polygons)))
    files = dict(GT_FILES)
    if args.png:
        write_png_sequence(out / "frames", scene.frames)
        files["frames/"] = "the exact rendered frames (lossless PNG), which the ground truth describes"
    if args.bundle:
        save_bundle(scene.ground_truth_bundle(args.atlas_size), out / "ground_truth.vatlas")
        files["ground_truth.vatlas"] = "a bundle baked from the ground truth (a perfect fit)"
    paste_meta = None
    if paste is not None:
        rect = _paste_rect(scene, paste, args.paste_frame, args.paste_rect)
        write_png_sequence(out / "gt_edited", scene.render_pasted(paste, frame=args.paste_frame, rect=rect))
        files["gt_edited/"] = (
            f"the ground-truth edited clip: {args.paste.name} pasted on frame {args.paste_frame} over rect "
            "[x, y, w, h] (see paste), alpha-over the source there and re-lit elsewhere (lossless PNG)"
        )
        paste_meta = {"image": str(args.paste), "frame": args.paste_frame, "rect": list(rect)}
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
    if paste_meta is not None:
        meta["paste"] = paste_meta
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {scene.num_frames} frames of {scene.width}x{scene.height} and ground truth to {out}")
    return 0


def _paste_rect(
    scene: Any, rgba: np.ndarray, frame: int, given: tuple[float, float, float | None, float | None] | None
) -> tuple[float, float, float, float]:
    """The paste's rect on its frame: as given, or the image's size centred on the ROI there."""
    h, w = rgba.shape[:2]
    if given is None:
        centre = scene.gt_track(scene.roi.polygons[0].mean(axis=0, keepdims=True))[frame, 0]
        return float(np.round(centre[0] - w / 2)), float(np.round(centre[1] - h / 2)), float(w), float(h)
    x, y, rw, rh = given
    return float(x), float(y), float(w if rw is None else rw), float(h if rh is None else rh)
