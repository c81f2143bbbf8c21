"""The atlas layers the compositor samples: cached adjustment weights give exactly the uncached result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_edits_fixtures import shifted_bundle
from vatlas.server.edits import layers as layers_module
from vatlas.server.edits.engine import EditEngine

ADJUST = {"id": "a", "type": "adjustment", "space": "atlas", "exposure": 0.6, "temperature": 0.5,
          "hardness": 0.3, "points": [[4, 4], [60, 8], [20, 50]]}


def _strokes(engine: EditEngine) -> None:
    """Strokes, and adjustments overlapping the first one: each rebuilds K over its own rectangle, reading the
    first adjustment's weights over a part of its rectangle."""
    for k, (p, q) in enumerate((([2, 2], [60, 40]), ([10, 44], [50, 6]), ([30, 30], [31, 31]))):
        engine.apply({"id": f"s{k}", "type": "stroke", "space": "frame", "frame": k, "points": [p, q],
                      "width": 5, "color": [0.9, 0.1, 0.2, 0.8], "hardness": 0.5})
        engine.apply({"id": f"b{k}", "type": "adjustment", "space": "frame", "frame": k, "region": "path",
                      "points": [p, q], "width": 7, "saturation": -0.5, "opacity": 0.7})


def test_cached_adjustment_weights_match_direct_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = shifted_bundle(width=64, height=48, atlas=64)
    cached = EditEngine(bundle, "cpu")
    cached.apply(ADJUST)
    _strokes(cached)
    aop = cached._objects["a"].atlas_op
    assert "weight" in aop.extra
    r0, r1, c0, c1 = aop.rect
    sub = (r0 + 3, r1 - 2, c0 + 1, c1 - 4)
    assert torch.equal(cached.layers._adjust_weight(aop, sub), cached.layers._coverage_weight(aop, sub))

    monkeypatch.setattr(layers_module, "WEIGHT_CACHE_TEXELS", 0)  # nothing fits: computed per rectangle
    direct = EditEngine(bundle, "cpu")
    direct.apply(ADJUST)
    _strokes(direct)
    assert "weight" not in direct._objects["a"].atlas_op.extra
    monkeypatch.undo()
    assert cached.layers.adjust is not None and direct.layers.adjust is not None
    assert torch.equal(cached.layers.adjust, direct.layers.adjust)
    assert float(direct.layers.adjust.abs().max()) > 0.1
    assert torch.equal(cached.layers.layer, direct.layers.layer)

    # An update replaces the op (and its cache); undoing the strokes leaves only the adjustment.
    cached.apply({"type": "update", "target": "a", "set": {"exposure": -0.4}})
    assert "weight" in cached._objects["a"].atlas_op.extra and cached._objects["a"].atlas_op is not aop
    for k in range(3):
        cached.apply({"type": "delete", "target": f"s{k}"})
        cached.apply({"type": "delete", "target": f"b{k}"})
    only = EditEngine(bundle, "cpu")
    only.apply({**ADJUST, "exposure": -0.4})
    assert only.layers.adjust is not None and cached.layers.adjust is not None
    assert torch.allclose(cached.layers.adjust, only.layers.adjust, atol=1e-6)
    assert float(cached.layers.layer.abs().max()) == 0.0
    # Deleting the last adjustment frees K: the compositor then skips the adjustment step altogether.
    cached.apply({"type": "delete", "target": "a"})
    assert cached.layers.adjust is None


def test_uv_lookup_gathers_corners_like_a_decoded_field() -> None:
    from vatlas.models.bundle import decode_uv
    from vatlas.server.edits.raster import AtlasGeometry, bilinear_points

    bundle = shifted_bundle(width=40, height=30, atlas=32)
    geom = AtlasGeometry(bundle, 32)
    rng = np.random.default_rng(3)
    xy = rng.uniform([-4, -4], [44, 34], (200, 2))  # off-frame points clamp to the edge
    idx = np.clip(xy - 0.5, 0.0, [39.0, 29.0])
    assert np.array_equal(geom.uv_at(1, xy), bilinear_points(decode_uv(bundle.uv[1]), idx))
    # The NaN-aware path (B is NaN where unknown) still renormalises over known corners.
    field = np.arange(12.0).reshape(2, 3, 2)
    field[0, 0] = np.nan
    got = bilinear_points(field, np.array([[0.5, 0.5], [0.1, 0.1], [2.0, 1.0]]))
    assert np.allclose(got[0], (field[0, 1] + field[1, 0] + field[1, 1]) / 3)
    assert np.isnan(got[1]).all() and np.array_equal(got[2], field[1, 2])
