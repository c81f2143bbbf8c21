"""Take docs/screenshot.png: the web client in headless Chromium, two people editing one session.

Starts `vatlas serve` on a synthetic scene (CPU), opens the app as Alice and Bob, draws a few edits and moves
Bob's cursor, then screenshots Alice's window. Needs the built client (clients/web/dist) and /usr/bin/chromium.

Usage: python scripts/web_screenshot.py [--out docs/screenshot.png] [--region-shots docs]

With --region-shots DIR it writes the editable region's, the Select tool's and the two-region pictures instead:
DIR/web-region.png (the outline and the hint), DIR/web-select.png (a placed image selected, with its
handles and the Selection panel) and DIR/web-regions.png (an ROI of two polygons, region 2 picked: a stroke
dragged across both paints region 2 only).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "screenshot"


def start_server(models: Path, data: Path) -> tuple[subprocess.Popen, str]:
    """`vatlas serve` on free ports; returns the process and its HTTP URL (from the VATLAS_READY line)."""
    cmd = [sys.executable, "-m", "vatlas.cli", "serve", "--models", str(models), "--data", str(data),
           "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--device", "cpu", "--token", TOKEN,
           "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready: Future = Future()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("VATLAS_READY ") and not ready.done():
                ready.set_result(json.loads(line.split(" ", 1)[1]))
        if not ready.done():
            ready.set_exception(RuntimeError("vatlas serve exited before it was ready"))

    threading.Thread(target=read, daemon=True).start()
    return proc, ready.result(120)["http"]


@contextlib.contextmanager
def served_browser(root: Path) -> Iterator[tuple[str, Any]]:
    """`vatlas serve` on root/models (data in root/data) and a headless Chromium: (web URL, browser)."""
    from playwright.sync_api import sync_playwright

    proc, http = start_server(root / "models", root / "data")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                yield http, browser
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def demo_models(root: Path, frames: int) -> Any:
    """root/models/demo.vatlas: a synthetic scene's exact bundle at 480x320; returns the scene."""
    from vatlas.models.bundle import save_bundle

    from vatlas.synth import make_scene

    (root / "models").mkdir()
    scene = make_scene(frames=frames, size=(480, 320), seed=3)
    save_bundle(scene.ground_truth_bundle(atlas_size=512), root / "models" / "demo.vatlas")
    return scene


def sticker_png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 92, 92), fill=(255, 214, 10, 255), outline=(40, 30, 0, 255), width=4)
    draw.ellipse((28, 30, 40, 46), fill=(40, 30, 0, 255))
    draw.ellipse((56, 30, 68, 46), fill=(40, 30, 0, 255))
    draw.arc((24, 36, 72, 76), 20, 160, fill=(40, 30, 0, 255), width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def point(page: Any, x: float, y: float) -> list[float]:
    return page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [x, y])


def stroke(page: Any, points: list[tuple[float, float]], colour: str, width: int) -> None:
    page.click("[data-testid=tool-brush]")
    page.evaluate("(v) => { const i = document.querySelector('#brush-color'); i.value = v;"
                  " i.dispatchEvent(new Event('input', {bubbles: true})); }", colour)
    page.fill("#brush-width", str(width))
    page.mouse.move(*point(page, *points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*point(page, *p), steps=6)
    page.mouse.up()


def report_latency(page: Any, cx: float, cy: float, strokes: int) -> None:
    """Draw `strokes` short strokes and print the edit-to-pixels latency the page measured (ms)."""
    import statistics

    start = len(page.evaluate("window.vatlas.editLatencies"))
    for i in range(strokes):
        y = cy - 40 + 80 * i / max(1, strokes - 1)
        stroke(page, [(cx - 30, y), (cx + 30, y)], "#30d158", 4)
        page.wait_for_function("(n) => window.vatlas.editLatencies.length > n", arg=start + i)
    values = page.evaluate("window.vatlas.editLatencies")[start:]
    print(f"edit-to-pixels latency over {strokes} strokes (pointer up -> server frame shown): "
          f"median {statistics.median(values):.1f} ms, max {max(values):.1f} ms")


def take(out: Path, measure: int = 0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scene = demo_models(Path(tmp), 24)
        with served_browser(Path(tmp)) as (http, browser):
            alice = browser.new_context(viewport={"width": 1440, "height": 860}).new_page()
            alice.set_default_timeout(60_000)
            alice.goto(f"{http}/?bundle=demo&token={TOKEN}&name=Alice")
            alice.wait_for_selector("#app[data-ready=true]")
            bob = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
            bob.set_default_timeout(60_000)
            bob.goto(alice.url + "&name=Bob")
            bob.wait_for_selector("#app[data-ready=true]")
            polygon = scene.roi.polygons[0]
            cx, cy = (float(v) for v in polygon.mean(axis=0))
            stroke(alice, [(cx - 60, cy - 20), (cx - 20, cy - 35), (cx + 20, cy - 20), (cx + 60, cy - 35)],
                   "#ff375f", 10)
            stroke(bob, [(cx - 50, cy + 25), (cx, cy + 40), (cx + 50, cy + 25)], "#0a84ff", 8)
            bob.set_input_files("#sticker-file", files=[{"name": "smile.png", "mimeType": "image/png",
                                                          "buffer": sticker_png()}])
            bob.fill("#sticker-size", "56")
            bob.mouse.click(*point(bob, cx + 5, cy + 2))
            alice.click("[data-testid=tool-brush]")
            bob.mouse.move(*point(bob, cx + 70, cy + 50))
            bob.mouse.move(*point(bob, cx + 72, cy + 52))
            alice.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 3")
            alice.wait_for_function("document.querySelector('[data-participant-id] [data-cursor]') !== null"
                                    " || [...document.querySelectorAll('[data-cursor]')].length > 0")
            alice.wait_for_function("window.vatlas.pendingPreviews === 0"
                                    " && document.querySelector('#view-canvas').dataset.draft === 'false'")
            alice.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            alice.screenshot(path=str(out))
            if measure:
                report_latency(alice, cx, cy, measure)


def _small_png(data: bytes, path: Path) -> None:
    """A screenshot as a 256-colour PNG (docs pictures stay small)."""
    from PIL import Image

    Image.open(io.BytesIO(data)).convert("RGB").quantize(256).save(path, optimize=True)


def split_roi_bundle(scene: Any, path: Path) -> None:
    """The scene's exact bundle with its ROI cut into a left and a right polygon: two regions."""
    import numpy as np
    from vatlas.models.bundle import save_bundle

    bundle = scene.ground_truth_bundle(atlas_size=512)
    pts = np.concatenate([np.asarray(p, np.float64) for p in bundle.roi_polygons])
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    mid = (x0 + x1) / 2.0
    bundle.roi_polygons = [[[x0, y0], [mid, y0], [mid, y1], [x0, y1]], [[mid, y0], [x1, y0], [x1, y1], [mid, y1]]]
    save_bundle(bundle, path)


def take_region_shots(out_dir: Path) -> None:
    """docs/web-region.png, docs/web-select.png and docs/web-regions.png: small crops of one window."""
    with tempfile.TemporaryDirectory() as tmp:
        scene = demo_models(Path(tmp), 12)
        split_roi_bundle(scene, Path(tmp) / "models" / "two.vatlas")
        with served_browser(Path(tmp)) as (http, browser):
            # string predicates are evaluated, which the server's CSP forbids: the page bypasses it
            page = browser.new_context(viewport={"width": 960, "height": 560}, bypass_csp=True).new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{http}/?bundle=demo&token={TOKEN}&name=Alice")
            page.wait_for_selector("#app[data-ready=true]")
            page.wait_for_selector("#view-canvas[data-roi=shown]")
            page.wait_for_timeout(300)
            out_dir.mkdir(parents=True, exist_ok=True)
            _small_png(page.locator("#stage").screenshot(), out_dir / "web-region.png")
            cx, cy = (float(v) for v in scene.roi.polygons[0].mean(axis=0))
            page.click("[data-testid=tool-image]")
            page.set_input_files("#image-file", files=[{"name": "smile.png", "mimeType": "image/png",
                                                         "buffer": sticker_png()}])
            page.wait_for_selector("#image-file[data-loaded=true]")
            page.mouse.move(*point(page, cx - 30, cy - 30))
            page.mouse.down()
            page.mouse.move(*point(page, cx + 30, cy + 30), steps=6)
            page.mouse.up()
            page.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 1")
            page.click("[data-testid=tool-select]")
            page.mouse.click(*point(page, cx, cy))
            page.wait_for_function("window.vatlas.selected !== ''")
            page.wait_for_function("window.vatlas.pendingPreviews === 0"
                                   " && document.querySelector('#view-canvas').dataset.draft === 'false'")
            page.wait_for_timeout(300)
            _small_png(page.screenshot(clip={"x": 0, "y": 40, "width": 960, "height": 480}), out_dir / "web-select.png")

            # two regions: region 2 picked, a stroke dragged across both paints region 2 only
            page = browser.new_context(viewport={"width": 960, "height": 560}, bypass_csp=True).new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{http}/?bundle=two&token={TOKEN}&name=Alice")
            page.wait_for_selector("#app[data-ready=true]")
            page.wait_for_selector("#view-canvas[data-roi=shown]")
            page.select_option("[data-testid=roi-region]", "2")
            xs = [float(p[0]) for poly in scene.roi.polygons for p in poly]
            stroke(page, [(min(xs) + 10, cy), (max(xs) - 10, cy + 6)], "#ff3b30", 10)
            page.wait_for_function("window.vatlas.pendingPreviews === 0 && window.vatlas.seq >= 1"
                                   " && document.querySelector('#view-canvas').dataset.draft === 'false'")
            page.wait_for_timeout(300)
            _small_png(page.screenshot(clip={"x": 0, "y": 0, "width": 960, "height": 520}), out_dir / "web-regions.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    parser.add_argument("--measure", type=int, default=0, metavar="N",
                        help="after the screenshot, draw N strokes and print the edit-to-pixels latency")
    parser.add_argument("--region-shots", type=Path, default=None, metavar="DIR",
                        help="write DIR/web-region.png, DIR/web-select.png and DIR/web-regions.png instead")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/chromium").exists():
        print("web_screenshot: /usr/bin/chromium is missing", file=sys.stderr)
        return 2
    if args.region_shots is not None:
        take_region_shots(args.region_shots)
        print(f"wrote {args.region_shots / 'web-region.png'}, web-select.png and web-regions.png")
        return 0
    take(args.out, args.measure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
