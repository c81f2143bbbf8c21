"""A first-time user in real headless Chromium against the real server: from their own video to an edited export.

The server starts with no bundles, so the page opens "Start from your own video". The test chooses a tiny clip,
scrubs to a reference frame, draws a region with the mouse (and edits its points), starts a short CPU fit,
watches the progress and previews, closes and reopens the tab mid-fit (the page finds the fit again), lands in
the session the fit made, paints one stroke, sees it on a second frame and exports. Every user action is
counted; docs/web-client.md lists them.
"""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import TEST_TOKEN, start_in_process_server
from test_browser_app import CHROMIUM, browser, new_page, wait_frame  # noqa: F401 - fixtures

from vatlas.synth import make_scene
from vatlas.video import write_mp4

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium"),
]

FIT_TIMEOUT_MS = 240_000
# the region drawn on the reference frame (video pixels of the 64x48 clip), clockwise
REGION = [(14, 10), (50, 10), (50, 38), (14, 38)]


@pytest.fixture
def empty_server(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    server = start_in_process_server(models)
    yield server
    server.stop()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    scene = make_scene(frames=4, size=(64, 48), seed=3)
    path = tmp_path / "My holiday.mp4"
    write_mp4(path, scene.frames, scene.fps, crf=12)
    return path


class Actions:
    """The user's actions, counted (what a person does: a click, a drag, a key, choosing a file)."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def __call__(self, what: str) -> None:
        self.done.append(what)


def click_video_point(page, x: float, y: float) -> None:
    page.mouse.click(*page.evaluate("([x, y]) => window.vatlasStart.clientPoint(x, y)", [x, y]))


def test_from_a_video_to_an_edited_export(empty_server, clip: Path, new_page, tmp_path: Path) -> None:  # noqa: F811
    page = new_page()
    act = Actions()
    page.goto(f"{empty_server.http_url}/?token={TEST_TOKEN}&name=Alice")
    page.wait_for_selector("#start-page:not([hidden])[data-step=choose]")  # no bundles: the start page opens
    assert page.is_visible("#new-video-btn")
    user_started = time.monotonic()

    act("choose the video file")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_selector("#start-page[data-step=roi]")
    assert page.input_value("#fit-name") == "my-holiday"
    assert page.evaluate("document.querySelector('#upload-progress').value") == 1
    assert "4 frames" in page.inner_text("#video-label")
    assert "separate region" in page.inner_text("#start-page [data-step=roi] .hint")

    act("scrub to reference frame 2")
    page.fill("#ref-scrubber", "1")
    page.wait_for_selector("#roi-canvas[data-frame='1']")

    for i, (x, y) in enumerate(REGION):
        act(f"click region point {i + 1}")
        click_video_point(page, x, y)
    act("click the first point to close the region")
    click_video_point(page, *REGION[0])
    page.wait_for_selector("#roi-canvas[data-regions='1']")
    assert page.evaluate("window.vatlasStart.regions()") == [[list(map(float, p)) for p in REGION]]

    # editable vertices: drag one, add one on an edge (its middle handle), remove it again (double-click)
    act("drag a point")
    page.mouse.move(*page.evaluate("window.vatlasStart.clientPoint(50, 38)"))
    page.mouse.down()
    page.mouse.move(*page.evaluate("window.vatlasStart.clientPoint(52, 40)"), steps=4)
    page.mouse.up()
    act("drag an edge's middle handle to add a point")
    page.mouse.move(*page.evaluate("window.vatlasStart.clientPoint(32, 10)"))
    page.mouse.down()
    page.mouse.move(*page.evaluate("window.vatlasStart.clientPoint(32, 6)"), steps=4)
    page.mouse.up()
    regions = page.evaluate("window.vatlasStart.regions()")
    assert len(regions[0]) == 5 and [52.0, 40.0] in [[round(x), round(y)] for x, y in regions[0]]
    act("double-click the added point to remove it")
    page.mouse.dblclick(*page.evaluate("window.vatlasStart.clientPoint(32, 6)"))
    regions = page.evaluate("window.vatlasStart.regions()")
    assert len(regions[0]) == 4
    assert page.inner_text("#roi-count") == "1 region"

    # test only: a short schedule, so the CPU fit takes about a minute (a user leaves the preset's default)
    page.click("#start-page details summary")
    page.fill("#fit-iterations", "8")
    act("click Start fit")
    page.click("#fit-start")
    page.wait_for_selector("#start-page[data-step=fit]")
    user_seconds = time.monotonic() - user_started
    page.wait_for_function("Number(document.querySelector('#fit-progress').value) > 0", timeout=FIT_TIMEOUT_MS)
    page.wait_for_selector("#fit-preview:not([hidden])", timeout=FIT_TIMEOUT_MS)
    assert page.inner_text("#fit-stage").startswith("Step ")
    fit_id = page.evaluate("window.vatlasStart.fitId")
    assert fit_id

    # the tab closes and opens again: the page finds the running fit by its id
    page.reload()
    page.wait_for_selector("#start-page:not([hidden])[data-step=fit]")
    assert page.evaluate("window.vatlasStart.fitId") == fit_id
    page.wait_for_function("/^Step \\d of 6/.test(document.querySelector('#fit-stage').textContent)",
                           timeout=FIT_TIMEOUT_MS)
    page.wait_for_function("/left|estimating/.test(document.querySelector('#fit-eta').textContent)")

    # done: the session opens by itself, with a share link
    page.wait_for_selector("#app[data-ready=true]", timeout=FIT_TIMEOUT_MS)
    page.wait_for_selector("#share-box:not([hidden])")
    share = page.input_value("#share-url")
    assert "session=" in share and "join=" in share and TEST_TOKEN not in share
    assert page.is_hidden("#start-page") and not page.evaluate("window.vatlasStart.fitId")
    wait_frame(page, frame=0, min_seq=0)
    edit_started = time.monotonic()

    before = page.evaluate("window.vatlas.framePixel(32, 24)")
    act("paint one stroke across the region")
    start = page.evaluate("window.vatlas.clientPoint(20, 24)")
    end = page.evaluate("window.vatlas.clientPoint(44, 24)")
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()
    page.wait_for_selector("#layers li")
    act("step to the next frame")
    page.keyboard.press("ArrowRight")
    wait_frame(page, frame=1, min_seq=1)
    edit_seconds = time.monotonic() - edit_started
    page.keyboard.press("ArrowLeft")
    wait_frame(page, frame=0, min_seq=1)
    after = page.evaluate("window.vatlas.framePixel(32, 24)")
    assert after != before, (before, after)  # the stroke shows in the fitted region

    act("click Export MP4")
    page.click("#export-btn")
    page.wait_for_selector("#export-download:not([hidden])", timeout=120_000)
    act("click Download")
    with page.expect_download() as download:
        page.click("#export-download")
    target = tmp_path / "export.mp4"
    download.value.save_as(target)
    with av.open(str(target)) as movie:
        frames = [f.to_ndarray(format="rgb24") for f in movie.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3) and np.asarray(frames).std() > 0

    print(f"\nuser actions: {len(act.done)}: " + "; ".join(act.done))
    print(f"user time to the fit: {user_seconds:.1f} s; stroke to a second frame: {edit_seconds:.1f} s")
    assert len(act.done) <= 16


def test_a_running_fit_is_cancelled_from_the_page(empty_server, clip: Path, new_page) -> None:  # noqa: F811
    page = new_page()
    page.goto(f"{empty_server.http_url}/?token={TEST_TOKEN}&name=Alice")
    page.wait_for_selector("#start-page:not([hidden])[data-step=choose]")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_selector("#start-page[data-step=roi]")
    for x, y in [*REGION, REGION[0]]:
        click_video_point(page, x, y)
    page.wait_for_selector("#roi-canvas[data-regions='1']")
    page.click("#start-page details summary")
    page.fill("#fit-iterations", "100000")
    page.click("#fit-start")
    page.wait_for_selector("#fit-cancel:not([hidden])")
    page.wait_for_function("window.vatlasStart.fitId !== ''")
    page.click("#fit-cancel")
    page.wait_for_selector("#fit-back:not([hidden])", timeout=60_000)
    assert page.inner_text("#fit-stage") == "The fit stopped"
    assert "cancelled" in page.inner_text("#start-error")
    assert page.is_hidden("#fit-cancel")
    assert not empty_server.core.jobs._fitting
    assert not list((empty_server.core.bundles.models_dir).glob("my-holiday*"))
    page.click("#fit-back")  # back to the drawing, the region kept, ready to start again
    page.wait_for_selector("#start-page[data-step=roi]")
    assert page.evaluate("window.vatlasStart.regions()") == [[list(map(float, p)) for p in REGION]]
