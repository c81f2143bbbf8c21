"""Geometry and rasterisation in atlas space: the forward map T, the inverse map B, analytic coverage.

Atlas space is measured in reference-frame pixels (see models/bundle.py); texel (i, j) of the S x S edit
layers has its centre at atlas point ``x0 + (j + 0.5) * k`` with ``k = span / S``. Rectangles are texel
index ranges ``(r0, r1, c0, c1)``, half-open. Point lookups (a handful of control points) run in numpy on
the host; per-texel coverage runs in torch on the layer's device, over the dirty rectangle only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import Bundle, decode_uv

Rect = tuple[int, int, int, int]  # r0, r1, c0, c1 (texel rows/cols, half-open)
# Long segments in frame space are split so T's curvature is followed (vector, not raster, resampling).
DENSIFY_FRAME_PX = 4.0
SEGMENT_CHUNK = 64


def bilinear_points(field: np.ndarray, xy: np.ndarray,
                    decode: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Sample field (H, W, C) at continuous index coords xy (N, 2) = (col, row), edge-clamped.

    decode, if given, turns the gathered raw corner values into numbers (e.g. decode_uv on the uint16 uv
    cache): only the 4 corners of each point are converted, never a whole patch.
    """
    h, w = field.shape[:2]
    x = np.clip(xy[:, 0], 0.0, w - 1.0)
    y = np.clip(xy[:, 1], 0.0, h - 1.0)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = x - x0
    fy = y - y0
    rows = np.concatenate([y0, y0, y1, y1])
    cols = np.concatenate([x0, x1, x0, x1])
    gathered = field[rows, cols]
    if decode is not None:
        gathered = decode(gathered)
    corners = np.split(gathered.astype(np.float64, copy=False), 4)
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    # NaN-aware: unknown corners (B is NaN off-frame) drop out and the rest renormalise, so points near
    # the edge of the known area still get a value; mostly-unknown neighbourhoods stay NaN.
    total = np.zeros(len(x))
    acc = np.zeros((len(x), corners[0].shape[1]))
    if np.isfinite(gathered).all():  # the uv cache never has holes: same sums without the masking
        for value, w in zip(corners, weights, strict=True):
            acc += value * w[:, None]
            total += w
        return acc / total[:, None]
    for value, w in zip(corners, weights, strict=True):
        ok = np.isfinite(value).all(axis=1)
        acc += np.where(ok[:, None], value, 0.0) * (w * ok)[:, None]
        total += w * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / total[:, None]
    out[total < 0.25] = np.nan
    return out


@dataclass
class AtlasGeometry:
    """Coordinate conversions for one bundle and an S x S layer grid."""

    bundle: Bundle
    size: int

    @property
    def texel_px(self) -> float:
        """Atlas pixels per texel."""
        return self.bundle.atlas_span_px / self.size

    @property
    def origin(self) -> tuple[float, float]:
        b = self.bundle
        return b.width / 2.0 - b.atlas_span_px / 2.0, b.height / 2.0 - b.atlas_span_px / 2.0

    def uv_at(self, frame: int, xy: np.ndarray) -> np.ndarray:
        """T: frame-pixel points (N, 2) on `frame` -> uv (N, 2), bilinear in the baked uv field."""
        b = self.bundle
        # Pixel centres sit at integer + 0.5, so index coords are xy - 0.5 (edge-clamped).
        idx = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - 0.5
        idx = np.clip(idx, 0.0, [b.width - 1.0, b.height - 1.0])
        return bilinear_points(b.uv[frame], idx, decode=decode_uv)

    def frame_to_atlas(self, frame: int, xy: np.ndarray) -> np.ndarray:
        return self.bundle.uv_to_atlas(self.uv_at(frame, xy))

    def local_scale(self, frame: int, xy: np.ndarray) -> float:
        """Atlas pixels per frame pixel at a point: sqrt|det dT/dxy| by central differences (2 px apart)."""
        return scale_from_probes(self.frame_to_atlas(frame, scale_probes(xy)))

    def inverse_at(self, frames: np.ndarray | int, uv: np.ndarray) -> np.ndarray:
        """B: uv points (N, 2) -> frame pixels (F, N, 2) for each frame in `frames`; NaN where unknown."""
        inv = self.bundle.inverse_map
        g = inv.shape[1]
        ts = np.atleast_1d(np.asarray(frames, dtype=np.int64))
        idx = (np.asarray(uv, dtype=np.float64).reshape(-1, 2) + 1.0) / 2.0 * g - 0.5
        return np.stack([bilinear_points(inv[t], idx) for t in ts])

    def atlas_to_texel(self, xy: np.ndarray) -> np.ndarray:
        """Atlas points (N, 2) -> continuous texel index coords (col, row)."""
        ox, oy = self.origin
        return (np.asarray(xy, dtype=np.float64) - [ox, oy]) / self.texel_px - 0.5

    def rect_around(self, xy: np.ndarray, margin_px: float) -> Rect | None:
        """Texel rect covering atlas points xy (N, 2) plus a margin; None when it misses the atlas."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) == 0:
            return None
        tex = self.atlas_to_texel(xy)
        m = margin_px / self.texel_px + 1.5
        c0 = int(np.floor(tex[:, 0].min() - m))
        c1 = int(np.ceil(tex[:, 0].max() + m)) + 1
        r0 = int(np.floor(tex[:, 1].min() - m))
        r1 = int(np.ceil(tex[:, 1].max() + m)) + 1
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, self.size), min(r1, self.size)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def texel_centres(self, rect: Rect, device: torch.device) -> torch.Tensor:
        """Atlas points of texel centres in rect -> (h, w, 2) float32 (x, y)."""
        r0, r1, c0, c1 = rect
        ox, oy = self.origin
        k = self.texel_px
        xs = ox + (torch.arange(c0, c1, device=device, dtype=torch.float32) + 0.5) * k
        ys = oy + (torch.arange(r0, r1, device=device, dtype=torch.float32) + 0.5) * k
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], dim=-1)

    def texel_uv(self, rect: Rect, device: torch.device) -> torch.Tensor:
        """uv of texel centres in rect -> (h, w, 2)."""
        r0, r1, c0, c1 = rect
        s = self.size
        us = (torch.arange(c0, c1, device=device, dtype=torch.float32) + 0.5) / s * 2 - 1
        vs = (torch.arange(r0, r1, device=device, dtype=torch.float32) + 0.5) / s * 2 - 1
        gv, gu = torch.meshgrid(vs, us, indexing="ij")
        return torch.stack([gu, gv], dim=-1)


def scale_probes(xy: np.ndarray) -> np.ndarray:
    """The 4 frame points around xy whose atlas images give the local scale (see scale_from_probes)."""
    p = np.asarray(xy, dtype=np.float64).reshape(2)
    return np.stack([p + [1, 0], p - [1, 0], p + [0, 1], p - [0, 1]])


def scale_from_probes(a: np.ndarray) -> float:
    """sqrt|det dT/dxy| from the atlas images (4, 2) of scale_probes; 1 where T is degenerate or unknown."""
    jac = np.stack([(a[0] - a[1]) / 2.0, (a[2] - a[3]) / 2.0], axis=1)
    s = float(np.sqrt(abs(np.linalg.det(jac))))
    return s if np.isfinite(s) and s > 1e-3 else 1.0


def densify(points: np.ndarray, step: float) -> np.ndarray:
    """Insert points so no segment of the polyline is longer than `step`."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return pts
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        t = (np.arange(1, n + 1) / n)[:, None]
        out.append(a + (b - a) * t)
    return np.concatenate(out)


def polyline_distance(centres: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance from each texel centre (h, w, 2) to the polyline `points` (n, 2), n >= 1 (a dot when n = 1)."""
    p = centres.reshape(-1, 1, 2)
    if points.shape[0] == 1:
        return (p[:, 0] - points[0]).norm(dim=-1).reshape(centres.shape[:2])
    best = torch.full((p.shape[0],), float("inf"), device=centres.device)
    a_all, b_all = points[:-1], points[1:]
    for s in range(0, a_all.shape[0], SEGMENT_CHUNK):
        a, b = a_all[s:s + SEGMENT_CHUNK], b_all[s:s + SEGMENT_CHUNK]
        ab = b - a
        inv_len2 = 1.0 / (ab * ab).sum(-1).clamp_min(1e-12)
        ap = p - a
        t = ((ap * ab).sum(-1) * inv_len2).clamp_(0.0, 1.0)
        diff = ap - t.unsqueeze(-1) * ab
        best = torch.minimum(best, (diff * diff).sum(-1).amin(dim=1))
    return best.sqrt().reshape(centres.shape[:2])

def falloff(signed_inside: torch.Tensor, feather: float, texel: float) -> torch.Tensor:
    """Coverage from a signed distance (positive inside): 1-texel anti-aliasing plus a smooth feather."""
    width = max(feather, texel)
    c = ((signed_inside + 0.5 * texel) / width).clamp(0.0, 1.0)
    return c * c * (3.0 - 2.0 * c)


def brush_coverage(centres: torch.Tensor, points: torch.Tensor, width: float, hardness: float,
                   texel: float) -> torch.Tensor:
    """Round-jointed, round-capped polyline coverage: radius width/2, soft over the outer (1 - hardness)."""
    radius = width / 2.0
    d = polyline_distance(centres, points)
    return falloff(radius - d, (1.0 - hardness) * radius, texel)


def polygon_coverage(centres: torch.Tensor, points: torch.Tensor, feather: float, texel: float) -> torch.Tensor:
    """Anti-aliased filled polygon (even-odd rule), optionally feathered inward by `feather`."""
    closed = torch.cat([points, points[:1]], dim=0)
    p = centres.reshape(-1, 1, 2)
    a, b = closed[:-1], closed[1:]
    px, py = p[..., 0], p[..., 1]
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    x_at = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1]).where(
        (b[:, 1] - a[:, 1]).abs() > 1e-12, torch.full_like(a[:, 1], 1e-12))
    inside = ((crosses & (px < x_at)).sum(dim=1) % 2 == 1).reshape(centres.shape[:2])
    d = polyline_distance(centres, closed)
    signed = torch.where(inside, d, -d)
    return falloff(signed, feather, texel)


def sample_image(image: torch.Tensor, coords01: torch.Tensor, footprint: tuple[float, float]) -> torch.Tensor:
    """Bilinear sample of a (4, h, w) premultiplied image at coords in [0, 1]^2 (h', w', 2) -> (h', w', 4).

    The colour is the image's, clamped at its border; its edge is anti-aliased by each texel's own coverage of
    the image rectangle (a box `footprint` = (x, y) image pixels wide), not by the image's bilinear filter: a
    texel wholly inside keeps the image's full alpha, so a pasted image comes back unmixed up to its edge, and
    an upscaled image keeps a sharp one. Zero outside.
    """
    grid = (coords01 * 2.0 - 1.0).unsqueeze(0).to(image.dtype)
    out = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)
    h, w = image.shape[1:]
    inside = torch.minimum(coords01, 1.0 - coords01) * coords01.new_tensor([w, h])  # image px to the nearest edge
    box = coords01.new_tensor(footprint).clamp_min(1e-6)
    coverage = (inside / box + 0.5).clamp(0.0, 1.0).prod(dim=-1, keepdim=True)
    return out[0].permute(1, 2, 0) * coverage


def premultiply(rgba_u8: np.ndarray, device: torch.device) -> torch.Tensor:
    """(h, w, 4) uint8 straight alpha -> (4, h, w) float32 premultiplied in [0, 1]."""
    t = torch.from_numpy(np.array(rgba_u8, dtype=np.uint8)).to(device).permute(2, 0, 1).to(torch.float32) / 255.0
    return torch.cat([t[:3] * t[3:4], t[3:4]], dim=0).contiguous()


def rotation_matrix(degrees: float) -> np.ndarray:
    """Counter-clockwise on screen (y points down): maps local (x, y) to screen offsets."""
    th = np.deg2rad(degrees)
    c, s = np.cos(th), np.sin(th)
    return np.array([[c, s], [-s, c]])
