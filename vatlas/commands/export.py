"""`vatlas export BUNDLE [--edits DOC] -o out.mp4|DIR [--frames a:b]`: the edited clip as H.264 or PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

from vatlas.cli import CliError
from vatlas.commands.render import MODE_HELP, RENDER_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the edited clip to an MP4 (H.264) or a PNG folder")
    parser.add_argument("bundle", type=Path, help="a baked bundle (.vatlas)")
    parser.add_argument("--edits", type=Path, default=None, help="an edit document (JSON, version 1)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="out.mp4, or a folder for PNGs")
    parser.add_argument("--frames", default=None, help="frame range a:b (b exclusive), default all")
    parser.add_argument("--mode", choices=RENDER_MODES, default=RENDER_MODES[0], help=MODE_HELP)
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better), default 18")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vatlas.commands.render import load_engine
    from vatlas.server.export import export_clip, parse_frame_range

    suffix = args.output.suffix.lower()
    if suffix not in ("", ".mp4"):
        raise CliError(f"output must be a .mp4 file or a folder (no suffix), got {args.output.name!r}")
    if not 0 <= args.crf <= 51:
        raise CliError(f"--crf must be in 0..51, got {args.crf}")
    engine = load_engine(args.bundle, args.edits, args.device, compile=None)
    try:
        frames = parse_frame_range(args.frames, engine.bundle.num_frames)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = export_clip(engine, args.output, frames=frames, mode=args.mode, crf=args.crf,
                      show_progress=not args.quiet)
    print(f"wrote {out} ({len(frames)} frames)")
    return 0
