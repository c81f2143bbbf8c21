"""`vatlas synth` through the real console script: outputs round-trip, bad arguments fail in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vatlas.models.bundle import load_bundle

from vatlas.cli import main
from vatlas.metrics import psnr
from vatlas.roi import load_roi
from vatlas.synth import make_scene
from vatlas.video import read_video

VATLAS = str(Path(sys.executable).parent / "vatlas")


def run_vatlas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VATLAS, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "scene"
    result = run_vatlas(
        "synth", str(out), "--frames", "12", "--size", "96x64", "--seed", "7", "--occluders", "2",
        "--png", "--bundle", "--atlas-size", "128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 12 frames" in result.stdout
    return out


def test_outputs_round_trip(synth_dir: Path) -> None:
    video = read_video(synth_dir / "video.mp4")
    assert video.frames.shape == (12, 64, 96, 3) and video.fps == 30.0
    exact = read_video(synth_dir / "frames")
    scene = make_scene(frames=12, size=(96, 64), seed=7, occluders=2)
    assert np.array_equal(exact.frames, scene.frames)  # deterministic across processes
    assert np.array_equal(np.load(synth_dir / "gt_uv.npy"), scene.gt_uv)
    assert np.array_equal(np.load(synth_dir / "gt_visibility.npy"), scene.gt_visibility)
    assert np.array_equal(np.load(synth_dir / "gt_illumination.npy"), scene.gt_illumination)
    tracks = np.load(synth_dir / "gt_tracks.npy")
    assert tracks.shape == (12, len(scene.roi.polygons[0]), 2)
    roi = load_roi(synth_dir / "roi.json")
    np.testing.assert_allclose(roi.polygons[0], scene.roi.polygons[0])
    assert psnr(video.frames, scene.frames) > 30  # H.264 at crf 12 (chroma is subsampled)
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert meta["params"]["seed"] == 7 and meta["frames"] == 12 and meta["size"] == [96, 64]
    assert {"gt_uv.npy", "gt_visibility.npy", "gt_illumination.npy", "video.mp4", "roi.json"} <= set(
        meta["files"]
    )
    bundle = load_bundle(synth_dir / "ground_truth.vatlas")
    assert bundle.atlas_size == 128 and bundle.num_frames == 12


def test_fps_lighting_and_odd_size(tmp_path: Path) -> None:
    result = run_vatlas(
        "synth", str(tmp_path), "--frames", "5", "--size", "65x47", "--fps", "25", "--no-lighting"
    )
    assert result.returncode == 0, result.stderr
    video = read_video(tmp_path / "video.mp4")
    assert video.fps == 25.0 and video.frames.shape == (5, 47, 65, 3)  # odd sizes exact (yuv444p, vatlas.video)
    assert np.all(np.load(tmp_path / "gt_illumination.npy") == 1.0)
    assert np.load(tmp_path / "gt_uv.npy").shape == (5, 47, 65, 2)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--size", "12x"], "size must look like WxH"),
        (["--size", "abc"], "size must look like WxH"),
        (["--size", "16x16"], "between 32x32"),
        (["--frames", "1"], "must be in 2..10000"),
        (["--frames", "ten"], "expected an integer"),
        (["--seed", "-3"], "must be in 0.."),
        (["--occluders", "99"], "must be in 0..16"),
        (["--fps", "0"], "must be in (0, 1000]"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(
    tmp_path: Path, args: list[str], pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process through the real parser (each console-script start imports torch, which is slow here);
    # the subprocess tests below check the installed script itself.
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "out"), *args])
    assert exc.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and pattern in errors[0]
    assert errors[0].startswith(("vatlas synth: error:", "vatlas: error:"))
    assert not (tmp_path / "out").exists()


def test_console_script_bad_size(tmp_path: Path) -> None:
    result = run_vatlas("synth", str(tmp_path / "out"), "--size", "12x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "vatlas synth: error: argument --size: size must look like WxH (e.g. 256x144), got '12x'"
    )
    assert not (tmp_path / "out").exists()


def test_console_script_out_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("a file")
    result = run_vatlas("synth", str(target))
    assert result.returncode == 2
    assert result.stderr.strip() == f"vatlas synth: error: {target}: exists and is not a folder"


def test_missing_out_dir_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth"])
    assert exc.value.code == 2
    assert "the following arguments are required: OUT_DIR" in capsys.readouterr().err


def test_hard_preset_with_a_paste(tmp_path: Path) -> None:
    """In-process: the hard preset's files, and the ground-truth edited clip of a pasted PNG."""
    from PIL import Image

    image = np.zeros((10, 14, 4), np.uint8)
    image[...] = (240, 30, 200, 255)
    Image.fromarray(image, "RGBA").save(tmp_path / "logo.png")
    out = tmp_path / "hard"
    code = main([
        "synth", str(out), "--preset", "hard", "--frames", "16", "--size", "128x72", "--seed", "2",
        "--paste", str(tmp_path / "logo.png"), "--paste-frame", "5", "--paste-rect", "50,30",
    ])  # fmt: skip
    assert code == 0
    scene = make_scene(preset="hard", frames=16, size=(128, 72), seed=2)
    assert np.array_equal(read_video(out / "gt_edited").frames, scene.render_pasted(image, frame=5,
                                                                                     rect=(50, 30, 14, 10)))
    assert np.array_equal(np.load(out / "gt_occlusion.npy"), scene.gt_occlusion)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["preset"] == "hard" and meta["params"]["hard"]["occluders"]["windows"]
    assert meta["paste"] == {"image": str(tmp_path / "logo.png"), "frame": 5, "rect": [50.0, 30.0, 14.0, 10.0]}
    assert {"gt_edited/", "gt_occlusion.npy"} <= set(meta["files"])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--preset", "hard", "--frames", "8"], "the hard preset needs frames >= 16"),
        (["--paste-rect", "1,2,3"], "expected X,Y or X,Y,W,H"),
        (["--preset", "extreme"], "invalid choice"),
    ],
)
def test_bad_preset_arguments(tmp_path: Path, args: list[str], pattern: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["synth", str(tmp_path / "out"), *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert pattern in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
