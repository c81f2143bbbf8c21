"""`vatlas render`, `vatlas export` and `vatlas bench render` end to end on a saved ground-truth bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_edits_fixtures import png_bytes, solid_rgba
from vatlas.models.bundle import save_bundle
from vatlas.server.encoders import decode

from vatlas.cli import main
from vatlas.synth import make_scene
from vatlas.video import read_video


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    scene = make_scene(frames=6, size=(96, 64), seed=3)
    bundle = save_bundle(scene.ground_truth_bundle(atlas_size=128), root / "scene.vatlas")
    (root / "logo.png").write_bytes(png_bytes(solid_rgba(16, 12, (0, 255, 0, 255))))
    centre = scene.roi.polygons[0].mean(axis=0)
    doc = {"version": 1, "ops": [
        {"id": "t1", "type": "texture", "space": "frame", "frame": 0, "image": "logo.png",
         "rect": [float(centre[0]) - 8, float(centre[1]) - 6, 16, 12]},
    ]}
    (root / "doc.json").write_text(json.dumps(doc))
    (root / "bad.json").write_text(json.dumps({"version": 1, "ops": [{"id": "x", "type": "stroke"}]}))
    (root / "junk.vatlas").write_bytes(b"not a zip")
    return {"root": root, "bundle": bundle, "doc": root / "doc.json", "bad": root / "bad.json",
            "junk": root / "junk.vatlas", "centre": centre, "frames": scene.frames}


def test_render_a_frame(files: dict, capsys: pytest.CaptureFixture) -> None:
    out = files["root"] / "f0.png"
    assert main(["render", str(files["bundle"]), "--edits", str(files["doc"]), "--frame", "0", "-o", str(out)]) == 0
    img = decode(out.read_bytes())
    x, y = (int(v) for v in files["centre"])
    assert img[y, x, 1] > 200 and img[y, x, 0] < 60  # the green logo at the ROI centre
    assert "wrote" in capsys.readouterr().out
    plain = files["root"] / "plain.png"
    assert main(["render", str(files["bundle"]), "--frame", "2", "-o", str(plain)]) == 0
    assert np.array_equal(decode(plain.read_bytes()), files["frames"][2])  # no edits: the input
    # The default mode is the layers output; outside the logo the edited frame is the input too.
    away = np.ones(img.shape[:2], bool)
    away[max(y - 12, 0):y + 12, max(x - 14, 0):x + 14] = False
    assert np.array_equal(img[away], files["frames"][0][away])
    recon = files["root"] / "recon.png"
    assert main(["render", str(files["bundle"]), "--frame", "2", "--mode", "reconstruction", "-o", str(recon)]) == 0
    assert not np.array_equal(decode(recon.read_bytes()), files["frames"][2])  # the model's rendering instead


def test_cli_modes_are_the_engine_modes() -> None:
    from vatlas.server.edits.engine import DEFAULT_MODE, MODES

    from vatlas.commands.render import RENDER_MODES

    assert RENDER_MODES == MODES and RENDER_MODES[0] == DEFAULT_MODE


def test_export_mp4_and_pngs(files: dict) -> None:
    mp4 = files["root"] / "out.mp4"
    assert main(["export", str(files["bundle"]), "--edits", str(files["doc"]), "-o", str(mp4), "--frames", "1:5",
                 "--quiet"]) == 0
    assert read_video(mp4).frames.shape == (4, 64, 96, 3)
    folder = files["root"] / "pngs"
    assert main(["export", str(files["bundle"]), "-o", str(folder), "--quiet"]) == 0
    assert len(list(folder.glob("*.png"))) == 6
    # No edits: the default export is the input, bit for bit (the reconstruction is no longer the default).
    assert np.array_equal(read_video(folder).frames, files["frames"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["render", "{junk}", "--frame", "0", "-o", "{root}/x.png"], "junk.vatlas"),
        (["render", "{root}/none.vatlas", "--frame", "0", "-o", "{root}/x.png"], "no such bundle"),
        (["render", "{bundle}", "--frame", "6", "-o", "{root}/x.png"], "out of range"),
        (["render", "{bundle}", "--edits", "{bad}", "--frame", "0", "-o", "{root}/x.png"], "bad.json"),
        (["render", "{bundle}", "--edits", "{root}/nodoc.json", "--frame", "0", "-o", "{root}/x.png"], "nodoc"),
        (["render", "{bundle}", "--frame", "0", "-o", "{root}/x.gif"], ".png"),
        (["export", "{bundle}", "-o", "{root}/y.mp4", "--frames", "4:9"], "goes past the end: the clip has frames 0..5"),
        (["export", "{bundle}", "-o", "{root}/y.mp4", "--frames", "5:2"], "empty or reversed"),
        (["export", "{bundle}", "-o", "{root}/y.mp4", "--frames", "3:3"], "empty or reversed"),
        (["export", "{bundle}", "-o", "{root}/y.mp4", "--frames", "5"], "START:STOP (STOP exclusive): 5:6 for frame 5"),
        (["export", "{bundle}", "-o", "{root}/y.mp4", "--frames", "a:b"], "must look like START:STOP"),
        (["export", "{bundle}", "-o", "{root}/nodir/y.mp4"], "does not exist"),
        (["export", "{bundle}", "-o", "{root}/y.avi"], ".mp4"),
    ],
)
def test_one_line_errors(files: dict, capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> None:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_bench_render_runs_tiny_on_cpu(tmp_path: Path, files: dict) -> None:
    out = tmp_path / "bench.json"
    # A child process: the bench table printer binds sys.stdout at import, which pytest's capture replaces.
    cmd = [sys.executable, "-m", "vatlas.cli", "bench", "render", "--quick", "--device", "cpu", "--json", str(out),
           "--bundle", str(files["bundle"])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "composite+jpeg+host" in done.stdout
    result = json.loads(out.read_text())
    rows = {(r["what"], r["batch"]): r["fps"] for r in result["rows"]}
    assert rows[("composite", 1)] > 0 and rows[("composite+jpeg+host", 4)] > 0
    assert rows[("pixels within 1 level of float64 ref", 0)].startswith("1.000000")
    assert result["meta"]["device"] == "cpu"
    fitted = [r for r in result["rows"] if "fitted (scene, 6 frames" in r["size"]]
    assert {r["what"] for r in fitted} >= {"composite", "resident bytes per pixel-frame"}
    assert all(r["size"].startswith("96x64") for r in fitted)
