"""`vatlas fit VIDEO --roi ROI --out BUNDLE`: fit an RNA atlas to a clip and bake a bundle."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    from vatlas.models.fit_events import JsonEvents
    from vatlas.models.prepare import FitRequest, check_output, prepare_fit, run_prepared
    from vatlas.roi import load_roi

    check_output(args.out)  # first: a fit takes minutes to hours
    size = parse_size(args.size) if args.size is not None else None
    frame_range = parse_frames(args.frames) if args.frames is not None else None
    if args.ref_frame is not None and args.ref_frame < 0:
        raise CliError(f"--ref-frame must be >= 0, got {args.ref_frame}")
    if not args.video.exists():  # before the ROI: the video is the first thing named
        raise CliError(f"{args.video}: no such video file or folder")
    request = FitRequest(video=args.video, roi=load_roi(args.roi, ref_frame=args.ref_frame), out=args.out,
                         size=size, frames=frame_range, preset=args.preset, iters=args.iters,
                         batch_size=args.batch_size, atlas_size=args.atlas_size, device=args.device)
    prepared = prepare_fit(request)
    if not args.quiet:
        print(prepared.preset_line, file=sys.stderr)
    events = JsonEvents(args.json) if args.json is not None else None
    human = sys.stderr if args.json == "-" else sys.stdout  # stdout holds only JSON lines then
    hooks = events.hooks(args.preview_seconds) if events is not None else {}
    bundle, metrics = run_prepared(prepared, args.out, resume=args.resume, show_progress=not args.quiet,
                                   verbose=args.verbose, **hooks)
    if events is not None:
        events.done(str(args.out), bundle, metrics)
        events.close()
    w, h = prepared.working_size
    print(f"wrote {args.out}: {bundle.num_frames} frames {bundle.width}x{bundle.height} (fitted at {w}x{h}), atlas {bundle.atlas_size}^2, "
          f"ROI PSNR {metrics['roi_psnr']:.2f} dB, {metrics['total_seconds']:.1f} s", file=human)
    worst = metrics.get("roi_psnr_worst_frames") or []
    if worst:
        print("worst-fitting frames: " + ", ".join(f"{int(t)} ({p:.1f} dB)" for t, p, _ in worst), file=human)
    return 0
