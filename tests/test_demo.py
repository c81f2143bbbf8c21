"""`vatlas demo` (the README's first command) runs end to end at a tiny size: clip, fit, bundle, reuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vatlas.models.bundle import load_bundle


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vatlas.cli", "demo", "--workdir", str(workdir), "--frames", "6", "--size", "64x48",
           "--iters", "20", "--device", "cpu", "--no-serve", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


def test_demo_fits_a_generated_clip_and_reuses_it(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    bundle = load_bundle(tmp_path / "models" / "demo.vatlas")
    assert (bundle.num_frames, bundle.width, bundle.height) == (6, 64, 48)
    assert (tmp_path / "demo.mp4").exists() and (tmp_path / "demo-roi.json").exists()
    assert "fit metrics" in first.stdout

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reusing" in second.stdout and "fitting" not in second.stdout


def test_demo_rejects_a_bad_size() -> None:
    result = subprocess.run([sys.executable, "-m", "vatlas.cli", "demo", "--size", "big"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "expected WxH" in result.stderr
