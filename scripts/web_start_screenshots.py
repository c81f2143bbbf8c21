"""Take docs/start-*.png: the "start from your own video" flow of the web client, step by step.

Starts `vatlas serve` with no bundles (CPU), opens the app in headless Chromium, uploads a synthetic clip, draws
two regions, starts a short fit and screenshots each step: docs/start-1-upload.png, start-2-regions.png,
start-3-fit.png and start-4-session.png. Needs the built client (clients/web/dist) and /usr/bin/chromium.

Usage: python scripts/web_start_screenshots.py [--out-dir docs] [--iterations 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_screenshot import TOKEN, served_browser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REGIONS = [[(40, 24), (120, 22), (124, 70), (44, 74)], [(132, 60), (152, 60), (152, 88), (132, 88)]]


def shot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--iterations", type=int, default=8, help="fit iterations (short: the shots, not quality)")
    args = parser.parse_args(argv)
    from vatlas.synth import make_scene
    from vatlas.video import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        clip = root / "street.mp4"
        scene = make_scene(frames=6, size=(160, 96), seed=2)
        write_mp4(clip, scene.frames, scene.fps, crf=12)
        with served_browser(root) as (http, browser):
            page = browser.new_context(viewport={"width": 1180, "height": 720}, bypass_csp=True).new_page()
            page.set_default_timeout(300_000)
            page.goto(f"{http}/?token={TOKEN}&name=Alice")
            page.wait_for_selector("#start-page:not([hidden])[data-step=choose]")
            shot(page, args.out_dir / "start-1-upload.png")
            page.set_input_files("#video-file", str(clip))
            page.wait_for_selector("#start-page[data-step=roi]")
            page.fill("#ref-scrubber", "2")
            page.wait_for_selector("#roi-canvas[data-frame='2']")
            for region in REGIONS:
                for x, y in [*region, region[0]]:
                    page.mouse.click(*page.evaluate("([x, y]) => window.vatlasStart.clientPoint(x, y)", [x, y]))
            page.wait_for_selector("#roi-canvas[data-regions='2']")
            shot(page, args.out_dir / "start-2-regions.png")
            page.click("#start-page details summary")
            page.fill("#fit-iterations", str(args.iterations))
            page.click("#fit-start")
            page.wait_for_selector("#fit-preview:not([hidden])")
            page.wait_for_function("/about/.test(document.querySelector('#fit-eta').textContent)")
            shot(page, args.out_dir / "start-3-fit.png")
            page.wait_for_selector("#app[data-ready=true]")
            page.wait_for_selector("#share-box:not([hidden])")
            page.wait_for_function("document.querySelector('#view-canvas').dataset.draft === 'false'")
            shot(page, args.out_dir / "start-4-session.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
