"""End-to-end fit on a small synthetic scene: quality floors, bundle contents, resume, CLI errors, real clip."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from vatlas.models.bundle import load_bundle
from vatlas.models.config import FitConfig
from vatlas.models.fit import FitData, FitError, Fitter, checkpoint_path, fit

from vatlas import edit_eval
from vatlas.bench import fit as bench_fit
from vatlas.roi import Roi
from vatlas.synth import make_scene
from vatlas.video import read_video

DATA = SHARED_DATA


def tiny_config(**overrides) -> FitConfig:
    """Small networks and short stages: a CPU fit of a 64x48 clip in well under a minute."""
    base = dict(iters_mapping_init=100, iters_main=150, iters_refine=40, iters_inverse=100, batch_size=768,
                mask_bootstrap_until=100, eval_every=50, hash_levels=8, hash_log2_size=14, mapping_width=64,
                inverse_grid=64, lr_mapping=2e-3)
    base.update(overrides)
    return FitConfig.preset("draft", **base)


@pytest.fixture(scope="module")
def scene():
    return make_scene(frames=6, size=(64, 48), seed=2, occluders=1, lighting=True)


@pytest.fixture(scope="module")
def fitted(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "scene.vatlas"
    cache = tmp_path_factory.mktemp("cache")
    bundle, metrics = fit(scene.frames, scene.roi, config=tiny_config(extra={"cache_dir": str(cache)}),
                          fps=scene.fps, device="cpu", out=out, show_progress=False)
    return bundle, metrics, out


def test_bundle_is_written_and_loads_with_consistent_fields(fitted, scene):
    bundle, metrics, out = fitted
    loaded = load_bundle(out)
    assert loaded.uv.shape == (6, 48, 64, 2) and loaded.atlas.shape == (1024, 1024, 3)
    assert loaded.illumination.shape == (6, 12, 16, 3) and loaded.illumination.dtype == np.float16
    assert loaded.inverse_map.shape == (6, 64, 64, 2)
    assert loaded.atlas_span_px == pytest.approx(1.25 * 64)
    assert loaded.source["sha256"] and loaded.config["bake"]["atlas_size"] == 1024
    assert set(metrics["stage_seconds"]) == {"flow", "init", "main", "refine", "inverse", "bake"}
    assert not checkpoint_path(out).exists()
    worst = metrics["roi_psnr_worst_frames"]
    assert 1 <= len(worst) <= 5 and [w[1] for w in worst] == sorted(w[1] for w in worst)
    assert all(0 <= w[0] < 6 and w[2] > 0 for w in worst)
    # the coverage mask is where the visible ROI maps: around the reference ROI in atlas space
    ys, xs = np.nonzero(loaded.atlas_coverage)
    cov_xy = loaded.uv_to_atlas(np.stack([(xs + 0.5) / 1024 * 2 - 1, (ys + 0.5) / 1024 * 2 - 1], 1))
    roi = scene.roi.polygons[0]
    assert cov_xy.min(0)[0] > roi.min(0)[0] - 4 and cov_xy.max(0)[0] < roi.max(0)[0] + 4
    # the inverse map is NaN only for part of the grid, and finite entries lie in the frame
    finite = np.isfinite(loaded.inverse_map[..., 0])
    assert 0.02 < finite.mean() < 1.0
    assert (loaded.inverse_map[finite] >= -0.5).all() and (loaded.inverse_map[finite][:, 0] <= 64.5).all()


def test_quality_floors_on_the_synthetic_scene(fitted, scene):
    bundle, metrics, _ = fitted
    q = bench_fit.synth_quality(bundle, scene)
    print(json.dumps(q))
    # floors for a 150-iteration CPU fit (the GPU bench checks the real targets)
    assert q["roi_psnr"] > 20.0
    assert q["mask_iou"] > 0.6
    assert q["mask_iou"] == pytest.approx(1.0 - q["mask_false_visible"] - q["mask_false_hidden"])
    assert q["drift_px"] < 2.0
    assert q["edit_psnr"] > 15.0
    # reference frame: T is anchored to the identity on the ROI (position loss)
    uv = bundle.uv_float(0)
    roi_mask = scene.roi.mask(48, 64)
    err = np.linalg.norm(uv - scene.gt_uv[0], axis=-1)[roi_mask] * bundle.atlas_span_px / 2
    assert np.median(err) < 1.0


def _raise_at(stage: str, iteration: int, at_stage: str, at_iteration: int) -> None:
    if stage == at_stage and iteration == at_iteration:
        raise KeyboardInterrupt


def test_interrupt_writes_a_checkpoint_and_resume_finishes(scene, tmp_path):
    out = tmp_path / "r.vatlas"
    cfg = tiny_config(iters_mapping_init=20, iters_main=40, iters_refine=10, iters_inverse=10,
                      extra={"cache_dir": str(tmp_path / "cache")})

    def interrupt(stage: str, iteration: int) -> None:
        if stage == "main" and iteration == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(scene.frames, scene.roi, config=cfg, device="cpu", out=out, show_progress=False, callback=interrupt)
    ckpt = checkpoint_path(out)
    assert ckpt.exists() and not out.exists()
    steps = []
    bundle, metrics = fit(scene.frames, scene.roi, config=cfg, device="cpu", out=out, resume=True,
                          show_progress=False, callback=lambda s, i: steps.append((s, i)))
    assert metrics["resumed_from"] == {"stage": "main", "iteration": 25}
    assert steps[0] == ("main", 26) and steps.count(("main", 26)) == 1
    assert out.exists() and not ckpt.exists()
    # an interruption during mask refinement resumes there, keeping the refined mask weights
    with pytest.raises(KeyboardInterrupt):
        fit(scene.frames, scene.roi, config=cfg, device="cpu", out=out, show_progress=False,
            callback=lambda s, i: _raise_at(s, i, "refine", 5))
    saved = torch.load(checkpoint_path(out), weights_only=False)
    # after the main stage the weights are the best-PSNR ones: the checkpoint does not hold them twice
    assert saved["stage"] == "refine" and saved["best_state"] is None
    _, metrics = fit(scene.frames, scene.roi, config=cfg, device="cpu", out=out, resume=True, show_progress=False)
    assert metrics["resumed_from"] == {"stage": "refine", "iteration": 5}
    # a checkpoint from another clip geometry is refused
    with pytest.raises(KeyboardInterrupt):
        fit(scene.frames, scene.roi, config=cfg, device="cpu", out=out, show_progress=False, callback=interrupt)
    with pytest.raises(FitError, match="another video"):
        fit(scene.frames[:5], scene.roi, config=cfg, device="cpu", out=out, resume=True, show_progress=False)
    with pytest.raises(FitError, match="different network settings"):
        fit(scene.frames, scene.roi, config=cfg.updated({"network": {"frame_affine": not cfg.network.frame_affine}}),
            device="cpu", out=out, resume=True, show_progress=False)
    with pytest.raises(FitError, match="nothing to resume"):
        fit(scene.frames, scene.roi, config=cfg, device="cpu", out=tmp_path / "none.vatlas", resume=True)


def test_checkpoint_holds_what_training_changed_and_rebuilds_it_exactly(scene, tmp_path):
    """No copy of the seeded start, no best-PSNR weights equal to the current ones, no frozen nets' optimizer;
    a resume rebuilds the weights and Adam's moments bit for bit (the best-PSNR snapshot to fp16)."""
    out = tmp_path / "c.vatlas"
    cfg = tiny_config(iters_mapping_init=10, iters_main=60, iters_refine=10, iters_inverse=10, eval_every=10,
                      extra={"cache_dir": str(tmp_path / "cache")})
    data = FitData(scene.frames, scene.roi, 30.0, {})
    fitter = Fitter(data, cfg, torch.device("cpu"), show_progress=False,
                    callback=lambda s, i: _raise_at(s, i, "main", 45))
    with pytest.raises(KeyboardInterrupt):
        fitter.run(out)
    assert fitter.best_state is not None
    dense = io.BytesIO()
    torch.save({"model": fitter.model.state_dict(), "optimizer": fitter.optimizer.state_dict(),
                "best_state": fitter.best_state}, dense)
    size = checkpoint_path(out).stat().st_size
    saved = torch.load(checkpoint_path(out), weights_only=False)
    assert size < 0.5 * dense.tell(), (size, dense.tell())
    assert not any(k.startswith("inverse_field") for k, v in saved["model"].items() if v is not None)
    resumed = Fitter(data, cfg, torch.device("cpu"), show_progress=False)
    resumed.load_checkpoint(checkpoint_path(out))
    assert (resumed.stage, resumed.iteration) == ("main", 45)
    for k, v in fitter.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for k, v in fitter.best_state.items():
        assert torch.allclose(resumed.best_state[k], v, rtol=1e-3, atol=1e-7), k
    moments = resumed._pending_optimizer["state"]
    for i, per in fitter.optimizer.state_dict()["state"].items():
        for name, value in per.items():
            assert torch.equal(moments[i][name], value), (i, name)


def test_per_frame_affine_starts_at_the_camera_motion(tmp_path):
    rng = np.random.default_rng(2)
    big = (np.kron(rng.random((16, 28, 3)), np.ones((4, 4, 1))) * 255).astype(np.uint8)  # 64 x 112
    frames = np.ascontiguousarray(np.stack([big[:, 2 * t: 2 * t + 96] for t in range(8)]))  # pans 2 px/frame
    roi = Roi(ref_frame=3, polygons=[[(20.0, 16.0), (70.0, 16.0), (70.0, 48.0), (20.0, 48.0)]])
    data = FitData(frames, roi, 30.0, {})
    fitter = Fitter(data, tiny_config(extra={"cache_dir": str(tmp_path)}), torch.device("cpu"), show_progress=False)
    fitter._stage_flow()
    fitter._start_affine_at_camera()
    # the affine map of frame t takes a pixel's normalized coordinates to those of the same content in the
    # reference frame: 2 px per frame further right
    x = torch.tensor([10.5, 50.5, 90.5])
    y = torch.tensor([5.5, 30.5, 60.5])
    for t in range(8):
        xyt = fitter._xyt(x, y, torch.full_like(x, t))
        delta = fitter.model.frame_affine[t]
        moved = xyt[:, :2] + xyt[:, :2] @ delta[:, :2].T + delta[:, 2]
        expected = fitter._xyt(x + 2.0 * (t - 3), y, torch.full_like(x, 3))[:, :2]
        assert torch.allclose(moved, expected, atol=0.3 / (fitter.span / 2)), t


def test_config_round_trips_and_rejects_bad_values():
    cfg = FitConfig.preset("best")
    assert FitConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.bake.atlas_size >= 1024 and cfg.network.atlas_span == 1.25 and cfg.losses.refine_tau == 0.025
    with pytest.raises(ValueError, match="atlas_size"):
        FitConfig.from_dict({"atlas_size": 512})
    with pytest.raises(ValueError, match="unknown FitConfig keys"):
        FitConfig.from_dict({"atlas_sise": 1024})
    with pytest.raises(ValueError, match="unknown preset"):
        FitConfig.preset("fastest")
    with pytest.raises(ValueError, match="illumination_encoding"):
        FitConfig.from_dict({"network": {"illumination_encoding": "luma"}})
    scaled = FitConfig.preset("standard").scaled_iters(600)
    assert scaled.schedule.iters_main == 600 and scaled.schedule.iters_refine < FitConfig().schedule.iters_refine


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vatlas.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "2"})


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/clip.mp4", "--roi", "{roi}"], "no such video"),
    (["{video}", "--roi", "/nonexistent/roi.json"], "no such ROI file"),
    (["{video}", "--roi", "{roi}", "--size", "big"], "--size must look like WxH"),
    (["{video}", "--roi", "{roi}", "--frames", "3-9"], "--frames must look like START:STOP"),
    (["{video}", "--roi", "{roi}", "--frames", "5:2"], "empty or reversed"),
    (["{video}", "--roi", "{roi}", "--frames", "5:6"], "one frame; a fit needs at least 2"),
    (["{video}", "--roi", "{far_roi}"], "outside"),
    (["{video}", "--roi", "{roi}", "--frames", "0:4", "--ref-frame", "9"], "beyond"),
    pytest.param(["{video}", "--roi", "{roi}", "--frames", "0:4", "--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_cli_bad_inputs_fail_with_one_line(tmp_path, args, message):
    roi = tmp_path / "roi.json"
    roi.write_text(json.dumps({"ref_frame": 0, "polygons": [[[10, 10], [60, 10], [60, 40], [10, 40]]]}))
    far = tmp_path / "far.json"
    far.write_text(json.dumps({"ref_frame": 0, "polygons": [[[2000, 2000], [2100, 2000], [2100, 2100]]]}))
    fill = {"roi": str(roi), "far_roi": str(far), "video": str(DATA / "libby" / "frames")}
    res = _cli("fit", *[a.format(**fill) for a in args], "--out", str(tmp_path / "x.vatlas"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


@pytest.mark.parametrize("out, message", [
    ("x.mov", "must be a bundle ending in .vatlas"),
    ("nodir/x.vatlas", "does not exist"),
    ("d.vatlas", "is a folder"),
])
def test_cli_checks_the_output_before_any_work(tmp_path, capsys, out, message):
    from vatlas.cli import main

    target = tmp_path / out
    (tmp_path / "d.vatlas").mkdir()
    # the video does not exist either: the output is checked first, before anything is read
    assert main(["fit", str(tmp_path / "none.mp4"), "--roi", str(tmp_path / "none.json"), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_preset_follows_the_device_unless_named():
    from vatlas.models.prepare import choose_preset

    assert choose_preset(None, "cpu") == ("draft", "preset: draft (the default on a CPU; --preset standard is "
                                                    "GPU-sized)")
    assert choose_preset(None, "cuda")[0] == "standard"
    name, line = choose_preset("standard", "cpu")
    assert name == "standard" and "hours on this CPU" in line
    assert choose_preset("best", "cuda") == ("best", "preset: best (as named)")


def test_cli_fits_a_real_clip_crop_end_to_end_and_info_prints_it(tmp_path):
    out = tmp_path / "libby.vatlas"
    res = _cli("fit", str(DATA / "libby" / "frames"), "--roi", str(DATA / "libby" / "roi.json"), "--out", str(out),
               "--frames", "0:4", "--size", "96x54", "--preset", "draft", "--iters", "20", "--batch-size", "256",
               "--device", "cpu", "--quiet")
    assert res.returncode == 0, res.stderr
    bundle = load_bundle(out)
    # fitted at 96x54, delivered at the source's 854x480 over the source frames themselves
    assert bundle.frames.shape == (4, 480, 854, 3) and bundle.source["frame_range"] == [0, 4]
    assert bundle.metrics["working_size"] == [96, 54]
    source = read_video(DATA / "libby" / "frames", frames=(0, 4)).frames
    assert np.array_equal(bundle.frames, source)
    assert math.isfinite(bundle.metrics["ref_roi_psnr"]) and bundle.mask.shape == (4, 480, 854)
    assert bundle.uv.shape == (4, 480, 854, 2) and bundle.inverse_map.shape[0] == 4
    assert res.stdout.startswith(f"wrote {out}")
    assert ("worst-fitting frames:" in res.stdout) == bool(bundle.metrics["roi_psnr_worst_frames"])
    info = _cli("info", str(out), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["frames"] == 4
    text = _cli("info", str(out))
    lines = text.stdout.strip().splitlines()
    atlas = f"atlas: {bundle.atlas_size}x{bundle.atlas_size}"
    assert len(lines) <= 10 and atlas in text.stdout and "fitted at 96x54" in text.stdout
    assert "ROI PSNR" in text.stdout and "--all" in lines[-1]
    assert "atlas_size: 1024" in _cli("info", str(out), "--all").stdout  # the training settings too
    bad = _cli("info", str(tmp_path / "missing.vatlas"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_fit_at_half_size_is_delivered_at_the_source_size(tmp_path):
    """Fit small, deliver at full size: the fields are evaluated at the source's pixel centres."""
    big = make_scene(frames=4, size=(128, 96), seed=3, occluders=1, lighting=True)
    small = np.stack([cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA) for f in big.frames])
    roi_small = big.roi.scaled(0.5, 0.5)
    bundle, _ = fit(small, roi_small, config=tiny_config(extra={"cache_dir": str(tmp_path)}), device="cpu",
                    show_progress=False, source_frames=big.frames, source_roi=big.roi)
    assert (bundle.width, bundle.height) == (128, 96) and np.array_equal(bundle.frames, big.frames)
    assert bundle.mask.shape == (4, 96, 128) and bundle.metrics["working_size"] == [64, 48]
    assert bundle.atlas_span_px == pytest.approx(big.atlas_span_px)
    # T on the reference ROI is near the identity in source pixels too (the position loss anchors it)
    err = np.linalg.norm(bundle.uv_float(0) - big.gt_uv[0], axis=-1)[big.roi.mask(96, 128)]
    assert np.median(err * bundle.atlas_span_px / 2.0) < 2.0
    # the inverse map returns source pixels: B(T(p)) ~ p on the reference ROI
    ys, xs = np.nonzero(big.roi.mask(96, 128))
    pick = slice(None, None, max(1, len(xs) // 50))
    uv = bundle.uv_float(0)[ys[pick], xs[pick]]
    back = edit_eval.sample_inverse(bundle, uv)[0]
    ok = np.isfinite(back).all(-1)
    assert ok.mean() > 0.8
    dist = np.linalg.norm(back[ok] - np.stack([xs[pick], ys[pick]], 1)[ok] - 0.5, axis=-1)
    assert np.median(dist) < 3.0
    # the reference frame shows the whole ROI
    inner = cv2.erode(big.roi.mask(96, 128).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert (bundle.mask[0][inner] >= 128).all()
