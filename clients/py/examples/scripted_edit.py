"""Scripted end-to-end edit of a clip: fit -> paste a logo on frame 0 -> add a tracked sticker -> export MP4.

    python clients/py/examples/scripted_edit.py --address localhost:50051 --token secret \
        --video clip.mp4 --roi roi.json --out edited.mp4 --size 160x90 --iterations 30

With ``--bundle NAME`` the fit is skipped and an existing bundle is edited (the ROI, if given, is then in the
bundle's pixels). Prints one JSON line describing what was done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from vatlas_client import Client, ExportProgress, FitProgress, VatlasError


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


def video_size(path: Path) -> tuple[int, int]:
    """(width, height) of a video file."""
    import av  # only needed to scale a ROI drawn on the source video

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def roi_box(roi_path: Path | None, scale: tuple[float, float], frame_size: tuple[int, int]) -> tuple[float, ...]:
    """Bounding box (x0, y0, x1, y1) of the ROI in bundle pixels (the whole frame when no ROI is given)."""
    if roi_path is None:
        return (0.0, 0.0, float(frame_size[0]), float(frame_size[1]))
    polygons = json.loads(roi_path.read_text())["polygons"]
    points = np.array([p for poly in polygons for p in poly], dtype=np.float64) * np.array(scale)
    return (*points.min(axis=0), *points.max(axis=0))


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
    try:
        with Client(args.address, token=args.token) as client:
            if args.bundle:
                bundle = client.bundle_info(args.bundle)
                scale = (1.0, 1.0)
            else:
                def show_fit(p: FitProgress) -> None:
                    print(f"fit {p.stage:>12} {p.fraction:6.1%} it {p.iteration}", file=sys.stderr)

                bundle = client.fit(args.video, args.name, args.roi, preset=args.preset, iterations=args.iterations,
                                    width=args.size[0], height=args.size[1], progress=show_fit)
                src_w, src_h = video_size(args.video)
                scale = (bundle.width / src_w, bundle.height / src_h)
            fitted = time.monotonic()

            x0, y0, x1, y1 = roi_box(args.roi, scale, (bundle.width, bundle.height))
            cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0)
            logo = Image.open(args.logo) if args.logo else make_logo()

            with client.open_session(bundle.name, name="scripted-edit") as session:
                ref = bundle.ref_frame
                logo_seq = session.texture(logo, frame=ref, rect=[cx - side * 0.3, cy - side * 0.3, side * 0.6,
                                                                   side * 0.6])
                sticker_seq = session.sticker(make_sticker(), frame=ref, position=(cx + side * 0.25, cy),
                                              size=[side * 0.3, side * 0.3])
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
        "sticker_seq": int(sticker_seq), "sticker_op": sticker_seq.op_id, "out": str(out),
        "out_bytes": out.stat().st_size, "fit_seconds": round(fitted - started, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
