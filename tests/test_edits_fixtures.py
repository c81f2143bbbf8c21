"""A hand-built bundle with a known, exactly invertible mapping (shared by the edit-engine tests).

Frame t shows the atlas shifted by (dx_t, dy_t): atlas point = frame point + shift_t, so T and B are exact
affine maps, the frames are a bilinear rendering of the atlas, and the soft mask has a hard hole (an
occluder) and a soft ring around it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from vatlas.models.bundle import Bundle, encode_uv

SHIFTS = [(0.0, 0.0), (3.5, -2.0), (-4.25, 1.5), (6.0, 3.0)]


def shifted_bundle(width: int = 64, height: int = 48, atlas: int = 64, grid: int = 32, seed: int = 0,
                   illumination: bool = True) -> Bundle:
    rng = np.random.default_rng(seed)
    span = float(max(width, height)) + 16.0
    n = len(SHIFTS)
    # A smooth random atlas (bilinear-upsampled noise) so sampling is well-behaved.
    coarse = torch.from_numpy(rng.uniform(0.1, 0.9, size=(1, 3, atlas // 8, atlas // 8)).astype(np.float32))
    atlas_rgb = F.interpolate(coarse, size=(atlas, atlas), mode="bicubic", align_corners=False).clamp(0, 1)
    atlas_u8 = (atlas_rgb[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    uv = np.zeros((n, height, width, 2))
    for t, (dx, dy) in enumerate(SHIFTS):
        uv[t, ..., 0] = (xs + dx - width / 2.0) / (span / 2.0)
        uv[t, ..., 1] = (ys + dy - height / 2.0) / (span / 2.0)
    uvq = encode_uv(uv)
    mask = np.full((n, height, width), 255, dtype=np.uint8)
    for t in range(n):
        r = np.hypot(xs - width * 0.7, ys - height * 0.3)
        mask[t] = np.clip((r - 5.0) / 4.0 * 255.0, 0, 255).astype(np.uint8)  # hole r<5, soft ring to r=9
    mask[:, :, :3] = 0  # a strip outside the ROI
    ih, iw = height // 4, width // 4
    illum = np.ones((n, ih, iw, 3), dtype=np.float32)
    if illumination:
        illum *= rng.uniform(0.85, 1.15, size=(n, 1, 1, 3)).astype(np.float32)
        illum *= np.linspace(0.9, 1.1, iw, dtype=np.float32)[None, None, :, None]
    uv_dec = torch.from_numpy((uvq.astype(np.float32) * (2 / 65535.0) - 1).astype(np.float32))
    tex = torch.from_numpy(atlas_u8).permute(2, 0, 1)[None].float() / 255.0
    sampled = F.grid_sample(tex.expand(n, -1, -1, -1), uv_dec, mode="bilinear", padding_mode="border",
                            align_corners=False)
    light = F.interpolate(torch.from_numpy(illum).permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                          align_corners=False)
    frames = (sampled * light * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    frames = frames.copy()
    frames[:, :, :3] = rng.integers(0, 255, size=(n, height, 3, 3), dtype=np.uint8)  # non-ROI content
    # B: atlas grid cell centres -> frame pixels (exact inverse of the shift).
    g = (np.arange(grid) + 0.5) / grid * 2 - 1
    gv, gu = np.meshgrid(g, g, indexing="ij")
    inverse = np.zeros((n, grid, grid, 2), dtype=np.float32)
    for t, (dx, dy) in enumerate(SHIFTS):
        inverse[t, ..., 0] = width / 2.0 + gu * span / 2.0 - dx
        inverse[t, ..., 1] = height / 2.0 + gv * span / 2.0 - dy
    bundle = Bundle(
        frames=frames, fps=24.0, ref_frame=0, roi_polygons=[[[3, 0], [width, 0], [width, height], [3, height]]],
        atlas=atlas_u8, atlas_coverage=np.full((atlas, atlas), 255, np.uint8), uv=uvq, mask=mask,
        illumination=illum.astype(np.float16), inverse_map=inverse, atlas_span_px=span,
    )
    bundle.validate()
    return bundle


def png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def solid_rgba(w: int, h: int, color: tuple[int, int, int, int] = (0, 255, 0, 255)) -> np.ndarray:
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[:] = color
    return out
