"""`vatlas render BUNDLE [--edits DOC] --frame N -o out.png`: one edited frame to an image file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vatlas.cli import CliError

# engine.MODES, spelled out here so `--help` does not import torch.
RENDER_MODES = ("layers", "reconstruction")
MODE_HELP = ("layers: the edits laid over the source frames, untouched pixels exactly the source's (default); "
             "reconstruction: the model's reconstruction of the edited surface inside the visible ROI "
             "(a diagnostic)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="render one edited frame of a bundle to an image")
    parser.add_argument("bundle", type=Path, help="a baked bundle (.vatlas)")
    parser.add_argument("--edits", type=Path, default=None, help="an edit document (JSON, version 1)")
    parser.add_argument("--frame", type=int, required=True, help="frame number (0-based)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output image (.png, .jpg or .webp)")
    parser.add_argument("--mode", choices=RENDER_MODES, default=RENDER_MODES[0], help=MODE_HELP)
    add_preview_options(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.set_defaults(func=run)


def add_preview_options(parser: argparse.ArgumentParser) -> None:
    """--scale / --max-side: a smaller preview instead of the bundle's full size (the default)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scale", type=float, default=None, help="preview scale in (0, 1], default 1 (full size)")
    group.add_argument("--max-side", type=int, default=None, help="preview: fit the long side into this many pixels")


def preview_scale_of(args: argparse.Namespace, bundle: Any) -> float:
    """The render scale that --scale / --max-side ask for (one-line CliError when out of range)."""
    from vatlas.server.export import preview_scale

    try:
        return preview_scale((bundle.width, bundle.height), scale=args.scale, max_side=args.max_side)
    except ValueError as exc:
        raise CliError(f"--scale/--max-side: {exc}") from None


def load_engine(bundle_path: Path, edits_path: Path | None, device: str, *, compile: bool | None = False) -> Any:
    """Load a bundle and replay an edit document into a fresh EditEngine (errors are one line)."""
    from vatlas.models.bundle import load_bundle
    from vatlas.server.edits.document import DocumentError, load_document
    from vatlas.server.edits.engine import EditEngine
    from vatlas.server.edits.ops import OpLimits
    from vatlas.server.errors import CoreError

    bundle = load_bundle(bundle_path)
    engine = EditEngine(bundle, device, compile=compile)
    if edits_path is not None:
        ops = load_document(edits_path, OpLimits.for_bundle(bundle))
        for op in ops:
            try:
                engine.apply(op)
            except CoreError as exc:
                raise DocumentError(f"{edits_path}: op {exc.op_id or '?'}: {exc.message}") from None
    return engine


def run(args: argparse.Namespace) -> int:
    from vatlas.server.encoders import encode

    suffix = args.output.suffix.lower()
    formats = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
    if suffix not in formats:
        raise CliError(f"output must end in .png, .jpg or .webp, got {args.output.name!r}")
    engine = load_engine(args.bundle, args.edits, args.device)
    n = engine.bundle.num_frames
    if not 0 <= args.frame < n:
        raise CliError(f"frame {args.frame} is out of range (the clip has frames 0..{n - 1})")
    frame = engine.render([args.frame], mode=args.mode, scale=preview_scale_of(args, engine.bundle))
    data = encode(frame, formats[suffix], quality=95)[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} (frame {args.frame}, {frame.shape[2]}x{frame.shape[1]})")
    return 0
