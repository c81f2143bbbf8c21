"""Bake helpers: atlas texel convention, coverage splatting, illumination grid, inverse-map domain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vatlas.models import bake
from vatlas.models.encoding import HashGridConfig
from vatlas.models.inverse_map import bake_inverse_map, grid_uv
from vatlas.models.networks import NetworkConfig, RnaModel


@pytest.fixture(scope="module")
def model() -> RnaModel:
    def grid(d: int) -> HashGridConfig:
        return HashGridConfig(n_input_dims=d, n_levels=4, log2_hashmap_size=12, finest_resolution=64)

    cfg = NetworkConfig(width=40, height=24, num_frames=3, atlas_span_px=50.0, mapping_width=32,
                        atlas_grid=grid(2), mask_grid=grid(3), illumination_grid=grid(3), inverse_grid=grid(3))
    torch.manual_seed(0)
    m = RnaModel(cfg)
    with torch.no_grad():  # a non-constant atlas so the texel convention matters
        m.atlas_field.encoding.params.uniform_(-1, 1)
    return m.eval()


def test_atlas_texels_are_evaluated_at_their_centres(model):
    atlas = bake.bake_atlas(model, 1024)
    assert atlas.shape == (1024, 1024, 3) and atlas.dtype == np.uint8
    for i, j in [(0, 0), (10, 700), (1023, 512)]:
        uv = torch.tensor([[(j + 0.5) / 1024 * 2 - 1, (i + 0.5) / 1024 * 2 - 1]])
        expected = (model.atlas(uv)[0].detach().numpy() * 255).round()
        assert np.abs(atlas[i, j].astype(int) - expected).max() <= 1
    assert atlas.std() > 1.0


def test_coverage_splat_marks_landing_texels_and_closes_small_gaps():
    size = 1024
    ys, xs = np.mgrid[0:40, 0:40]
    # a regular lattice of uv points every 3 texels around the centre
    uv = np.stack([(xs * 3 + 400 + 0.5) / size * 2 - 1, (ys * 3 + 300 + 0.5) / size * 2 - 1], -1)[None]
    visible = np.ones(uv.shape[:3], bool)
    visible[0, :, 20:] = False  # only the left half is visible
    cov = bake.splat_coverage(uv.astype(np.float32), visible, size)
    assert cov.dtype == np.uint8 and set(np.unique(cov)) <= {0, 255}
    assert cov[310:400, 410:455].all()  # inside the visible lattice, gaps closed
    assert not cov[310:400, 470:].any()  # the hidden half stays uncovered
    assert not cov[:250].any()


def test_illumination_grid_is_coarse_and_starts_at_one(model):
    light = bake.bake_illumination(model, 4)
    assert light.shape == (3, 6, 10, 3) and light.dtype == np.float16
    assert np.abs(light.astype(np.float32) - 1.0).max() < 0.1


def test_inverse_map_is_nan_outside_the_domain(model):
    grid = 16
    uv = grid_uv(grid)
    assert torch.allclose(uv[0], torch.tensor([-1 + 1 / grid, -1 + 1 / grid]))
    assert torch.allclose(uv[1], torch.tensor([-1 + 3 / grid, -1 + 1 / grid]))  # row-major, u fastest
    empty = bake_inverse_map(model, grid, domain=np.zeros((grid, grid), bool))
    assert empty.shape == (3, grid, grid, 2) and np.isnan(empty).all()
    loose = bake_inverse_map(model, grid, cycle_px=1e9)
    finite = np.isfinite(loose[..., 0])
    xy = loose[finite]
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= 40).all() and (xy[:, 1] <= 24).all()
