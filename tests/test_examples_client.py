"""Runs clients/py/examples/scripted_edit.py end to end against the real server on loopback (conftest fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    TEST_TOKEN,
    TINY_BUNDLE,
    TINY_FRAMES,
    TINY_SIZE,
    make_tiny_models_dir,
    start_in_process_server,
)
from PIL import Image

from vatlas.synth import make_scene
from vatlas.video import read_video, write_mp4

EXAMPLE = Path(__file__).resolve().parents[1] / "clients" / "py" / "examples" / "scripted_edit.py"
TOKEN, BUNDLE, FRAMES = TEST_TOKEN, TINY_BUNDLE, TINY_FRAMES
WIDTH, HEIGHT = TINY_SIZE


def run_example(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_example_edits_an_existing_bundle(running_server: Any, tiny_bundle: Any, tmp_path: Path) -> None:
    bundle = tiny_bundle
    roi = tmp_path / "roi.json"
    roi.write_text(json.dumps({"ref_frame": bundle.ref_frame, "polygons": bundle.roi_polygons}))
    out, preview = tmp_path / "edited.mp4", tmp_path / "frame0.png"
    result = run_example("--address", running_server.grpc_target, "--token", TOKEN, "--bundle", BUNDLE, "--roi", str(roi),
                         "--out", str(out), "--preview", str(preview))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bundle"] == BUNDLE and summary["frames"] == FRAMES
    assert summary["sticker_seq"] == summary["logo_seq"] + 1 and summary["warnings"] == []
    assert summary["out_bytes"] == out.stat().st_size > 0

    edited = np.asarray(Image.open(preview).convert("RGB")).astype(int)
    original = bundle.frames[bundle.ref_frame].astype(int)
    changed = np.abs(edited - original).max(axis=2) > 40
    roi_mask = np.zeros((HEIGHT, WIDTH), bool)
    pts = np.array(bundle.roi_polygons[0])
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    roi_mask[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True
    assert changed[roi_mask].sum() > 20, "the logo and sticker should change pixels inside the ROI"
    assert changed[~roi_mask].mean() < 0.02, "pixels far from the ROI must stay as they were"

    video = read_video(out)
    assert video.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


@pytest.mark.timeout(600)
def test_example_fits_then_edits(tmp_path: Path) -> None:
    # A private server and models folder: the fitted bundle must not show up in other tests' listings.
    server = start_in_process_server(make_tiny_models_dir(tmp_path / "models"))
    try:
        _fit_then_edit(server, tmp_path)
    finally:
        server.stop()


def _fit_then_edit(running_server: Any, tmp_path: Path) -> None:
    scene = make_scene(frames=6, size=(96, 64), seed=5)
    video = tmp_path / "clip.mp4"
    write_mp4(video, scene.frames, scene.fps)
    roi = tmp_path / "roi.json"
    roi.write_text(json.dumps(scene.roi.to_json()))
    out = tmp_path / "fitted-edit.mp4"
    # 40 iterations is about the shortest fit whose mask covers the ROI (10 left it empty on this CPU), so the
    # tracked sticker is placed and the whole script runs: fit -> logo -> sticker -> MP4.
    result = run_example("--address", running_server.grpc_target, "--token", TOKEN, "--video", str(video), "--roi", str(roi),
                         "--name", "fitted-clip", "--size", "64x48", "--iterations", "40", "--out", str(out),
                         timeout=540)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # fitted at 64x48, delivered at the source's 96x64
    assert summary["bundle"] == "fitted-clip" and summary["size"] == [96, 64] and summary["logo_seq"] >= 1
    assert "fit " in result.stderr  # progress lines came through
    assert summary["sticker_seq"] == summary["logo_seq"] + 1, summary["warnings"]
    assert read_video(out).frames.shape[1:] == (64, 96, 3)


def test_example_reports_server_errors_in_one_line(running_server: Any, tmp_path: Path) -> None:
    result = run_example("--address", running_server.grpc_target, "--token", "wrong", "--bundle", BUNDLE, "--out",
                         str(tmp_path / "x.mp4"))
    assert result.returncode == 1 and "UNAUTHENTICATED" in result.stderr
    result = run_example("--address", running_server.grpc_target, "--token", TOKEN, "--bundle", "missing", "--out",
                         str(tmp_path / "x.mp4"))
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr and "missing" in result.stderr
    result = run_example("--address", running_server.grpc_target)
    assert result.returncode == 2 and "--bundle" in result.stderr
