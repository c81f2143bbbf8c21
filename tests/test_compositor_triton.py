"""The fused Triton compositor vs the torch path: on CUDA when present, else in Triton's CPU interpreter.

CPU CI without Triton skips this file; the torch path itself is checked against the float64 reference in
test_compositor.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
TESTS = Path(__file__).resolve().parent

CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_edits_fixtures import png_bytes, shifted_bundle, solid_rgba
    from vatlas.models.reference_compositor import reference_composite
    from vatlas.bench.render import synthetic_bundle
    from vatlas.server.compositor import Compositor
    from vatlas.server.edits.engine import EditEngine

    device = sys.argv[1]
    # Odd sizes, a rough illumination at a reduced size with different x and y ratios,
    # uv pushed past both atlas borders in a few rows: every clamp and interpolation rule gets exercised.
    bundle = synthetic_bundle(52, 38, 3, 64, seed=2)
    bundle.uv[1, :2] = 0
    bundle.uv[1, -2:] = 65535
    bundle.uv[2, :, -3:, 0] = 65535
    rng = np.random.default_rng(0)
    bundle.illumination = rng.uniform(0.7, 1.3, (3, 7, 16, 3)).astype(np.float16)  # 38/7 and 52/16 differ
    engine = EditEngine(bundle, "cpu", compile=False)
    engine.apply({"id": "t", "type": "texture", "space": "atlas", "position": [26, 19], "rotation": 30,
                  "image": png_bytes(solid_rgba(24, 16, (250, 240, 10, 200))), "scale": 1.2})
    engine.apply({"id": "s", "type": "stroke", "space": "frame", "frame": 1, "points": [[3, 3], [48, 35]],
                  "width": 6, "color": [0.1, 0.2, 0.9, 1.0], "hardness": 0.6})
    engine.apply({"id": "a", "type": "adjustment", "space": "atlas", "exposure": -0.6, "hue": 40,
                  "contrast": 0.3, "points": [[0, 0], [40, 0], [0, 40]], "hardness": 0.5, "width": 6})
    torch_path = engine.compositor
    triton_path = Compositor(bundle, device, backend="triton")
    assert triton_path.backend == "triton" and triton_path.compiled
    zero = bundle.mask == 0
    assert zero.any() and (bundle.mask == 255).any()
    layer, transform = engine.edit_layer(), engine.adjust_transform()
    adjust = engine.layers.adjust
    assert adjust is not None
    for mode in ("layers", "reconstruction"):
        tex = engine.layers.layer if mode == "layers" else engine.layers.reconstruction_texture()
        for adj in (None, adjust):  # both kernel flavours (ADJUST off and on)
            frames = [2, 0, 1, 1]  # out of order, repeated: the device-side index
            want = torch_path.composite(frames, tex, adj).numpy().astype(int)
            got = triton_path.composite(frames, tex.to(device), None if adj is None else adj.to(device))
            got = got.cpu().numpy().astype(int)
            diff = np.abs(got - want)
            print(mode, adj is not None, "max", diff.max(), "equal", (diff == 0).mean())
            # CPU interpreter: the same fp32 arithmetic, bit for bit. GPU: FMA contraction may move a rounding.
            if device == "cpu":
                assert diff.max() == 0
            else:
                assert diff.max() <= 1 and (diff == 0).mean() >= 0.999
            for n, t in enumerate(frames):
                assert np.array_equal(got[n][zero[t]], bundle.frames[t][zero[t]])  # outside the ROI: the input
                ref = reference_composite(bundle, t, layer=layer, adjust=None if adj is None else transform,
                                          mode=mode)
                assert np.abs(got[n] - np.clip(ref, 0, 255)).max() <= 0.5 + 2e-3 + (device != "cpu")
            # The edits really show (the comparison is not between two copies of the input).
            assert (np.abs(got - bundle.frames[frames]).max(-1) > 20).mean() > 0.05
    # Other launch configurations (block size, early uv load) give the same bytes, with and without K.
    from vatlas.server.compositor_triton import composite_triton
    from triton import Config
    tex = engine.layers.layer.to(device)
    idx = triton_path.frame_index([2, 0, 1])
    for adj in (None, adjust.to(device)):
        want = triton_path.composite(idx, tex, adj)
        for config in (Config({"BLOCK": 128, "UV_EARLY": True}, num_warps=4),
                       Config({"BLOCK": 256, "UV_EARLY": False}, num_warps=2)):
            got = composite_triton(triton_path.uvq, triton_path.mask, triton_path.illum, triton_path.frames, idx,
                                   tex, adj, config=config)
            assert torch.equal(got, want), config
    single = triton_path.composite([1], tex)
    batch = triton_path.composite([0, 1, 2], tex)
    assert torch.equal(single[0], batch[1])
    # No edits: a transparent layer and K = I (stored as zeros) give every pixel of the input bit for bit.
    blank = torch.zeros_like(engine.layers.layer, device=device)
    identity = torch.zeros_like(adjust, device=device)
    assert np.array_equal(triton_path.composite([0, 1, 2], blank).cpu().numpy(), bundle.frames)
    assert np.array_equal(triton_path.composite([0, 1, 2], blank, identity).cpu().numpy(), bundle.frames)
    print("ok")
""")


def _run(device: str, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK, device, str(TESTS)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU-only CI)")
def test_triton_kernel_matches_torch_path_in_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}
    _run("cpu", env)


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
def test_triton_kernel_matches_torch_path_on_cuda() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    _run("cuda", env)


def test_triton_backend_refused_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_edits_fixtures import shifted_bundle
    from vatlas.server import compositor

    monkeypatch.setattr(compositor, "triton_available", lambda: False)
    bundle = shifted_bundle(width=24, height=16, atlas=32)
    with pytest.raises(ValueError, match="needs the triton package"):
        compositor.Compositor(bundle, "cpu", backend="triton")
    # Without Triton, "auto" on CUDA falls back to torch.compile; on CPU it is eager either way.
    assert compositor._choose_backend("auto", None, cuda=True) == "compile"
    assert compositor.Compositor(bundle, "cpu").backend == "eager"
