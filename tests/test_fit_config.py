"""FitConfig in sections: the presets as complete named configs, flat and nested overrides, old bundle configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from vatlas.models.config import (
    FLAT_KEYS,
    PRESET_CONFIGS,
    PRESETS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    BakeConfig,
    ConfigError,
    FitConfig,
    flat_config,
)

FIXTURES = Path(__file__).parent / "fixtures"
# The presets as the flat config had them: its defaults and, per preset, the keys it set (a chain of overrides then)
FLAT_PRESETS = {
    "draft": dict(iters_main=1500, iters_refine=300, iters_inverse=600, iters_mapping_init=200, batch_size=8192,
                  mask_bootstrap_until=600, eval_every=250, ref_hops=3, hash_log2_size=15,
                  atlas_finest_resolution=1024, illumination_encoding="none", illumination_reg=0.01),
    "standard": dict(),
    "best": dict(iters_main=40000, iters_refine=10000, iters_inverse=6000, batch_size=40000,
                 mask_bootstrap_until=10000, eval_every=1000, ref_hops=6, atlas_size=2048, flow_preset="fine",
                 iters_mapping_init=1000),
}


def _old_flat_defaults() -> dict:
    """The flat config's defaults, read from a bundle config the flat FitConfig wrote (draft, 64x48)."""
    stored = json.loads((FIXTURES / "flat_bundle_config.json").read_text())
    del stored["network"]  # the built networks
    # the flat defaults of the keys the draft preset set
    stored.update(iters_main=3000, iters_refine=750, iters_inverse=1000, iters_mapping_init=250, batch_size=40000,
                  mask_bootstrap_until=1000, eval_every=250, ref_hops=3, hash_log2_size=19,
                  atlas_finest_resolution=2048, illumination_encoding="hash_luma", illumination_reg=0.05, size=None)
    return stored


def test_presets_are_complete_configs_with_every_section():
    assert PRESETS == ("draft", "standard", "best") == tuple(PRESET_CONFIGS)
    for name, preset in PRESET_CONFIGS.items():
        assert isinstance(preset, FitConfig)
        for section, kind in SECTIONS.items():
            assert isinstance(getattr(preset, section), kind), (name, section)
        data = preset.to_dict()
        assert set(data) == set(SECTIONS) | set(TOP_LEVEL_KEYS)
        for section, kind in SECTIONS.items():
            assert set(data[section]) == {f.name for f in dataclasses.fields(kind)}
        # a copy each time, equal to the named object and not shared with it
        copy = FitConfig.preset(name)
        assert copy == preset and copy is not preset and copy.schedule is not preset.schedule
        copy.schedule.batch_size = 16
        assert PRESET_CONFIGS[name].schedule.batch_size != 16


def test_presets_hold_the_values_the_flat_presets_had():
    defaults = _old_flat_defaults()
    assert flat_config(FitConfig().to_dict()) == defaults
    for name, keys in FLAT_PRESETS.items():
        assert flat_config(FitConfig.preset(name).to_dict()) == {**defaults, **keys}, name
        assert FitConfig.from_dict(keys) == FitConfig.preset(name)


def test_every_flat_key_names_one_field_of_one_section():
    names = [f.name for kind in SECTIONS.values() for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names)) == len(FLAT_KEYS)
    assert not set(names) & (set(SECTIONS) | set(TOP_LEVEL_KEYS))
    assert FLAT_KEYS["visibility"] == "bake" and FLAT_KEYS["iters_main"] == "schedule"
    assert FLAT_KEYS["flow_alpha"] == "losses" and FLAT_KEYS["ref_hops"] == "flow"
    assert FLAT_KEYS["hash_log2_size"] == "network"


def test_flat_and_nested_overrides_give_the_same_config():
    flat = {"visibility": "learned", "iters_main": 10, "flow_alpha": 0.8, "ref_hops": 6, "hash_log2_size": 14,
            "size": [64, 48], "seed": 3}
    nested = {"bake": {"visibility": "learned"}, "schedule": {"iters_main": 10}, "losses": {"flow_alpha": 0.8},
              "flow": {"ref_hops": 6}, "network": {"hash_log2_size": 14}, "size": [64, 48], "seed": 3}
    mixed = {"bake": {"visibility": "learned"}, "iters_main": 10, "losses": {"flow_alpha": 0.8}, "ref_hops": 6,
             "network": {"hash_log2_size": 14}, "size": (64, 48), "seed": 3}
    a, b, c = (FitConfig.from_dict(x) for x in (flat, nested, mixed))
    assert a == b == c
    assert a.bake.visibility == "learned" and a.schedule.iters_main == 10 and a.size == (64, 48)
    assert a.bake.atlas_size == FitConfig().bake.atlas_size  # the rest stays at the defaults
    assert FitConfig.preset("draft", **flat) == FitConfig.preset("draft", **nested)
    assert FitConfig.preset("draft").updated(flat) == FitConfig.preset("draft", **flat)
    assert FitConfig.preset("draft", **flat).schedule.iters_refine == PRESET_CONFIGS["draft"].schedule.iters_refine
    # a section's dataclass stands for the whole section
    assert FitConfig.from_dict({"bake": BakeConfig(visibility="learned")}).bake == BakeConfig(visibility="learned")
    # updated leaves the original alone
    base = FitConfig.preset("standard")
    base.updated({"visibility": "learned"})
    assert base.bake.visibility == "evidence"


@pytest.mark.parametrize("overrides, message", [
    ({"atlas_sise": 1024}, "unknown FitConfig keys: atlas_sise"),
    ({"bake": {"iters_main": 5}}, "unknown FitConfig keys: bake.iters_main"),
    ({"zeta": 1, "alpha": 2}, "unknown FitConfig keys: alpha, zeta"),
    ({"bake": "learned"}, "FitConfig section 'bake' must be an object of its keys, got str"),
    ({"visibility": "learned", "bake": {"visibility": "evidence"}}, "given twice: visibility"),
])
def test_unknown_keys_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        FitConfig.from_dict(overrides)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=message):
        FitConfig.preset("draft", **overrides)


def test_bad_values_are_refused_by_their_section():
    for overrides, field in [({"visibility": "maybe"}, "visibility"), ({"bake": {"atlas_size": 512}}, "atlas_size"),
                             ({"init_fallback": "x"}, "init_fallback"), ({"corr_ref_weight": "x"}, "corr_ref_weight"),
                             ({"illumination_encoding": "luma"}, "illumination_encoding"),
                             ({"iters_main": -1}, "iters_main"), ({"size": [4, 4]}, "too small")]:
        with pytest.raises(ValueError, match=field):
            FitConfig.from_dict(overrides)


def test_a_flat_bundle_config_from_before_the_sections_loads():
    stored = json.loads((FIXTURES / "flat_bundle_config.json").read_text())
    assert "iters_main" in stored and "atlas_span_px" in stored["network"]  # flat, with the built networks
    cfg = FitConfig.from_bundle(stored)
    assert cfg == FitConfig.preset("draft", size=(64, 48))
    # a bundle written now: by section, the built networks as "model"; both read back the same
    written = {**cfg.to_dict(), "model": stored["network"]}
    assert json.loads(json.dumps(written)) == written
    assert FitConfig.from_bundle(written) == cfg
    # readers that look a field up by name (vatlas info) see both layouts alike
    assert flat_config(written)["iters_main"] == flat_config(stored)["iters_main"] == 1500
    assert flat_config(stored)["network"] == stored["network"]


def test_scaled_iters_scales_the_schedule_and_the_bootstrap():
    cfg = FitConfig.preset("standard").scaled_iters(600)
    assert cfg.schedule.iters_main == 600 and cfg.schedule.iters_refine == 150 and cfg.schedule.iters_inverse == 200
    assert cfg.schedule.iters_mapping_init == 50 and cfg.schedule.eval_every == 50
    assert cfg.losses.mask_bootstrap_until == 200
    assert FitConfig.preset("standard").schedule.iters_main == 3000
