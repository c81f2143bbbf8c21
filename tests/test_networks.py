"""RNA networks: shapes, ranges, coordinate conventions, parameter groups (CPU, fp32)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from vatlas.models.encoding import HashGridConfig, HashGridEncoding
from vatlas.models.networks import NetworkConfig, RnaModel

torch.set_num_threads(2)


def small_cfg(**kw) -> NetworkConfig:
    grid2 = HashGridConfig(n_input_dims=2, n_levels=4, log2_hashmap_size=10, base_resolution=4,
                           per_level_scale=2.0, backend="torch")
    grid3 = HashGridConfig(n_input_dims=3, n_levels=4, log2_hashmap_size=10, base_resolution=4,
                           per_level_scale=2.0, backend="torch")
    base = dict(width=64, height=48, num_frames=9, atlas_span_px=80.0, mapping_width=32,
                atlas_grid=grid2, mask_grid=grid3, illumination_grid=grid3, inverse_grid=grid3)
    base.update(kw)
    return NetworkConfig(**base)


def test_default_config_builds_with_paper_sizes() -> None:
    cfg = NetworkConfig(width=768, height=432, num_frames=30, atlas_span_px=768.0, hash_backend="torch")
    model = RnaModel(cfg)
    linears = [m for m in model.mapping_mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and linears[0].out_features == 256  # RNA: 4 layers x 256
    assert isinstance(model.atlas_field.encoding, HashGridEncoding)
    assert model.atlas_field.encoding.cfg.n_input_dims == 2
    assert model.mask_field.encoding.cfg.n_input_dims == 3
    assert model.mask_field.mlp[0].out_features == 32  # RNA: mask MLP 4 x 32


def test_shapes_and_ranges() -> None:
    model = RnaModel(small_cfg())
    n = 100
    xyt = torch.rand(n, 3) * 2.4 - 1.2  # a little outside [-1, 1] too
    uv = model.mapping(xyt)
    assert uv.shape == (n, 2) and uv.abs().max() < 1
    rgb = model.atlas(uv)
    assert rgb.shape == (n, 3) and rgb.min() >= 0 and rgb.max() <= 1
    alpha = model.mask(xyt)
    assert alpha.shape == (n,) and alpha.min() >= 1e-5 and alpha.max() <= 1 - 1e-5
    torch.testing.assert_close(torch.sigmoid(model.mask_logit(xyt)).clamp(1e-5, 1 - 1e-5), alpha)
    light = model.illumination(uv, xyt[:, 2])
    assert light.shape == (n, 3) and (light > 0).all()
    assert (light - 1).abs().max() < 0.05  # initialized near 1
    xy = model.inverse(uv, 0.25)
    assert xy.shape == (n, 2) and torch.isfinite(xy).all()
    assert all(t.dtype == torch.float32 for t in (uv, rgb, alpha, light, xy))


@pytest.mark.parametrize("output", ["sigmoid", "tanh"])
def test_atlas_output_activation(output: str) -> None:
    model = RnaModel(small_cfg(atlas_output=output))
    rgb = model.atlas(torch.rand(10, 2) * 2 - 1)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_illumination_detaches_uv_and_hash_option() -> None:
    for enc in ("none", "hash", "hash_luma"):
        model = RnaModel(small_cfg(illumination_encoding=enc))
        uv = (torch.rand(20, 2) * 2 - 1).requires_grad_(True)
        out = model.illumination(uv, torch.zeros(20, 1))
        out.sum().backward()
        assert uv.grad is None  # L must not move the mapping
        assert (out - 1).abs().max() < 0.05


def _illumination_fit_error(encoding: str, target: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Mean squared error of L alone, fitted by Adam to a target field over uv (t = 0)."""
    torch.manual_seed(0)
    model = RnaModel(small_cfg(illumination_encoding=encoding))
    opt = torch.optim.Adam(model.illumination_field.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        uv = torch.rand(512, 2, generator=gen) * 2 - 1
        loss = (model.illumination(uv, 0.0) - target(uv)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    uv = torch.rand(4096, 2, generator=gen) * 2 - 1
    with torch.no_grad():
        return (model.illumination(uv, 0.0) - target(uv)).square().mean().item()


def test_luma_illumination_follows_sharp_shadows_but_not_sharp_colour_changes() -> None:
    def disc(uv: torch.Tensor) -> torch.Tensor:
        return (((uv - 0.2) ** 2).sum(-1, keepdim=True) < 0.4**2).float()

    def shadow(uv: torch.Tensor) -> torch.Tensor:  # a hard-edged grey shadow
        return (1.0 - 0.5 * disc(uv)).expand(-1, 3)

    def tint(uv: torch.Tensor) -> torch.Tensor:  # a hard-edged red patch: what an occluder looks like to L
        return torch.cat([torch.ones_like(disc(uv)), (1.0 - 0.6 * disc(uv)).expand(-1, 2)], 1)

    hash_shadow, luma_shadow = (_illumination_fit_error(e, shadow) for e in ("hash", "hash_luma"))
    assert luma_shadow < 2.0 * hash_shadow and luma_shadow < 0.3 * _illumination_fit_error("none", shadow)
    assert _illumination_fit_error("hash_luma", tint) > 2.0 * _illumination_fit_error("hash", tint)


def test_gradients_flow_to_each_network() -> None:
    model = RnaModel(small_cfg())
    xyt = torch.rand(64, 3) * 2 - 1
    uv = model.mapping(xyt)
    recon = model.mask(xyt)[:, None] * model.illumination(uv, xyt[:, 2]) * model.atlas(uv)
    loss = recon.square().mean() + (model.inverse(uv, xyt[:, 2]) - xyt[:, :2]).square().mean()
    loss.backward()
    for name, module in [("mapping", model.mapping_mlp), ("atlas", model.atlas_field), ("mask", model.mask_field),
                         ("illumination", model.illumination_field), ("inverse", model.inverse_field)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_coordinate_normalization_matches_bundle_convention() -> None:
    cfg = small_cfg()
    x = torch.tensor([32.0, 72.0, -8.0])
    y = torch.tensor([24.0, 24.0, 64.0])
    xyt = cfg.normalize_xyt(x, y, torch.tensor([0, 4, 8]))
    # centre -> 0; +span/2 -> 1; t: 0 -> -1, middle -> 0, last -> 1
    torch.testing.assert_close(xyt, torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [-1.0, 1.0, 1.0]]))
    torch.testing.assert_close(cfg.denormalize_xy(xyt[:, :2]), torch.stack([x, y], 1))
    assert cfg.normalize_t(torch.tensor(3.0)).item() == pytest.approx(-0.25)
    one = small_cfg(num_frames=1)
    assert one.normalize_t(torch.tensor(0.0)).item() == 0.0


def test_mapping_can_fit_identity_on_reference_frame() -> None:
    # T must be able to represent the identity that anchors uv to reference-frame pixels.
    torch.manual_seed(0)
    model = RnaModel(small_cfg(mapping_hidden_layers=2))
    opt = torch.optim.Adam(model.param_groups(1e-2, 3e-3, nets=("mapping",)))
    for _ in range(150):
        xy = torch.rand(256, 2) * 1.6 - 0.8
        xyt = torch.cat([xy, torch.zeros(256, 1)], 1)
        loss = (model.mapping(xyt) - xy).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2e-3


@pytest.mark.parametrize("illumination", ["none", "hash_luma"])
def test_param_groups_split_grid_and_mlp(illumination: str) -> None:
    model = RnaModel(small_cfg(illumination_encoding=illumination))
    groups = model.param_groups(5e-2, 5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["grid"]["lr"] == 5e-2 and by_name["mlp"]["lr"] == 5e-4
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    tables = {id(m.params) for m in model.modules() if isinstance(m, HashGridEncoding)}
    assert {id(p) for p in by_name["grid"]["params"]} == tables
    only_mask = model.param_groups(1.0, 1.0, nets=("mask",))
    mask_ids = {id(p) for g in only_mask for p in g["params"]}
    assert mask_ids == {id(p) for p in model.mask_field.parameters()}
    with pytest.raises(ValueError, match="unknown network"):
        model.param_groups(1.0, 1.0, nets=("atlass",))
    torch.optim.Adam(groups)  # the groups are valid optimizer input


def test_seed_determinism_and_no_global_rng_side_effect() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = RnaModel(small_cfg(seed=5))
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = RnaModel(small_cfg(seed=5))
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    c = RnaModel(small_cfg(seed=6))
    assert not torch.equal(a.atlas_field.encoding.params, c.atlas_field.encoding.params)


def test_config_roundtrip_and_validation() -> None:
    cfg = small_cfg(mapping_pe_frequencies=3)
    again = NetworkConfig.from_dict(cfg.to_dict())
    assert again == cfg
    model = RnaModel(again)
    assert model.mapping(torch.zeros(2, 3)).shape == (2, 2)
    with pytest.raises(ValueError, match="unknown NetworkConfig"):
        NetworkConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="atlas_output"):
        small_cfg(atlas_output="relu")
    with pytest.raises(ValueError, match="atlas_grid"):
        small_cfg(atlas_grid=HashGridConfig(n_input_dims=3))
    with pytest.raises(ValueError, match="atlas_span_px"):
        small_cfg(atlas_span_px=0)


def test_bad_input_shapes() -> None:
    model = RnaModel(small_cfg())
    with pytest.raises(ValueError, match="mapping expects"):
        model.mapping(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="t must be"):
        model.inverse(torch.zeros(4, 2), torch.zeros(3))


def test_hash_backend_override() -> None:
    cfg = small_cfg(hash_backend="torch")
    assert cfg.grid("atlas_grid").backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        RnaModel(small_cfg(hash_backend="opencl"))


def test_hash_fields_use_fused_capable_mlp_with_plain_state_dict() -> None:
    from vatlas.models.encoding import FusedReluMLP, make_mlp

    model = RnaModel(small_cfg())
    assert isinstance(model.atlas_field.mlp, FusedReluMLP)
    plain = make_mlp(model.atlas_field.encoding.n_output_dims, 3, 64, 3)
    assert list(plain.state_dict()) == list(model.atlas_field.mlp.state_dict())  # checkpoints interchange
    plain.load_state_dict(model.atlas_field.mlp.state_dict())
    feats = torch.rand(7, plain[0].in_features)
    assert not model.atlas_field.mlp.fused_ok(feats)  # CPU: the plain nn.Sequential path runs
    torch.testing.assert_close(model.atlas_field.mlp(feats), plain(feats))
