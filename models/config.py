"""FitConfig: the one object that configures a fit, in sections.

    FitConfig
      size, max_side, seed, extra   the working resolution, the random seed, free-form extras (e.g. cache_dir)
      schedule: ScheduleConfig      stage lengths, batch, evaluation, learning rates, T's warm start
      losses: LossConfig            the loss weights of RNA eq. 2-10 and how they decay
      flow: FlowConfig              the correspondences (optical flow, chains to the reference, their checks)
      network: FitNetworkConfig     the networks' sizes and kernels (models.fit.network_config builds
                                    models.networks.NetworkConfig from it and the clip's geometry)
      bake: BakeConfig              what the bundle is baked with: visibility, snap, matting, atlas, resolutions

`PRESET_CONFIGS` holds the presets as complete named configs (name -> FitConfig, as nerfstudio's
`method_configs`); `FitConfig.preset(name)` gives a copy. Overrides (JSON from `vatlas bench fit --set`, a bundle's
stored config) come as nested sections, `{"bake": {"visibility": "learned"}}`, or as the flat keys of the
config before it had sections, `{"visibility": "learned"}`: every field name is unique across the sections, so a
flat key names one field (`FLAT_KEYS`: name -> section). Unknown keys are an error.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vatlas.errors import VatlasError

ILLUMINATION_ENCODINGS = ("none", "hash", "hash_luma")


@dataclass
class ScheduleConfig:
    """How long and how fast: iterations per stage, the batch, evaluation, learning rates and T's warm start."""

    iters_main: int = 3000  # GPU runs: longer main stages let T drift where the ROI leaves the frame
    iters_refine: int = 750
    iters_inverse: int = 1000
    iters_mapping_init: int = 250  # pretrain T toward the reference correspondences
    batch_size: int = 40000  # with 2^19 tables: libby 30.0 dB at 40000 against 28.3 at 20000 (GPU)
    eval_every: int = 250  # ROI PSNR on the reference frame, best checkpoint kept (as RNA does)
    # learning rates (RNA: hash grids 5e-2, MLPs 5e-4); decayed exponentially to lr * lr_final_factor
    lr_grid: float = 5e-2
    lr_mlp: float = 5e-4
    lr_mapping: float = 1e-3  # T in the init and main stages
    lr_inverse: float = 2e-3
    lr_frame_affine: float = 1e-3  # T's per-frame affine maps (init and main stages)
    lr_final_factor: float = 0.1
    # T's warm start where no reference correspondence survives: "camera" (the composed camera motion) or
    # "identity" (RNA's implicit choice: under a pan, content the reference never saw lands wherever the
    # reference frame shows that screen position, the ROI included)
    init_fallback: str = "camera"
    # the per-frame affine maps of T start at the camera motion ("camera") or at the identity ("zero")
    affine_init: str = "camera"

    def __post_init__(self) -> None:
        if self.init_fallback not in ("camera", "identity"):
            raise ValueError(f"init_fallback must be 'camera' or 'identity', got {self.init_fallback!r}")
        if self.affine_init not in ("camera", "zero"):
            raise ValueError(f"affine_init must be 'camera' or 'zero', got {self.affine_init!r}")
        for name in ("iters_main", "iters_refine", "iters_inverse", "batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass
class LossConfig:
    """Loss weights with the RNA paper's names (defaults from RNA's code), their decay and the refinement's."""

    reconstruction: float = 1.0
    rigidity: float = 0.002
    rigidity_delta_px: float = 1.0  # finite-difference step of the Jacobian, in working pixels
    position: float = 0.6
    corr_ref: float = 0.1  # RNA 0.02; DIS-era short schedules align better at 5x (CPU ablation, see BENCHMARKS)
    corr_adj: float = 0.5  # RNA 0.1; same ablation
    # position and correspondence weights decay exponentially to this fraction over the main stage: flows
    # (DIS, chained to the reference) bring T into the right basin early; late in the fit their sub-pixel
    # errors would fight the reconstruction term, which aligns textured regions better
    prior_final_factor: float = 0.05
    # corr_ref's weight: "mask" (RNA: M(p) x validity) or "roi" (validity x "the match lies in the reference ROI",
    # so T stays held where M gives up); corr_ref_final_factor: its own decay floor (None: prior_final_factor)
    corr_ref_weight: str = "mask"
    corr_ref_final_factor: float | None = None
    mask_bootstrap: float = 0.6
    mask_bootstrap_until: int = 1000  # iteration after which the bootstrap term is dropped
    ref_mask: float = 0.4
    # |M(p) - M(p_a)| along adjacent flow and |M(p) - M(p_r)| along the reference correspondence. RNA's 0.8
    # carried M = 1 along a slow, wide occluder's own motion (the synthetic scene: mask IoU 0.898-0.926 over
    # eight H100 runs); at 0.2 six seeds gave 0.919-0.925 and five real clips stayed >= 30.9 dB ROI PSNR
    # (blackswan 30.7-30.8 -> 32.3-32.4 dB, bmx-trees 31.7 -> 30.9-31.4 dB; docs/BENCHMARKS.md)
    flow_alpha: float = 0.2
    ref_flow_alpha: float = 0.2
    # RNA's 0.8 held L at 1 against the synthetic lighting changes. With the hash_luma L (and flow_alpha 0.8),
    # single H100 runs gave synthetic mask IoU 0.892 at 0.01 and 0.926 at 0.05, but repeats at 0.05 spread over
    # 0.898-0.926, so that gap is not established; 0.05 meets the real-clip targets in every run
    illumination_reg: float = 0.05
    # mask refinement (RNA 3.3)
    refine: float = 0.01
    refine_flow_alpha: float = 0.1
    refine_tau: float = 0.025

    def __post_init__(self) -> None:
        if self.corr_ref_weight not in ("mask", "roi"):
            raise ValueError(f"corr_ref_weight must be 'mask' or 'roi', got {self.corr_ref_weight!r}")


@dataclass
class FlowConfig:
    """The correspondences: the flow backend, its forward-backward checks and the chains to the reference."""

    flow_backend: str = "dis"
    flow_preset: str = "medium"
    adj_fb_px: float = 1.0
    ref_fb_px: float = 5.0
    ref_hops: int = 3  # chained hops toward the reference (RNA: 9); the camera-guided direct flow does the rest
    ref_ncc_min: float = 0.5  # final check: local normalized cross-correlation (illumination invariant)
    flow_threads: int = 0  # 0 = os.cpu_count()


@dataclass
class FitNetworkConfig:
    """The networks' sizes and kernels (RNA: hash grids with 16 levels, mapping MLP 256 wide) and the atlas span;
    models.fit.network_config turns them and the clip's geometry into a models.networks.NetworkConfig."""

    hash_levels: int = 16
    # 2^19 entries per level (CoDeF's size; RNA uses 2^15): a 2^15 table hashes every 2D level finer than ~180
    # cells per side. On the GPU this took blackswan from 29.3 to 31.1 dB and bmx-trees from 30.7 to 32.1 dB
    # (docs/BENCHMARKS.md); the draft preset keeps 2^15 for CPUs
    hash_log2_size: int = 19
    atlas_finest_resolution: int = 2048
    mapping_width: int = 256
    frame_affine: bool = True  # per-frame affine map ahead of T's MLP (see models.networks.NetworkConfig)
    # L: "hash_luma" (smooth colour gains x an achromatic hash-grid gain; moving cast shadows) took car-shadow
    # from 29.2 to 30.1-32.5 dB (four H100 runs); "none" is RNA's MLP on raw (u, v, t), cheaper on CPUs (draft)
    illumination_encoding: str = "hash_luma"
    illumination_finest: int = 256  # finest cells per side of the illumination hash grid (64: 29.9 dB)
    hash_backend: str = "auto"  # auto | tcnn | triton | torch (see models/encoding.py)
    # the fused Triton MLP kernels of models/encoding.py ran out of shared memory on an H200 in this fit's
    # shapes (2026-11-21); plain torch MLPs until that is fixed
    fused_mlp: bool = False
    atlas_span: float = 1.25  # the atlas covers atlas_span_px = atlas_span * max(W, H) reference-frame pixels

    def __post_init__(self) -> None:
        if self.illumination_encoding not in ILLUMINATION_ENCODINGS:
            raise ValueError(f"illumination_encoding must be one of {ILLUMINATION_ENCODINGS}, "
                             f"got {self.illumination_encoding!r}")


@dataclass
class BakeConfig:
    """What the bundle is baked with: the visibility, T's snap, the light, the soft mask, the atlas and the
    resolutions of the illumination and the inverse map."""

    # the baked visibility: "evidence" decides every frame from its own colours and motion against the reference
    # frame (models/visibility.py); "learned" is RNA's refined M, matted (it hid surface an occluder had left,
    # and 13-26 % of the reference ROI on held-out clips: issue 15)
    visibility: str = "evidence"
    # bake T plus a smooth per-frame correction onto the checked reference matches (models/uv_snap.py): the
    # fit left T 1-2 px off matches that were right to 0.05 px, and forked it under long occlusions (issue 15)
    uv_snap: bool = True
    # with the evidence visibility: bake the illumination times the light it measured beyond L's ratio (a per-frame
    # colour gain and a smooth local gain), so edits are re-lit by the frame's own light where the fit's L missed it
    measured_light: bool = True
    # soft mask (RNA 3.4): trimap erosion/dilation (3x3 kernel iterations) and guided-filter matting
    trimap_erode: int = 2
    trimap_dilate: int = 1
    matting: str = "guided"
    roi_border: str = "polygon"  # "polygon": the mask's ROI border from T and the polygon; "learned": M's own
    matting_radius: int = 4
    matting_eps: float = 1e-3
    atlas_size: int = 1024
    illumination_downscale: int = 4
    inverse_grid: int = 256

    def __post_init__(self) -> None:
        if self.atlas_size < 1024:
            raise ValueError(f"atlas_size must be >= 1024, got {self.atlas_size}")
        if self.visibility not in ("evidence", "learned"):
            raise ValueError(f"visibility must be 'evidence' or 'learned', got {self.visibility!r}")
        if self.roi_border not in ("polygon", "learned"):
            raise ValueError(f"roi_border must be 'polygon' or 'learned', got {self.roi_border!r}")


class ConfigError(VatlasError, ValueError):
    """Overrides that name no FitConfig field (one line for people: the CLI prints it)."""


# section name -> its dataclass, in FitConfig's order
SECTIONS: Mapping[str, type] = MappingProxyType({
    "schedule": ScheduleConfig, "losses": LossConfig, "flow": FlowConfig, "network": FitNetworkConfig,
    "bake": BakeConfig,
})
TOP_LEVEL_KEYS = ("size", "max_side", "seed", "extra")
# the flat keys of the config before it had sections: field name -> its section
FLAT_KEYS: Mapping[str, str] = MappingProxyType(
    {f.name: section for section, kind in SECTIONS.items() for f in dataclasses.fields(kind)})


@dataclass
class FitConfig:
    """Every knob of `models.fit.fit`, in sections (the module docstring lists them)."""

    # working resolution: (W, H); None keeps the video's size, scaled so the long side is `max_side`
    size: tuple[int, int] | None = None
    max_side: int = 768
    seed: int = 0  # the networks' initialisation and the sampling of batches
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    network: FitNetworkConfig = field(default_factory=FitNetworkConfig)
    bake: BakeConfig = field(default_factory=BakeConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"FitConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
            if min(self.size) < 8:
                raise ValueError(f"working size too small: {self.size}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FitConfig:
        """A copy of PRESET_CONFIGS[name] (draft, standard, best) with overrides applied (flat keys or sections,
        as `updated` takes them)."""
        if name not in PRESET_CONFIGS:
            raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        return copy.deepcopy(PRESET_CONFIGS[name]).updated(overrides)

    def updated(self, overrides: Mapping[str, Any]) -> FitConfig:
        """A copy with overrides applied: top-level keys, sections as dicts ({"bake": {"visibility": "learned"}})
        or a section's dataclass, and the flat keys of the config before it had sections ({"visibility":
        "learned"}). Unknown keys, or one field given twice, are a ConfigError (a ValueError) of one line."""
        top: dict[str, Any] = {}
        changes: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        unknown: list[str] = []

        def put(section: str, name: str, value: Any) -> None:
            if name in changes[section]:
                raise ConfigError(f"FitConfig key given twice: {name} (flat) and {section}.{name}")
            changes[section][name] = value

        for key, value in overrides.items():
            if key in SECTIONS:
                if isinstance(value, SECTIONS[key]):
                    value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                if not isinstance(value, Mapping):
                    raise ConfigError(f"FitConfig section {key!r} must be an object of its keys, "
                                     f"got {type(value).__name__}")
                names = {f.name for f in dataclasses.fields(SECTIONS[key])}
                for name, item in value.items():
                    if name in names:
                        put(key, name, item)
                    else:
                        unknown.append(f"{key}.{name}")
            elif key in FLAT_KEYS:
                put(FLAT_KEYS[key], key, value)
            elif key in TOP_LEVEL_KEYS:
                top[key] = value
            else:
                unknown.append(str(key))
        if unknown:
            raise ConfigError(f"unknown FitConfig keys: {', '.join(sorted(unknown))}")
        # every section copied, changed or not: the result shares no section with self
        sections = {name: dataclasses.replace(getattr(self, name), **items) for name, items in changes.items()}
        return dataclasses.replace(self, **top, **sections)

    def scaled_iters(self, iters_main: int) -> FitConfig:
        """A copy whose stage lengths follow a new main-stage length (the CLI's --iters)."""
        s = self.schedule
        factor = iters_main / max(s.iters_main, 1)
        schedule = dataclasses.replace(
            s,
            iters_main=int(iters_main),
            iters_refine=max(int(s.iters_refine * factor), 1 if s.iters_refine else 0),
            iters_inverse=max(int(s.iters_inverse * factor), 1 if s.iters_inverse else 0),
            iters_mapping_init=max(int(s.iters_mapping_init * min(factor, 1.0)), 1),
            eval_every=max(int(s.eval_every * factor), 1),
        )
        losses = dataclasses.replace(self.losses, mask_bootstrap_until=int(self.losses.mask_bootstrap_until * factor))
        return dataclasses.replace(self, schedule=schedule, losses=losses)

    def to_dict(self) -> dict[str, Any]:
        """Nested: the top-level keys and one dict per section (JSON-ready)."""
        data = dataclasses.asdict(self)
        if data["size"] is not None:
            data["size"] = list(data["size"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitConfig:
        """Inverse of to_dict, on the defaults; flat keys are accepted too (see `updated`). Unknown keys are an
        error (a typo must not silently fall back to a default)."""
        return cls().updated(data)

    @classmethod
    def from_bundle(cls, config: Mapping[str, Any]) -> FitConfig:
        """The FitConfig a bundle was fitted with, from its stored config: nested, with the built networks as
        "model", or flat as bundles before the sections stored it, with the built networks as "network"."""
        data = dict(config)
        data.pop("model", None)
        network = data.get("network")
        if isinstance(network, Mapping) and "atlas_span_px" in network:  # a models.networks.NetworkConfig
            del data["network"]
        return cls.from_dict(data)


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config dict (nested or flat) with every section's keys lifted to the top level, for readers that
    look fields up by name (`vatlas info`); other keys stay as they are."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in SECTIONS and isinstance(value, Mapping) and not (key == "network" and "atlas_span_px" in value):
            out.update(value)
        else:
            out[key] = value
    return out


# The presets, complete and named (nerfstudio's method_configs): each is the whole config of its kind of fit.
PRESET_CONFIGS: Mapping[str, FitConfig] = MappingProxyType({
    # minutes on a CPU for tiny clips: short stages, a small batch, 2^15 tables, RNA's plain L
    "draft": FitConfig(
        schedule=ScheduleConfig(iters_main=1500, iters_refine=300, iters_inverse=600, iters_mapping_init=200,
                                batch_size=8192, eval_every=250),
        losses=LossConfig(mask_bootstrap_until=600, illumination_reg=0.01),
        flow=FlowConfig(ref_hops=3),
        network=FitNetworkConfig(hash_log2_size=15, atlas_finest_resolution=1024, illumination_encoding="none"),
        bake=BakeConfig(),
    ),
    # a GPU fit in minutes: the defaults of every section
    "standard": FitConfig(
        schedule=ScheduleConfig(),
        losses=LossConfig(),
        flow=FlowConfig(),
        network=FitNetworkConfig(),
        bake=BakeConfig(),
    ),
    # RNA-scale schedule, finer flow, a 2048 atlas
    "best": FitConfig(
        schedule=ScheduleConfig(iters_main=40000, iters_refine=10000, iters_inverse=6000, iters_mapping_init=1000,
                                batch_size=40000, eval_every=1000),
        losses=LossConfig(mask_bootstrap_until=10000),
        flow=FlowConfig(flow_preset="fine", ref_hops=6),
        network=FitNetworkConfig(),
        bake=BakeConfig(atlas_size=2048),
    ),
})
PRESETS = tuple(PRESET_CONFIGS)


def working_size(source: tuple[int, int], size: tuple[int, int] | None, max_side: int) -> tuple[int, int]:
    """The fit resolution: --size, else the source scaled down so its long side is at most max_side."""
    if size is not None:
        return size
    scale = min(1.0, max_side / max(source))
    return max(16, round(source[0] * scale)), max(16, round(source[1] * scale))
