"""The per-frame compositor (RNA eq. 13) over compact resident caches.

Two modes, both one grid_sample of a 3-channel atlas-space texture plus a fused multiply-add:

* ``delta`` (interactive editing): ``out = c + m * l * D(uv)`` with ``D = A_edit - A`` precomputed in atlas
  space. Where the soft mask is 0 or no edit touches (D = 0) the output equals the input bit for bit.
* ``reconstruct`` (export): ``out = c + m * (l * A_edit(uv) - c)``: the model's reconstruction inside the
  visible ROI (``l * A_edit(uv)`` where m = 1) and the input elsewhere.

Resident caches per pixel-frame: uv int16 fixed point (4 B; uint16 shifted by 32768 so every torch op
supports it, decoded in-kernel; fp16 uv would lose up to 7 levels on a 1024^2 atlas), mask uint8 (1 B),
frames uint8 (3 B) and the illumination at its baked reduced resolution (fp16 on CUDA), upsampled in-kernel.
The atlas-space texture is one fp32 (3, S, S) array shared by all frames.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import UV_SCALE, Bundle

UV_STEP = 2.0 / UV_SCALE
# int16 storage q_s = q - 32768, so uv = q_s * step + (32768 * step - 1).
UV_OFFSET = 32768.0 * UV_STEP - 1.0
MODES = ("delta", "reconstruct")
# Compiled kernels are specialised per batch size: batches are padded to a power of two up to this bound (and
# split above it), so a server with varying batch sizes compiles at most a handful of shapes.
MAX_BUCKET = 32


def pad_to_bucket(idx: torch.Tensor) -> torch.Tensor:
    """Pad a frame index to the next power of two by repeating its last entry."""
    n = int(idx.shape[0])
    bucket = 1 << (n - 1).bit_length()
    return idx if bucket == n else torch.cat([idx, idx[-1:].expand(bucket - n)])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def composite_kernel(uvq: torch.Tensor, mask: torch.Tensor, illum: torch.Tensor, frames: torch.Tensor,
                     idx: torch.Tensor, texture: torch.Tensor, reconstruct: bool) -> torch.Tensor:
    """Fused composite of frames `idx` -> uint8 (N, H, W, 3). Written for torch.compile (one kernel).

    uvq (T,H,W,2) int16, mask (T,H,W) uint8, illum (T,3,h,w), frames (T,H,W,3) uint8, texture (1,3,S,S)
    holding D (delta mode) or A_edit (reconstruct mode) in [0, 1] units.
    """
    n = idx.shape[0]
    _, height, width, _ = uvq.shape
    grid = uvq.index_select(0, idx).to(torch.float32) * UV_STEP + UV_OFFSET
    sampled = F.grid_sample(texture, grid.reshape(1, n * height, width, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    sampled = sampled.reshape(3, n, height, width).permute(1, 2, 3, 0).to(torch.float32)
    light = F.interpolate(illum.index_select(0, idx).to(torch.float32), size=(height, width), mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1)
    m = mask.index_select(0, idx).to(torch.float32).unsqueeze(-1) * (1.0 / 255.0)
    c = frames.index_select(0, idx).to(torch.float32)
    out = c + m * (light * sampled * 255.0 - c) if reconstruct else c + m * light * sampled * 255.0
    return torch.floor(out + 0.5).clamp_(0.0, 255.0).to(torch.uint8)


class Compositor:
    """Holds a bundle's per-frame fields on the device and composites batches of frames."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", *, compile: bool | None = None) -> None:
        self.device = resolve_device(device)
        self.num_frames, self.height, self.width = bundle.num_frames, bundle.height, bundle.width
        cuda = self.device.type == "cuda"
        # The atlas-space texture stays fp32 (12 MB at 1024^2, L2-resident): grid_sample needs grid and input
        # of one dtype, and an fp16 grid would throw away the uv precision the uint16 cache keeps.
        self.texture_dtype = torch.float32
        uv_shifted = (bundle.uv.astype(np.int32) - 32768).astype(np.int16)
        self.uvq = torch.from_numpy(uv_shifted).to(self.device)
        self.mask = torch.from_numpy(np.ascontiguousarray(bundle.mask)).to(self.device)
        illum = np.ascontiguousarray(bundle.illumination.transpose(0, 3, 1, 2))
        self.illum = torch.from_numpy(illum).to(self.device, torch.float16 if cuda else torch.float32)
        self.frames = torch.from_numpy(np.ascontiguousarray(bundle.frames)).to(self.device)
        self._use_compile = cuda if compile is None else compile
        self._kernel: Callable[..., torch.Tensor] = composite_kernel
        self._compile_lock = threading.Lock()
        if self._use_compile:
            self._kernel = torch.compile(composite_kernel, dynamic=False)

    @property
    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.uvq, self.mask, self.illum, self.frames))

    @property
    def bytes_per_pixel_frame(self) -> float:
        return self.resident_bytes / float(self.num_frames * self.height * self.width)

    def prepare_texture(self, atlas_chw: torch.Tensor) -> torch.Tensor:
        """(3,S,S) float in [0,1] units -> the (1,3,S,S) texture this compositor samples."""
        return atlas_chw.to(self.device, self.texture_dtype).unsqueeze(0).contiguous()

    def frame_index(self, frames: Sequence[int] | torch.Tensor | int) -> torch.Tensor:
        """Validate frame numbers -> int64 index tensor on the device."""
        idx = torch.as_tensor([frames] if isinstance(frames, int) else frames, dtype=torch.int64)
        if idx.ndim != 1 or idx.numel() == 0:
            raise ValueError("frames must be a non-empty list of frame numbers")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_frames:
            raise IndexError(f"frame {lo if lo < 0 else hi} is out of range (the clip has frames 0..{self.num_frames - 1})")
        return idx.to(self.device)

    def composite(self, frames: Sequence[int] | torch.Tensor | int, texture: torch.Tensor,
                  mode: str = "delta") -> torch.Tensor:
        """Composite frames with a prepared texture (see prepare_texture) -> uint8 (N, H, W, 3) on the device."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        idx = frames if isinstance(frames, torch.Tensor) and frames.device == self.device else self.frame_index(frames)
        reconstruct = mode == "reconstruct"
        if not self._use_compile:
            return composite_kernel(self.uvq, self.mask, self.illum, self.frames, idx, texture, reconstruct)
        n = int(idx.shape[0])
        if n > MAX_BUCKET:
            return torch.cat([self.composite(idx[s:s + MAX_BUCKET], texture, mode) for s in range(0, n, MAX_BUCKET)])
        padded = pad_to_bucket(idx)
        with self._compile_lock:  # dynamo's first trace of a new shape is not thread-safe
            try:
                out = self._kernel(self.uvq, self.mask, self.illum, self.frames, padded, texture, reconstruct)
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not take rendering down
                warnings.warn(f"torch.compile of the compositor failed, using eager mode: {exc}", stacklevel=2)
                self._use_compile = False
                return composite_kernel(self.uvq, self.mask, self.illum, self.frames, idx, texture, reconstruct)
        return out[:n]

    def warmup(self, texture: torch.Tensor, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Compile the kernels for these batch sizes now (seconds each) rather than on the first request."""
        for n in batch_sizes:
            idx = torch.zeros(int(n), dtype=torch.int64, device=self.device)
            for mode in MODES:
                self.composite(idx, texture, mode)

    @property
    def compiled(self) -> bool:
        return self._use_compile
