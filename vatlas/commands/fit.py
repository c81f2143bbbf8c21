"""`vatlas fit VIDEO --roi ROI --out BUNDLE`: fit an RNA atlas to a clip and bake a bundle."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vatlas.errors import VatlasError


class CliError(VatlasError):
    """Bad command-line input for `vatlas fit` (one line, exit 2)."""


def parse_size(text: str) -> tuple[int, int]:
    """'768x432' -> (768, 432)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise CliError(f"--size must look like WxH (e.g. 768x432), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise CliError(f"--size must be between 16x16 and 8192x8192, got {text!r}")
    return width, height


def parse_frames(text: str) -> tuple[int, int | None]:
    """'a:b' (b exclusive, either may be empty) -> (start, stop)."""
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not match:
        raise CliError(f"--frames must look like START:STOP (e.g. 0:70), got {text!r}")
    start = int(match.group(1) or 0)
    stop = int(match.group(2)) if match.group(2) else None
    if stop is not None and stop <= start:
        raise CliError(f"--frames {text} is empty or reversed: STOP must be greater than START (STOP exclusive)")
    if stop is not None and stop == start + 1:
        raise CliError(f"--frames {text} is one frame; a fit needs at least 2 (e.g. {start}:{start + 2})")
    return start, stop


def check_output(out: Path) -> None:
    """Fail before any work when the bundle could not be written (the fit takes minutes to hours)."""
    if out.suffix.lower() != ".vatlas":
        raise CliError(f"--out must be a bundle ending in .vatlas (the server lists *.vatlas), got {str(out)!r}")
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name ending in .vatlas")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CliError(f"--out {out}: the folder {parent} is not writable")


def choose_preset(named: str | None, device_type: str) -> tuple[str, str]:
    """The preset and the one line that says why: as named, else draft on a CPU and standard on a GPU."""
    if named is None:
        named = "standard" if device_type == "cuda" else "draft"
        why = "the default on a GPU" if device_type == "cuda" else "the default on a CPU; --preset standard is GPU-sized"
    elif device_type == "cpu" and named != "draft":
        why = "sized for a GPU: hours on this CPU, --preset draft takes minutes"
    else:
        why = "as named"
    return named, f"preset: {named} ({why})"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit", help="fit an RNA atlas to a video and an ROI, write a bundle")
    parser.add_argument("video", type=Path, help="video file or folder of numbered images")
    parser.add_argument("--roi", type=Path, required=True, help="ROI JSON or mask image (source-video pixels)")
    parser.add_argument("--out", type=Path, required=True, help="output bundle path (.vatlas)")
    parser.add_argument("--ref-frame", type=int, default=None, help="reference frame (overrides the ROI file's)")
    parser.add_argument("--size", default=None, help="working size WxH (default: long side <= 768)")
    parser.add_argument("--frames", default=None, help="frame range START:STOP of the source (STOP exclusive)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--preset", default=None, choices=("draft", "standard", "best"),
                        help="training schedule (default: draft on a CPU, standard on a GPU)")
    parser.add_argument("--iters", type=int, default=None, help="main-stage iterations (other stages scale)")
    parser.add_argument("--batch-size", type=int, default=None, help="pixels per training step")
    parser.add_argument("--atlas-size", type=int, default=None, help="atlas texture size (>= 1024)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.ckpt after an interruption")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="every loss term in the progress readout")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="machine-readable progress, one JSON object a line, to FILE ('-': stdout, and the "
                             "human lines go to stderr)")
    parser.add_argument("--preview-seconds", type=float, default=0.0, metavar="S",
                        help="with --json: a JPEG of the reconstruction every S seconds while training (0: none)")
    parser.set_defaults(func=run)


class JsonEvents:
    """`--json`: progress, preview and done events as JSON lines (flushed each, so a reader sees them live).

    {"event": "progress", "stage", "stage_number", "stage_count", "done", "units", "fraction", "eta_seconds"
    (null until known), "elapsed_seconds", "readout"}; {"event": "preview", "frame", "width", "height",
    "jpeg" (base64)}; {"event": "done", "bundle", "frames", "width", "height", "roi_psnr", "seconds"}.
    Called from the fit's threads: one lock keeps lines whole.
    """

    def __init__(self, target: str) -> None:
        self.stream = sys.stdout if target == "-" else open(target, "w", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def progress(self, state: dict[str, Any]) -> None:
        self.write("progress", **state)

    def preview(self, rgb: np.ndarray, frame: int) -> None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.write("preview", frame=frame, width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                       jpeg=base64.b64encode(jpeg.tobytes()).decode("ascii"))

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


def run(args: argparse.Namespace) -> int:
    from vatlas.models.config import FitConfig, working_size
    from vatlas.models.fit import FitError, fit, resolve_device
    from vatlas.roi import load_roi
    from vatlas.video import content_hash, read_video

    check_output(args.out)
    size = parse_size(args.size) if args.size is not None else None
    frame_range = parse_frames(args.frames) if args.frames is not None else None
    if args.iters is not None and args.iters < 1:
        raise CliError(f"--iters must be >= 1, got {args.iters}")
    if not args.video.exists():
        raise CliError(f"{args.video}: no such video file or folder")
    if args.ref_frame is not None and args.ref_frame < 0:
        raise CliError(f"--ref-frame must be >= 0, got {args.ref_frame}")
    roi = load_roi(args.roi, ref_frame=args.ref_frame)
    try:
        device = resolve_device(args.device)
    except FitError as exc:
        raise CliError(str(exc)) from None
    preset, preset_line = choose_preset(args.preset, device.type)
    try:
        overrides: dict[str, Any] = {}
        if args.atlas_size is not None:
            overrides["atlas_size"] = args.atlas_size
        if args.batch_size is not None:
            if args.batch_size < 16:
                raise CliError(f"--batch-size must be >= 16, got {args.batch_size}")
            overrides["batch_size"] = args.batch_size
        config = FitConfig.preset(preset, **overrides)
        if args.iters is not None:
            config = config.scaled_iters(args.iters)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    video = read_video(args.video, frames=frame_range)
    src_w, src_h = video.source_size
    start = video.frame_range[0]
    roi.validate(src_w, src_h, start + video.num_frames)
    if not start <= roi.ref_frame < start + video.num_frames:
        raise CliError(f"reference frame {roi.ref_frame} is outside the selected frames "
                       f"{start}:{start + video.num_frames}")
    if video.num_frames < 2:
        raise CliError(f"{args.video}: need at least 2 frames, got {video.num_frames}")
    w, h = working_size((src_w, src_h), size, config.max_side)
    frames = video.frames
    if (w, h) != (video.width, video.height):
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    work_roi = roi.scaled(w / src_w, h / src_h)
    work_roi.ref_frame = roi.ref_frame - start
    # fit small, deliver at full size: the bundle is baked over the source frames
    delivered_roi = roi.scaled(1.0, 1.0)
    delivered_roi.ref_frame = work_roi.ref_frame
    full_size = {"source_frames": video.frames, "source_roi": delivered_roi} if frames is not video.frames else {}
    config.size = (w, h)
    source = {
        "path": str(args.video.resolve()),
        "sha256": content_hash(args.video),
        "size": [src_w, src_h],
        "frame_range": list(video.frame_range),
        "stride": video.stride,
        "working_size": [w, h],
        **video.info,  # timestamps, rotation, colour and audio location, for an export like the source
    }
    if not args.quiet:
        print(preset_line, file=sys.stderr)
    events = JsonEvents(args.json) if args.json is not None else None
    human = sys.stderr if args.json == "-" else sys.stdout  # stdout holds only JSON lines then
    hooks: dict[str, Any] = {}
    if events is not None:
        hooks["progress_sink"] = events.progress
        if args.preview_seconds > 0:
            hooks.update(preview=events.preview, preview_seconds=args.preview_seconds)
    try:
        bundle, metrics = fit(frames, work_roi, config=config, fps=video.fps, device=device.type, out=args.out,
                              resume=args.resume, show_progress=not args.quiet, source=source,
                              verbose=args.verbose, **full_size, **hooks)
    except FitError as exc:
        raise CliError(str(exc)) from None
    if events is not None:
        events.write("done", bundle=str(args.out), frames=bundle.num_frames, width=bundle.width,
                     height=bundle.height, roi_psnr=round(float(metrics["roi_psnr"]), 2),
                     seconds=metrics["total_seconds"])
        events.close()
    print(f"wrote {args.out}: {bundle.num_frames} frames {bundle.width}x{bundle.height} (fitted at {w}x{h}), atlas {bundle.atlas_size}^2, "
          f"ROI PSNR {metrics['roi_psnr']:.2f} dB, {metrics['total_seconds']:.1f} s", file=human)
    worst = metrics.get("roi_psnr_worst_frames") or []
    if worst:
        print("worst-fitting frames: " + ", ".join(f"{int(t)} ({p:.1f} dB)" for t, p, _ in worst), file=human)
    return 0
