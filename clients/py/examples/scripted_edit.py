"""Scripted end-to-end edit of a clip: fit -> paste a logo on frame 0 -> add a tracked sticker -> export MP4.

    python clients/py/examples/scripted_edit.py --address localhost:50051 --token secret \
        --video clip.mp4 --roi roi.json --out edited.mp4 --size 160x90 --iterations 30

With ``--bundle NAME`` the fit is skipped and an existing bundle is edited. The logo and the sticker go to the
middle of the region the server reports as editable (``session.roi()``). Prints one JSON line describing what
was done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from vatlas_client import Client, ExportProgress, FitProgress, OpRejected, VatlasError


def make_logo(size: int = 128) -> Image.Image:
    """A stand-in logo: a red disc with a white ring on a transparent background."""
    logo = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((4, 4, size - 5, size - 5), fill=(220, 30, 40, 255), outline=(255, 255, 255, 255),
                 width=max(2, size // 12))
    draw.rectangle((size * 3 // 8, size // 4, size * 5 // 8, size * 3 // 4), fill=(255, 255, 255, 255))
    return logo


def make_sticker(size: int = 64) -> np.ndarray:
    """A yellow square with a dark border, as an RGBA numpy array."""
    sticker = np.full((size, size, 4), (20, 20, 20, 255), np.uint8)
    sticker[4:-4, 4:-4] = (250, 210, 20, 255)
    return sticker


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 160x90, got {text!r}") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="server host:port")
    parser.add_argument("--token", default=None, help="server access token")
    parser.add_argument("--video", type=Path, help="local video to fit (needed unless --bundle)")
    parser.add_argument("--roi", type=Path, help="roi.json: ROI polygons on the reference frame")
    parser.add_argument("--bundle", help="edit this existing bundle instead of fitting")
    parser.add_argument("--name", default="scripted-edit", help="name of the bundle to fit")
    parser.add_argument("--size", type=parse_size, default=(160, 90), help="fit resolution WxH (default 160x90)")
    parser.add_argument("--iterations", type=int, default=30, help="fit iterations (default 30)")
    parser.add_argument("--preset", default="draft", choices=("draft", "standard", "best"))
    parser.add_argument("--logo", type=Path, help="logo image (default: a generated one)")
    parser.add_argument("--out", type=Path, default=Path("edited.mp4"), help="MP4 to write")
    parser.add_argument("--preview", type=Path, help="also save the edited frame 0 as PNG here")
    args = parser.parse_args(argv)
    if args.bundle is None and (args.video is None or args.roi is None):
        parser.error("give --video and --roi to fit, or --bundle to edit an existing bundle")

    started = time.monotonic()
    warnings: list[str] = []
    try:
        with Client(args.address, token=args.token) as client:
            if args.bundle:
                bundle = client.bundle_info(args.bundle)
            else:
                shown: dict[str, tuple[float, float]] = {}

                def show_fit(p: FitProgress) -> None:
                    # one line per stage, per 10 % of progress or per 10 s, not one per server heartbeat
                    fraction, at = shown.get(p.stage, (-1.0, 0.0))
                    if p.fraction - fraction >= 0.1 or time.monotonic() - at >= 10 or p.done:
                        shown[p.stage] = (p.fraction, time.monotonic())
                        print(f"fit {p.stage:>10} {p.fraction:6.1%} {p.message}", file=sys.stderr)

                bundle = client.fit(args.video, args.name, args.roi, preset=args.preset, iterations=args.iterations,
                                    width=args.size[0], height=args.size[1], progress=show_fit)
            fitted = time.monotonic()
            logo = Image.open(args.logo) if args.logo else make_logo()

            with client.open_session(bundle.name, name="scripted-edit") as session:
                # The server says where edits can land: the ROI's visible box on each frame.
                ref = bundle.ref_frame
                roi = session.roi()
                box, centre = roi.box(ref), roi.centre(ref)
                if box is None or centre is None:
                    raise SystemExit(f"scripted_edit: the ROI of {bundle.name} is not visible on frame {ref}")
                cx, cy = centre
                side = max(4.0, 0.6 * min(box[2], box[3]))
                logo_seq = session.texture(logo, frame=ref, rect=[cx - side / 2, cy - side / 2, side, side])
                sticker_seq = None
                try:
                    sticker_seq = session.sticker(make_sticker(), frame=ref, position=(cx, cy),
                                                  size=[side / 2, side / 2])
                except OpRejected as exc:
                    # A very short fit may leave no tracked surface there yet: say so, keep going.
                    warnings.append(f"the sticker was refused: {exc.message} (fit longer with --iterations)")
                    print(f"scripted_edit: warning: {warnings[-1]}", file=sys.stderr)
                if args.preview:
                    client.render_image(session, ref).save(args.preview)

                def show_export(p: ExportProgress) -> None:
                    print(f"export {p.stage:>10} {p.fraction:6.1%} {p.received_bytes} bytes", file=sys.stderr)

                out = client.export(session, args.out, format="mp4", progress=show_export)
                session_id = session.session_id
    except VatlasError as exc:
        print(f"scripted_edit: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "bundle": bundle.name, "frames": bundle.frames, "size": [bundle.width, bundle.height],
        "session": session_id, "logo_seq": int(logo_seq), "logo_op": logo_seq.op_id,
        "sticker_seq": None if sticker_seq is None else int(sticker_seq),
        "sticker_op": None if sticker_seq is None else sticker_seq.op_id, "out": str(out),
        "out_bytes": out.stat().st_size, "fit_seconds": round(fitted - started, 2),
        "total_seconds": round(time.monotonic() - started, 2), "warnings": warnings,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
