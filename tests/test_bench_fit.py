"""`vatlas bench fit` as a driver: presets, rows, worst frames, real clips and --object-roi, with the fit replaced
by exact bundles (the fit itself is benchmarked on a GPU; here only the plumbing and the metric wiring)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vatlas.bench import fit as bench_fit
from vatlas.synth import SynthScene, make_scene
from vatlas.video import write_png_sequence

SIZE, FRAMES = (128, 72), 16


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_fit.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_hard_preset_defaults() -> None:
    args = parse("--synth-preset", "hard")
    assert args.synth is None and args.synth_size is None and not args.object_roi
    assert bench_fit.SYNTH_PRESETS["hard"][:3] == (6, "768x432", 70)
    assert bench_fit.SYNTH_PRESETS["default"][:3] == (2, "256x144", 24)


@pytest.fixture(scope="module")
def scene() -> SynthScene:
    return make_scene(preset="hard", seed=100, frames=FRAMES, size=SIZE)


@pytest.fixture
def exact_fit(monkeypatch: pytest.MonkeyPatch, scene: SynthScene) -> list[Any]:
    """fit() -> the scene's ground-truth bundle (frames must be the scene's), with the ROI it was given."""
    calls: list[Any] = []

    def fake_fit(frames: np.ndarray, roi: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any], Any]:
        assert np.array_equal(frames, scene.frames)
        calls.append(roi)
        bundle = scene.ground_truth_bundle(atlas_size=256)
        bundle.roi_polygons = roi.to_json()["polygons"]
        if len(calls) > 1:  # a real-clip fit: the mask is the ROI minus the annotated objects
            bundle.mask = np.where(scene.roi_footprint() & (scene.gt_occlusion < 0.5), 255, 0).astype(np.uint8)
        metrics = {"stage_seconds": {"flow": 0.0}, "total_seconds": 0.0, "flow": {"ref_valid": 1.0}}
        return bundle, metrics, lambda cfg: bundle

    monkeypatch.setattr(bench_fit, "fit_clip", fake_fit)
    return calls


def test_synthetic_rows_and_worst_frames(exact_fit: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--synth-preset", "hard", "--synth", "1", "--synth-size", "128x72", "--synth-frames", "16",
                 "--clips", "--device", "cpu")
    result = bench_fit.run(args)
    (row,) = result["rows"]
    assert row["clip"] == "hard0" and row["frames"] == FRAMES
    assert row["mask_iou"] == 1.0 and row["ref_cover"] == 1.0 and row["untouched"] == 1.0
    assert row["uv_error_px"] < 0.05 and row["uv_error_px_worst"] < 0.1  # the exact bundle's T is the truth
    for key in ("edit_psnr", "edit_psnr_worst", "mask_iou_worst", "mask_false_hidden", "paste_psnr",
                "false_hidden_edge_px_median", "t_metrics"):
        assert key in row
    assert set(result["worst_frames"]["hard0"]) >= {"edit_psnr", "mask_iou", "uv_error_px"}
    assert result["meta"]["synth_preset"] == "hard"
    assert "[hard0] worst frames, edit_psnr (frame:value):" in capsys.readouterr().out
    json.dumps(result, default=str)


def test_large_synthetic_scene_is_fitted_small_and_scored_at_its_size(
        monkeypatch: pytest.MonkeyPatch, scene: SynthScene) -> None:
    seen: list[tuple[Any, ...]] = []

    def fake_fit(frames: np.ndarray, roi: Any, *args: Any, source_frames: Any = None, source_roi: Any = None,
                 **kwargs: Any) -> tuple[Any, dict[str, Any], Any]:
        seen.append((frames.shape, source_frames.shape, roi.polygons[0], source_roi.polygons[0]))
        bundle = scene.ground_truth_bundle(atlas_size=256)  # delivered at the scene's size
        metrics = {"stage_seconds": {"flow": 0.0}, "total_seconds": 0.0, "flow": {"ref_valid": 1.0}}
        return bundle, metrics, lambda cfg: bundle

    monkeypatch.setattr(bench_fit, "fit_clip", fake_fit)
    result = bench_fit.run(parse("--synth-preset", "hard", "--synth", "1", "--synth-size", "128x72",
                                 "--synth-frames", "16", "--clips", "--device", "cpu", "--set", '{"max_side": 64}'))
    (work_shape, source_shape, work_poly, source_poly), = seen
    assert work_shape == (FRAMES, 36, 64, 3) and source_shape == (FRAMES, 72, 128, 3)
    assert np.allclose(work_poly * 2.0, source_poly)
    assert result["rows"][0]["untouched"] == 1.0


def test_real_clip_and_object_roi(exact_fit: list[Any], scene: SynthScene, tmp_path: Path) -> None:
    clip = tmp_path / "clip"
    write_png_sequence(clip / "frames", scene.frames)
    masks = (scene.gt_occlusion >= 0.5).astype(np.uint8) * 255
    write_png_sequence(clip / "masks", np.repeat(masks[..., None], 3, axis=-1))
    scene.roi.save(clip / "roi.json")
    common = ["--synth", "0", "--clips", "clip", "--data", str(tmp_path), "--size", "128x72",
              "--max-frames", "16", "--device", "cpu"]
    exact_fit.append("synthetic slot")  # the next calls are real-clip fits
    (row,) = bench_fit.run(parse(*common))["rows"]
    assert row["clip"] == "clip" and row["edit_on_object"] <= 0.01
    assert row["edit_missing_frames"] == 0 and row["edit_eligible_frames"] >= 3
    # --object-roi: the fit gets the frame-0 object outline as its ROI (an occluder is in view on frame 0).
    result = bench_fit.run(parse(*common, "--object-roi"))
    (row,) = result["rows"]
    outline = exact_fit[-1].mask(scene.height, scene.width)
    assert row["clip"] == "clip:object" and {"obj_on_object", "obj_ref_cover"} <= set(row)
    assert (outline == (masks[0] > 0)).mean() > 0.99


def test_gpu_busy_share_is_the_mean_utilization_inside_a_span() -> None:
    busy = bench_fit.GpuBusy(torch.device("cpu"))  # no nvidia-smi on a CPU run: nothing sampled
    assert busy.samples == [] and busy.share(0.0, 1.0) is None
    busy.samples = [(0.5, 0.2), (1.5, 0.9), (2.5, 1.0), (3.5, 0.1)]
    assert busy.share(1.0, 3.0) == 0.95 and busy.share(4.0, 5.0) is None
    busy.close()
