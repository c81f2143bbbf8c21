"""Frame-space pastes fitted into the atlas (server/edits/raster.py fit_texels, layers._fit_texture).

The compositor reads the atlas bilinearly, so a paste is resampled twice; the fit solves for texels whose
read-back matches the paste on its own frame and, as a surface, between pixel centres. The numeric pieces are
checked against readable references (grid_sample, a dense float64 solve, exact affine maps); the whole path
on a small hard scene with exact geometry, and with an inverse map that is off by a fraction of a pixel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vatlas.server.edits import layers as layers_module
from vatlas.server.edits.raster import (
    TexelLookups,
    cell_points,
    cell_samples,
    clamp_premultiplied,
    fit_texels,
    fit_texels_reference,
    quadrature_load,
    refine_inverse,
)

from vatlas import edit_eval
from vatlas.metrics import psnr
from vatlas.synth import make_scene

PASTE_FLOOR_DB = 42.0  # issue 15: an image pasted on frame N comes back as pasted (>= 40 dB), with margin
CLIP_FLOOR_DB = 40.0


def test_texel_lookups_read_like_grid_sample_and_scatter_is_their_transpose() -> None:
    gen = torch.Generator().manual_seed(0)
    h, w = 7, 9
    texels = torch.rand((h, w, 3), generator=gen)
    points = torch.rand((50, 2), generator=gen) * torch.tensor([w + 2.0, h + 2.0]) - 1.5  # some fall outside
    look = TexelLookups.at(points, (h, w))
    grid = ((points + 0.5) / torch.tensor([w, h]) * 2 - 1).view(1, 1, -1, 2)
    expected = F.grid_sample(texels.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0, :, 0].T
    assert torch.allclose(look.gather(texels), expected, atol=1e-6)
    values = torch.rand((50, 3), generator=gen)
    assert torch.allclose((look.gather(texels) * values).sum(), (texels * look.scatter(values)).sum(), rtol=1e-5)
    nothing = TexelLookups.at(torch.full((2, 2), float("nan")), (h, w))
    assert torch.equal(nothing.gather(texels), torch.zeros((2, 3)))


@pytest.mark.parametrize("n", [2, 3])
def test_fit_texels_solves_the_dense_least_squares_problem(n: int) -> None:
    rng = np.random.default_rng(n)
    h, w, c = 6, 8, 2
    points = rng.uniform([-0.5, -0.5], [w - 0.5, h - 0.5], size=(40, 2))
    weights = rng.uniform(0.2, 2.0, size=40)
    targets = rng.uniform(size=(40, c))
    fine = rng.uniform(size=((h + 1) * n, (w + 1) * n, c))
    area = 0.3
    expected = fit_texels_reference(points, weights, targets, fine, n, area, (h, w))
    load = quadrature_load(torch.tensor(fine, dtype=torch.float32), n)
    got = fit_texels(torch.zeros((h, w, c)), TexelLookups.at(torch.tensor(points, dtype=torch.float32), (h, w)),
                     torch.tensor(weights, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), load, n,
                     area, iters=200)
    assert np.allclose(got.numpy(), expected, atol=2e-4)
    # Held texels keep their start and the rest are solved around them.
    free = torch.ones((h, w, 1), dtype=torch.bool)
    free[2:4, 3:5] = False
    start = torch.full((h, w, c), 0.25)
    held = fit_texels(start, TexelLookups.at(torch.tensor(points, dtype=torch.float32), (h, w)),
                      torch.tensor(weights, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), load, n,
                      area, iters=50, free=free)
    assert torch.equal(held[2:4, 3:5], start[2:4, 3:5])


def test_cell_points_follow_an_affine_map_between_and_beyond_texel_centres() -> None:
    h, w, n = 5, 4, 3
    matrix = torch.tensor([[0.9, 0.2], [-0.1, 1.1]])
    shift = torch.tensor([3.0, -2.0])
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    centres = torch.stack([cols, rows], dim=-1) @ matrix.T + shift
    samples = cell_samples((0, (h + 1) * n), w, n)
    got = cell_points(centres, (0, (h + 1) * n), n)
    assert torch.allclose(got, samples @ matrix.T + shift, atol=1e-5)
    part = cell_points(centres, (4, 10), n)  # a block of fine rows is the same rows of the whole
    assert torch.allclose(part, got[4:10], atol=1e-6)


def test_clamp_premultiplied_keeps_colour_within_alpha() -> None:
    x = torch.tensor([[1.2, -0.1, 0.5, 0.4], [0.3, 0.2, 0.1, 1.3]])
    assert torch.equal(clamp_premultiplied(x), torch.tensor([[0.4, 0.0, 0.4, 0.4], [0.3, 0.2, 0.1, 1.0]]))


def test_refine_inverse_lands_on_the_uv_fields_own_inverse() -> None:
    # A uv field of a rotated, scaled plane over a 40 x 30 crop starting at frame pixel (10, 5).
    fw, fh, origin = 40, 30, (10, 5)
    ys, xs = torch.meshgrid(torch.arange(fh) + 0.5 + origin[1], torch.arange(fw) + 0.5 + origin[0], indexing="ij")

    def uv_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([0.011 * x + 0.002 * y - 0.3, -0.001 * x + 0.012 * y - 0.2], dim=-1)

    field = uv_of(xs, ys).permute(2, 0, 1).contiguous()
    truth = torch.tensor([[20.3, 12.7], [35.1, 20.2], [14.0, 30.9]])
    target = uv_of(truth[:, 0], truth[:, 1])
    off = truth + torch.tensor([[0.4, -0.3], [-0.2, 0.35], [0.3, 0.3]])  # B a fraction of a pixel off
    got = refine_inverse(off, target, field, origin)
    assert torch.allclose(got, truth, atol=1e-3)
    far = truth + torch.tensor([3.0, 0.0])  # beyond max_shift: B is kept, T is not trusted that far
    assert torch.equal(refine_inverse(far, target, field, origin), far)
    unknown = torch.full((3, 2), float("nan"))
    assert torch.isnan(refine_inverse(unknown, target, field, origin)).all()


@pytest.fixture(scope="module")
def hard_scene():
    """A small hard scene whose atlas has 0.47 frame pixels per texel (what bakes pick for such sizes)."""
    scene = make_scene(frames=16, size=(192, 112), seed=3, preset="hard")
    return scene, scene.ground_truth_bundle(atlas_size=512)


def _paste(scene, bundle, bundle_for_engine=None):
    n, rect = edit_eval._visible_paste(scene, 40, 28)
    photo = edit_eval.photo_rgba(rect[2], rect[3], seed=n)
    truth, alpha = scene.render_pasted(photo, frame=n, rect=rect, return_alpha=True)
    ours = edit_eval.render_edit(bundle_for_engine or bundle, [edit_eval.texture_op("photo", n, photo, rect)], "cpu")
    shown = edit_eval.rect_mask(rect, scene.height, scene.width) & (scene.gt_visibility[n] >= 0.5)
    return n, rect, ours, truth, alpha, float(psnr(ours[n], truth[n], mask=shown, data_range=255.0))


def test_a_detailed_image_pasted_on_frame_n_comes_back_as_pasted(hard_scene, monkeypatch) -> None:
    scene, bundle = hard_scene
    n, rect, ours, truth, alpha, fitted = _paste(scene, bundle)
    assert fitted >= PASTE_FLOOR_DB
    # Away from the paste (3 px) frame N is the source bit for bit: the fit leaves the rest of its rect empty.
    x, y, w, h = rect
    away = np.ones((scene.height, scene.width), bool)
    away[max(y - 3, 0):y + h + 3, max(x - 3, 0):x + w + 3] = False
    assert np.array_equal(ours[n][away], scene.frames[n][away])
    # The other frames (re-lit, warped) stay close to the exact editor's warp of the pasted frame.
    region = edit_eval.dilate(alpha > 0, 3)
    region[n] = False
    assert edit_eval.region_psnr(ours, truth, region)[0] >= CLIP_FLOOR_DB
    # Without the fit (texels that only sample the image) the same paste comes back visibly softer.
    monkeypatch.setattr(layers_module, "FIT_ITERS", 0)
    assert _paste(scene, bundle)[-1] < fitted - 4.0


def test_a_paste_stays_exact_when_the_inverse_map_is_off_by_a_fraction_of_a_pixel(hard_scene) -> None:
    scene, bundle = hard_scene
    g = bundle.inverse_map.shape[1]
    yy, xx = np.mgrid[0:g, 0:g] / g
    wobble = np.stack([0.4 * np.sin(6 * yy + 1), 0.4 * np.cos(5 * xx)], axis=-1).astype(np.float32)
    off = dataclasses.replace(bundle, inverse_map=bundle.inverse_map + wobble[None])
    assert _paste(scene, bundle, off)[-1] >= PASTE_FLOOR_DB
