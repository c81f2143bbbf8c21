"""Fused Triton kernel for the per-frame composite (RNA eq. 13): one launch per batch, one pass over memory.

Same arithmetic, in the same order, as ``compositor.composite_kernel`` (the torch path, kept for CPU and as
the fallback):

* uv: int16 fixed point stored in pairs; read as one int32 per pixel and split in registers;
* layers: ``F.grid_sample(bilinear, border, align_corners=False)`` of the planar fp32 (1, 4, S, S) paint layer
  and, when ADJUST is set, of the (1, 12, S, S) adjustment transform K - [I | 0] (ADJUST is a constexpr: without
  a live adjustment that texture is never read);
* illumination: ``F.interpolate(bilinear, align_corners=False)`` of the low-res (T, 3, h, w) field, in fp32;
* ``a = m * alpha``, ``out = (1 - a) * c + m * l * rgb * 255``, then ``out += m * ((K - [I|0]) [out; 255])``,
  rounded half up.

Where the mask is 0 the texture and illumination loads (and, unless UV_EARLY is set, the uv load) are
predicated off, so pixels outside the ROI cost little more than mask + frame + output traffic; they come out
bit for bit equal to the input.
Frame numbers are read on the device from an int64 index (clamped into range, so a bad index cannot fault).
Runs in Triton's CPU interpreter (TRITON_INTERPRET=1) on CPU tensors, which is how CPU-only CI checks it.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from vatlas.models.bundle import UV_OFFSET, UV_STEP

# Launch configuration. GPU time per 1080p frame on an H200 (batches of 64, run 2 of docs/BENCHMARKS.md):
# BLOCK 512 / 4 warps / UV_EARLY 28.2 us; 1024/8/UV_EARLY 30.8; 1024/8 32.4; 256/2 35.2 (an earlier sweep
# without UV_EARLY: 2048/8 45.9, 4096/16 spilled registers at 236). UV_EARLY issues the uv load together with
# the mask load (one memory latency fewer; uv is then read outside the ROI too, and it still won with 75% of
# the frame outside the ROI: 25.1 vs 27.4-30.1 us). Every configuration gives the same bytes. A fixed choice
# rather than triton.autotune, whose wrapper rebuilds a key from every argument on every launch: single
# frames are bound by host time per call. (Measured with the older 3-channel delta texture; the layers kernel
# reads 4 channels, 16 more with ADJUST: to be measured again.)
DEFAULT_CONFIG = triton.Config({"BLOCK": 512, "UV_EARLY": True}, num_warps=4)


@triton.jit
def _bilinear(ptr, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active):
    """One channel of grid_sample's bilinear lookup (its weight order, so the sums round alike)."""
    return (w_nw * tl.load(ptr + o_nw, mask=active, other=0.0)
            + w_ne * tl.load(ptr + o_ne, mask=active, other=0.0)
            + w_sw * tl.load(ptr + o_sw, mask=active, other=0.0)
            + w_se * tl.load(ptr + o_se, mask=active, other=0.0))


@triton.jit
def _light(ptr, i_00, i_01, i_10, i_11, hy0, hy1, hx0, hx1, active):
    """One channel of F.interpolate's bilinear upsampling of the illumination."""
    l00 = tl.load(ptr + i_00, mask=active, other=0.0).to(tl.float32)
    l01 = tl.load(ptr + i_01, mask=active, other=0.0).to(tl.float32)
    l10 = tl.load(ptr + i_10, mask=active, other=0.0).to(tl.float32)
    l11 = tl.load(ptr + i_11, mask=active, other=0.0).to(tl.float32)
    return hy0 * (hx0 * l00 + hx1 * l01) + hy1 * (hx0 * l10 + hx1 * l11)


@triton.jit
def _change(ptr, plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active, o0, o1, o2):
    """One output channel of (K - [I|0]) [out; 255]: its 4 coefficients start at ptr."""
    k0 = _bilinear(ptr, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active)
    k1 = _bilinear(ptr + plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active)
    k2 = _bilinear(ptr + 2 * plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active)
    k3 = _bilinear(ptr + 3 * plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active)
    return k0 * o0 + k1 * o1 + k2 * o2 + k3 * 255.0


@triton.jit
def _finish(res):
    return tl.minimum(tl.maximum(tl.floor(res + 0.5), 0.0), 255.0).to(tl.uint8)


@triton.jit(do_not_specialize=["idx_ptr", "num_frames"])
def _composite_kernel(uv_ptr, mask_ptr, illum_ptr, frames_ptr, idx_ptr, tex_ptr, adj_ptr, out_ptr,
                      num_frames, height, width, illum_h, illum_w, tex_size,
                      scale_h, scale_w, uv_step, uv_offset,
                      ADJUST: tl.constexpr, BLOCK: tl.constexpr, UV_EARLY: tl.constexpr):
    pid = tl.program_id(0)
    slot = tl.program_id(1).to(tl.int64)
    hw = height * width
    t = tl.load(idx_ptr + slot)
    t = tl.minimum(tl.maximum(t, 0), num_frames - 1).to(tl.int64)
    # 64-bit frame bases once per program (long clips overflow int32), 32-bit offsets within a frame.
    uv_ptr += t * hw
    mask_ptr += t * hw
    frames_ptr += t * hw * 3
    illum_ptr += t * 3 * illum_h * illum_w
    out_ptr += slot * hw * 3
    p = pid * BLOCK + tl.arange(0, BLOCK)
    inside = p < hw

    m_u8 = tl.load(mask_ptr + p, mask=inside, other=0)
    active = inside & (m_u8 > 0)

    # uv: (u, v) int16 pair as one little-endian int32; arithmetic shifts sign-extend each half.
    packed = tl.load(uv_ptr + p, mask=inside if UV_EARLY else active, other=0)
    u = ((packed << 16) >> 16).to(tl.float32) * uv_step + uv_offset
    v = (packed >> 16).to(tl.float32) * uv_step + uv_offset

    # grid_sample: unnormalise (align_corners=False), clamp to the border, bilinear weights.
    size_f = tex_size.to(tl.float32)
    ix = ((u + 1.0) * size_f - 1.0) * 0.5
    iy = ((v + 1.0) * size_f - 1.0) * 0.5
    ix = tl.minimum(tl.maximum(ix, 0.0), size_f - 1.0)
    iy = tl.minimum(tl.maximum(iy, 0.0), size_f - 1.0)
    fx0 = tl.floor(ix)
    fy0 = tl.floor(iy)
    tx = ix - fx0
    ty = iy - fy0
    x0 = fx0.to(tl.int32)
    y0 = fy0.to(tl.int32)
    x1 = tl.minimum(x0 + 1, tex_size - 1)  # its weight is 0 whenever the clamp bites
    y1 = tl.minimum(y0 + 1, tex_size - 1)
    w_nw = (1.0 - tx) * (1.0 - ty)
    w_ne = tx * (1.0 - ty)
    w_sw = (1.0 - tx) * ty
    w_se = tx * ty
    o_nw = y0 * tex_size + x0
    o_ne = y0 * tex_size + x1
    o_sw = y1 * tex_size + x0
    o_se = y1 * tex_size + x1
    plane = tex_size * tex_size

    # Illumination: F.interpolate's rule, src = max((dst + 0.5) * in / out - 0.5, 0).
    row = p // width
    col = p - row * width
    sy = tl.maximum((row.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    sx = tl.maximum((col.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    ly0 = sy.to(tl.int32)
    lx0 = sx.to(tl.int32)
    ly1 = ly0 + (ly0 < illum_h - 1).to(tl.int32)
    lx1 = lx0 + (lx0 < illum_w - 1).to(tl.int32)
    hy1 = sy - ly0.to(tl.float32)
    hx1 = sx - lx0.to(tl.float32)
    hy0 = 1.0 - hy1
    hx0 = 1.0 - hx1
    i_00 = ly0 * illum_w + lx0
    i_01 = ly0 * illum_w + lx1
    i_10 = ly1 * illum_w + lx0
    i_11 = ly1 * illum_w + lx1
    iplane = illum_h * illum_w

    m = m_u8.to(tl.float32) * (1.0 / 255.0)
    alpha = _bilinear(tex_ptr + 3 * plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active)
    keep = 1.0 - m * alpha
    # Paint over the source, one channel at a time: (1 - a) * c + m * l * (alpha * rgb) * 255.
    c0 = tl.load(frames_ptr + p * 3, mask=inside, other=0).to(tl.float32)
    c1 = tl.load(frames_ptr + p * 3 + 1, mask=inside, other=0).to(tl.float32)
    c2 = tl.load(frames_ptr + p * 3 + 2, mask=inside, other=0).to(tl.float32)
    o0 = keep * c0 + m * _light(illum_ptr, i_00, i_01, i_10, i_11, hy0, hy1, hx0, hx1, active) * _bilinear(
        tex_ptr, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active) * 255.0
    o1 = keep * c1 + m * _light(illum_ptr + iplane, i_00, i_01, i_10, i_11, hy0, hy1, hx0, hx1, active) * _bilinear(
        tex_ptr + plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active) * 255.0
    o2 = keep * c2 + m * _light(illum_ptr + 2 * iplane, i_00, i_01, i_10, i_11, hy0, hy1, hx0, hx1,
                                active) * _bilinear(tex_ptr + 2 * plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw,
                                                    w_se, active) * 255.0
    if ADJUST:  # constexpr: without a live adjustment the K texture is never read
        d0 = _change(adj_ptr, plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active, o0, o1, o2)
        d1 = _change(adj_ptr + 4 * plane, plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active, o0, o1, o2)
        d2 = _change(adj_ptr + 8 * plane, plane, o_nw, o_ne, o_sw, o_se, w_nw, w_ne, w_sw, w_se, active, o0, o1, o2)
        o0 = o0 + m * d0
        o1 = o1 + m * d1
        o2 = o2 + m * d2
    tl.store(out_ptr + p * 3, _finish(o0), mask=inside)
    tl.store(out_ptr + p * 3 + 1, _finish(o1), mask=inside)
    tl.store(out_ptr + p * 3 + 2, _finish(o2), mask=inside)


class TritonCompositor:
    """Launches the kernel over one set of resident caches; everything per-clip is worked out once here."""

    def __init__(self, uvq: torch.Tensor, mask: torch.Tensor, illum: torch.Tensor, frames: torch.Tensor,
                 config: triton.Config = DEFAULT_CONFIG) -> None:
        for name, t in (("uvq", uvq), ("mask", mask), ("illum", illum), ("frames", frames)):
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
        self.num_frames, self.height, self.width, _ = uvq.shape
        self.uv32 = uvq.view(torch.int32)  # (u, v) int16 pairs as one word per pixel
        self.mask, self.illum, self.frames = mask, illum, frames
        self.illum_h, self.illum_w = int(illum.shape[2]), int(illum.shape[3])
        # PyTorch computes the upsampling scale as float(in) / out in fp32.
        self.scale_h = float(np.float32(self.illum_h) / np.float32(self.height))
        self.scale_w = float(np.float32(self.illum_w) / np.float32(self.width))
        self.blocks = triton.cdiv(self.height * self.width, config.kwargs["BLOCK"])
        self.options = {**config.kwargs, "num_warps": config.num_warps}

    def __call__(self, idx: torch.Tensor, layer: torch.Tensor, adjust: torch.Tensor | None = None) -> torch.Tensor:
        """Frames `idx` (int64, on the device) with the paint layer (1,4,S,S) and optionally the adjustments
        (1,12,S,S), both fp32 contiguous -> uint8 (N, H, W, 3)."""
        size = layer.shape[-1]
        _check(layer, "layer", 4, size)
        if adjust is not None:
            _check(adjust, "adjust", 12, size)
        n = idx.shape[0]
        out = torch.empty((n, self.height, self.width, 3), dtype=torch.uint8, device=self.frames.device)
        _composite_kernel[(self.blocks, n)](
            self.uv32, self.mask, self.illum, self.frames, idx, layer, layer if adjust is None else adjust, out,
            self.num_frames, self.height, self.width, self.illum_h, self.illum_w, size,
            self.scale_h, self.scale_w, UV_STEP, UV_OFFSET,
            ADJUST=adjust is not None, **self.options,
        )
        return out


def _check(texture: torch.Tensor, name: str, channels: int, size: int) -> None:
    if texture.shape != (1, channels, size, size) or texture.dtype != torch.float32 or not texture.is_contiguous():
        raise ValueError(f"{name} must be a contiguous fp32 (1, {channels}, {size}, {size}) tensor, got "
                         f"{tuple(texture.shape)} {texture.dtype}")


def composite_triton(uvq: torch.Tensor, mask: torch.Tensor, illum: torch.Tensor, frames: torch.Tensor,
                     idx: torch.Tensor, layer: torch.Tensor, adjust: torch.Tensor | None = None,
                     config: triton.Config = DEFAULT_CONFIG) -> torch.Tensor:
    """One-off form of TritonCompositor, with the inputs of ``compositor.composite_kernel``.

    uvq (T,H,W,2) int16, mask (T,H,W) uint8, illum (T,3,h,w) float, frames (T,H,W,3) uint8 (all contiguous),
    idx int64 (N,) on the same device, layer (1,4,S,S) and adjust (1,12,S,S) or None, fp32 contiguous;
    `config` for tests and sweeps.
    """
    return TritonCompositor(uvq, mask, illum, frames, config)(idx, layer, adjust)
