"""Built-in hash encoding (PyTorch path) and MLP factory, on CPU."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from vatlas.models.encoding import (
    HASH_PRIMES,
    HashGridConfig,
    HashGridEncoding,
    level_layout,
    make_hash_encoding,
    make_mlp,
    resolve_backend,
)

torch.set_num_threads(2)


def reference_encode(enc: HashGridEncoding, x: torch.Tensor) -> torch.Tensor:
    """Slow per-point, per-level, per-corner reference written from the instant-NGP definition."""
    cfg, layout = enc.cfg, enc.layout
    table = enc.params.detach().double().numpy()
    d = cfg.n_input_dims
    out = np.zeros((x.shape[0], cfg.n_levels * cfg.n_features_per_level))
    for b in range(x.shape[0]):
        for level in range(cfg.n_levels):
            res = layout.resolutions[level]
            scale = np.float32(layout.scales[level])
            acc = np.zeros(cfg.n_features_per_level)
            pos = [np.float32(min(max(float(x[b, k]), 0.0), 1.0)) * scale for k in range(d)]
            cell = [math.floor(p) for p in pos]
            frac = [float(np.float32(p - c)) for p, c in zip(pos, cell, strict=True)]
            for offs in itertools.product((0, 1), repeat=d):
                vertex = [c + o for c, o in zip(cell, offs, strict=True)]
                weight = 1.0
                for k in range(d):
                    weight *= frac[k] if offs[k] else 1.0 - frac[k]
                if layout.dense[level]:
                    row = sum(v * res**k for k, v in enumerate(vertex))
                else:
                    h = 0
                    for k, v in enumerate(vertex):
                        h ^= (v * HASH_PRIMES[k]) & 0xFFFFFFFF
                    row = h % cfg.hashmap_size
                assert 0 <= row < layout.sizes[level]
                acc += weight * table[layout.offsets[level] + row]
            out[b, level * cfg.n_features_per_level:(level + 1) * cfg.n_features_per_level] = acc
    return torch.from_numpy(out)


def small_cfg(dims: int, **kw) -> HashGridConfig:
    base = dict(n_input_dims=dims, n_levels=6, n_features_per_level=2, log2_hashmap_size=10,
                base_resolution=4, per_level_scale=2.0, backend="torch")
    base.update(kw)
    return HashGridConfig(**base)


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_and_dtype(dims: int) -> None:
    enc = make_hash_encoding(small_cfg(dims), seed=0)
    out = enc(torch.rand(37, dims))
    assert out.shape == (37, 12) and out.dtype == torch.float32
    assert enc.n_output_dims == 12


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_per_point_reference(dims: int) -> None:
    enc = make_hash_encoding(small_cfg(dims), seed=1)
    with torch.no_grad():  # non-trivial table values so wrong rows give visibly wrong features
        enc.params.copy_(torch.randn_like(enc.params))
    gen = torch.Generator().manual_seed(dims)
    x = torch.rand(40, dims, generator=gen)
    x[:4] = torch.tensor([0.0, 1.0, 0.5, 0.999999])[:, None].expand(4, dims)  # edges of the unit box
    got = enc(x).double()
    ref = reference_encode(enc, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_dense_and_hashed_levels_both_present_and_correct() -> None:
    cfg = small_cfg(2, n_levels=5, base_resolution=8, log2_hashmap_size=8)
    layout = level_layout(cfg)
    # 2^8 = 256 rows: 8-1=7 cells -> 9^2 = 81 vertices dense; 15 cells -> 17^2 = 289 > 256 hashed.
    assert layout.dense == (True, False, False, False, False)
    assert layout.sizes[0] == 81 and layout.sizes[1] == 256
    assert layout.offsets[1] == 81
    enc = make_hash_encoding(cfg, seed=2)
    with torch.no_grad():
        enc.params.copy_(torch.randn_like(enc.params))
    x = torch.rand(30, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(enc(x).double(), reference_encode(enc, x), rtol=1e-5, atol=1e-5)


def test_dense_boundary_exactly_fits_table() -> None:
    # resolution^d == table size must still be dense: scale 14 -> 16 vertices per axis -> 256 = 2^8 rows.
    cfg = small_cfg(2, n_levels=2, base_resolution=15, per_level_scale=1.0, log2_hashmap_size=8)
    layout = level_layout(cfg)
    assert layout.resolutions[0] == 16 and layout.sizes[0] == 256 and layout.dense[0]


def test_dense_level_rows_are_distinct_vertices() -> None:
    # On a dense level every vertex owns its own row: a one-hot row changes only points near that vertex.
    cfg = small_cfg(2, n_levels=1, base_resolution=5, per_level_scale=1.0)
    enc = make_hash_encoding(cfg, seed=0)
    with torch.no_grad():
        enc.params.zero_()
        res = enc.layout.resolutions[0]
        enc.params[2 + 3 * res, 0] = 1.0  # vertex (2, 3)
    scale = enc.layout.scales[0]
    at_vertex = torch.tensor([[2 / scale, 3 / scale]])
    far = torch.tensor([[0.0, 0.0]])
    assert enc(at_vertex)[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert enc(far)[0, 0].item() == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_reaches_table(dims: int) -> None:
    enc = make_hash_encoding(small_cfg(dims), seed=0)
    x = torch.rand(64, dims, generator=torch.Generator().manual_seed(0))
    enc(x).square().sum().backward()
    grad = enc.params.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad != 0).any(dim=1).sum() > 64  # many rows touched, across levels
    # gradcheck in float64 on a tiny problem: the encoding is linear in the table.
    enc64 = make_hash_encoding(small_cfg(dims, n_levels=3), seed=0).double()
    xs = torch.rand(5, dims, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def fn(table: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(enc64, {"params": table}, (xs,))

    table = enc64.params.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (table,), eps=1e-6, atol=1e-6)


def test_gradient_matches_reference_scatter() -> None:
    enc = make_hash_encoding(small_cfg(2, n_levels=3), seed=4)
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(5))
    upstream = torch.randn(20, 6, generator=torch.Generator().manual_seed(6))
    (enc(x) * upstream).sum().backward()
    # Reference gradient: d out / d table is the per-point weight; recover it by finite basis probing.
    expected = torch.zeros_like(enc.params, dtype=torch.float64)
    base = enc.params.detach().clone()
    with torch.no_grad():
        enc.params.zero_()
        for row in range(base.shape[0]):
            for f in range(base.shape[1]):
                enc.params[row, f] = 1.0
                expected[row, f] = (reference_encode(enc, x) * upstream.double()).sum()
                enc.params[row, f] = 0.0
        enc.params.copy_(base)
    torch.testing.assert_close(enc.params.grad.double(), expected, rtol=1e-4, atol=1e-5)


def test_deterministic() -> None:
    cfg = small_cfg(3)
    a, b = make_hash_encoding(cfg, seed=7), make_hash_encoding(cfg, seed=7)
    assert torch.equal(a.params, b.params)
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), a(x))
    assert not torch.equal(make_hash_encoding(cfg, seed=8).params, a.params)


def test_init_range() -> None:
    enc = make_hash_encoding(small_cfg(2), seed=0)
    assert enc.params.abs().max() <= 1e-4
    assert enc.params.std() > 1e-5


def test_inputs_outside_unit_box_are_clamped() -> None:
    enc = make_hash_encoding(small_cfg(2), seed=0)
    with torch.no_grad():
        enc.params.copy_(torch.randn_like(enc.params))
    x = torch.tensor([[-0.5, 1.7], [2.0, -3.0], [0.25, 1.0001]])
    clamped = x.clamp(0, 1)
    torch.testing.assert_close(enc(x), enc(clamped))
    assert torch.isfinite(enc(x)).all()


def test_bad_inputs_raise() -> None:
    enc = make_hash_encoding(small_cfg(2), seed=0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        enc(torch.rand(4, 3))
    with pytest.raises(ValueError, match="float"):
        enc(torch.zeros(4, 2, dtype=torch.int64))


def test_config_validation_and_finest_resolution() -> None:
    with pytest.raises(ValueError, match="n_input_dims"):
        HashGridConfig(n_input_dims=4)
    with pytest.raises(ValueError, match="backend"):
        HashGridConfig(backend="cuda")
    cfg = HashGridConfig(n_levels=16, base_resolution=16, finest_resolution=2048)
    assert cfg.per_level_scale == pytest.approx(2.0 ** (7 / 15))
    assert cfg.n_output_dims == 32
    assert cfg.tcnn_config()["otype"] == "HashGrid"


def test_default_config_layout() -> None:
    # The configuration: 16 levels, 2^19 table, base 16, scale 1.5.
    cfg2 = HashGridConfig(n_input_dims=2)
    cfg3 = HashGridConfig(n_input_dims=3)
    l2, l3 = level_layout(cfg2), level_layout(cfg3)
    assert sum(l2.dense) > sum(l3.dense) >= 1
    assert all(size <= cfg2.hashmap_size for size in l2.sizes)
    assert l2.n_params_rows <= 16 * cfg2.hashmap_size


def test_auto_backend_on_cpu_machine() -> None:
    if not torch.cuda.is_available():
        assert resolve_backend("auto") in ("torch", "tcnn")
    assert resolve_backend("torch") == "torch"


def test_make_mlp() -> None:
    mlp = make_mlp(32, 3, width=64, hidden_layers=2, activation="relu")
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 3)]
    assert mlp(torch.rand(5, 32)).shape == (5, 3)
    assert len([m for m in make_mlp(3, 2, hidden_layers=0) if isinstance(m, torch.nn.Linear)]) == 1
    with pytest.raises(ValueError, match="activation"):
        make_mlp(3, 2, activation="swishy")
    with pytest.raises(ValueError, match="MLP size"):
        make_mlp(0, 2)


def test_end_to_end_fit_reduces_loss() -> None:
    # A tiny 2D field fit: the encoding + MLP must learn a smooth image quickly.
    torch.manual_seed(0)
    enc = make_hash_encoding(small_cfg(2, n_levels=4, log2_hashmap_size=12), seed=0)
    mlp = make_mlp(enc.n_output_dims, 3, width=32, hidden_layers=1)
    opt = torch.optim.Adam([{"params": enc.parameters(), "lr": 1e-2}, {"params": mlp.parameters(), "lr": 1e-2}])
    x = torch.rand(256, 2)
    target = torch.stack([torch.sin(6 * x[:, 0]), torch.cos(5 * x[:, 1]), x[:, 0] * x[:, 1]], 1)
    losses = []
    for _ in range(80):
        loss = (mlp(enc(x)) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
