"""`vatlas demo`: the main job on an embedded default.

Generates a small synthetic clip (textured background under a moving camera, an occluder crossing the ROI, a
lighting change), fits an RNA bundle of it, and serves it with the web client. On a CUDA machine the fit runs on
the GPU; on a CPU the default size fits in a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text}")
    return w, h


def register(subparsers: argparse._SubParsersAction) -> None:
    from vatlas.commands.serve import add_token_arguments, host_port

    parser = subparsers.add_parser("demo", help="fit a generated demo clip and serve it with the web client")
    parser.add_argument("--workdir", type=Path, default=Path("vatlas-demo"),
                        help="where the clip, bundle and session data go (default ./vatlas-demo)")
    parser.add_argument("--frames", type=int, default=24, help="demo clip length (default 24)")
    parser.add_argument("--size", type=_size, default=None, metavar="WxH",
                        help="demo clip size (default 320x180 on CPU, 768x432 on CUDA)")
    parser.add_argument("--preset", default=None, choices=("draft", "standard", "best"),
                        help="fit preset (default draft on CPU, standard on CUDA)")
    parser.add_argument("--iters", type=int, default=None,
                        help="main-stage iterations (default: the preset's on CUDA, 400 on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--http", type=host_port, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                        help="web client address (default 127.0.0.1:8080)")
    parser.add_argument("--grpc", type=host_port, default=("127.0.0.1", 50051), metavar="HOST:PORT",
                        help="gRPC address (default 127.0.0.1:50051)")
    add_token_arguments(parser)
    parser.add_argument("--refit", action="store_true", help="fit again even if the demo bundle exists")
    parser.add_argument("--no-serve", action="store_true", help="stop after fitting")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vatlas.models.bundle import load_bundle
    from vatlas.models.config import FitConfig
    from vatlas.models.fit import fit, resolve_device
    from vatlas.roi import load_roi
    from vatlas.synth import make_scene
    from vatlas.video import read_video, write_mp4

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    size = args.size or ((768, 432) if on_gpu else (320, 180))
    preset = args.preset or ("standard" if on_gpu else "draft")
    workdir: Path = args.workdir
    models_dir = workdir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    video_path, roi_path = workdir / "demo.mp4", workdir / "demo-roi.json"
    bundle_path = models_dir / "demo.vatlas"

    if not video_path.exists() or not roi_path.exists() or args.refit:
        print(f"vatlas demo: generating a {args.frames}-frame {size[0]}x{size[1]} clip in {workdir}/", flush=True)
        scene = make_scene(frames=args.frames, size=size, seed=7, occluders=1, lighting=True)
        write_mp4(video_path, scene.frames, scene.fps)
        roi_path.write_text(json.dumps(scene.roi.to_json()))

    if not bundle_path.exists() or args.refit:
        video = read_video(video_path)
        roi = load_roi(roi_path)
        # On a CPU the demo trades fit quality for a few minutes' wait: a smaller batch and a short schedule.
        overrides = {} if on_gpu else {"schedule": {"batch_size": 4096}}
        config = FitConfig.preset(preset, size=size, **overrides)
        iters = args.iters or (None if on_gpu else 400)
        if iters:
            config = config.scaled_iters(iters)
        print(f"vatlas demo: fitting on {device} with the {preset!r} preset -> {bundle_path}", flush=True)
        _, metrics = fit(video.frames, roi, config=config, fps=video.fps, device=str(device), out=bundle_path,
                         source={"path": str(video_path)})
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        print("vatlas demo: fit metrics " + json.dumps(shown, default=str), flush=True)
    else:
        load_bundle(bundle_path)  # fail early on a damaged bundle rather than inside the server
        print(f"vatlas demo: reusing {bundle_path} (pass --refit to fit again)", flush=True)

    if args.no_serve:
        return 0

    from vatlas.commands.serve import resolve_token
    from vatlas.server.app import ServerConfig, serve_forever

    config = ServerConfig(models_dir=models_dir, grpc_host=args.grpc[0], grpc_port=args.grpc[1],
                          http_host=args.http[0], http_port=args.http[1], token=resolve_token(args),
                          data_dir=workdir / "sessions", device=str(device))
    print("vatlas demo: serving; open the URL printed below in a browser (it carries the access token; "
          "Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, open_query={"bundle": "demo"}))
    return 0
