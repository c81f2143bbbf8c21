"""The editable region and editing placed objects, in real headless Chromium against the real server.

The region's outline is drawn on every frame (and toggles), local previews are clipped to it, an edit outside
it gets one plain sentence; a placed image is selected, moved and the move undone; a late joiner sees the
layers' author colours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import test_browser_app
from test_browser_app import (
    BLUE,
    GREEN,
    drag,
    draw_stroke,
    frame_rgb,
    inside_roi,
    is_colour,
    open_bundle,
    png_bytes,
    set_range,
    wait_frame,
    wait_ready,
)
from vatlas.server.edits.region import visible_boxes

from vatlas.errors import OUTSIDE_REGION

pytestmark = test_browser_app.pytestmark
browser = test_browser_app.browser  # the fixtures, shared
new_page = test_browser_app.new_page

CANVAS_PIXEL = """([x, y]) => {
  const canvas = document.querySelector('#view-canvas');
  const rect = canvas.getBoundingClientRect();
  const [cx, cy] = window.vatlas.clientPoint(x, y);
  const dpr = window.devicePixelRatio || 1;
  const ctx = canvas.getContext('2d');
  return [...ctx.getImageData(Math.floor((cx - rect.left) * dpr), Math.floor((cy - rect.top) * dpr), 1, 1).data];
}"""


def canvas_pixel(page: Any, x: float, y: float) -> np.ndarray:
    """What the canvas shows (frame, outline, previews) at the centre of frame pixel (x, y)."""
    return np.asarray(page.evaluate(CANVAS_PIXEL, [x + 0.5, y + 0.5])[:3], dtype=np.int64)


def far_outside(bundle: Any, frame: int, distance: int = 8) -> tuple[int, int]:
    """A pixel at least `distance` px from any visible pixel of the region on `frame`."""
    import cv2

    visible = (np.asarray(bundle.mask[frame]) > 0).astype(np.uint8)
    far = cv2.distanceTransform(1 - visible, cv2.DIST_L2, 5) >= distance
    far[:6], far[-6:], far[:, :6], far[:, -6:] = False, False, False, False  # well inside the frame
    ys, xs = np.nonzero(far)
    assert len(xs), "no pixel far from the region"
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def solid_point_away(bundle: Any, point: tuple[int, int], distance: int) -> tuple[int, int]:
    """The nearest pixel at least `distance` px from `point` (on one axis) whose 5x5 neighbourhood is solidly
    visible on frame 0."""
    mask = np.asarray(bundle.mask[0]) >= 250
    x, y = point
    best = None
    for qy in range(2, mask.shape[0] - 2):
        for qx in range(2, mask.shape[1] - 2):
            if max(abs(qx - x), abs(qy - y)) >= distance and mask[qy - 2:qy + 3, qx - 2:qx + 3].all():
                d = np.hypot(qx - x, qy - y)
                if best is None or d < best[0]:
                    best = (d, qx, qy)
    assert best is not None
    return best[1], best[2]


def wait_region(page: Any, frame: int) -> dict:
    page.wait_for_function("(t) => window.vatlas.region && window.vatlas.region.frame === t", arg=frame)
    return page.evaluate("window.vatlas.region")


def wait_toast(page: Any, text: str) -> None:
    page.wait_for_function("() => !document.querySelector('#toast').hidden")
    assert page.text_content("#toast") == text
    page.wait_for_function("(t) => { const b = document.querySelector('#toast'); return !b.hidden && b.textContent === t; }",
                           arg=text)


def test_region_outline_is_drawn_on_every_frame_and_toggles(running_server: Any, tiny_bundle: Any,
                                                            new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    boxes = visible_boxes(tiny_bundle)
    region = wait_region(page, 0)
    assert region["shown"] and region["segments"] > 8
    assert region["visible"] == [int(v) for v in boxes[0]]
    assert page.get_attribute("#view-canvas", "data-roi") == "shown"
    assert "outside it they are refused" in page.text_content("[data-testid=roi-hint]")

    # Outside the region the canvas is veiled; toggling the outline off shows the frame as the server sent it.
    x, y = far_outside(tiny_bundle, 0)
    served = frame_rgb(page)[y, x].astype(np.int64)
    veiled = canvas_pixel(page, x, y)
    assert veiled.sum() < served.sum() - 20, (veiled, served)
    page.click("[data-testid=roi-toggle]")
    page.wait_for_selector("#view-canvas[data-roi=hidden]")
    page.wait_for_timeout(100)  # one animation frame
    assert np.abs(canvas_pixel(page, x, y) - served).max() <= 2
    page.keyboard.press("r")
    page.wait_for_selector("#view-canvas[data-roi=shown]")

    # Another frame has its own outline.
    last = tiny_bundle.num_frames - 1
    set_range(page, "#scrubber", last)
    wait_frame(page, frame=last, min_seq=0)
    assert wait_region(page, last)["visible"] == [int(v) for v in boxes[last]]


def test_previews_are_clipped_and_edits_outside_get_one_plain_sentence(running_server: Any, tiny_bundle: Any,
                                                                        new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    wait_region(page, 0)
    x, y = inside_roi(tiny_bundle, 0)
    ox, oy = far_outside(tiny_bundle, 0)

    # While drawing from inside the region to far outside it, the preview shows only inside.
    page.click("[data-testid=tool-brush]")
    page.evaluate("(v) => { const i = document.querySelector('#brush-color'); i.value = v;"
                  " i.dispatchEvent(new Event('input', {bubbles: true})); }", "#00ff00")
    set_range(page, "#brush-width", 4)
    set_range(page, "#brush-hardness", 1)
    shown_outside = canvas_pixel(page, ox, oy)
    page.mouse.move(*page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [x + 0.5, y + 0.5]))
    page.mouse.down()
    page.mouse.move(*page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [ox + 0.5, oy + 0.5]), steps=12)
    page.wait_for_timeout(100)
    assert is_colour(canvas_pixel(page, x, y), GREEN)
    assert np.abs(canvas_pixel(page, ox, oy) - shown_outside).max() <= 2
    page.mouse.up()
    wait_frame(page, frame=0, min_seq=1)

    # Entirely outside: a stroke, an image and a sticker each get the same sentence, and nothing is added.
    layers = page.locator("[data-testid=layer]").count()
    draw_stroke(page, (ox, oy), width=2)
    wait_toast(page, OUTSIDE_REGION)
    page.click("[data-testid=tool-image]")
    page.set_input_files("#image-file", files=[{"name": "blue.png", "mimeType": "image/png", "buffer": png_bytes(BLUE)}])
    page.wait_for_selector("#image-file[data-loaded=true]")
    page.evaluate("document.querySelector('#toast').hidden = true")
    drag(page, [(ox - 2, oy - 2), (ox, oy), (ox + 2, oy + 2)])
    wait_toast(page, OUTSIDE_REGION)
    page.click("[data-testid=tool-sticker]")
    page.set_input_files("#sticker-file", files=[{"name": "s.png", "mimeType": "image/png", "buffer": png_bytes(GREEN)}])
    page.wait_for_selector("#sticker-file[data-loaded=true]")
    set_range(page, "#sticker-size", 8)
    page.evaluate("document.querySelector('#toast').hidden = true")
    page.mouse.click(*page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [ox + 0.5, oy + 0.5]))
    wait_toast(page, OUTSIDE_REGION)
    assert page.get_attribute("#toast", "data-kind") == "error"
    assert page.locator("[data-testid=layer]").count() == layers


def test_a_placed_image_is_moved_and_the_move_undone(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    alice = new_page()
    open_bundle(alice, running_server.http_url, "Alice")
    bob = new_page()
    bob.goto(alice.url.replace("name=Alice", "") + "&name=Bob")
    wait_ready(bob)
    x, y = inside_roi(tiny_bundle, 0, margin=2)
    tx, ty = solid_point_away(tiny_bundle, (x, y), 6)
    source = frame_rgb(alice)[y, x].astype(int)
    alice.click("[data-testid=tool-image]")
    alice.set_input_files("#image-file", files=[{"name": "blue.png", "mimeType": "image/png", "buffer": png_bytes(BLUE)}])
    alice.wait_for_selector("#image-file[data-loaded=true]")
    drag(alice, [(x - 2, y - 2), (x, y), (x + 3, y + 3)])
    wait_frame(alice, frame=0, min_seq=1)
    assert is_colour(frame_rgb(alice)[y, x], BLUE)
    texture = alice.get_attribute("[data-testid=layer]", "data-layer-id")

    # Select it on the canvas and drag it: one update op, seen by Bob too.
    alice.click("[data-testid=tool-select]")
    drag(alice, [(x + 0.5, y + 0.5), ((x + tx) / 2 + 0.5, (y + ty) / 2 + 0.5), (tx + 0.5, ty + 0.5)])
    assert alice.evaluate("window.vatlas.selected") == texture
    assert alice.get_attribute(f"[data-layer-id='{texture}']", "data-selected") == "true"
    wait_frame(alice, frame=0, min_seq=2)
    moved = frame_rgb(alice)
    assert is_colour(moved[ty, tx], BLUE) and not is_colour(moved[y, x], BLUE)
    wait_frame(bob, frame=0, min_seq=2)
    assert is_colour(frame_rgb(bob)[ty, tx], BLUE)

    # Undo puts it back.
    alice.keyboard.press("Control+z")
    wait_frame(alice, frame=0, min_seq=3)
    back = frame_rgb(alice)
    assert is_colour(back[y, x], BLUE) and not is_colour(back[ty, tx], BLUE)

    # Its opacity is a slider: half the blue.
    alice.evaluate("() => { const s = document.querySelector('#sel-opacity'); s.value = '0.5';"
                   " s.dispatchEvent(new Event('change')); }")
    wait_frame(alice, frame=0, min_seq=4)
    half = frame_rgb(alice)[y, x].astype(int)
    full = back[y, x].astype(int)
    assert np.abs(half - (source + full) / 2).max() < 40, (half, source, full)

    # Its colour: the grade sliders show for an image and turn the blue grey.
    assert alice.is_visible("#sel-grade") and alice.is_hidden("#sel-color-row")
    alice.evaluate("() => { const s = document.querySelector('#sel-opacity'); s.value = '1';"
                   " s.dispatchEvent(new Event('change')); }")
    wait_frame(alice, frame=0, min_seq=5)
    alice.evaluate("() => { const s = document.querySelector('#sel-saturation'); s.value = '-1';"
                   " s.dispatchEvent(new Event('change')); }")
    wait_frame(alice, frame=0, min_seq=6)
    grey = frame_rgb(alice)[y, x].astype(int)
    assert grey.max() - grey.min() < 25 and not is_colour(grey, BLUE), grey
    wait_frame(bob, frame=0, min_seq=6)
    assert np.abs(frame_rgb(bob)[y, x].astype(int) - grey).max() <= 2


def test_late_joiners_see_the_authors_colours(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    alice = new_page()
    open_bundle(alice, running_server.http_url, "Alice")
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(alice, (x, y))
    wait_frame(alice, frame=0, min_seq=1)
    colour = alice.get_attribute("[data-testid=participant][data-me=true] .swatch", "style")
    link = alice.url.replace("name=Alice", "")
    alice.close()  # she leaves before anyone else comes

    bob = new_page()
    bob.goto(link + "&name=Bob")
    wait_ready(bob)
    row = bob.locator("[data-testid=layer]")
    assert row.count() == 1
    swatch = row.first.locator(".swatch").get_attribute("style")
    assert swatch == colour, (swatch, colour)
    assert "Alice" in row.first.locator(".name").get_attribute("title")


def test_several_roi_polygons_are_regions_picked_one_at_a_time(new_page: Any, tmp_path: Any) -> None:
    """A bundle whose ROI is two polygons: the page offers the regions, outlines the one picked, and a stroke
    drawn across both lands only on it."""
    from conftest import TEST_TOKEN, start_in_process_server
    from test_roi_regions import labels, near, two_region_bundle
    from vatlas.models.bundle import save_bundle

    bundle = two_region_bundle()
    models = tmp_path / "models"
    models.mkdir()
    save_bundle(bundle, models / "two.vatlas")
    server = start_in_process_server(models)
    try:
        page = new_page()
        page.goto(f"{server.http_url}/?bundle=two&token={TEST_TOKEN}&name=Alice")
        wait_ready(page)
        every = wait_region(page, 0)
        assert page.is_visible("[data-testid=roi-region]")
        options = page.eval_on_selector_all("#roi-region option", "os => os.map(o => o.textContent)")
        assert options == ["All regions", "Region 1", "Region 2"]
        assert "its own region" in page.text_content("[data-testid=roi-hint]")

        page.select_option("[data-testid=roi-region]", "2")
        right = page.evaluate("window.vatlas.region")
        assert right["picked"] == 2 and right["segments"] > 0
        assert right["visible"][0] > every["visible"][0] and right["visible"][2] < every["visible"][2]
        assert "region 2" in page.text_content("[data-testid=roi-hint]")

        ys, xs = np.nonzero(bundle.mask[0] >= 200)
        row = int(np.median(ys))
        before = frame_rgb(page)
        draw_stroke(page, (int(xs.min()) + 6, row), width=5)  # a short stroke in region 1: refused
        wait_toast(page, OUTSIDE_REGION)
        page.click("[data-testid=tool-brush]")
        drag(page, [(float(xs.min()) + 2, row + 0.5), (float(xs.mean()), row + 0.5), (float(xs.max()) - 2, row + 0.5)])
        wait_frame(page, frame=0, min_seq=1)
        after = frame_rgb(page)
        moved = np.abs(after.astype(int) - before.astype(int)).max(axis=2) > 60
        lab = labels(bundle, 0)
        assert moved[lab == 2].sum() > 20
        assert not (moved & (lab == 1) & ~near(lab == 2, 3.0)).any()
    finally:
        server.stop()
