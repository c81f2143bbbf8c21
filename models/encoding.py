"""Multiresolution hash encoding (instant-NGP) and plain MLPs.

Backends, picked by ``HashGridConfig.backend``:

* ``"tcnn"``: ``tinycudann.Encoding`` with the same configuration (CUDA only).
* ``"torch"``: the built-in PyTorch encoding, vectorized over levels and corners (any device).
* ``"triton"``: the same module and parameter layout as ``"torch"``, but on CUDA tensors the forward
  and backward run as fused Triton kernels (``models/encoding_triton.py``); on CPU it falls back to
  the PyTorch path, so one model file works everywhere.
* ``"auto"``: tcnn when importable, else triton when importable and CUDA is available, else torch.

Grid convention (shared by the PyTorch and Triton paths): level ``l`` has ``scale_l = base_resolution *
per_level_scale**l - 1`` cells per unit; an input ``x`` in ``[0, 1]`` lands at ``x * scale_l``, whose
cell corners are integer vertices ``0 .. floor(scale_l) + 1``. A level whose vertex grid fits in the
table is indexed densely (no collisions); larger levels use the instant-NGP XOR-prime hash.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import nn

from .hash_grid import BACKENDS, HASH_PRIMES, HashGridConfig, level_layout

INIT_RANGE = 1e-4


@functools.cache
def tcnn_available() -> bool:
    return importlib.util.find_spec("tinycudann") is not None


@functools.cache  # called on every forward of a fused MLP: keep it off the per-step Python cost
def triton_available() -> bool:
    """Triton kernels can run here: triton installed, our kernel module present, a CUDA device."""
    return (importlib.util.find_spec("triton") is not None
            and importlib.util.find_spec(f"{__package__}.encoding_triton") is not None
            and torch.cuda.is_available())


def resolve_backend(backend: str) -> str:
    """Turn "auto" into a concrete backend; refuse backends that cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"hash grid backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if tcnn_available():
            return "tcnn"
        return "triton" if triton_available() else "torch"
    if backend == "tcnn" and not tcnn_available():
        raise RuntimeError("hash grid backend 'tcnn' requested but tinycudann is not installed")
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        raise RuntimeError("hash grid backend 'triton' requested but triton is not installed")
    if backend == "triton" and importlib.util.find_spec(f"{__package__}.encoding_triton") is None:
        raise RuntimeError("hash grid backend 'triton' requested but its kernels are not built in")
    return backend


class HashGridEncoding(nn.Module):
    """Built-in multiresolution hash encoding: (B, d) in [0, 1] -> (B, n_levels * n_features) float32.

    Inputs outside [0, 1] are clamped. The whole table is one parameter ``params`` of shape
    (rows, n_features) so an optimizer group (and a fused Adam) sees a single tensor.
    """

    use_triton: bool = False

    def __init__(self, cfg: HashGridConfig, *, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = level_layout(cfg)
        d = cfg.n_input_dims
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        table = torch.rand(self.layout.n_params_rows, cfg.n_features_per_level, generator=generator)
        self.params = nn.Parameter(table.mul_(2 * INIT_RANGE).sub_(INIT_RANGE))
        # Corner offsets in {0,1}^d, bit k of the corner number is the offset along axis k.
        corners = torch.tensor([[(c >> k) & 1 for k in range(d)] for c in range(1 << d)], dtype=torch.int64)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("scales", torch.tensor(self.layout.scales, dtype=torch.float32), persistent=False)
        strides = torch.tensor(
            [[r**k for k in range(d)] for r in self.layout.resolutions], dtype=torch.int64
        )
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("primes", torch.tensor(HASH_PRIMES[:d], dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor(self.layout.dense), persistent=False)
        self.register_buffer("offsets", torch.tensor(self.layout.offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(self.layout.sizes, dtype=torch.int64), persistent=False)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def extra_repr(self) -> str:
        return (f"dims={self.cfg.n_input_dims}, levels={self.cfg.n_levels}x{self.cfg.n_features_per_level}, "
                f"T=2^{self.cfg.log2_hashmap_size}, dense_levels={sum(self.layout.dense)}, "
                f"triton={self.use_triton}")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.cfg.n_input_dims:
            raise ValueError(f"hash encoding expects (B, {self.cfg.n_input_dims}) inputs, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"hash encoding expects float inputs, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.use_triton and x.is_cuda and self.params.dtype == torch.float32:
            from .encoding_triton import hash_encode

            return hash_encode(x, self.params, self.layout, self.cfg)
        return self.forward_torch(x)

    def table_index(self, vertices: torch.Tensor) -> torch.Tensor:
        """Integer vertices (B, L, C, d) -> flat table rows (B, L, C)."""
        dense_index = (vertices * self.strides[:, None, :]).sum(-1)
        mixed = (vertices * self.primes) & 0xFFFFFFFF
        hashed = mixed[..., 0]
        for k in range(1, vertices.shape[-1]):
            hashed = hashed ^ mixed[..., k]
        hashed = hashed & (self.cfg.hashmap_size - 1)
        index = torch.where(self.dense[:, None], dense_index, hashed)
        return index + self.offsets[:, None]

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """Vectorized PyTorch path: every level and every corner in a handful of tensor ops."""
        x = x.float().clamp(0.0, 1.0)
        pos = x[:, None, :] * self.scales[None, :, None]  # (B, L, d)
        base = torch.floor(pos)
        frac = pos - base
        vertices = base.long()[:, :, None, :] + self.corners  # (B, L, C, d)
        rows = self.table_index(vertices)  # (B, L, C)
        # Multilinear weights: prod over axes of frac (offset 1) or 1 - frac (offset 0).
        corner_is_one = self.corners.bool()  # (C, d)
        weights = torch.where(corner_is_one, frac[:, :, None, :], 1.0 - frac[:, :, None, :]).prod(-1)
        features = self.params.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)  # (B, L, C, F)
        out = (weights[..., None] * features).sum(2)  # (B, L, F)
        return out.reshape(x.shape[0], -1)


class TcnnHashEncoding(nn.Module):
    """tinycudann's HashGrid with the same configuration; fp32 output."""

    def __init__(self, cfg: HashGridConfig, *, seed: int | None = None) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.cfg = cfg
        kwargs = {"seed": seed} if seed is not None else {}
        self.encoding = tcnn.Encoding(cfg.n_input_dims, cfg.tcnn_config(), dtype=torch.float32, **kwargs)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.n_input_dims:
            raise ValueError(f"hash encoding expects (B, {self.cfg.n_input_dims}) inputs, got {tuple(x.shape)}")
        return self.encoding(x.float().clamp(0.0, 1.0)).float()


def make_hash_encoding(cfg: HashGridConfig, *, seed: int | None = None) -> nn.Module:
    """Build the hash encoding for ``cfg.backend`` (see the module docstring)."""
    backend = resolve_backend(cfg.backend)
    if backend == "tcnn":
        return TcnnHashEncoding(cfg, seed=seed)
    module = HashGridEncoding(cfg, seed=seed)
    module.use_triton = backend == "triton"
    return module


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class FusedReluMLP(nn.Sequential):
    """A ``make_mlp`` ReLU MLP (same layers, same state dict) that runs as fused Triton kernels on CUDA.

    Used where the shape suits the kernels (width 16/32/64, 1-3 hidden layers, <= 64 inputs,
    <= 16 outputs); anywhere else (CPU, autocast, other shapes) it runs as the plain nn.Sequential.
    The fused path computes its matrix products in tf32 with fp32 accumulation.
    """

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def fused_ok(self, x: torch.Tensor) -> bool:
        if not (x.is_cuda and triton_available()) or torch.is_autocast_enabled("cuda"):
            return False
        linears = self.linears()
        if x.dtype != torch.float32 or any(m.weight.dtype != torch.float32 for m in linears):
            return False
        from .encoding_triton import fused_mlp_supported

        return fused_mlp_supported(linears[0].in_features, linears[0].out_features, len(linears) - 1,
                                   linears[-1].out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ok(x):
            from .encoding_triton import fused_mlp

            return fused_mlp(x, self.linears())
        return super().forward(x)


def make_mlp(in_dim: int, out_dim: int, width: int = 64, hidden_layers: int = 2, activation: str = "relu",
             *, bias: bool = True, fused: bool = False) -> nn.Sequential:
    """Plain torch MLP: ``hidden_layers`` hidden layers of ``width``, no output activation.

    ``fused=True`` (ReLU only) returns a ``FusedReluMLP``: same layers, fused Triton kernels on CUDA.
    """
    if in_dim < 1 or out_dim < 1 or width < 1 or hidden_layers < 0:
        raise ValueError(f"bad MLP size in={in_dim} out={out_dim} width={width} hidden={hidden_layers}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"MLP activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    dims = [in_dim] + [width] * hidden_layers
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b, bias=bias), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(dims[-1], out_dim, bias=bias))
    if fused and activation == "relu":
        return FusedReluMLP(*layers)
    return nn.Sequential(*layers)
