"""`vatlas bench serve --quick` runs end to end on CPU with real clients and reports every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_serve_quick_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vatlas.cli", "bench", "serve", "--quick", "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    measures = {(row["measure"], row["setting"]): row["value"] for row in result["rows"]}
    for transport in ("grpc", "websocket"):
        p50 = measures[("edit->pixels p50", f"{transport} 128x72")]
        p95 = measures[("edit->pixels p95", f"{transport} 128x72")]
        assert 0 < p50 <= p95
    fps = [v for (m, _), v in measures.items() if m.startswith("playback fps/client")]
    assert len(fps) >= 5 and all(v > 0 for v in fps)
    assert ("playback fps/client min", "grpc 2 x separate sessions") in measures
    assert any(m == "server RSS start/peak" for m, _ in measures)
    assert result["meta"]["device"] == "cpu" and result["meta"]["rss_samples"]
    assert "edit->pixels p95" in proc.stdout  # the table is printed too


def test_bench_serve_times_a_given_bundle_at_its_own_size(tiny_models_dir: Path, tmp_path: Path) -> None:
    """--bundle serves a bundle file (a fitted one on the GPU), its strokes inside each frame's visible region."""
    out = tmp_path / "bundle.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vatlas.cli", "bench", "serve", "--quick", "--device", "cpu", "--clients", "1",
         "--bundle", str(tiny_models_dir / "tiny.vatlas"), "--json", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = {(row["measure"], row["setting"]) for row in json.loads(out.read_text())["rows"]}
    assert {("edit->pixels p95", "grpc 64x48"), ("edit->pixels p95", "websocket 64x48")} <= settings


def test_bench_serve_soak_on_cpu(tmp_path: Path) -> None:
    """The soak mode (the GPU runs it for 10 minutes with 16 clients): clients edit and render, and the server's
    memory is reported over time."""
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vatlas.cli", "bench", "serve", "--quick", "--device", "cpu", "--soak", "8",
         "--clients", "4", "--data", "--json", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    measures = {row["measure"]: row["value"] for row in result["rows"]}
    assert measures["client errors"] == 0, result["meta"]["errors"]
    assert measures["ops answered"] > 50 and measures["frames received"] > 50
    assert "server RSS slope after warm-up" in measures and measures["server RSS start/end/peak"].count("/") == 2
    timeline = result["meta"]["timeline"]
    assert len(timeline) == 8 and all(p["rss_mib"] > 0 and p["ops_per_s"] > 0 for p in timeline)
    assert result["meta"]["clients"] == 4 and result["meta"]["persisted"] and result["meta"]["rejoins"] >= 4
    assert "memory at" in proc.stdout  # the table is printed too


def test_bench_serve_chaos_prints_what_survived(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vatlas.cli", "bench", "serve", "--quick", "--device", "cpu", "--chaos", "4",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measures = {row["measure"]: row["value"] for row in json.loads(out.read_text())["rows"]}
    assert measures["SIGKILLs"] == 4 and measures["acknowledged ops"] > 10
    assert measures["acknowledged ops lost"] == 0 and measures["answers out of order"] == 0
    assert measures["resume (load + replay) p95"] > 0 and "restart to ready p50" in proc.stdout
