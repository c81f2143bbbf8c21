"""The multiresolution hash grid's configuration and the layout of its levels in one flat parameter table: what
the PyTorch path (encoding.py) and the Triton kernels (encoding_triton.py) share, so neither imports the other
for it. The grid convention is encoding.py's module docstring."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

BACKENDS = ("auto", "tcnn", "torch", "triton")
# instant-NGP's primes; the first is 1 so neighbouring x cells stay neighbours in memory.
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    """Configuration of a multiresolution hash grid (names follow tinycudann's HashGrid)."""

    n_input_dims: int = 2
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.5
    # When set, per_level_scale is derived so the finest level has this resolution.
    finest_resolution: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.n_input_dims not in (2, 3):
            raise ValueError(f"hash grid n_input_dims must be 2 or 3, got {self.n_input_dims}")
        if not 1 <= self.n_levels <= 32:
            raise ValueError(f"hash grid n_levels must be in 1..32, got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"hash grid n_features_per_level must be 1, 2, 4 or 8, got {self.n_features_per_level}")
        if not 8 <= self.log2_hashmap_size <= 24:
            raise ValueError(f"hash grid log2_hashmap_size must be in 8..24, got {self.log2_hashmap_size}")
        if self.base_resolution < 2:
            raise ValueError(f"hash grid base_resolution must be >= 2, got {self.base_resolution}")
        if self.backend not in BACKENDS:
            raise ValueError(f"hash grid backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.finest_resolution is not None:
            if self.finest_resolution < self.base_resolution:
                raise ValueError("hash grid finest_resolution must be >= base_resolution")
            if self.n_levels == 1:
                self.per_level_scale = 1.0
            else:
                self.per_level_scale = math.exp(
                    math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1)
                )
        if self.per_level_scale < 1.0:
            raise ValueError(f"hash grid per_level_scale must be >= 1, got {self.per_level_scale}")

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    @property
    def hashmap_size(self) -> int:
        return 1 << self.log2_hashmap_size

    def tcnn_config(self) -> dict:
        """The encoding config dict tinycudann expects."""
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LevelLayout:
    """Per-level geometry of the flat parameter table, computed once from the config."""

    scales: tuple[float, ...]  # cells per unit
    resolutions: tuple[int, ...]  # vertices per axis
    sizes: tuple[int, ...]  # table rows of each level
    offsets: tuple[int, ...]  # first row of each level
    dense: tuple[bool, ...]  # dense indexing (no hashing) on this level

    @property
    def n_params_rows(self) -> int:
        return self.offsets[-1] + self.sizes[-1]


def level_layout(cfg: HashGridConfig) -> LevelLayout:
    scales, resolutions, sizes, offsets, dense = [], [], [], [], []
    offset = 0
    for level in range(cfg.n_levels):
        scale = cfg.base_resolution * cfg.per_level_scale**level - 1.0
        # float32 is what the kernels multiply with; keep the layout consistent with it.
        scale = float(torch.tensor(scale, dtype=torch.float32))
        resolution = math.floor(scale) + 2
        n_vertices = resolution**cfg.n_input_dims
        is_dense = n_vertices <= cfg.hashmap_size
        size = n_vertices if is_dense else cfg.hashmap_size
        scales.append(scale)
        resolutions.append(resolution)
        sizes.append(size)
        offsets.append(offset)
        dense.append(is_dense)
        offset += size
    return LevelLayout(tuple(scales), tuple(resolutions), tuple(sizes), tuple(offsets), tuple(dense))
