"""`vatlas export BUNDLE [--edits DOC] -o out.mp4|out.mov|DIR [--codec ...] [--frames a:b]`: the edited
clip as H.264, ProRes or PNGs, with the source's timing, rotation, colour and audio."""

from __future__ import annotations

import argparse
import re
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
    parser.add_argument("--frames", default=None, metavar="START:STOP",
                        help="frame range, STOP exclusive, either side optional (5:6 is frame 5 alone); "
                             "default all; the audio is cut to the same span")
    parser.add_argument("--mode", choices=RENDER_MODES, default=RENDER_MODES[0], help=MODE_HELP)
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better), default 18")
    parser.add_argument("--no-audio", action="store_true", help="leave the source's audio out")
    add_preview_options(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def frame_list(text: str | None, num_frames: int) -> list[int]:
    """`--frames START:STOP` (STOP exclusive, either side optional) -> the frames; one line saying what is
    wrong otherwise. A single number is refused: it reads as "from frame N" as easily as "frame N"."""
    if text is None:
        return list(range(num_frames))
    last = f"the clip has frames 0..{num_frames - 1}"
    if re.fullmatch(r"\s*\d+\s*", text):
        n = int(text)
        raise CliError(f"--frames takes START:STOP (STOP exclusive): {n}:{n + 1} for frame {n} alone, "
                       f"{n}: for frame {n} to the end")
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not match:
        raise CliError(f"--frames must look like START:STOP with whole numbers (e.g. 0:{num_frames}), got {text!r}")
    start = int(match.group(1)) if match.group(1) else 0
    stop = int(match.group(2)) if match.group(2) else num_frames
    if stop <= start:
        raise CliError(f"--frames {text} is empty or reversed: STOP must be greater than START (STOP exclusive)")
    if start >= num_frames or stop > num_frames:
        raise CliError(f"--frames {text} goes past the end: {last} (STOP at most {num_frames})")
    return list(range(start, stop))


def check_output(out: Path, codec: str) -> None:
    """Fail before rendering when the output cannot be written."""
    parent = out if codec == "png" else out.parent
    while codec == "png" and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # a PNG folder is created with its missing parents
    if not parent.is_dir():
        raise CliError(f"{out}: the folder {parent} does not exist")
    if codec != "png" and out.is_dir():
        raise CliError(f"{out} is a folder; give a file name ending in .mp4 or .mov (or no suffix for PNGs)")


def run(args: argparse.Namespace) -> int:
    from vatlas.commands.render import load_engine
    from vatlas.server.export import export_clip
    from vatlas.video import choose_codec

    try:
        codec = choose_codec(args.output, args.codec)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not 0 <= args.crf <= 51:
        raise CliError(f"--crf must be in 0..51, got {args.crf}")
    check_output(args.output, codec)
    if args.frames is not None:
        frame_list(args.frames, 1 << 30)  # the form is checked before the bundle loads; the range after
    engine = load_engine(args.bundle, args.edits, args.device, compile=None)
    scale = preview_scale_of(args, engine.bundle)
    frames = frame_list(args.frames, engine.bundle.num_frames)
    out = export_clip(engine, args.output, frames=frames, mode=args.mode, crf=args.crf, codec=codec, scale=scale,
                      audio=not args.no_audio, show_progress=not args.quiet)
    print(f"wrote {out} ({len(frames)} frames, {codec})")
    return 0
