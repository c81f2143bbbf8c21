"""The web client in real headless Chromium against the real server (loopback, tiny synthetic bundle).

Each test opens the built app (clients/web/dist, served by the server's HTTP door), drives it with the mouse
and keyboard like a user, and checks the pixels of the frames the server sends back.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TEST_TOKEN, TINY_BUNDLE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium"),
]

GREEN = (0, 255, 0)
BLUE = (0, 64, 255)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """Factory for pages in fresh browser contexts (each one is a separate user); collects page errors."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(scale: float = 1.0, *, csp: bool = False) -> Any:
        # Playwright polls string predicates with eval, which the server's CSP forbids: pages bypass the CSP
        # unless a test asks for it (csp=True: the app itself must run under it)
        context = browser.new_context(viewport={"width": 1280, "height": 760}, accept_downloads=True,
                                      device_scale_factor=scale, bypass_csp=not csp)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, errors


def open_bundle(page: Any, http_url: str, name: str = "Alice") -> None:
    page.goto(f"{http_url}/?bundle={TINY_BUNDLE}&token={TEST_TOKEN}&name={name}")
    wait_ready(page)


def wait_ready(page: Any) -> None:
    page.wait_for_selector("#app[data-ready=true]")
    wait_frame(page, frame=0, min_seq=0)


def wait_frame(page: Any, *, frame: int, min_seq: int) -> None:
    """Until the canvas shows the final-quality render of `frame` including every op up to `min_seq`."""
    page.wait_for_function(
        """([frame, seq]) => { const c = document.querySelector('#view-canvas');
             return Number(c.dataset.frame) === frame && Number(c.dataset.seq) >= seq && c.dataset.draft === 'false'
               && window.vatlas.pendingPreviews === 0; }""",
        arg=[frame, min_seq],
    )


def frame_rgb(page: Any) -> np.ndarray:
    data = page.evaluate("window.vatlas.frameData()")
    return np.asarray(data["data"], dtype=np.uint8).reshape(data["height"], data["width"], 4)[..., :3]


def drag(page: Any, points: list[tuple[float, float]]) -> None:
    """Press, move through `points` (frame pixels) and release."""
    first = page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", list(points[0]))
    page.mouse.move(*first)
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", list(point)), steps=4)
    page.mouse.up()


def set_range(page: Any, selector: str, value: float) -> None:
    page.fill(selector, str(value))


def inside_roi(bundle: Any, frame: int, margin: int = 3) -> tuple[int, int]:
    """A pixel whose (2*margin+1)^2 neighbourhood is fully visible ROI on `frame`, nearest the ROI's centre."""
    mask = np.asarray(bundle.mask[frame]) >= 250
    h, w = mask.shape
    ok = np.zeros_like(mask)
    for y in range(margin, h - margin):
        for x in range(margin, w - margin):
            ok[y, x] = mask[y - margin:y + margin + 1, x - margin:x + margin + 1].all()
    ys, xs = np.nonzero(ok)
    assert len(xs), "the tiny bundle has no solid ROI area"
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def moved_and_visible(bundle: Any, point: tuple[int, int], margin: int = 2) -> tuple[int, tuple[int, int]]:
    """The last frame where the surface point under `point` on frame 0 has moved >= 3 px and is unoccluded,
    with its pixel there (nearest uv of the bundle's own mapping)."""
    x, y = point
    target = np.asarray(bundle.uv_float(0))[y, x]
    for t in range(bundle.num_frames - 1, 0, -1):
        distance = np.linalg.norm(np.asarray(bundle.uv_float(t)) - target, axis=2)
        ty, tx = np.unravel_index(int(np.argmin(distance)), distance.shape)
        around = np.asarray(bundle.mask[t])[max(0, ty - margin):ty + margin + 1, max(0, tx - margin):tx + margin + 1]
        if np.hypot(tx - x, ty - y) >= 3 and (around >= 250).all():
            return t, (int(tx), int(ty))
    raise AssertionError("the tiny bundle has no frame where the point moved and stays visible")


def is_colour(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: float = 70.0) -> bool:
    """Close to `colour` up to illumination (the server shades edits by the clip's lighting)."""
    rgb = rgb.astype(np.float64)
    target = np.asarray(colour, dtype=np.float64)
    gain = float(rgb @ target) / max(1.0, float(target @ target))
    return bool(np.abs(rgb - gain * target).max() < tolerance and gain > 0.5)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def pick_brush_colour(page: Any, hex_colour: str) -> None:
    page.evaluate(
        "(v) => { const i = document.querySelector('#brush-color'); i.value = v;"
        " i.dispatchEvent(new Event('input', {bubbles: true})); }",
        hex_colour,
    )


def draw_stroke(page: Any, at: tuple[int, int], *, width: int = 6, hex_colour: str = "#00ff00",
                opacity: float = 1.0) -> None:
    page.click("[data-testid=tool-brush]")
    pick_brush_colour(page, hex_colour)
    set_range(page, "#brush-width", width)
    set_range(page, "#brush-hardness", 1)
    set_range(page, "#brush-opacity", opacity)
    x, y = at
    drag(page, [(x - 4, y), (x, y), (x + 4, y)])


# ---------------------------------------------------------------- tests


def test_load_draw_stroke_and_see_it_in_the_server_frame(running_server: Any, tiny_bundle: Any,
                                                         new_page: Any) -> None:
    page = new_page(csp=True)  # the whole edit loop under the server's Content-Security-Policy
    open_bundle(page, running_server.http_url)
    assert page.get_attribute("#conn-status", "data-state") == "open"
    assert "session=" in page.url and "join=" in page.url  # the address bar is now the share link
    assert "token=" not in page.url  # which carries the session's join token, never the server token
    before = frame_rgb(page)
    assert before.shape == (tiny_bundle.height, tiny_bundle.width, 3)
    x, y = inside_roi(tiny_bundle, 0)
    assert not is_colour(before[y, x], GREEN)

    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)
    after = frame_rgb(page)
    assert is_colour(after[y, x], GREEN), after[y, x]
    # Outside the ROI the server must leave the frame alone (JPEG noise only).
    outside = np.asarray(tiny_bundle.mask[0]) == 0
    diff = np.abs(after.astype(int) - before.astype(int)).max(axis=2)
    assert np.median(diff[outside]) <= 3
    layers = page.locator("[data-testid=layer]")
    assert layers.count() == 1 and layers.first.get_attribute("data-layer-type") == "stroke"


def test_scrub_shows_the_stroke_tracked_on_another_frame(running_server: Any, tiny_bundle: Any,
                                                         new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)
    seq = page.evaluate("window.vatlas.seq")

    t, (tx, ty) = moved_and_visible(tiny_bundle, (x, y))
    set_range(page, "#scrubber", t)
    wait_frame(page, frame=t, min_seq=seq)
    assert page.text_content("#frame-label").startswith(f"{t} /")
    assert is_colour(frame_rgb(page)[ty, tx], GREEN), (t, tx, ty)

    page.keyboard.press("ArrowLeft")
    wait_frame(page, frame=t - 1, min_seq=seq)


def test_upload_an_image_placed_by_dragging(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    assert not is_colour(frame_rgb(page)[y, x], BLUE)
    page.click("[data-testid=tool-image]")
    page.set_input_files("#image-file", files=[{"name": "blue.png", "mimeType": "image/png",
                                                 "buffer": png_bytes(BLUE)}])
    page.wait_for_selector("#image-file[data-loaded=true]")
    drag(page, [(x - 4, y - 4), (x, y), (x + 4, y + 4)])
    wait_frame(page, frame=0, min_seq=1)
    assert is_colour(frame_rgb(page)[y, x], BLUE), frame_rgb(page)[y, x]
    assert page.get_attribute("[data-testid=layer]", "data-layer-type") == "texture"


def test_two_browsers_see_each_others_edits_and_cursors(running_server: Any, tiny_bundle: Any,
                                                       new_page: Any) -> None:
    alice = new_page()
    open_bundle(alice, running_server.http_url, "Alice")
    link = alice.url.replace("name=Alice", "")
    bob = new_page()
    bob.goto(link + "&name=Bob")
    wait_ready(bob)
    for page in (alice, bob):
        page.wait_for_function("document.querySelectorAll('[data-testid=participant]').length === 2")
    assert "Bob" in alice.text_content("#participants") and "Alice" in bob.text_content("#participants")

    # Alice's cursor shows up at Bob's, in frame pixels.
    alice.mouse.move(*alice.evaluate("window.vatlas.clientPoint(30, 20)"))
    alice.mouse.move(*alice.evaluate("window.vatlas.clientPoint(31, 21)"))
    alice_id = alice.evaluate("window.vatlas.participantId")
    cursor = bob.locator(f"[data-participant-id='{alice_id}']")
    # the last of the two moves (presence is throttled: the first may arrive on its own before it)
    bob.wait_for_function(
        "(id) => { const c = document.querySelector(`[data-participant-id='${id}']`)?.dataset.cursor ?? '';"
        " const [x, y] = c.split(',').map(Number); return c !== '' && Math.abs(x - 31) < 0.6"
        " && Math.abs(y - 21) < 0.6; }",
        arg=alice_id)
    cx, cy = (float(v) for v in cursor.get_attribute("data-cursor").split(","))
    assert abs(cx - 31) < 0.6 and abs(cy - 21) < 0.6

    # Alice's stroke reaches Bob's layer list and Bob's rendered frame.
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(alice, (x, y))
    bob.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 1")
    wait_frame(bob, frame=0, min_seq=1)
    assert is_colour(frame_rgb(bob)[y, x], GREEN)

    # Undo is per person: Bob has nothing to undo, Alice's Ctrl+Z removes her stroke for both.
    alice.keyboard.press("Control+z")
    for page in (alice, bob):
        page.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 0")
        wait_frame(page, frame=0, min_seq=2)
        assert not is_colour(frame_rgb(page)[y, x], GREEN)
    alice.keyboard.press("Control+Shift+z")
    bob.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 1")
    wait_frame(bob, frame=0, min_seq=3)
    assert is_colour(frame_rgb(bob)[y, x], GREEN)


def test_layer_visibility_and_delete(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)
    page.click("[data-testid=layer-visible]")
    page.wait_for_selector("[data-testid=layer][data-visible=false]")
    wait_frame(page, frame=0, min_seq=2)
    assert not is_colour(frame_rgb(page)[y, x], GREEN)
    page.click("[data-testid=layer-visible]")
    page.wait_for_selector("[data-testid=layer][data-visible=true]")
    wait_frame(page, frame=0, min_seq=3)
    assert is_colour(frame_rgb(page)[y, x], GREEN)
    page.click("[data-testid=layer-delete]")
    page.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 0")
    wait_frame(page, frame=0, min_seq=4)
    assert not is_colour(frame_rgb(page)[y, x], GREEN)


def test_adjustment_brush_and_sticker(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    before = frame_rgb(page)[y, x].astype(int)
    page.click("[data-testid=tool-adjust]")
    set_range(page, "#adj-exposure", 1.5)
    set_range(page, "#adj-width", 10)
    drag(page, [(x - 3, y), (x + 3, y)])
    wait_frame(page, frame=0, min_seq=1)
    brighter = frame_rgb(page)[y, x].astype(int)
    assert brighter.sum() > before.sum() + 60, (before, brighter)

    # Sticker: pick the point first; the app then asks for the image and places it there.
    page.click("[data-testid=tool-sticker]")
    set_range(page, "#sticker-size", 8)
    with page.expect_file_chooser() as chooser:
        page.mouse.click(*page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [x, y]))
    chooser.value.set_files(files=[{"name": "blue.png", "mimeType": "image/png", "buffer": png_bytes(BLUE)}])
    wait_frame(page, frame=0, min_seq=2)
    assert is_colour(frame_rgb(page)[y, x], BLUE)
    assert page.locator("[data-testid=layer][data-layer-type=sticker]").count() == 1
    assert "blue.png" in page.text_content("#sticker-name")

    # The sticker follows the surface: on another frame it sits where the surface point moved to.
    t, (tx, ty) = moved_and_visible(tiny_bundle, (x, y))
    set_range(page, "#scrubber", t)
    wait_frame(page, frame=t, min_seq=2)
    assert is_colour(frame_rgb(page)[ty, tx], BLUE), (t, tx, ty)
    page.click("[data-testid=layer][data-layer-type=sticker] .name")  # a layer click jumps to its frame
    wait_frame(page, frame=0, min_seq=2)


def test_play_pause_zoom_and_atlas_toggle(running_server: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    page.click("[data-testid=play]")
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < 3 and time.monotonic() < deadline:
        seen.add(int(page.get_attribute("#view-canvas", "data-frame")))
        page.wait_for_timeout(30)
    page.click("[data-testid=play]")
    assert len(seen) >= 3, seen
    assert page.get_attribute("[data-testid=play]", "data-playing") == "false"

    zoom = page.text_content("#zoom-label")
    page.click("[data-testid=zoom-in]")
    assert page.text_content("#zoom-label") != zoom
    page.click("[data-testid=zoom-fit]")
    assert page.text_content("#zoom-label") == zoom

    page.check("#atlas-toggle")
    page.wait_for_selector("#view-canvas[data-atlas=true][data-draft=false]")
    data = page.evaluate("window.vatlas.frameData()")
    assert data["width"] == data["height"]  # the atlas is square
    page.uncheck("#atlas-toggle")
    page.wait_for_selector("#view-canvas[data-atlas=false][data-draft=false]")


def test_export_progress_and_download(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    page.click("[data-testid=export]")
    page.wait_for_function(
        "!document.querySelector('#export-download').hidden"
        " || document.querySelector('#export-stage').textContent.startsWith('failed')", timeout=120_000)
    assert page.text_content("#export-stage") == "done", page.text_content("#export-stage")
    assert float(page.get_attribute("#export-progress", "value") or page.evaluate(
        "document.querySelector('#export-progress').value")) == 1.0
    with page.expect_download() as info:
        page.click("[data-testid=export-download]")
    path = info.value.path()
    head = Path(path).read_bytes()[:12]
    assert head[4:8] == b"ftyp", head
    assert int(page.get_attribute("[data-testid=export-download]", "data-bytes")) == Path(path).stat().st_size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reconnect_after_a_server_restart_keeps_the_edits(server_process_factory: Any, tiny_bundle: Any,
                                                          new_page: Any, tmp_path: Path) -> None:
    # A fixed HTTP port so the page can find the restarted server where it left it.
    port = _free_port()
    data = tmp_path / "data"
    server = server_process_factory(data_dir=data, extra_args=("--http", f"127.0.0.1:{port}"))
    page = new_page()
    open_bundle(page, server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)

    server.kill()
    page.wait_for_selector("#conn-status:not([data-state=open])")
    server = server_process_factory(data_dir=data, extra_args=("--http", f"127.0.0.1:{port}"))
    page.wait_for_selector("#conn-status[data-state=open]", timeout=60_000)
    assert page.locator("[data-testid=layer]").count() == 1
    # A frame rendered by the new process still has the stroke.
    renders = int(page.get_attribute("#view-canvas", "data-renders"))
    set_range(page, "#scrubber", 1)
    set_range(page, "#scrubber", 0)
    page.wait_for_function("(n) => Number(document.querySelector('#view-canvas').dataset.renders) > n", arg=renders)
    wait_frame(page, frame=0, min_seq=1)
    assert is_colour(frame_rgb(page)[y, x], GREEN)
    # And editing goes on in the same session.
    draw_stroke(page, (x, y), hex_colour="#0040ff")
    wait_frame(page, frame=0, min_seq=2)
    assert is_colour(frame_rgb(page)[y, x], BLUE)
    assert page.locator("[data-testid=layer]").count() == 2


def test_bad_join_link_shows_a_clear_error(running_server: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{running_server.http_url}/?session=nope&join=wrong&token={TEST_TOKEN}")
    page.wait_for_selector("#open-dialog:not([hidden])")
    page.wait_for_function("document.querySelector('#open-error').textContent.includes('NOT_FOUND')")
    # The dialog still offers the server's bundles.
    assert page.locator("[data-testid=open-bundle]").count() >= 1


def test_wrong_server_token_is_reported(running_server: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{running_server.http_url}/?bundle={TINY_BUNDLE}&token=wrong")
    page.wait_for_selector("#conn-status[data-state=closed]")
    assert "UNAUTHENTICATED" in (page.get_attribute("#conn-status", "title") or "")


def test_scrubbing_asks_for_drafts_then_refines(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    for frame in (1, 2, 3, 4, 5, 6):
        set_range(page, "#scrubber", frame)
    wait_frame(page, frame=6, min_seq=0)
    assert int(page.get_attribute("#view-canvas", "data-drafts")) >= 1  # low-resolution renders while moving
    data = page.evaluate("window.vatlas.frameData()")
    assert (data["width"], data["height"]) == (tiny_bundle.width, tiny_bundle.height)  # refined at full size


def record_renders(page: Any) -> list[dict[str, Any]]:
    """Every `render` request the page sends from now on, decoded from its WebSocket frames (msgpack)."""
    import msgpack

    renders: list[dict[str, Any]] = []

    def on_frame(payload: Any) -> None:
        if isinstance(payload, (bytes, bytearray)):
            message = msgpack.unpackb(payload, raw=False)
            if isinstance(message, dict) and "render" in message:
                renders.append(message["render"])

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))
    return renders


def test_dragging_the_timeline_renders_small_frames_then_a_full_size_one(
        running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    renders = record_renders(page)
    open_bundle(page, running_server.http_url)
    box = page.locator("#scrubber").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 4, y)
    page.mouse.down()
    for i in range(1, 13):  # across the track to its end, in small steps (a user's drag)
        page.mouse.move(box["x"] + 4 + (box["width"] - 8) * i / 12, y, steps=2)
    during = len(renders)
    page.mouse.up()
    last = tiny_bundle.num_frames - 1
    wait_frame(page, frame=last, min_seq=0)
    dragged = [r for r in renders[:during] if r.get("frame", 0) > 0]
    assert dragged, renders
    assert all(0 < r["scale"] < 1 for r in dragged), dragged  # smaller frames while the timeline moves
    final = renders[-1]
    assert final["frame"] == last and final["scale"] == 1 and "region" not in final
    data = page.evaluate("window.vatlas.frameData()")
    assert (data["width"], data["height"]) == (tiny_bundle.width, tiny_bundle.height)  # refined at full size
    assert page.get_attribute("#view-canvas", "data-draft") == "false"


def test_renders_follow_the_viewport(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page(scale=2.0)
    renders = record_renders(page)
    open_bundle(page, running_server.http_url)
    page.keyboard.press("ArrowRight")
    wait_frame(page, frame=1, min_seq=0)
    whole = page.evaluate("window.vatlas.frameData()")
    assert (whole["width"], whole["height"]) == (tiny_bundle.width, tiny_bundle.height)

    # Zoomed in on the top-left corner, then on to the next frame: only the part on the canvas is rendered,
    # at full resolution.
    page.locator("#view-canvas").hover()
    for _ in range(6):
        page.keyboard.press("+")
    canvas = page.locator("#view-canvas").bounding_box()
    centre = (canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
    corner = page.evaluate("([x, y]) => window.vatlas.clientPoint(x, y)", [2, 2])
    page.mouse.move(*centre)
    page.keyboard.down("Alt")  # Alt+drag pans with any tool: frame pixel (2, 2) to the canvas centre
    page.mouse.down()
    page.mouse.move(2 * centre[0] - corner[0], 2 * centre[1] - corner[1], steps=4)
    page.mouse.up()
    page.keyboard.up("Alt")
    page.keyboard.press("ArrowLeft")
    wait_frame(page, frame=0, min_seq=0)
    final = renders[-1]
    region = final["region"]
    assert final["frame"] == 0 and final["scale"] == 1
    assert region.get("x", 0) == 0 and region.get("y", 0) == 0  # msgpack's mirror form leaves zeros out
    assert region["width"] < tiny_bundle.width and region["height"] < tiny_bundle.height
    # The region is what the canvas shows of the frame, to the pixel.
    view = page.evaluate("window.vatlas.viewport")
    origin = page.evaluate("window.vatlas.clientPoint(0, 0)")
    assert region["width"] == int(np.ceil((canvas["x"] + canvas["width"] - origin[0]) / view["zoom"]))
    assert region["height"] == int(np.ceil((canvas["y"] + canvas["height"] - origin[1]) / view["zoom"]))
    # the crop of frame 0 itself (a loaded machine can still be showing frame 1's crop of the same size)
    page.wait_for_function("([w, h]) => { const d = window.vatlas.frameData(); return d && d.frame === 0 "
                           "&& d.scale === 1 && d.width === w && d.height === h; }",
                           arg=[region["width"], region["height"]])
    data = page.evaluate("window.vatlas.frameData()")
    assert (data["width"], data["height"]) == (region["width"], region["height"])
    assert data["region"] == [0, 0, region["width"], region["height"]]
    page.keyboard.press("0")  # fit: the whole frame again, for comparison
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    wait_frame(page, frame=0, min_seq=0)
    assert "region" not in renders[-1]
    # the whole frame at full scale on the canvas (a loaded machine can still be showing the zoomed-in crop)
    page.wait_for_function("([w, h]) => { const d = window.vatlas.frameData(); return d && d.scale === 1 "
                           "&& d.width === w && d.height === h; }", arg=[tiny_bundle.width, tiny_bundle.height])
    full = page.evaluate("window.vatlas.frameData()")
    whole = np.asarray(full["data"], dtype=np.float64).reshape(full["height"], full["width"], 4)
    part = np.asarray(data["data"], dtype=np.float64).reshape(data["height"], data["width"], 4)
    assert np.abs(part - whole[:data["height"], :data["width"]]).mean() < 4.0  # the same pixels (JPEG aside)

    # Zoomed far out on a 2x screen: under one device pixel per frame pixel, so a smaller frame.
    for _ in range(24):
        page.keyboard.press("-")
    view = page.evaluate("window.vatlas.viewport")
    device = view["zoom"] * view["dpr"]
    assert device < 1
    page.keyboard.press("ArrowRight")
    wait_frame(page, frame=1, min_seq=0)
    final = renders[-1]
    assert "region" not in final and device - 1 / 64 - 1e-6 < final["scale"] <= device
    data = page.evaluate("window.vatlas.frameData()")
    assert data["width"] == max(1, round(tiny_bundle.width * final["scale"]))


def test_edits_made_offline_and_by_others_meanwhile_survive_a_dropped_connection(
        running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    alice = new_page()
    open_bundle(alice, running_server.http_url, "Alice")
    bob = new_page()
    bob.goto(alice.url + "&name=Bob")
    wait_ready(bob)
    x, y = inside_roi(tiny_bundle, 0)

    alice.evaluate("window.vatlas.dropConnection(2500)")
    alice.wait_for_selector("#conn-status[data-state=reconnecting]")
    draw_stroke(alice, (x, y - 3), width=3)  # offline: previewed now, sent after the rejoin
    draw_stroke(bob, (x, y + 3), width=3, hex_colour="#0040ff")
    wait_frame(bob, frame=0, min_seq=1)

    alice.wait_for_selector("#conn-status[data-state=open]")
    for page in (alice, bob):
        page.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 2")
        wait_frame(page, frame=0, min_seq=2)
        rgb = frame_rgb(page)
        assert is_colour(rgb[y - 3, x], GREEN) and is_colour(rgb[y + 3, x], BLUE)


def test_display_name_can_be_changed(running_server: Any, new_page: Any) -> None:
    alice = new_page()
    open_bundle(alice, running_server.http_url, "Alice")
    bob = new_page()
    bob.goto(alice.url + "&name=Bob")
    wait_ready(bob)
    alice.fill("#my-name", "Alice Liddell")
    alice.press("#my-name", "Enter")
    alice.mouse.move(*alice.evaluate("window.vatlas.clientPoint(10, 10)"))
    bob.wait_for_function("document.querySelector('#participants').textContent.includes('Alice Liddell')")
    assert "Alice Liddell (you)" in alice.text_content("#participants")


def test_eraser_removes_paint(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page()
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    original = frame_rgb(page)[y, x].astype(int)
    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)
    assert is_colour(frame_rgb(page)[y, x], GREEN)
    page.keyboard.press("e")  # eraser shortcut
    assert page.get_attribute("[data-testid=tool-eraser]", "class").split().count("active") == 1
    set_range(page, "#brush-width", 8)
    page.keyboard.press("]")  # brush size shortcut
    assert int(page.input_value("#brush-width")) == 10
    drag(page, [(x - 5, y), (x, y), (x + 5, y)])
    wait_frame(page, frame=0, min_seq=2)
    erased = frame_rgb(page)[y, x].astype(int)
    assert not is_colour(erased, GREEN)
    assert np.abs(erased - original).max() < 40, (original, erased)
    assert page.get_attribute("[data-testid=layer]", "data-layer-type") == "stroke"  # the erase stroke is a layer


def test_a_server_that_lost_the_session_gets_it_back_from_the_page(server_process_factory: Any, tiny_bundle: Any,
                                                                   new_page: Any, tmp_path: Path) -> None:
    port = _free_port()
    server = server_process_factory(data_dir=tmp_path / "first", extra_args=("--http", f"127.0.0.1:{port}"))
    page = new_page()
    open_bundle(page, server.http_url)
    first_session = page.evaluate("window.vatlas.session.session_id")
    x, y = inside_roi(tiny_bundle, 0)
    draw_stroke(page, (x, y))
    wait_frame(page, frame=0, min_seq=1)

    server.kill()
    page.wait_for_selector("#conn-status:not([data-state=open])")
    # A new server with an empty data dir: the session is unknown there (NOT_FOUND on rejoin).
    server_process_factory(data_dir=tmp_path / "second", extra_args=("--http", f"127.0.0.1:{port}"))
    page.wait_for_function("(old) => window.vatlas.session && window.vatlas.session.session_id !== old",
                           arg=first_session, timeout=60_000)
    assert "session=" + page.evaluate("window.vatlas.session.session_id") in page.url
    page.wait_for_function("document.querySelectorAll('[data-testid=layer]').length === 1")
    wait_frame(page, frame=0, min_seq=1)
    assert is_colour(frame_rgb(page)[y, x], GREEN)


def test_half_opacity_stroke_on_a_hidpi_screen(running_server: Any, tiny_bundle: Any, new_page: Any) -> None:
    page = new_page(scale=2.0)  # device pixels != CSS pixels: frame coordinates must still be exact
    open_bundle(page, running_server.http_url)
    x, y = inside_roi(tiny_bundle, 0)
    before = frame_rgb(page)[y, x].astype(int)
    draw_stroke(page, (x, y), opacity=0.5)
    wait_frame(page, frame=0, min_seq=1)
    after = frame_rgb(page)[y, x].astype(int)
    # Half-way to green (the clip's lighting is close to 1 here): before / 2 + green / 2.
    expected = before / 2 + np.array([0.0, 127.5, 0.0])
    assert np.abs(after - expected).max() < 25, (before, after, expected)


def test_ctrl_c_with_a_tab_open_stops_the_server_and_the_tab_says_so(server_process_factory: Any,
                                                                        new_page: Any) -> None:
    """One SIGINT with a browser tab joined: the server closes the socket (1001) and exits within 10 s; the tab
    says the server stopped and that it is reconnecting."""
    import signal
    import time

    server = server_process_factory(token=TEST_TOKEN)
    page = new_page()
    open_bundle(page, server.http_url)
    assert page.locator("#conn-text").inner_text() == "connected"
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    code = server.proc.wait(timeout=30)
    assert time.monotonic() - started < 10.0
    assert code in (0, 130, -signal.SIGINT)
    page.wait_for_function("() => document.querySelector('#conn-text').textContent.startsWith('server stopped')")
    assert page.locator("#conn-text").inner_text() == "server stopped, reconnecting…"
