"""The per-frame compositor (RNA eq. 13, as layers over the source) over compact resident caches.

Per pixel, with uv = UV[t, y, x], m the soft mask, l_t the illumination, c the source pixel, E the premultiplied
paint layer (alpha * rgb, alpha) in albedo units and K the adjustments' per-texel affine colour transform:

    a   = m * alpha_E(uv)
    out = (1 - a) * c + m * l_t * (alpha * rgb)_E(uv) * 255          paint and textures, alpha-over the source
    out = out + m * (K(uv) [out / 255; 1] * 255 - out)               only while an adjustment is live

then rounded half up and clamped. K is passed as K - [I | 0] (exact zeros where no adjustment applies), so the
last line is ``out + m * ((K - [I|0]) [out; 255])``. Where m = 0, or alpha_E = 0 and K = I, the fp32
arithmetic gives exactly c: (1 - 0) * c + 0, plus 0.

The model's reconstruction (a diagnostic, see engine.MODES) is the same kernel with an opaque layer
[E over A; 1]: ``out = (1 - m) * c + m * l * (E over A)(uv)``.

Resident caches per pixel-frame: uv int16 fixed point (4 B; uint16 shifted by 32768 so every torch op
supports it, decoded in-kernel; fp16 uv would lose up to 7 levels on a 1024^2 atlas), mask uint8 (1 B),
frames uint8 (3 B) and the illumination at its baked reduced resolution (fp16 on CUDA), upsampled in-kernel.
The atlas-space layers are one fp32 (4, S, S) array shared by all frames, plus (12, S, S) while an
adjustment is live.

Backends: on CUDA the fused Triton kernel of compositor_triton (one launch per batch, any batch size);
``composite_kernel`` below is the same arithmetic in torch, run eagerly on CPU and under torch.compile on CUDA
when Triton is missing or fails to build.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import UV_OFFSET, UV_STEP, Bundle

LAYER_CHANNELS = 4  # (alpha * r, alpha * g, alpha * b, alpha)
ADJUST_CHANNELS = 12  # K - [I | 0], rows (r, g, b, offset) for output r, g, b
BACKENDS = ("auto", "triton", "compile", "eager")
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


def _sample(texture: torch.Tensor, grid: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """Bilinear, border-clamped lookup of a (1, C, S, S) texture at the decoded uv grid -> (n, H, W, C)."""
    sampled = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.reshape(texture.shape[1], n, height, width).permute(1, 2, 3, 0).to(torch.float32)


def composite_kernel(uvq: torch.Tensor, mask: torch.Tensor, illum: torch.Tensor, frames: torch.Tensor,
                     idx: torch.Tensor, layer: torch.Tensor, adjust: torch.Tensor | None = None) -> torch.Tensor:
    """Fused composite of frames `idx` -> uint8 (N, H, W, 3). Written for torch.compile (one kernel).

    uvq (T,H,W,2) int16, mask (T,H,W) uint8, illum (T,3,h,w), frames (T,H,W,3) uint8, layer (1,4,S,S) the
    premultiplied paint layer E in [0, 1] albedo units, adjust None or (1,12,S,S) K - [I | 0].
    The operation order is the Triton kernel's, so the two agree bit for bit in Triton's CPU interpreter.
    """
    n = idx.shape[0]
    _, height, width, _ = uvq.shape
    grid = uvq.index_select(0, idx).to(torch.float32) * UV_STEP + UV_OFFSET
    grid = grid.reshape(1, n * height, width, 2)
    paint = _sample(layer, grid, n, height, width)
    light = F.interpolate(illum.index_select(0, idx).to(torch.float32), size=(height, width), mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1)
    m = mask.index_select(0, idx).to(torch.float32).unsqueeze(-1) * (1.0 / 255.0)
    c = frames.index_select(0, idx).to(torch.float32)
    a = m * paint[..., 3:]
    out = (1.0 - a) * c + m * light * paint[..., :3] * 255.0
    if adjust is not None:
        k = _sample(adjust, grid, n, height, width).reshape(n, height, width, 3, 4)
        change = (k[..., 0] * out[..., 0:1] + k[..., 1] * out[..., 1:2] + k[..., 2] * out[..., 2:3]
                  + k[..., 3] * 255.0)
        out = out + m * change
    return torch.floor(out + 0.5).clamp_(0.0, 255.0).to(torch.uint8)


class Compositor:
    """Holds a bundle's per-frame fields on the device and composites batches of frames.

    backend: "triton" (the fused kernel of compositor_triton; the default on CUDA when Triton imports),
    "compile" (torch.compile of composite_kernel; the CUDA default without Triton), "eager" (plain torch;
    the CPU default) or "auto". `compile` is the older switch: True asks for "compile", False for "eager".
    """

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", *, compile: bool | None = None,
                 backend: str = "auto") -> None:
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" and "cuda:0" compare unequal: pin the index so device checks on the hot path hold.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.num_frames, self.height, self.width = bundle.num_frames, bundle.height, bundle.width
        cuda = self.device.type == "cuda"
        # The atlas-space layers stay fp32 (16 MB at 1024^2, L2-resident): grid_sample needs grid and input
        # of one dtype, and an fp16 grid would throw away the uv precision the uint16 cache keeps.
        self.texture_dtype = torch.float32
        uv_shifted = (bundle.uv.astype(np.int32) - 32768).astype(np.int16)
        self.uvq = torch.from_numpy(uv_shifted).to(self.device)
        self.mask = torch.from_numpy(np.ascontiguousarray(bundle.mask)).to(self.device)
        illum = np.ascontiguousarray(bundle.illumination.transpose(0, 3, 1, 2))
        self.illum = torch.from_numpy(illum).to(self.device, torch.float16 if cuda else torch.float32)
        self.frames = torch.from_numpy(np.ascontiguousarray(bundle.frames)).to(self.device)
        # Every frame number, resident: a run of consecutive frames is a view of it (no host-to-device copy).
        self._frame_ids = torch.arange(self.num_frames, dtype=torch.int64, device=self.device)
        self.backend = _choose_backend(backend, compile, cuda)
        self._kernel: Callable[..., torch.Tensor] = composite_kernel
        self._compile_lock = threading.Lock()
        self._ready: set[bool] = set()  # kernel flavours (with adjustments or not) already built
        if self.backend == "compile":
            self._kernel = torch.compile(composite_kernel, dynamic=False)
        elif self.backend == "triton":
            from vatlas.server.compositor_triton import TritonCompositor

            self._triton = TritonCompositor(self.uvq, self.mask, self.illum, self.frames)

    @property
    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.uvq, self.mask, self.illum, self.frames))

    @property
    def bytes_per_pixel_frame(self) -> float:
        return self.resident_bytes / float(self.num_frames * self.height * self.width)

    def prepare_texture(self, layer_chw: torch.Tensor) -> torch.Tensor:
        """(4,S,S) premultiplied layer (or (12,S,S) adjustment) -> the (1,C,S,S) texture this compositor samples."""
        return layer_chw.to(self.device, self.texture_dtype).unsqueeze(0).contiguous()

    def frame_index(self, frames: Sequence[int] | torch.Tensor | int) -> torch.Tensor:
        """Validate frame numbers -> int64 index tensor on the device.

        Validation runs on the host; consecutive frames come back as a view of a resident index and other
        lists through pinned memory, so neither waits for the GPU.
        """
        idx = torch.as_tensor([frames] if isinstance(frames, int) else frames, dtype=torch.int64)
        if idx.ndim != 1 or idx.numel() == 0:
            raise ValueError("frames must be a non-empty list of frame numbers")
        values = idx.tolist()
        lo, hi = min(values), max(values)
        if lo < 0 or hi >= self.num_frames:
            raise IndexError(f"frame {lo if lo < 0 else hi} is out of range (the clip has frames 0..{self.num_frames - 1})")
        first, n = values[0], len(values)
        if values == list(range(first, first + n)):
            return self._frame_ids[first:first + n]
        if self.device.type == "cuda":
            host = torch.tensor(values, dtype=torch.int64).pin_memory()
            return host.to(self.device, non_blocking=True)
        return idx.to(self.device)

    def composite(self, frames: Sequence[int] | torch.Tensor | int, layer: torch.Tensor,
                  adjust: torch.Tensor | None = None) -> torch.Tensor:
        """Composite frames: the paint layer (1,4,S,S) over the source, then the adjustments (1,12,S,S) K - [I|0]
        when given -> uint8 (N, H, W, 3) on the device.

        `frames` as an int64 tensor already on this device is trusted (the Triton kernel clamps it into range);
        anything else goes through frame_index.
        """
        _check_texture("layer", layer, LAYER_CHANNELS)
        if adjust is not None:
            _check_texture("adjust", adjust, ADJUST_CHANNELS)
            if adjust.shape[-1] != layer.shape[-1]:
                raise ValueError("layer and adjust must have the same size")
        trusted = isinstance(frames, torch.Tensor) and frames.device == self.device and frames.dtype == torch.int64
        idx = frames if trusted else self.frame_index(frames)
        if self.backend == "triton":
            return self._composite_triton(idx, layer, adjust)
        if self.backend == "eager":
            return composite_kernel(self.uvq, self.mask, self.illum, self.frames, idx, layer, adjust)
        n = int(idx.shape[0])
        if n > MAX_BUCKET:
            return torch.cat([self.composite(idx[s:s + MAX_BUCKET], layer, adjust) for s in range(0, n, MAX_BUCKET)])
        padded = pad_to_bucket(idx)
        with self._compile_lock:  # dynamo's first trace of a new shape is not thread-safe
            try:
                out = self._kernel(self.uvq, self.mask, self.illum, self.frames, padded, layer, adjust)
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not take rendering down
                warnings.warn(f"torch.compile of the compositor failed, using eager mode: {exc}", stacklevel=2)
                self.backend = "eager"
                return composite_kernel(self.uvq, self.mask, self.illum, self.frames, idx, layer, adjust)
        return out[:n]

    def _composite_triton(self, idx: torch.Tensor, layer: torch.Tensor, adjust: torch.Tensor | None) -> torch.Tensor:
        layer = _fp32_contiguous(layer)
        adjust = None if adjust is None else _fp32_contiguous(adjust)
        flavour = adjust is not None
        if flavour in self._ready:  # the hot path: no lock, no try
            return self._triton(idx, layer, adjust)
        with self._compile_lock:  # build each flavour's kernel once, even under concurrent first requests
            try:
                out = self._triton(idx, layer, adjust)
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not take rendering down
                warnings.warn(f"the Triton compositor failed, using torch.compile instead: {exc}", stacklevel=3)
                self.backend = "compile"
                self._kernel = torch.compile(composite_kernel, dynamic=False)
                return self.composite(idx, layer, adjust)
            self._ready.add(flavour)
        return out

    def warmup(self, layer: torch.Tensor, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Build the kernels now, without and with adjustments (Triton: once each; torch.compile: per batch
        size, seconds each)."""
        sizes = batch_sizes[:1] if self.backend == "triton" else batch_sizes
        size = layer.shape[-1]
        # torch.compile specialises on shapes, so the stand-in K has the layer's size (zeros: the identity).
        blank = torch.zeros((1, ADJUST_CHANNELS, size, size), device=layer.device, dtype=layer.dtype)
        for n in sizes:
            idx = torch.zeros(int(n), dtype=torch.int64, device=self.device)
            self.composite(idx, layer)
            self.composite(idx, layer, blank)

    @property
    def compiled(self) -> bool:
        """True when a compiled kernel (Triton or torch.compile) renders, i.e. warmup() is worth calling."""
        return self.backend in ("triton", "compile")


def _check_texture(name: str, texture: torch.Tensor, channels: int) -> None:
    size = texture.shape[-1]
    if texture.ndim != 4 or tuple(texture.shape[:3]) != (1, channels, size):
        raise ValueError(f"{name} must be a (1, {channels}, S, S) texture, got {tuple(texture.shape)}")


def _fp32_contiguous(texture: torch.Tensor) -> torch.Tensor:
    if texture.dtype != torch.float32 or not texture.is_contiguous():
        return texture.to(torch.float32).contiguous()
    return texture


def triton_available() -> bool:
    """Triton imports (CUDA builds of torch ship it; CPU-only installs usually do not)."""
    return importlib.util.find_spec("triton") is not None


def _choose_backend(backend: str, compile: bool | None, cuda: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if backend == "triton" and not triton_available():
            raise ValueError("backend 'triton' needs the triton package")
        if backend == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend 'triton' runs on CUDA, or on CPU only under TRITON_INTERPRET=1")
        return backend
    if compile is not None:
        return "compile" if compile else "eager"
    if not cuda:
        return "eager"
    return "triton" if triton_available() else "compile"
