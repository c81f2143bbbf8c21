"""Take docs/screenshot.png: the web client in headless Chromium, two people editing one session.

Starts `vatlas serve` on a synthetic scene (CPU), opens the app as Alice and Bob, draws a few edits and moves
Bob's cursor, then screenshots Alice's window. Needs the built client (clients/web/dist) and /usr/bin/chromium.

Usage: python scripts/web_screenshot.py [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
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
    from playwright.sync_api import sync_playwright
    from vatlas.models.bundle import save_bundle

    from vatlas.synth import make_scene

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        scene = make_scene(frames=24, size=(480, 320), seed=3)
        save_bundle(scene.ground_truth_bundle(atlas_size=512), models / "demo.vatlas")
        proc, http = start_server(models, Path(tmp) / "data")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
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
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    parser.add_argument("--measure", type=int, default=0, metavar="N",
                        help="after the screenshot, draw N strokes and print the edit-to-pixels latency")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/chromium").exists():
        print("web_screenshot: /usr/bin/chromium is missing", file=sys.stderr)
        return 2
    take(args.out, args.measure)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
