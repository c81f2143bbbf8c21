"""`vatlas export BUNDLE [--edits DOC] -o out.mp4|out.mov|DIR [--codec ...] [--frames a:b]`: the edited
clip as H.264, ProRes or PNGs, with the source's timing, rotation, colour and audio."""

from __future__ import annotations

import argparse
from pathlib import Path

from vatlas.cli import CliError
from vatlas.commands.render import MODE_HELP, RENDER_MODES, add_preview_options, preview_scale_of

# vatlas.video.CODECS, spelled out so `--help` does not import PyAV.
CODECS = ("h264", "prores", "png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the edited clip to H.264, ProRes or a PNG folder")
    parser.add_argument("bundle", type=Path, help="a baked bundle (.vatlas)")
    parser.add_argument("--edits", type=Path, default=None, help="an edit document (JSON, version 1)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="out.mp4 (H.264), out.mov (ProRes 4444, or H.264 with --codec h264), "
                             "or a folder for PNGs")
    parser.add_argument("--codec", choices=CODECS, default=None,
                        help="default: from the output's suffix (.mp4 h264, .mov prores, none png)")
    parser.add_argument("--frames", default=None, help="frame range a:b (b exclusive), default all; "
                                                       "the audio is cut to the same span")
    parser.add_argument("--mode", choices=RENDER_MODES, default=RENDER_MODES[0], help=MODE_HELP)
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better), default 18")
    parser.add_argument("--no-audio", action="store_true", help="leave the source's audio out")
    add_preview_options(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vatlas.commands.render import load_engine
    from vatlas.server.export import export_clip, parse_frame_range
    from vatlas.video import choose_codec

    try:
        codec = choose_codec(args.output, args.codec)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not 0 <= args.crf <= 51:
        raise CliError(f"--crf must be in 0..51, got {args.crf}")
    engine = load_engine(args.bundle, args.edits, args.device, compile=None)
    scale = preview_scale_of(args, engine.bundle)
    try:
        frames = parse_frame_range(args.frames, engine.bundle.num_frames)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = export_clip(engine, args.output, frames=frames, mode=args.mode, crf=args.crf, codec=codec, scale=scale,
                      audio=not args.no_audio, show_progress=not args.quiet)
    print(f"wrote {out} ({len(frames)} frames, {codec})")
    return 0
