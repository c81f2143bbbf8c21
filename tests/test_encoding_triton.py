"""Triton hash-encoding kernels vs the PyTorch path: on CUDA when present, else in Triton's CPU interpreter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

CHECK = textwrap.dedent("""
    import sys
    import torch
    from vatlas.models.encoding import HashGridConfig, make_hash_encoding
    from vatlas.models.encoding_triton import hash_encode

    device = sys.argv[1]
    # On GPUs the compiler contracts x * scale - floor(x * scale) into an FMA: the cell fraction is then
    # rounded once instead of twice, so results differ from the PyTorch path by ~ulp(x * scale).
    tol = 2e-4 if device == "cuda" else 1e-5
    torch.manual_seed(0)
    for dims in (2, 3):
        # 5 levels: dense ones and hashed ones (2^10 rows), features 2; then 4 features
        for feats in (2, 4):
            cfg = HashGridConfig(n_input_dims=dims, n_levels=5, n_features_per_level=feats, log2_hashmap_size=10,
                                 base_resolution=4, per_level_scale=2.0, backend="torch")
            enc = make_hash_encoding(cfg, seed=0).to(device)
            assert any(enc.layout.dense) and not all(enc.layout.dense)
            with torch.no_grad():
                enc.params.copy_(torch.randn_like(enc.params))
            x = torch.rand(301, dims, device=device) * 1.2 - 0.1  # some points outside [0, 1]: clamped
            x[:3] = torch.tensor([0.0, 1.0, 0.5], device=device)[:, None]
            xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            ref = enc.forward_torch(xa)
            g = torch.randn_like(ref)
            (ref * g).sum().backward()
            gt_ref, enc.params.grad = enc.params.grad.clone(), None
            out = hash_encode(xb, enc.params, enc.layout, cfg)
            (out * g).sum().backward()
            def rel(a, b):
                return ((a - b).norm() / b.norm()).item()
            errs = (rel(out, ref), rel(enc.params.grad, gt_ref), rel(xb.grad, xa.grad))
            print(dims, feats, errs)
            assert all(e < tol for e in errs), errs
            assert (xb.grad[(x < 0) | (x > 1)] == 0).all()  # clamped coordinates get no gradient
            # table-only gradient (inputs without grad) takes the other kernel branch
            enc.params.grad = None
            (hash_encode(x, enc.params, enc.layout, cfg) * g).sum().backward()
            assert rel(enc.params.grad, gt_ref) < tol

    from vatlas.models import encoding_triton
    from vatlas.models.encoding import make_mlp
    from vatlas.models.encoding_triton import fused_mlp

    def mlp_errors(in_dim, width, hidden, out_dim, bias):
        mlp = make_mlp(in_dim, out_dim, width, hidden, bias=bias, fused=True).to(device)
        x = torch.randn(333, in_dim, device=device)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ref = torch.nn.Sequential.forward(mlp, xa)
        g = torch.randn_like(ref)
        (ref * g).sum().backward()
        grads_ref = [p.grad.clone() for p in mlp.parameters()]
        mlp.zero_grad()
        out = fused_mlp(xb, mlp.linears())
        (out * g).sum().backward()
        grads = [rel(xb.grad, xa.grad)] + [rel(p.grad, q) for p, q in zip(mlp.parameters(), grads_ref)]
        return rel(out, ref), max(grads)

    shapes = [(32, 64, 2, 3, False), (32, 32, 3, 1, True), (3, 16, 1, 2, True)]
    # Exact-fp32 dots: the kernels' indexing, masking and backprop must match PyTorch tightly.
    encoding_triton.MLP_DOT_PRECISION = "ieee"
    for shape in shapes:
        errs = mlp_errors(*shape)
        print("mlp ieee", shape, errs)
        assert max(errs) < 1e-4, errs
    if device == "cuda":
        # The production setting, tf32 (10-bit mantissa, like tcnn's fp16): a CPU emulation with tf32
        # rounding gives up to ~4e-2 relative on gradients through 3 ReLU layers into 1 output.
        encoding_triton.MLP_DOT_PRECISION = "tf32"
        for shape in shapes:
            errs = mlp_errors(*shape)
            print("mlp tf32", shape, errs)
            assert errs[0] < 1e-2 and errs[1] < 0.25, errs
    print("OK")
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed on this machine")
def test_triton_kernels_match_torch_path() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # Triton's interpreter runs the same kernels with numpy
    proc = subprocess.run([sys.executable, "-c", CHECK, device], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and triton")
def test_module_uses_triton_on_cuda() -> None:
    from vatlas.models.encoding import HashGridConfig, make_hash_encoding, make_mlp

    cfg = HashGridConfig(n_input_dims=3, backend="triton")
    enc = make_hash_encoding(cfg, seed=0).cuda()
    assert enc.use_triton
    x = torch.rand(4096, 3, device="cuda", requires_grad=True)
    out = enc(x)
    ref = enc.forward_torch(x)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-3
    mlp = make_mlp(32, 3, 64, 2, fused=True).cuda()
    assert mlp.fused_ok(out)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not mlp.fused_ok(out)
