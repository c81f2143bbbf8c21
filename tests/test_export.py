"""Export of the edited clip: MP4 (H.264 via PyAV) and PNG sequences, progress, frame ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_edits_fixtures import shifted_bundle
from vatlas.models.reference_compositor import reference_composite, to_uint8
from vatlas.server.edits.engine import EditEngine
from vatlas.server.export import export_clip, parse_frame_range

from vatlas.video import read_video


@pytest.fixture(scope="module")
def engine() -> EditEngine:
    e = EditEngine(shifted_bundle(), "cpu")
    e.apply({"id": "s", "type": "stroke", "space": "frame", "frame": 0, "points": [[8, 8], [50, 40]],
             "width": 6, "color": [0, 0, 1, 1]})
    return e


def test_png_sequence_is_the_edits_over_the_source(engine: EditEngine, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = export_clip(engine, tmp_path / "seq", frames=[1, 2, 3], batch=2,
                      progress=lambda done, total: calls.append((done, total)))
    video = read_video(out)
    assert video.frames.shape == (3, 48, 64, 3)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    layer = engine.edit_layer()
    for k, t in enumerate([1, 2, 3]):
        ref = to_uint8(reference_composite(engine.bundle, t, layer=layer))
        assert np.abs(video.frames[k].astype(int) - ref).max() <= 1
        # The default is the layers output: the stroke changed the frame, and the rest is the source exactly.
        changed = video.frames[k] != engine.bundle.frames[t]
        assert changed.any(axis=-1).sum() > 50
        assert np.array_equal(video.frames[k], engine.render([t]).numpy()[0])


def test_reconstruction_export_is_the_diagnostic_mode(engine: EditEngine, tmp_path: Path) -> None:
    out = export_clip(engine, tmp_path / "recon", frames=[2], mode="reconstruction")
    frame = read_video(out).frames[0]
    ref = to_uint8(reference_composite(engine.bundle, 2, layer=engine.edit_layer(), mode="reconstruction"))
    assert np.abs(frame.astype(int) - ref).max() <= 1
    assert not np.array_equal(frame, engine.render([2]).numpy()[0])


def test_mp4_export(engine: EditEngine, tmp_path: Path) -> None:
    out = export_clip(engine, tmp_path / "clip.mp4", crf=8)
    video = read_video(out)
    assert video.frames.shape == (4, 48, 64, 3)
    assert video.fps == pytest.approx(24.0)
    expected = engine.render([0, 1, 2, 3]).numpy()
    # H.264 with 4:2:0 chroma: compare away from the fixture's random-noise strip (columns 0..2).
    got, want = video.frames[:, :, 6:].astype(float), expected[:, :, 6:].astype(float)
    for t in range(4):
        errors = [np.abs(got[t] - want[k]).mean() for k in range(4)]
        assert errors[t] < 10.0 and errors[t] == min(errors)  # close, and in order


def test_frame_ranges_and_errors(engine: EditEngine, tmp_path: Path) -> None:
    assert parse_frame_range("1:3", 4) == [1, 2] and parse_frame_range(":", 4) == [0, 1, 2, 3]
    assert parse_frame_range("2", 4) == [2] and parse_frame_range(None, 2) == [0, 1]
    for bad in ("3:1", "0:9", "x:y", "-1:2"):
        with pytest.raises(ValueError):
            parse_frame_range(bad, 4)
    with pytest.raises(ValueError, match="mp4"):
        export_clip(engine, tmp_path / "clip.avi")
    with pytest.raises(IndexError):
        export_clip(engine, tmp_path / "x.mp4", frames=[9])
    assert not (tmp_path / "x.mp4").exists()
