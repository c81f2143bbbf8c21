"""The RNA networks (T mapping, A atlas, M mask, L illumination) plus INVE's inverse map B.

Coordinates (see models/bundle.py): a frame pixel at continuous position (x, y) (pixel centres at
integer + 0.5) of frame t is normalized as

    x_n = (x - W/2) / (span/2),  y_n = (y - H/2) / (span/2),  t_n = t / (T-1) * 2 - 1

with span = atlas_span_px, so T(x_n, y_n, t_ref) = (x_n, y_n) is exactly the bundle's uv convention
on the reference frame. Hash grids see (coord + 1) / 2 (clamped to [0, 1] inside the encoding).
Everything is float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from .config import ILLUMINATION_ENCODINGS
from .encoding import HashGridConfig, make_hash_encoding, make_mlp

OUTPUT_ACTIVATIONS = ("sigmoid", "tanh")
SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(SOFTPLUS_ONE) == 1
MASK_EPS = 1e-5


def _atlas_grid() -> HashGridConfig:
    return HashGridConfig(n_input_dims=2, log2_hashmap_size=19, base_resolution=16, finest_resolution=2048)


def _xyt_grid() -> HashGridConfig:
    return HashGridConfig(n_input_dims=3, log2_hashmap_size=19, base_resolution=16, finest_resolution=1024)


@dataclass
class NetworkConfig:
    """Sizes of the five networks and the frame geometry used to normalize coordinates.

    Defaults follow the RNA code (methods.md §3.1): "4 layers" there = 3 hidden layers + output here.
    """

    width: int  # working-resolution frame width W (pixels)
    height: int  # frame height H
    num_frames: int  # T
    atlas_span_px: float  # reference-frame pixels covered by uv in [-1, 1]
    # T: xyt -> uv
    mapping_width: int = 256
    mapping_hidden_layers: int = 3
    mapping_pe_frequencies: int = 0  # 0 = raw xyt only (smooth map); k adds sin/cos(2^j pi p), j < k
    # a learned affine map per frame applied to (x, y) before the MLP: camera shake and pans change from one
    # frame to the next faster than an MLP that is smooth in t can follow
    mapping_frame_affine: bool = False
    # A: uv -> rgb
    atlas_grid: HashGridConfig = field(default_factory=_atlas_grid)
    atlas_width: int = 64
    atlas_hidden_layers: int = 3
    atlas_output: str = "tanh"  # "tanh": (tanh + 1) / 2 as RNA; "sigmoid"
    # M: xyt -> alpha
    mask_grid: HashGridConfig = field(default_factory=_xyt_grid)
    mask_width: int = 32
    mask_hidden_layers: int = 3
    # L: (u, v, t) -> 3 positive scales
    # "none": an MLP on raw uvt (RNA); "hash": a 3D hash grid; "hash_luma": the raw-uvt MLP's smooth colour gains
    # times a hash grid's achromatic gain (see LumaDetailIllumination)
    illumination_encoding: str = "none"
    illumination_grid: HashGridConfig = field(default_factory=_xyt_grid)
    illumination_width: int = 64
    illumination_hidden_layers: int = 3
    # B: (u, v, t) -> (x_n, y_n)
    inverse_grid: HashGridConfig = field(default_factory=_xyt_grid)
    inverse_width: int = 64
    inverse_hidden_layers: int = 2
    hash_backend: str | None = None  # overrides every grid's backend when set
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("atlas_grid", "mask_grid", "illumination_grid", "inverse_grid"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, HashGridConfig(**value))
        if self.width < 1 or self.height < 1 or self.num_frames < 1:
            raise ValueError(f"bad frame geometry {self.width}x{self.height}x{self.num_frames}")
        if not self.atlas_span_px > 0:
            raise ValueError(f"atlas_span_px must be > 0, got {self.atlas_span_px}")
        if self.atlas_output not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"atlas_output must be one of {OUTPUT_ACTIVATIONS}, got {self.atlas_output!r}")
        if self.illumination_encoding not in ILLUMINATION_ENCODINGS:
            raise ValueError(f"illumination_encoding must be one of {ILLUMINATION_ENCODINGS}, "
                             f"got {self.illumination_encoding!r}")
        if self.mapping_pe_frequencies < 0:
            raise ValueError("mapping_pe_frequencies must be >= 0")
        expected_dims = {"atlas_grid": 2, "mask_grid": 3, "illumination_grid": 3, "inverse_grid": 3}
        for name, dims in expected_dims.items():
            if getattr(self, name).n_input_dims != dims:
                raise ValueError(f"{name} must have n_input_dims={dims}")

    def grid(self, name: str) -> HashGridConfig:
        """The grid config with the global backend override applied."""
        cfg = getattr(self, name)
        return replace(cfg, backend=self.hash_backend) if self.hash_backend else cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NetworkConfig fields: {sorted(unknown)}")
        return cls(**data)

    # --- coordinate normalization -------------------------------------------------------------
    def normalize_xyt(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pixel (x, y) (continuous, centres at +0.5) and frame index t -> (N, 3) xyt_n."""
        half = self.atlas_span_px / 2.0
        xn = (x.float() - self.width / 2.0) / half
        yn = (y.float() - self.height / 2.0) / half
        tn = self.normalize_t(t)
        return torch.stack(torch.broadcast_tensors(xn, yn, tn), dim=-1)

    def normalize_t(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        if self.num_frames == 1:
            return torch.zeros_like(t)
        return t / (self.num_frames - 1) * 2.0 - 1.0

    def denormalize_xy(self, xy_n: torch.Tensor) -> torch.Tensor:
        """(N, 2) normalized frame coords (or uv) -> pixel (x, y)."""
        half = self.atlas_span_px / 2.0
        center = xy_n.new_tensor([self.width / 2.0, self.height / 2.0])
        return xy_n * half + center


class PositionalEncoding(nn.Module):
    """[p, sin(2^j pi p), cos(2^j pi p)] for j < n_frequencies; the raw input is kept."""

    def __init__(self, in_dim: int, n_frequencies: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.register_buffer("freqs", (2.0 ** torch.arange(n_frequencies)) * math.pi, persistent=False)

    @property
    def n_output_dims(self) -> int:
        return self.in_dim * (1 + 2 * self.freqs.numel())

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if self.freqs.numel() == 0:
            return p
        angles = (p[..., None] * self.freqs).flatten(-2)
        return torch.cat([p, torch.sin(angles), torch.cos(angles)], dim=-1)


class GridField(nn.Module):
    """Hash grid on coords in [-1, 1]^d (mapped to [0, 1]^d) followed by a plain MLP."""

    def __init__(self, grid: HashGridConfig, out_dim: int, width: int, hidden_layers: int, seed: int) -> None:
        super().__init__()
        self.encoding = make_hash_encoding(grid, seed=seed)
        # fused=True: same layers; on CUDA with Triton they run as fused kernels (tf32 dots)
        self.mlp = make_mlp(grid.n_output_dims, out_dim, width, hidden_layers, "relu", fused=True)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoding((coords + 1.0) * 0.5))


def _start_at_one(last: nn.Linear) -> None:
    """softplus(last layer) starts near 1 (no illumination change) with a small gradient path through the weights."""
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.fill_(SOFTPLUS_ONE)


class ColourGainIllumination(nn.Module):
    """L = one positive gain per colour channel: RNA's MLP on raw uvt, or a hash grid on uvt ("hash")."""

    def __init__(self, grid: HashGridConfig | None, width: int, hidden_layers: int, seed: int) -> None:
        super().__init__()
        self.field = make_mlp(3, 3, width, hidden_layers, "relu") if grid is None else \
            GridField(grid, 3, width, hidden_layers, seed=seed)
        _start_at_one(self.field[-1] if grid is None else self.field.mlp[-1])

    def forward(self, uvt: torch.Tensor) -> torch.Tensor:
        """(N, 3) uvt -> (N, 3) positive scales."""
        return nn.functional.softplus(self.field(uvt))

    def encodings(self) -> list[nn.Module]:
        """The hash encodings inside (trained at the grid learning rate)."""
        return [self.field.encoding] if isinstance(self.field, GridField) else []


class LumaDetailIllumination(nn.Module):
    """L = smooth colour gains (MLP on raw uvt) x a detailed achromatic gain (hash grid on uvt).

    Cast shadows and shading can have sharp edges but hardly change hue; colour casts are smooth. A per-channel
    hash-grid L also learns to repaint occluders, which then pass the occlusion test and leak into edits.
    """

    def __init__(self, grid: HashGridConfig, width: int, hidden_layers: int, seed: int) -> None:
        super().__init__()
        self.smooth = make_mlp(3, 3, width, hidden_layers, "relu")
        self.detail = GridField(grid, 1, width, hidden_layers, seed=seed)
        _start_at_one(self.smooth[-1])
        _start_at_one(self.detail.mlp[-1])

    def forward(self, uvt: torch.Tensor) -> torch.Tensor:
        """(N, 3) uvt -> (N, 3) positive scales."""
        return nn.functional.softplus(self.smooth(uvt)) * nn.functional.softplus(self.detail(uvt))

    def encodings(self) -> list[nn.Module]:
        """The hash encodings inside (trained at the grid learning rate)."""
        return [self.detail.encoding]


def _check(name: str, tensor: torch.Tensor, dims: int) -> None:
    if tensor.ndim != 2 or tensor.shape[1] != dims:
        raise ValueError(f"{name} expects (N, {dims}) inputs, got {tuple(tensor.shape)}")


def _t_column(t: torch.Tensor | float, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"t must be a scalar, (N,) or (N, 1) with N={n}, got {tuple(t.shape)}")
    return t[:, None]


class RnaModel(nn.Module):
    """The five RNA/INVE networks. All inputs are normalized coordinates (see the module docstring)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # The MLPs' default init draws from the global generator: seed a private fork of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._build(cfg)

    def _build(self, cfg: NetworkConfig) -> None:
        self.mapping_pe = PositionalEncoding(3, cfg.mapping_pe_frequencies)
        self.mapping_mlp = make_mlp(self.mapping_pe.n_output_dims, 2, cfg.mapping_width,
                                    cfg.mapping_hidden_layers, "relu")
        # (T, 2, 3) offsets from the identity; zero = plain RNA mapping
        self.frame_affine = nn.Parameter(torch.zeros(cfg.num_frames, 2, 3)) if cfg.mapping_frame_affine else None
        self.atlas_field = GridField(cfg.grid("atlas_grid"), 3, cfg.atlas_width, cfg.atlas_hidden_layers,
                                     seed=cfg.seed + 1)
        self.mask_field = GridField(cfg.grid("mask_grid"), 1, cfg.mask_width, cfg.mask_hidden_layers,
                                    seed=cfg.seed + 2)
        self.illumination_field: ColourGainIllumination | LumaDetailIllumination
        if cfg.illumination_encoding == "hash_luma":
            self.illumination_field = LumaDetailIllumination(
                cfg.grid("illumination_grid"), cfg.illumination_width, cfg.illumination_hidden_layers,
                seed=cfg.seed + 3)
        else:
            grid = cfg.grid("illumination_grid") if cfg.illumination_encoding == "hash" else None
            self.illumination_field = ColourGainIllumination(grid, cfg.illumination_width,
                                                             cfg.illumination_hidden_layers, seed=cfg.seed + 3)
        self.inverse_field = GridField(cfg.grid("inverse_grid"), 2, cfg.inverse_width, cfg.inverse_hidden_layers,
                                       seed=cfg.seed + 4)

    # --- the five networks ----------------------------------------------------------------------
    def mapping(self, xyt: torch.Tensor) -> torch.Tensor:
        """T: (N, 3) xyt_n -> (N, 2) uv in (-1, 1)."""
        _check("mapping", xyt, 3)
        if self.frame_affine is not None:
            frames = self.cfg.num_frames
            index = ((xyt[:, 2] + 1.0) * 0.5 * (frames - 1)).round().long().clamp(0, frames - 1)
            delta = self.frame_affine[index]
            xy = xyt[:, :2]
            xy = xy + (delta[:, :, :2] @ xy[:, :, None])[:, :, 0] + delta[:, :, 2]
            xyt = torch.cat([xy, xyt[:, 2:]], dim=1)
        return torch.tanh(self.mapping_mlp(self.mapping_pe(xyt)))

    def mapping_parameters(self) -> list[nn.Parameter]:
        """T's parameters: the MLP and, if enabled, the per-frame affine maps."""
        extra = [self.frame_affine] if self.frame_affine is not None else []
        return list(self.mapping_mlp.parameters()) + extra

    def atlas(self, uv: torch.Tensor) -> torch.Tensor:
        """A: (N, 2) uv -> (N, 3) rgb in [0, 1]."""
        _check("atlas", uv, 2)
        out = self.atlas_field(uv)
        if self.cfg.atlas_output == "sigmoid":
            return torch.sigmoid(out)
        return (torch.tanh(out) + 1.0) * 0.5

    def mask_logit(self, xyt: torch.Tensor) -> torch.Tensor:
        """M before its squashing, (N,): alpha = sigmoid(logit); use with BCE-with-logits."""
        _check("mask", xyt, 3)
        # alpha = (tanh(z) + 1) / 2 = sigmoid(2 z)
        return 2.0 * self.mask_field(xyt)[:, 0]

    def mask(self, xyt: torch.Tensor) -> torch.Tensor:
        """M: (N, 3) xyt_n -> (N,) alpha in [1e-5, 1 - 1e-5]."""
        return torch.sigmoid(self.mask_logit(xyt)).clamp(MASK_EPS, 1.0 - MASK_EPS)

    def illumination(self, uv: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """L: (N, 2) uv (detached here) and t_n -> (N, 3) positive scales, ~1 at init."""
        _check("illumination", uv, 2)
        uvt = torch.cat([uv.detach(), _t_column(t, uv.shape[0], uv)], dim=1)
        return self.illumination_field(uvt)

    def inverse(self, uv: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """B: (N, 2) uv and t_n -> (N, 2) normalized frame coords (x_n, y_n), same scale as xyt_n."""
        _check("inverse", uv, 2)
        uvt = torch.cat([uv, _t_column(t, uv.shape[0], uv)], dim=1)
        return self.inverse_field(uvt)

    # --- optimisation ---------------------------------------------------------------------------
    def grid_parameters(self) -> list[nn.Parameter]:
        encodings = [f.encoding for f in (self.atlas_field, self.mask_field, self.inverse_field)]
        encodings += self.illumination_field.encodings()
        return [p for e in encodings for p in e.parameters()]

    def param_groups(self, lr_grid: float, lr_mlp: float, *, nets: tuple[str, ...] | None = None
                     ) -> list[dict[str, Any]]:
        """Adam parameter groups: hash tables at lr_grid, MLP weights at lr_mlp.

        ``nets`` restricts to a subset of {"mapping", "atlas", "mask", "illumination", "inverse"}
        (e.g. only "mask" for mask refinement, only "inverse" for fitting B).
        """
        modules = {
            "mapping": self.mapping_mlp,
            "atlas": self.atlas_field,
            "mask": self.mask_field,
            "illumination": self.illumination_field,
            "inverse": self.inverse_field,
        }
        chosen = list(modules) if nets is None else list(nets)
        unknown = set(chosen) - set(modules)
        if unknown:
            raise ValueError(f"unknown network names {sorted(unknown)}; choose from {sorted(modules)}")
        grid_ids = {id(p) for p in self.grid_parameters()}
        grid, mlp = [], []
        for name in chosen:
            params = self.mapping_parameters() if name == "mapping" else modules[name].parameters()
            for p in params:
                (grid if id(p) in grid_ids else mlp).append(p)
        groups = []
        if grid:
            groups.append({"params": grid, "lr": lr_grid, "name": "grid"})
        if mlp:
            groups.append({"params": mlp, "lr": lr_mlp, "name": "mlp"})
        return groups
