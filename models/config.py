"""FitConfig: the one object that configures a fit (sizes, schedule, learning rates, loss weights)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRESETS = ("draft", "standard", "best")
ILLUMINATION_ENCODINGS = ("none", "hash", "hash_luma")


@dataclass
class FitConfig:
    """Every knob of `models.fit.fit`. Loss weights carry the RNA paper's names (defaults from RNA's code)."""

    # working resolution: (W, H); None keeps the video's size, scaled so the long side is `max_side`
    size: tuple[int, int] | None = None
    max_side: int = 768
    # schedule (iterations per stage) and batch
    iters_main: int = 3000  # GPU runs: longer main stages let T drift where the ROI leaves the frame
    iters_refine: int = 750
    iters_inverse: int = 1000
    iters_mapping_init: int = 250  # pretrain T toward the reference correspondences
    batch_size: int = 40000  # with 2^19 tables: libby 30.0 dB at 40000 against 28.3 at 20000 (GPU)
    eval_every: int = 250  # ROI PSNR on the reference frame, best checkpoint kept (as RNA does)
    seed: int = 0
    # learning rates (RNA: hash grids 5e-2, MLPs 5e-4); decayed exponentially to lr * lr_final_factor
    lr_grid: float = 5e-2
    lr_mlp: float = 5e-4
    lr_mapping: float = 1e-3  # T in the init and main stages
    lr_inverse: float = 2e-3
    lr_frame_affine: float = 1e-3  # T's per-frame affine maps (init and main stages)
    lr_final_factor: float = 0.1
    # loss weights (RNA eq. 2-10)
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
    # T's warm start where no reference correspondence survives: "camera" (the composed camera motion) or
    # "identity" (RNA's implicit choice: under a pan, content the reference never saw lands wherever the
    # reference frame shows that screen position, the ROI included)
    init_fallback: str = "camera"
    # the per-frame affine maps of T start at the camera motion ("camera") or at the identity ("zero")
    affine_init: str = "camera"
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
    # correspondences
    flow_backend: str = "dis"
    flow_preset: str = "medium"
    adj_fb_px: float = 1.0
    ref_fb_px: float = 5.0
    ref_hops: int = 3  # chained hops toward the reference (RNA: 9); the camera-guided direct flow does the rest
    ref_ncc_min: float = 0.5  # final check: local normalized cross-correlation (illumination invariant)
    # network sizes (RNA: hash grids with 16 levels, mapping MLP 256 wide)
    hash_levels: int = 16
    # 2^19 entries per level (CoDeF's size; RNA uses 2^15): a 2^15 table hashes every 2D level finer than ~180
    # cells per side. On the GPU this took blackswan from 29.3 to 31.1 dB and bmx-trees from 30.7 to 32.1 dB
    # (docs/BENCHMARKS.md); the draft preset keeps 2^15 for CPUs
    hash_log2_size: int = 19
    atlas_finest_resolution: int = 2048
    mapping_width: int = 256
    frame_affine: bool = True  # per-frame affine map ahead of T's MLP (see NetworkConfig)
    # L: "hash_luma" (smooth colour gains x an achromatic hash-grid gain; moving cast shadows) took car-shadow
    # from 29.2 to 30.1-32.5 dB (four H100 runs); "none" is RNA's MLP on raw (u, v, t), cheaper on CPUs (draft)
    illumination_encoding: str = "hash_luma"
    illumination_finest: int = 256  # finest cells per side of the illumination hash grid (64: 29.9 dB)
    hash_backend: str = "auto"  # auto | tcnn | triton | torch (see models/encoding.py)
    # the fused Triton MLP kernels of models/encoding.py ran out of shared memory on an H200 in this fit's
    # shapes (2026-11-21); plain torch MLPs until that is fixed
    fused_mlp: bool = False
    # bake
    atlas_size: int = 1024
    atlas_span: float = 1.25  # atlas_span_px = atlas_span * max(W, H)
    illumination_downscale: int = 4
    inverse_grid: int = 256
    flow_threads: int = 0  # 0 = os.cpu_count()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.atlas_size < 1024:
            raise ValueError(f"atlas_size must be >= 1024, got {self.atlas_size}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
            if min(self.size) < 8:
                raise ValueError(f"working size too small: {self.size}")
        if self.init_fallback not in ("camera", "identity"):
            raise ValueError(f"init_fallback must be 'camera' or 'identity', got {self.init_fallback!r}")
        if self.affine_init not in ("camera", "zero"):
            raise ValueError(f"affine_init must be 'camera' or 'zero', got {self.affine_init!r}")
        if self.illumination_encoding not in ILLUMINATION_ENCODINGS:
            raise ValueError(f"illumination_encoding must be one of {ILLUMINATION_ENCODINGS}, "
                             f"got {self.illumination_encoding!r}")
        if self.corr_ref_weight not in ("mask", "roi"):
            raise ValueError(f"corr_ref_weight must be 'mask' or 'roi', got {self.corr_ref_weight!r}")
        if self.visibility not in ("evidence", "learned"):
            raise ValueError(f"visibility must be 'evidence' or 'learned', got {self.visibility!r}")
        if self.roi_border not in ("polygon", "learned"):
            raise ValueError(f"roi_border must be 'polygon' or 'learned', got {self.roi_border!r}")
        for name in ("iters_main", "iters_refine", "iters_inverse", "batch_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FitConfig:
        """draft (minutes on CPU for tiny clips), standard, best (RNA-scale schedule)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        base: dict[str, Any] = {
            "draft": dict(iters_main=1500, iters_refine=300, iters_inverse=600, iters_mapping_init=200,
                          batch_size=8192, mask_bootstrap_until=600, eval_every=250, ref_hops=3,
                          hash_log2_size=15, atlas_finest_resolution=1024, illumination_encoding="none",
                          illumination_reg=0.01),
            "standard": dict(),
            "best": dict(iters_main=40000, iters_refine=10000, iters_inverse=6000, batch_size=40000,
                         mask_bootstrap_until=10000, eval_every=1000, ref_hops=6, atlas_size=2048,
                         flow_preset="fine", iters_mapping_init=1000),
        }[name]
        base.update(overrides)
        return cls(**base)

    def scaled_iters(self, iters_main: int) -> FitConfig:
        """A copy whose stage lengths follow a new main-stage length (the CLI's --iters)."""
        factor = iters_main / max(self.iters_main, 1)
        return dataclasses.replace(
            self,
            iters_main=int(iters_main),
            iters_refine=max(int(self.iters_refine * factor), 1 if self.iters_refine else 0),
            iters_inverse=max(int(self.iters_inverse * factor), 1 if self.iters_inverse else 0),
            iters_mapping_init=max(int(self.iters_mapping_init * min(factor, 1.0)), 1),
            mask_bootstrap_until=int(self.mask_bootstrap_until * factor),
            eval_every=max(int(self.eval_every * factor), 1),
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["size"] is not None:
            data["size"] = list(data["size"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        """Inverse of to_dict; unknown keys are an error (a typo must not silently fall back to a default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FitConfig keys: {', '.join(unknown)}")
        data = dict(data)
        if data.get("size") is not None:
            data["size"] = tuple(data["size"])
        return cls(**data)


def working_size(source: tuple[int, int], size: tuple[int, int] | None, max_side: int) -> tuple[int, int]:
    """The fit resolution: --size, else the source scaled down so its long side is at most max_side."""
    if size is not None:
        return size
    scale = min(1.0, max_side / max(source))
    return max(16, round(source[0] * scale)), max(16, round(source[1] * scale))
