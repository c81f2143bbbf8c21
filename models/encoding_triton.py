"""Fused Triton kernels for the built-in hash encoding (forward, backward to table and inputs).

Same grid convention and table layout as ``HashGridEncoding.forward_torch`` (see models/encoding.py).
One program handles a block of points across all levels: the inputs are read once, each level's
2^d corners are gathered and interpolated in registers, and the backward scatters ``w * grad`` into
the fp32 table gradient with relaxed atomics (collisions on hashed levels simply add up, which is
the gradient of a hash grid by definition). The input gradient is accumulated over levels in
registers and written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .hash_grid import HashGridConfig, LevelLayout

# Same primes as HASH_PRIMES in hash_grid.py; as Python ints Triton types them uint32, so the
# products wrap modulo 2^32 exactly like instant-NGP's.
PRIME_Y: tl.constexpr = tl.constexpr(2654435761)
PRIME_Z: tl.constexpr = tl.constexpr(805459861)


@triton.jit
def _level_corner(ix, iy, iz, fx, fy, fz, res, is_dense, offset,
                  C: tl.constexpr, D: tl.constexpr, HASH_MASK: tl.constexpr):
    """Table row and multilinear weight of corner C (bit k = offset along axis k)."""
    vx = ix + (C & 1)
    vy = iy + ((C >> 1) & 1)
    if C & 1:  # noqa: SIM108 (constexpr branch, Triton)
        wx = fx
    else:
        wx = 1.0 - fx
    if (C >> 1) & 1:  # noqa: SIM108
        wy = fy
    else:
        wy = 1.0 - fy
    w = wx * wy
    dense_row = vx + vy * res
    hashed = vx.to(tl.uint32) ^ (vy.to(tl.uint32) * PRIME_Y)
    if D == 3:
        vz = iz + ((C >> 2) & 1)
        if (C >> 2) & 1:  # noqa: SIM108
            wz = fz
        else:
            wz = 1.0 - fz
        w = w * wz
        dense_row += vz * res * res
        hashed = hashed ^ (vz.to(tl.uint32) * PRIME_Z)
    row = tl.where(is_dense, dense_row, (hashed & HASH_MASK).to(tl.int32)) + offset
    return row, w


@triton.jit
def _load_inputs(x_ptr, pts, mask, D: tl.constexpr):
    x0 = tl.load(x_ptr + pts * D, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + pts * D + 1, mask=mask, other=0.0)
    if D == 3:  # noqa: SIM108
        x2 = tl.load(x_ptr + pts * D + 2, mask=mask, other=0.0)
    else:
        x2 = tl.zeros_like(x0)
    return x0, x1, x2


@triton.jit
def _hash_fwd_kernel(x_ptr, table_ptr, out_ptr, scales_ptr, res_ptr, off_ptr, dense_ptr, n_points,
                     D: tl.constexpr, L: tl.constexpr, F: tl.constexpr, HASH_MASK: tl.constexpr,
                     BLOCK: tl.constexpr):
    pts = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pts < n_points
    fcol = tl.arange(0, F)
    pts64 = pts.to(tl.int64)
    x0, x1, x2 = _load_inputs(x_ptr, pts64, mask, D)
    x0 = tl.minimum(tl.maximum(x0, 0.0), 1.0)
    x1 = tl.minimum(tl.maximum(x1, 0.0), 1.0)
    x2 = tl.minimum(tl.maximum(x2, 0.0), 1.0)
    for level in tl.static_range(L):
        scale = tl.load(scales_ptr + level)
        res = tl.load(res_ptr + level)
        offset = tl.load(off_ptr + level)
        is_dense = tl.load(dense_ptr + level) != 0
        p0 = x0 * scale
        p1 = x1 * scale
        p2 = x2 * scale
        c0 = tl.floor(p0)
        c1 = tl.floor(p1)
        c2 = tl.floor(p2)
        f0 = p0 - c0
        f1 = p1 - c1
        f2 = p2 - c2
        i0 = c0.to(tl.int32)
        i1 = c1.to(tl.int32)
        i2 = c2.to(tl.int32)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for corner in tl.static_range(2**D):
            row, w = _level_corner(i0, i1, i2, f0, f1, f2, res, is_dense, offset, corner, D, HASH_MASK)
            feat = tl.load(table_ptr + row[:, None] * F + fcol[None, :], mask=mask[:, None], other=0.0)
            acc += w[:, None] * feat
        tl.store(out_ptr + pts64[:, None] * (L * F) + level * F + fcol[None, :], acc, mask=mask[:, None])


@triton.jit
def _hash_bwd_kernel(x_ptr, table_ptr, gout_ptr, gtable_ptr, gx_ptr, scales_ptr, res_ptr, off_ptr, dense_ptr,
                     n_points, D: tl.constexpr, L: tl.constexpr, F: tl.constexpr, HASH_MASK: tl.constexpr,
                     NEED_TABLE_GRAD: tl.constexpr, NEED_INPUT_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pts = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pts < n_points
    fcol = tl.arange(0, F)
    pts64 = pts.to(tl.int64)
    r0, r1, r2 = _load_inputs(x_ptr, pts64, mask, D)
    x0 = tl.minimum(tl.maximum(r0, 0.0), 1.0)
    x1 = tl.minimum(tl.maximum(r1, 0.0), 1.0)
    x2 = tl.minimum(tl.maximum(r2, 0.0), 1.0)
    dx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for level in tl.static_range(L):
        scale = tl.load(scales_ptr + level)
        res = tl.load(res_ptr + level)
        offset = tl.load(off_ptr + level)
        is_dense = tl.load(dense_ptr + level) != 0
        p0 = x0 * scale
        p1 = x1 * scale
        p2 = x2 * scale
        c0 = tl.floor(p0)
        c1 = tl.floor(p1)
        c2 = tl.floor(p2)
        f0 = p0 - c0
        f1 = p1 - c1
        f2 = p2 - c2
        i0 = c0.to(tl.int32)
        i1 = c1.to(tl.int32)
        i2 = c2.to(tl.int32)
        g = tl.load(gout_ptr + pts64[:, None] * (L * F) + level * F + fcol[None, :], mask=mask[:, None], other=0.0)
        for corner in tl.static_range(2**D):
            row, w = _level_corner(i0, i1, i2, f0, f1, f2, res, is_dense, offset, corner, D, HASH_MASK)
            ptrs = row[:, None] * F + fcol[None, :]
            if NEED_TABLE_GRAD:
                tl.atomic_add(gtable_ptr + ptrs, w[:, None] * g, mask=mask[:, None], sem="relaxed")
            if NEED_INPUT_GRAD:
                feat = tl.load(table_ptr + ptrs, mask=mask[:, None], other=0.0)
                gf = tl.sum(feat * g, axis=1) * scale
                # d w / d f_k = (+1 or -1) * product of the other axes' weights
                if corner & 1:
                    wx = f0
                    sx = 1.0
                else:
                    wx = 1.0 - f0
                    sx = -1.0
                if (corner >> 1) & 1:
                    wy = f1
                    sy = 1.0
                else:
                    wy = 1.0 - f1
                    sy = -1.0
                if D == 3:
                    if (corner >> 2) & 1:
                        wz = f2
                        sz = 1.0
                    else:
                        wz = 1.0 - f2
                        sz = -1.0
                    dx0 += gf * (sx * wy * wz)
                    dx1 += gf * (sy * wx * wz)
                    dx2 += gf * (sz * wx * wy)
                else:
                    dx0 += gf * (sx * wy)
                    dx1 += gf * (sy * wx)
    if NEED_INPUT_GRAD:
        # clamp's gradient: pass inside [0, 1] (boundaries included, as torch.clamp), zero outside
        dx0 = tl.where((r0 >= 0.0) & (r0 <= 1.0), dx0, 0.0)
        dx1 = tl.where((r1 >= 0.0) & (r1 <= 1.0), dx1, 0.0)
        tl.store(gx_ptr + pts64 * D, dx0, mask=mask)
        tl.store(gx_ptr + pts64 * D + 1, dx1, mask=mask)
        if D == 3:
            dx2 = tl.where((r2 >= 0.0) & (r2 <= 1.0), dx2, 0.0)
            tl.store(gx_ptr + pts64 * D + 2, dx2, mask=mask)


_META_CACHE: dict[tuple[LevelLayout, str], tuple[torch.Tensor, ...]] = {}
# Launch shapes (module attributes so the benchmark can sweep them).
FWD_BLOCK = 128
BWD_BLOCK = 128
FWD_WARPS = 2
BWD_WARPS = 4


def _level_meta(layout: LevelLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    key = (layout, str(device))
    if key not in _META_CACHE:
        _META_CACHE[key] = (
            torch.tensor(layout.scales, dtype=torch.float32, device=device),
            torch.tensor(layout.resolutions, dtype=torch.int32, device=device),
            torch.tensor(layout.offsets, dtype=torch.int32, device=device),
            torch.tensor([int(d) for d in layout.dense], dtype=torch.int32, device=device),
        )
    return _META_CACHE[key]


class _HashEncodeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, layout: LevelLayout, cfg: HashGridConfig
                ) -> torch.Tensor:
        x = x.contiguous().float()
        n = x.shape[0]
        out = torch.empty(n, cfg.n_output_dims, device=x.device, dtype=torch.float32)
        meta = _level_meta(layout, x.device)
        if n:
            _hash_fwd_kernel[(triton.cdiv(n, FWD_BLOCK),)](
                x, table, out, *meta, n, D=cfg.n_input_dims, L=cfg.n_levels, F=cfg.n_features_per_level,
                HASH_MASK=cfg.hashmap_size - 1, BLOCK=FWD_BLOCK, num_warps=FWD_WARPS)
        ctx.save_for_backward(x, table)
        ctx.layout, ctx.cfg = layout, cfg
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, table = ctx.saved_tensors
        cfg: HashGridConfig = ctx.cfg
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous().float()
        n = x.shape[0]
        gtable = torch.zeros_like(table) if need_table else None
        gx = torch.empty_like(x) if need_x else None
        if n and (need_x or need_table):
            meta = _level_meta(ctx.layout, x.device)
            _hash_bwd_kernel[(triton.cdiv(n, BWD_BLOCK),)](
                x, table, grad_out, gtable if need_table else table, gx if need_x else x, *meta, n,
                D=cfg.n_input_dims, L=cfg.n_levels, F=cfg.n_features_per_level, HASH_MASK=cfg.hashmap_size - 1,
                NEED_TABLE_GRAD=need_table, NEED_INPUT_GRAD=need_x, BLOCK=BWD_BLOCK, num_warps=BWD_WARPS)
        return gx, gtable, None, None


def hash_encode(x: torch.Tensor, table: torch.Tensor, layout: LevelLayout, cfg: HashGridConfig) -> torch.Tensor:
    """(B, d) inputs on CUDA -> (B, n_levels * n_features) fp32, differentiable in x and table."""
    if table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError("the Triton hash encoding needs a contiguous float32 table")
    if table.numel() >= 2**31:
        raise ValueError("hash table too large for 32-bit indexing")
    return _HashEncodeFunction.apply(x, table, layout, cfg)


# ----------------------------------------------------------------------------------------------------
# Fused ReLU MLP (the small 32 -> 64 -> 64 -> k heads behind hash grids)
#
# Forward: one program per block of points keeps every activation in registers and runs the layers as
# tensor-core dots (tf32), so only the input and the output touch device memory. Backward: persistent
# programs recompute the forward for their blocks, backpropagate in registers, write the input gradient
# and accumulate the weight/bias gradients in registers, flushed with one atomic add per element at the end.
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _load_wt(w_ptr, K: tl.constexpr, K_P: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr):
    """nn.Linear weight (N, K) row-major, loaded transposed and zero-padded as (K_P, N_P)."""
    k = tl.arange(0, K_P)
    n = tl.arange(0, N_P)
    return tl.load(w_ptr + n[None, :] * K + k[:, None], mask=(k[:, None] < K) & (n[None, :] < N), other=0.0)


@triton.jit
def _load_w(w_ptr, K: tl.constexpr, K_P: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr):
    """nn.Linear weight (N, K), zero-padded as (N_P, K_P)."""
    k = tl.arange(0, K_P)
    n = tl.arange(0, N_P)
    return tl.load(w_ptr + n[:, None] * K + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)


@triton.jit
def _linear(h, w_ptr, b_ptr, K: tl.constexpr, K_P: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr,
            HAS_BIAS: tl.constexpr, DOT: tl.constexpr):
    z = tl.dot(h, _load_wt(w_ptr, K, K_P, N, N_P), input_precision=DOT)
    if HAS_BIAS:
        n = tl.arange(0, N_P)
        z += tl.load(b_ptr + n, mask=n < N, other=0.0)[None, :]
    return z


@triton.jit
def _mlp_forward(x_ptr, pts64, mask, w0, b0, w1, b1, w2, b2, wo, bo,
                 IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr,
                 H: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr):
    cin = tl.arange(0, IN_P)
    h0 = tl.load(x_ptr + pts64[:, None] * IN + cin[None, :], mask=mask[:, None] & (cin[None, :] < IN), other=0.0)
    h1 = tl.maximum(_linear(h0, w0, b0, IN, IN_P, W, W, HAS_BIAS, DOT), 0.0)
    h2 = h1
    h3 = h1
    if H >= 2:
        h2 = tl.maximum(_linear(h1, w1, b1, W, W, W, W, HAS_BIAS, DOT), 0.0)
        h3 = h2
    if H >= 3:
        h3 = tl.maximum(_linear(h2, w2, b2, W, W, W, W, HAS_BIAS, DOT), 0.0)
    out = _linear(h3, wo, bo, W, W, OUT, OUT_P, HAS_BIAS, DOT)
    return h0, h1, h2, h3, out


@triton.jit
def _mlp_fwd_kernel(x_ptr, out_ptr, w0, b0, w1, b1, w2, b2, wo, bo, n_points,
                    IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr,
                    H: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr, BLOCK: tl.constexpr):
    pts = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pts < n_points
    pts64 = pts.to(tl.int64)
    _, _, _, _, out = _mlp_forward(x_ptr, pts64, mask, w0, b0, w1, b1, w2, b2, wo, bo,
                                   IN, IN_P, W, OUT, OUT_P, H, HAS_BIAS, DOT)
    cout = tl.arange(0, OUT_P)
    tl.store(out_ptr + pts64[:, None] * OUT + cout[None, :], out, mask=mask[:, None] & (cout[None, :] < OUT))


@triton.jit
def _flush(acc, ptr, R: tl.constexpr, R_P: tl.constexpr, C: tl.constexpr, C_P: tl.constexpr):
    r = tl.arange(0, R_P)
    c = tl.arange(0, C_P)
    tl.atomic_add(ptr + r[:, None] * C + c[None, :], acc, mask=(r[:, None] < R) & (c[None, :] < C), sem="relaxed")


@triton.jit
def _flush_vec(acc, ptr, R: tl.constexpr, R_P: tl.constexpr):
    r = tl.arange(0, R_P)
    tl.atomic_add(ptr + r, acc, mask=r < R, sem="relaxed")


@triton.jit
def _mlp_bwd_kernel(x_ptr, gout_ptr, gx_ptr, w0, b0, w1, b1, w2, b2, wo, bo,
                    gw0, gb0, gw1, gb1, gw2, gb2, gwo, gbo, n_points,
                    IN: tl.constexpr, IN_P: tl.constexpr, W: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr,
                    H: tl.constexpr, HAS_BIAS: tl.constexpr, NEED_DX: tl.constexpr, DOT: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr):
    acc_w0 = tl.zeros((W, IN_P), dtype=tl.float32)
    acc_w1 = tl.zeros((W, W), dtype=tl.float32)
    acc_w2 = tl.zeros((W, W), dtype=tl.float32)
    acc_wo = tl.zeros((OUT_P, W), dtype=tl.float32)
    acc_b0 = tl.zeros((W,), dtype=tl.float32)
    acc_b1 = tl.zeros((W,), dtype=tl.float32)
    acc_b2 = tl.zeros((W,), dtype=tl.float32)
    acc_bo = tl.zeros((OUT_P,), dtype=tl.float32)
    cout = tl.arange(0, OUT_P)
    cin = tl.arange(0, IN_P)
    for i in range(0, BLOCKS_PER_PROGRAM):
        # each program owns a run of blocks; blocks past the end are fully masked
        pts = (tl.program_id(0) * BLOCKS_PER_PROGRAM + i) * BLOCK + tl.arange(0, BLOCK)
        mask = pts < n_points
        pts64 = pts.to(tl.int64)
        h0, h1, h2, h3, _ = _mlp_forward(x_ptr, pts64, mask, w0, b0, w1, b1, w2, b2, wo, bo,
                                         IN, IN_P, W, OUT, OUT_P, H, HAS_BIAS, DOT)
        go = tl.load(gout_ptr + pts64[:, None] * OUT + cout[None, :], mask=mask[:, None] & (cout[None, :] < OUT),
                     other=0.0)
        acc_wo += tl.dot(tl.trans(go), h3, input_precision=DOT)
        acc_bo += tl.sum(go, axis=0)
        d = tl.dot(go, _load_w(wo, W, W, OUT, OUT_P), input_precision=DOT)
        d = tl.where(h3 > 0.0, d, 0.0)
        if H >= 3:
            acc_w2 += tl.dot(tl.trans(d), h2, input_precision=DOT)
            acc_b2 += tl.sum(d, axis=0)
            d = tl.where(h2 > 0.0, tl.dot(d, _load_w(w2, W, W, W, W), input_precision=DOT), 0.0)
        if H >= 2:
            acc_w1 += tl.dot(tl.trans(d), h1, input_precision=DOT)
            acc_b1 += tl.sum(d, axis=0)
            d = tl.where(h1 > 0.0, tl.dot(d, _load_w(w1, W, W, W, W), input_precision=DOT), 0.0)
        acc_w0 += tl.dot(tl.trans(d), h0, input_precision=DOT)
        acc_b0 += tl.sum(d, axis=0)
        if NEED_DX:
            dx = tl.dot(d, _load_w(w0, IN, IN_P, W, W), input_precision=DOT)
            tl.store(gx_ptr + pts64[:, None] * IN + cin[None, :], dx, mask=mask[:, None] & (cin[None, :] < IN))
    _flush(acc_w0, gw0, W, W, IN, IN_P)
    _flush(acc_wo, gwo, OUT, OUT_P, W, W)
    if H >= 2:
        _flush(acc_w1, gw1, W, W, W, W)
    if H >= 3:
        _flush(acc_w2, gw2, W, W, W, W)
    if HAS_BIAS:
        _flush_vec(acc_b0, gb0, W, W)
        _flush_vec(acc_bo, gbo, OUT, OUT_P)
        if H >= 2:
            _flush_vec(acc_b1, gb1, W, W)
        if H >= 3:
            _flush_vec(acc_b2, gb2, W, W)


MLP_FWD_BLOCK = 64
MLP_BWD_BLOCK = 64
MLP_WARPS = 4
# tl.dot input precision: "tf32" (tensor cores, ~1e-3 relative per product, like tcnn's fp16), or
# "ieee" (exact fp32 FMA, several times slower; used by the GPU correctness test).
MLP_DOT_PRECISION = "tf32"
# Each backward program handles this many blocks, then flushes its weight gradients once.
MLP_BLOCKS_PER_PROGRAM = 8


def fused_mlp_supported(in_dim: int, width: int, hidden_layers: int, out_dim: int) -> bool:
    """Shapes the fused kernels handle (register budget and tl.dot's 16-minimum).

    64 wide with 3 hidden layers needed 323,584 B of shared memory on an H100 (232,448 B available), so 64-wide
    nets are limited to 2 hidden layers (the shape measured in `vatlas bench hash`).
    """
    max_hidden = 2 if width == 64 else 3
    return (width in (16, 32, 64) and 1 <= hidden_layers <= max_hidden and 1 <= in_dim <= 64
            and 1 <= out_dim <= 16)


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class _FusedMlpFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, hidden_layers: int, *params: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().float()
        weights = [p.contiguous() for p in params[0::2]]
        biases = [b.contiguous() if b is not None else None for b in params[1::2]]
        has_bias = biases[0] is not None
        n, in_dim = x.shape
        width, out_dim = weights[0].shape[0], weights[-1].shape[0]
        out = torch.empty(n, out_dim, device=x.device, dtype=torch.float32)
        slots = _slots(weights, biases, hidden_layers, x)
        if n:
            _mlp_fwd_kernel[(triton.cdiv(n, MLP_FWD_BLOCK),)](
                x, out, *slots, n, IN=in_dim, IN_P=_pad(in_dim), W=width, OUT=out_dim, OUT_P=_pad(out_dim),
                H=hidden_layers, HAS_BIAS=has_bias, DOT=MLP_DOT_PRECISION, BLOCK=MLP_FWD_BLOCK, num_warps=MLP_WARPS)
        ctx.save_for_backward(x, *weights, *[b for b in biases if b is not None])
        ctx.hidden_layers, ctx.has_bias = hidden_layers, has_bias
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        saved = ctx.saved_tensors
        hidden_layers, has_bias = ctx.hidden_layers, ctx.has_bias
        x = saved[0]
        weights = list(saved[1:hidden_layers + 2])
        biases = list(saved[hidden_layers + 2:]) if has_bias else [None] * len(weights)
        grad_out = grad_out.contiguous().float()
        n, in_dim = x.shape
        width, out_dim = weights[0].shape[0], weights[-1].shape[0]
        gweights = [torch.zeros_like(w) for w in weights]
        gbiases = [torch.zeros_like(b) if b is not None else None for b in biases]
        need_dx = ctx.needs_input_grad[0]
        gx = torch.empty_like(x) if need_dx else None
        if n:
            programs = triton.cdiv(n, MLP_BWD_BLOCK * MLP_BLOCKS_PER_PROGRAM)
            _mlp_bwd_kernel[(programs,)](
                x, grad_out, gx if need_dx else x, *_slots(weights, biases, hidden_layers, x),
                *_slots(gweights, gbiases, hidden_layers, x), n, IN=in_dim, IN_P=_pad(in_dim), W=width, OUT=out_dim,
                OUT_P=_pad(out_dim), H=hidden_layers, HAS_BIAS=has_bias, NEED_DX=need_dx, DOT=MLP_DOT_PRECISION, BLOCK=MLP_BWD_BLOCK,
                BLOCKS_PER_PROGRAM=MLP_BLOCKS_PER_PROGRAM, num_warps=MLP_WARPS)
        grads: list[torch.Tensor | None] = []
        for gw, gb in zip(gweights, gbiases, strict=True):
            grads += [gw, gb]
        return (gx, None, *grads)


def _slots(weights: list, biases: list, hidden_layers: int, dummy: torch.Tensor) -> list[torch.Tensor]:
    """Kernel argument order w0, b0, w1, b1, w2, b2, wo, bo; unused slots get a dummy tensor."""
    layers = list(zip(weights, biases, strict=True))
    first, hidden, last = layers[0], layers[1:-1], layers[-1]
    hidden = hidden + [(None, None)] * (2 - len(hidden))
    out: list[torch.Tensor] = []
    for w, b in [first, *hidden, last]:
        out += [w if w is not None else dummy, b if b is not None else dummy]
    return out


def fused_mlp(x: torch.Tensor, linears: list[torch.nn.Linear]) -> torch.Tensor:
    """ReLU MLP of ``linears`` (ReLU between them, none after the last) as fused Triton kernels."""
    params: list[torch.Tensor | None] = []
    for lin in linears:
        if lin.weight.dtype != torch.float32:
            raise ValueError("the fused MLP needs float32 weights")
        params += [lin.weight, lin.bias]
    return _FusedMlpFunction.apply(x, len(linears) - 1, *params)
