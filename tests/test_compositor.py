"""The fast compositor against the float64 reference (CPU, fp32): within 1 level, bit-exact where untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_edits_fixtures import png_bytes, shifted_bundle, solid_rgba
from vatlas.models.bundle import UV_OFFSET, UV_STEP, decode_uv
from vatlas.models.reference_compositor import (
    edited_atlas,
    reference_composite,
    sample_atlas,
    to_uint8,
    upsample_bilinear,
)
from vatlas.server.compositor import Compositor, pad_to_bucket
from vatlas.server.edits.engine import EditEngine

ALL = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def edited():
    bundle = shifted_bundle(width=80, height=56, atlas=96)
    engine = EditEngine(bundle, "cpu")
    engine.apply({"id": "t", "type": "texture", "space": "atlas", "position": [40, 28], "rotation": 20,
                  "image": png_bytes(solid_rgba(30, 20, (250, 240, 10, 200))), "scale": 1.3})
    engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": 2, "points": [[5, 5], [70, 50]],
                  "width": 7, "color": [0.1, 0.2, 0.9, 1.0], "hardness": 0.6})
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "exposure": -0.7, "saturation": 0.5,
                  "points": [[0, 0], [60, 0], [0, 60]]})
    return bundle, engine


@pytest.mark.parametrize("mode", ["layers", "reconstruction"])
def test_within_one_level_of_the_float64_reference(edited, mode: str) -> None:
    bundle, engine = edited
    out = engine.render(ALL, mode=mode).numpy().astype(int)
    layer, adjust = engine.edit_layer(), engine.adjust_transform()
    assert adjust is not None
    for t in ALL:
        ref = reference_composite(bundle, t, layer=layer, adjust=adjust, mode=mode)
        err = np.abs(out[t] - np.clip(ref, 0, 255))
        assert err.max() <= 0.5 + 1e-3, (t, err.max())  # rounding only
        assert (np.abs(out[t] - to_uint8(ref)) <= 1).all()
    # The edits really changed the picture (so the comparison is not trivially of two copies of the input).
    assert (np.abs(out - bundle.frames).max(-1) > 20).mean() > 0.1


def _touched(engine: EditEngine, uv: np.ndarray) -> np.ndarray:
    """Pixels whose bilinear lookup reaches a texel some layer covers (paint, or an adjustment's K != I)."""
    support = np.abs(engine.edit_layer()).sum(-1)
    adjust = engine.adjust_transform()
    if adjust is not None:
        support = support + np.abs(adjust - np.eye(3, 4)).sum((-1, -2))
    return sample_atlas(support[..., None], uv)[..., 0] > 0


def test_bit_exact_where_mask_is_zero_and_where_no_edit_touches(edited) -> None:
    bundle, engine = edited
    out = engine.render(ALL).numpy()
    zero = bundle.mask == 0
    assert zero.any() and np.array_equal(out[zero], bundle.frames[zero])
    for t in ALL:
        untouched = ~_touched(engine, decode_uv(bundle.uv[t]))
        inside = untouched & (bundle.mask[t] == 255)
        assert inside.sum() > 100  # untouched pixels inside the ROI too
        assert np.array_equal(out[t][untouched], bundle.frames[t][untouched])
    # The model's reconstruction there is not the input, so the layers output really is the source's pixels.
    recon = engine.render(ALL, mode="reconstruction").numpy()
    assert (recon[..., 0][bundle.mask == 255] != bundle.frames[..., 0][bundle.mask == 255]).mean() > 0.05


def test_reconstruction_without_edits_is_the_model_inside_and_the_input_outside() -> None:
    bundle = shifted_bundle(width=48, height=40, atlas=64, seed=3)
    engine = EditEngine(bundle, "cpu")
    out = engine.render(ALL, mode="reconstruction").numpy()
    assert np.array_equal(engine.render(ALL).numpy(), bundle.frames)  # the default: the input itself
    for t in ALL:
        ref = reference_composite(bundle, t, mode="reconstruction")
        full = bundle.mask[t] == 255
        light = upsample_bilinear(bundle.illumination[t], bundle.height, bundle.width)
        model = light * sample_atlas(bundle.atlas / 255.0, decode_uv(bundle.uv[t])) * 255.0
        assert full.any() and np.allclose(ref[full], model[full])
        assert np.abs(out[t].astype(int) - np.clip(ref, 0, 255)).max() <= 0.5 + 1e-3
        assert np.array_equal(out[t][bundle.mask[t] == 0], bundle.frames[t][bundle.mask[t] == 0])


def test_batched_equals_single_and_caches_are_compact(edited) -> None:
    bundle, engine = edited
    comp: Compositor = engine.compositor
    tex, adjust = engine.layers.layer, engine.layers.adjust
    batched = comp.composite([3, 1, 2], tex, adjust)
    for n, t in enumerate([3, 1, 2]):
        assert torch.equal(batched[n], comp.composite([t], tex, adjust)[0])
    # uv int16 (4 B) + mask (1 B) + frames (3 B) + fp32 illumination at 1/16 of the pixels on CPU (0.75 B).
    ih, iw = bundle.illumination.shape[1:3]
    expected = 8 + 12 * (ih * iw) / (bundle.height * bundle.width)
    assert comp.bytes_per_pixel_frame == pytest.approx(expected)
    assert comp.uvq.dtype == torch.int16 and comp.mask.dtype == torch.uint8 and comp.frames.dtype == torch.uint8
    decoded = comp.uvq.to(torch.float64) * UV_STEP + UV_OFFSET
    assert np.abs(decoded.numpy() - decode_uv(bundle.uv)).max() < 1e-6


def test_reference_rgba_layer_form(edited) -> None:
    bundle, _ = edited
    layer = np.zeros((96, 96, 4), np.uint8)
    layer[40:50, 40:60] = (255, 0, 0, 255)
    layer[40:50, 60:70] = (0, 0, 255, 128)
    a_edit = edited_atlas(bundle, layer)
    assert np.allclose(a_edit[45, 45], [1, 0, 0]) and np.allclose(a_edit[10, 10], bundle.atlas[10, 10] / 255)
    half = 128 / 255
    assert np.allclose(a_edit[45, 65], [0, 0, half] + (1 - half) * bundle.atlas[45, 65] / 255)
    premultiplied = np.zeros((96, 96, 4))
    premultiplied[40:50, 40:60] = (1, 0, 0, 1)
    premultiplied[40:50, 60:70] = (0, 0, half, half)
    for t in (0, 2):
        straight = reference_composite(bundle, t, layer)
        assert np.allclose(straight, reference_composite(bundle, t, layer=premultiplied))
    with pytest.raises(ValueError):
        reference_composite(bundle, 0, mode="other")
    with pytest.raises(ValueError):
        reference_composite(bundle, 0, mode="delta")  # retired


def test_frame_index_errors(edited) -> None:
    _, engine = edited
    with pytest.raises(IndexError, match="out of range"):
        engine.compositor.frame_index([0, 7])
    with pytest.raises(ValueError):
        engine.compositor.frame_index([])
    with pytest.raises(ValueError, match="mode must be one of"):
        engine.render([0], mode="delta")  # retired: the edits are layers over the source now
    with pytest.raises(ValueError, match=r"\(1, 4, S, S\)"):
        engine.compositor.composite([0], engine.layers.layer[:, :3])
    with pytest.raises(ValueError, match=r"\(1, 12, S, S\)"):
        engine.compositor.composite([0], engine.layers.layer, engine.layers.layer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU check also runs in the bench)")
def test_cuda_matches_cpu(edited) -> None:
    bundle, engine = edited
    gpu = EditEngine(bundle, "cuda")
    for op in engine.document()["ops"]:
        gpu.apply(op)
    diff = np.abs(gpu.render(ALL).cpu().numpy().astype(int) - engine.render(ALL).numpy())
    assert (diff <= 1).mean() >= 0.999


def test_batches_pad_to_power_of_two_buckets() -> None:
    assert pad_to_bucket(torch.tensor([4])).tolist() == [4]
    assert pad_to_bucket(torch.tensor([1, 2, 3])).tolist() == [1, 2, 3, 3]
    assert pad_to_bucket(torch.arange(5)).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert pad_to_bucket(torch.arange(8)).tolist() == list(range(8))


def test_frame_index_runs_are_views_and_lists_keep_their_order(edited) -> None:
    _, engine = edited
    comp: Compositor = engine.compositor
    run = comp.frame_index([1, 2, 3])
    assert run.tolist() == [1, 2, 3] and run.data_ptr() == comp._frame_ids[1:].data_ptr()
    assert comp.frame_index(2).tolist() == [2]
    assert comp.frame_index([3, 1, 1]).tolist() == [3, 1, 1]
    assert comp.frame_index(torch.tensor([0, 2])).tolist() == [0, 2]


def test_backend_choice() -> None:
    from vatlas.server.compositor import _choose_backend

    assert _choose_backend("auto", None, cuda=False) == "eager"
    assert _choose_backend("auto", True, cuda=False) == "compile"
    assert _choose_backend("auto", False, cuda=True) == "eager"
    assert _choose_backend("eager", True, cuda=True) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        _choose_backend("vulkan", None, cuda=False)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    from vatlas.server import compositor

    monkeypatch.setattr(compositor, "triton_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        compositor._choose_backend("triton", None, cuda=False)
    assert compositor._choose_backend("triton", None, cuda=True) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert compositor._choose_backend("triton", None, cuda=False) == "triton"
