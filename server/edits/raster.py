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
from PIL import Image
from vatlas.models.bundle import Bundle, decode_uv

Rect = tuple[int, int, int, int]  # r0, r1, c0, c1 (texel rows/cols, half-open)
# Long segments in frame space are split so T's curvature is followed (vector, not raster, resampling).
DENSIFY_FRAME_PX = 4.0
SEGMENT_CHUNK = 64
TILE = 16  # texels per side of a distance tile: each tile looks only at the segments near it
MAX_PAIRS_PER_STEP = 1 << 20  # texel-segment pairs per batched step (bounds the temporaries to a few MB each)
FAR_AWAY = 1.0e9  # the padding segment's coordinates: farther than any reach
# A pasted image or sticker is kept at no more than this many of its pixels per texel (per frame pixel for a
# sticker) along each axis: the resolution it is shown at, with headroom for the bilinear lookup.
IMAGE_OVERSAMPLE = 2.0
DIRECT_PAIRS = 1 << 16  # below this many texel-segment pairs a rect skips the tiling (its planning costs more)


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


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def clip_polyline(points: np.ndarray, box: Box) -> list[np.ndarray]:
    """The pieces of a polyline inside box (Liang-Barsky per segment); a single point is kept if inside.

    Vertices inside the box come back bit for bit, so a polyline that never leaves it is unchanged.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = box
    if len(pts) < 2:
        inside = len(pts) == 1 and x0 <= pts[0, 0] <= x1 and y0 <= pts[0, 1] <= y1
        return [pts] if inside else []
    a, d = pts[:-1], pts[1:] - pts[:-1]
    t0, t1 = np.zeros(len(a)), np.ones(len(a))
    for p, q in ((-d[:, 0], a[:, 0] - x0), (d[:, 0], x1 - a[:, 0]), (-d[:, 1], a[:, 1] - y0),
                 (d[:, 1], y1 - a[:, 1])):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = q / p
        t0 = np.where(p < 0, np.maximum(t0, r), t0)
        t1 = np.where(p > 0, np.minimum(t1, r), t1)
        t1 = np.where((p == 0) & (q < 0), -1.0, t1)  # parallel to this edge and outside it
    keep = t0 <= t1
    pieces: list[np.ndarray] = []
    current: list[np.ndarray] = []
    for i in np.flatnonzero(keep):
        start = pts[i] if t0[i] == 0.0 else a[i] + t0[i] * d[i]
        stop = pts[i + 1] if t1[i] == 1.0 else a[i] + t1[i] * d[i]
        joined = current and i > 0 and keep[i - 1] and t1[i - 1] == 1.0 and t0[i] == 0.0
        if not joined:
            if current:
                pieces.append(np.stack(current))
            current = [start]
        current.append(stop)
    if current:
        pieces.append(np.stack(current))
    return pieces


def clip_polygon(points: np.ndarray, box: Box) -> np.ndarray:
    """A polygon clipped to box (Sutherland-Hodgman, vectorised per box edge); (0, 2) when nothing is left."""
    out = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = box
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if len(out) == 0:
            break
        inside = out[:, axis] >= bound if keep_above else out[:, axis] <= bound
        if inside.all():
            continue
        prev, prev_in = np.roll(out, 1, axis=0), np.roll(inside, 1)
        cross = inside != prev_in
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (bound - prev[:, axis]) / (out[:, axis] - prev[:, axis])
        inter = prev + np.where(cross, t, 0.0)[:, None] * (out - prev)
        inter[cross, axis] = bound  # exactly on the edge
        out = np.stack([inter, out], axis=1)[np.stack([cross, inside], axis=1)]
    return out if len(out) >= 3 else np.zeros((0, 2))


def densify_pieces(pieces: list[np.ndarray], step: float, max_points: int) -> list[np.ndarray]:
    """Insert points so no segment is longer than `step`, stretching the step so that at most max_points come
    out in all (a very long path is followed more coarsely instead of without bound)."""
    lengths = [np.linalg.norm(np.diff(p, axis=0), axis=1) for p in pieces]
    total = float(sum(seg.sum() for seg in lengths))
    n_seg = sum(len(seg) for seg in lengths)
    budget = max_points - n_seg - len(pieces)  # ceil() adds at most one point per segment over length/step
    if budget <= 0 or total / step > budget:
        step = max(step, total / max(budget, 1))
    out = []
    for pts, seg in zip(pieces, lengths, strict=True):
        if len(pts) < 2:
            out.append(pts)
            continue
        n = np.maximum(np.ceil(seg / step).astype(np.int64), 1)
        chunks = [pts[:1]]
        for a, b, k in zip(pts[:-1], pts[1:], n, strict=True):
            t = (np.arange(1, k + 1) / k)[:, None]
            chunks.append(a + (b - a) * t)
        out.append(np.concatenate(chunks))
    return out


@dataclass
class Segments:
    """Line segments (ax, ay, bx, by) in atlas pixels: on the host for planning, on the device for the work.

    The device copy has one extra far-away segment at index m, the padding of candidate lists.
    """

    host: np.ndarray  # (m, 4) float64 holding the float32 values the device sees
    device: torch.Tensor  # (m + 1, 4) float32

    @classmethod
    def of_pieces(cls, pieces: list[np.ndarray], device: torch.device) -> Segments:
        """Polyline pieces -> their segments; a one-point piece is a dot (a zero-length segment)."""
        rows = [np.concatenate([p[:-1], p[1:]], axis=1) if len(p) > 1 else np.concatenate([p, p], axis=1)
                for p in pieces if len(p)]
        segs = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 4), np.float32)
        padded = np.concatenate([segs, np.full((1, 4), FAR_AWAY, np.float32)])
        host = torch.from_numpy(padded)
        dev = host if device.type != "cuda" else host.pin_memory().to(device, non_blocking=True)
        return cls(host=segs.astype(np.float64), device=dev)

    def __len__(self) -> int:
        return len(self.host)


def _tile_pairs(geom: AtlasGeometry, rect: Rect, segs: Segments, reach: float,
                count_only: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(tile, segment) pairs of every segment with each TILE x TILE tile of rect its bounding box comes within
    `reach` of, sorted by tile (tile = row * ntx + col); and ntx. Vectorised: no loop over tiles or segments.
    count_only: the number of tiles per segment instead (twice), without listing the pairs."""
    r0, r1, c0, c1 = rect
    nty, ntx = -(-(r1 - r0) // TILE), -(-(c1 - c0) // TILE)
    ox, oy = geom.origin
    k = geom.texel_px
    h = segs.host
    pad = reach + 1e-3 * (1.0 + k)  # float32 rounding of the device's arithmetic

    def tiles(lo: np.ndarray, hi: np.ndarray, origin: float, first: int, last: int, n: int) -> tuple[np.ndarray, ...]:
        # texel j's centre is origin + (j + 0.5) k; the texels whose centres lie in [lo, hi], as tile indices
        j0 = np.maximum(np.ceil((lo - origin) / k - 0.5), first)
        j1 = np.minimum(np.floor((hi - origin) / k - 0.5), last - 1)
        ok = j1 >= j0
        return ((np.where(ok, j0, first) - first) // TILE).astype(np.int64), \
            ((np.where(ok, j1, first) - first) // TILE).astype(np.int64), ok

    tx0, tx1, okx = tiles(np.minimum(h[:, 0], h[:, 2]) - pad, np.maximum(h[:, 0], h[:, 2]) + pad, ox, c0, c1, ntx)
    ty0, ty1, oky = tiles(np.minimum(h[:, 1], h[:, 3]) - pad, np.maximum(h[:, 1], h[:, 3]) + pad, oy, r0, r1, nty)
    wx = tx1 - tx0 + 1
    counts = np.where(okx & oky, wx * (ty1 - ty0 + 1), 0)
    if count_only:
        return counts, counts, ntx
    seg = np.repeat(np.arange(len(h)), counts)
    local = np.arange(len(seg)) - np.repeat(np.cumsum(counts) - counts, counts)
    tile = (ty0[seg] + local // wx[seg]) * ntx + tx0[seg] + local % wx[seg]
    order = np.argsort(tile, kind="stable")
    return tile[order], seg[order], ntx


def distance_work(geom: AtlasGeometry, rect: Rect | None, segs: Segments, reach: float) -> int:
    """Texel-segment pairs segment_distance will evaluate over rect (its cost, known before doing it)."""
    if rect is None or len(segs) == 0:
        return 0
    direct = (rect[1] - rect[0]) * (rect[3] - rect[2]) * len(segs)
    if direct <= DIRECT_PAIRS:
        return direct
    counts, _, _ = _tile_pairs(geom, rect, segs, reach, count_only=True)
    return int(counts.sum()) * TILE * TILE


def segment_distance(geom: AtlasGeometry, rect: Rect, segs: Segments, reach: float,
                     device: torch.device) -> torch.Tensor:
    """Distance from each texel centre of rect to the nearest segment, (h, w) float32; exact below `reach`,
    `reach` beyond it.

    Texels are taken in TILE x TILE tiles and each tile looks only at the segments whose bounding box comes
    within reach of it, so the work follows the area a stroke covers rather than rect x segments.
    """
    r0, r1, c0, c1 = rect
    h, w = r1 - r0, c1 - c0
    if h * w * len(segs) <= DIRECT_PAIRS:  # small enough to take every texel against every segment
        p = geom.texel_centres(rect, device).reshape(1, h * w, 1, 2)
        cand = torch.arange(len(segs), device=device).unsqueeze(0)
        return _nearest_sq(p, segs.device, cand).sqrt().clamp_max(float(reach)).reshape(h, w)
    nty, ntx = -(-h // TILE), -(-w // TILE)
    out = torch.full((nty * ntx, TILE * TILE), float(reach), device=device)
    ox, oy = geom.origin
    k = geom.texel_px
    # The same float32 arithmetic as texel_centres, over the rect padded to whole tiles.
    xs = (ox + (torch.arange(c0, c0 + ntx * TILE, device=device, dtype=torch.float32) + 0.5) * k).view(ntx, TILE)
    ys = (oy + (torch.arange(r0, r0 + nty * TILE, device=device, dtype=torch.float32) + 0.5) * k).view(nty, TILE)
    tile, seg, _ = _tile_pairs(geom, rect, segs, reach)
    tiles, first, count = np.unique(tile, return_index=True, return_counts=True)
    rank = np.arange(len(tile)) - np.repeat(first, count)  # a segment's place in its tile's list
    size = 1 << np.ceil(np.log2(count)).astype(np.int64)  # power-of-two buckets: at most 2x padding
    group = np.repeat(np.arange(len(tiles)), count)
    for bucket in np.unique(size):
        members = np.flatnonzero(size == bucket)
        slot = np.full(len(tiles), -1)
        slot[members] = np.arange(len(members))
        lists = np.full((len(members), int(bucket)), len(segs))  # padded with the far-away segment
        mine = slot[group] >= 0
        lists[slot[group[mine]], rank[mine]] = seg[mine]
        tile_ids = torch.as_tensor(tiles[members], device=device)
        cand = torch.as_tensor(lists, device=device)
        per_step = max(1, MAX_PAIRS_PER_STEP // (TILE * TILE * min(int(bucket), SEGMENT_CHUNK)))
        for s in range(0, len(members), per_step):
            ids = tile_ids[s:s + per_step]
            gy, gx = ys[ids // ntx], xs[ids % ntx]  # (n, TILE)
            p = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
            best = _nearest_sq(p.reshape(len(ids), TILE * TILE, 1, 2), segs.device, cand[s:s + per_step])
            out[ids] = best.sqrt().clamp_max(float(reach))
    grid = out.view(nty, ntx, TILE, TILE).permute(0, 2, 1, 3).reshape(nty * TILE, ntx * TILE)
    return grid[:h, :w]


def _nearest_sq(p: torch.Tensor, segs: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Squared distance from points p (n, P, 1, 2) to the nearest of their candidate segments cand (n, k)
    (indices into segs (m, 4)) -> (n, P), SEGMENT_CHUNK candidates at a time.

    x and y are kept apart (no trailing axis of 2): the same float32 sums, in half the memory traffic.
    """
    px, py = p[..., 0], p[..., 1]  # (n, P, 1)
    best = torch.full(p.shape[:2], float("inf"), device=p.device)
    for c in range(0, cand.shape[1], SEGMENT_CHUNK):
        seg = segs[cand[:, c:c + SEGMENT_CHUNK]].unsqueeze(1)  # (n, 1, C, 4)
        ax, ay = seg[..., 0], seg[..., 1]
        abx, aby = seg[..., 2] - ax, seg[..., 3] - ay
        inv_len2 = 1.0 / (abx * abx + aby * aby).clamp_min(1e-12)
        apx, apy = px - ax, py - ay
        t = ((apx * abx + apy * aby) * inv_len2).clamp_(0.0, 1.0)
        dx = apx.sub_(t * abx)
        dy = apy.sub_(t * aby)
        best = torch.minimum(best, (dx.mul_(dx).add_(dy * dy)).amin(dim=-1))
    return best


def even_odd_inside(geom: AtlasGeometry, rect: Rect, segs: Segments, device: torch.device) -> torch.Tensor:
    """Inside mask (h, w) of the closed polygon whose edges are segs (even-odd rule), one scanline at a time:
    per row the edge crossings are sorted once and each texel counts those to its right by binary search."""
    r0, r1, c0, c1 = rect
    ox, oy = geom.origin
    k = geom.texel_px
    px = ox + (torch.arange(c0, c1, device=device, dtype=torch.float32) + 0.5) * k
    py = oy + (torch.arange(r0, r1, device=device, dtype=torch.float32) + 0.5) * k
    edges = segs.device[:-1]
    ax, ay, bx, by = edges.unbind(-1)
    dy = by - ay
    safe_dy = dy.where(dy.abs() > 1e-12, torch.full_like(dy, 1e-12))
    inside = torch.zeros((r1 - r0, c1 - c0), dtype=torch.bool, device=device)
    rows_per_step = max(1, MAX_PAIRS_PER_STEP // max(len(segs), 1))
    for s in range(0, r1 - r0, rows_per_step):
        y = py[s:s + rows_per_step, None]
        crosses = (ay > y) != (by > y)
        x_at = ax + (y - ay) * (bx - ax) / safe_dy
        x_at = torch.where(crosses, x_at, torch.full_like(x_at, float("-inf"))).sort(dim=1).values
        # crossings strictly right of each texel: all minus those at or left of it
        right = len(segs) - torch.searchsorted(x_at, px.expand(len(y), -1).contiguous(), right=True)
        inside[s:s + rows_per_step] = right % 2 == 1
    return inside


def polygon_work(rect: Rect | None, segs: Segments) -> int:
    """Scanline work of even_odd_inside over rect (rows x edges)."""
    return 0 if rect is None else (rect[1] - rect[0]) * len(segs)


def falloff(signed_inside: torch.Tensor, feather: float, texel: float) -> torch.Tensor:
    """Coverage from a signed distance (positive inside): 1-texel anti-aliasing plus a smooth feather."""
    width = max(feather, texel)
    c = ((signed_inside + 0.5 * texel) / width).clamp(0.0, 1.0)
    return c * c * (3.0 - 2.0 * c)


def brush_reach(width: float, texel: float) -> float:
    """Distance beyond which a brush of this width covers nothing (see falloff)."""
    return width / 2.0 + texel


def polygon_reach(feather: float, texel: float) -> float:
    """Distance from the edge beyond which a polygon's coverage is exactly 0 or 1 (see falloff)."""
    return max(feather, texel) + texel


def brush_coverage(geom: AtlasGeometry, rect: Rect, segs: Segments, width: float, hardness: float,
                   device: torch.device) -> torch.Tensor:
    """Round-jointed, round-capped polyline coverage over rect: radius width/2, soft over the outer
    (1 - hardness)."""
    texel = geom.texel_px
    radius = width / 2.0
    d = segment_distance(geom, rect, segs, brush_reach(width, texel), device)
    return falloff(radius - d, (1.0 - hardness) * radius, texel)


def polygon_coverage(geom: AtlasGeometry, rect: Rect, segs: Segments, feather: float,
                     device: torch.device) -> torch.Tensor:
    """Anti-aliased filled polygon (even-odd rule) over rect, optionally feathered inward by `feather`."""
    texel = geom.texel_px
    inside = even_odd_inside(geom, rect, segs, device)
    d = segment_distance(geom, rect, segs, polygon_reach(feather, texel), device)
    return falloff(torch.where(inside, d, -d), feather, texel)


def sample_image(image: torch.Tensor, coords01: torch.Tensor, footprint: tuple[float, float],
                 size: tuple[int, int] | None = None,
                 window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> torch.Tensor:
    """Bilinear sample of a (4, h, w) premultiplied image at coords in [0, 1]^2 (h', w', 2) -> (h', w', 4).

    The colour is the image's, clamped at its border; its edge is anti-aliased by each texel's own coverage of
    the image rectangle (a box `footprint` = (x, y) image pixels wide), not by the image's bilinear filter: a
    texel wholly inside keeps the image's full alpha, so a pasted image comes back unmixed up to its edge, and
    an upscaled image keeps a sharp one. Zero outside.

    `image` may be a crop of the pasted image, possibly downsampled: `window` = (u0, v0, u1, v1) is the part of
    the whole image in [0, 1] coords that it holds, and `size` = (w, h) the whole image's pixels (coords,
    footprint and the edge stay the whole image's).
    """
    u0, v0, u1, v1 = window
    local = coords01 if window == (0.0, 0.0, 1.0, 1.0) else (
        (coords01 - coords01.new_tensor([u0, v0])) / coords01.new_tensor([u1 - u0, v1 - v0]))
    grid = (local * 2.0 - 1.0).unsqueeze(0).to(image.dtype)
    out = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)
    w, h = size if size is not None else (image.shape[2], image.shape[1])
    inside = torch.minimum(coords01, 1.0 - coords01) * coords01.new_tensor([w, h])  # image px to the nearest edge
    box = coords01.new_tensor(footprint).clamp_min(1e-6)
    coverage = (inside / box + 0.5).clamp(0.0, 1.0).prod(dim=-1, keepdim=True)
    return out[0].permute(1, 2, 0) * coverage


# ---- fitting a frame-space paste into the atlas -------------------------------------------------------------
# The compositor reads the atlas bilinearly, so texels that merely sample the pasted image are read back blurred
# (resampled twice). fit_texels instead solves for the texels whose bilinear read-back best matches the paste:
# at frame N's pixel centres (so frame N shows it as pasted) and, as a continuous surface, everywhere between
# them (so the other frames, which read the atlas elsewhere, see the image warped rather than sharpened).


@dataclass
class TexelLookups:
    """Bilinear reads of an (h, w, C) block of texels at P points, zero outside the block, as explicit taps.

    The weights are grid_sample's (bilinear, align_corners=False) with zero padding, so `gather` is the
    compositor's read of this block, and `scatter` is its exact transpose.
    """

    index: torch.Tensor  # (P, 4) flat texel index of each tap (0 for a tap outside the block)
    weight: torch.Tensor  # (P, 4) its bilinear weight (0 outside the block)
    size: tuple[int, int]  # (h, w)

    @classmethod
    def at(cls, points: torch.Tensor, size: tuple[int, int]) -> TexelLookups:
        """points (P, 2): continuous texel index coords (col, row) within the block; NaN reads nothing."""
        h, w = size
        ok = torch.isfinite(points).all(dim=-1)
        pts = torch.where(ok[:, None], points, torch.full_like(points, -10.0))
        base = torch.floor(pts)
        frac = pts - base
        col, row = base[:, 0].long(), base[:, 1].long()
        fx, fy = frac[:, 0], frac[:, 1]
        cols = torch.stack([col, col + 1, col, col + 1], dim=1)
        rows = torch.stack([row, row, row + 1, row + 1], dim=1)
        weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        index = torch.where(inside, rows * w + cols, torch.zeros_like(cols))
        return cls(index=index, weight=torch.where(inside, weight, torch.zeros_like(weight)), size=(h, w))

    def gather(self, texels: torch.Tensor) -> torch.Tensor:
        """(h, w, C) -> (P, C): the bilinear value at each point."""
        flat = texels.reshape(-1, texels.shape[-1])
        return (flat[self.index] * self.weight[..., None]).sum(dim=1)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(P, C) -> (h, w, C): the transpose of gather (each point's value spread onto its taps)."""
        h, w = self.size
        out = values.new_zeros((h * w, values.shape[-1]))
        index = self.index.reshape(-1)
        spread = (values[:, None, :] * self.weight[..., None]).reshape(-1, values.shape[-1])
        if out.device.type == "cuda":
            # index_add_ sums with atomics there (run to run the last bits differ); index_put_'s accumulate
            # sorts first, so the same op always gives the same texels (replays, reloads)
            out.index_put_((index,), spread, accumulate=True)
        else:
            out.index_add_(0, index, spread)  # serial on the CPU, so deterministic
        return out.reshape(h, w, -1)


def quadrature_offsets(n: int) -> np.ndarray:
    """The n sample offsets in (0, 1) of the continuous term's midpoint rule, per cell between texel centres."""
    return (np.arange(n) + 0.5) / n


def cell_samples(rows: tuple[int, int], w: int, n: int) -> torch.Tensor:
    """Continuous texel index coords (col, row) of the quadrature samples of fine rows [k0, k1) -> (k1-k0,
    (w+1) n, 2). The fine grid has n samples per cell between texel centres, from the cell before the first
    texel to the one after the last: fine row k lies at texel row -1 + (k + 0.5) / n."""
    k0, k1 = rows
    ys = torch.arange(k0, k1, dtype=torch.float32).add_(0.5).div_(n).sub_(1.0)
    xs = torch.arange((w + 1) * n, dtype=torch.float32).add_(0.5).div_(n).sub_(1.0)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def _hat_weights(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The load kernel (2n,) (hat function at the fine samples around a texel) and the mass stencil (3,)
    (sum over one axis' samples of the products of two neighbouring hats) of the midpoint rule."""
    o = quadrature_offsets(n)
    hat = np.concatenate([o, 1.0 - o])  # fine samples of the cell before a texel, then of the cell after it
    mass = np.array([(o * (1 - o)).sum(), (o * o + (1 - o) * (1 - o)).sum(), (o * (1 - o)).sum()])
    return torch.tensor(hat, dtype=torch.float32), torch.tensor(mass, dtype=torch.float32)


def quadrature_load(fine: torch.Tensor, n: int) -> torch.Tensor:
    """sum_q hat_j(q) f(q) per texel: fine (rows, (w+1) n, C) of fine rows [r n, (r+R+1) n) -> (R, w, C)."""
    hat, _ = _hat_weights(n)
    kernel = torch.outer(hat, hat).to(fine)[None, None]
    x = fine.permute(2, 0, 1).unsqueeze(1)  # (C, 1, rows, cols)
    return F.conv2d(x, kernel, stride=n)[:, 0].permute(1, 2, 0)


def _apply_mass(x: torch.Tensor, n: int) -> torch.Tensor:
    """sum_q hat_i(q) hat_j(q) x_j over the fine grid: a separable 3-tap stencil per axis (zero beyond the
    block), as shifted adds (a 3 x 3 convolution of 4 single-channel planes is far slower on the CPU)."""
    _, mass = _hat_weights(n)
    side, middle = float(mass[0]), float(mass[1])

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        out = t * middle
        size = t.shape[dim]
        if size > 1:
            out.narrow(dim, 1, size - 1).add_(t.narrow(dim, 0, size - 1), alpha=side)
            out.narrow(dim, 0, size - 1).add_(t.narrow(dim, 1, size - 1), alpha=side)
        return out

    return along(along(x, 0), 1)


def cell_points(points: torch.Tensor, rows: tuple[int, int], n: int) -> torch.Tensor:
    """Texel-centre points (h, w, 2) (e.g. their frame points) interpolated to the cell_samples of fine rows
    [k0, k1) -> (k1-k0, (w+1) n, 2): bilinear between texel centres, extrapolated linearly by half a texel
    beyond the block's outer ones (the map they sample is smooth at that scale)."""
    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        size = t.shape[dim]
        first, last = t.narrow(dim, 0, 1), t.narrow(dim, size - 1, 1)
        if size > 1:
            before = 2 * first - t.narrow(dim, 1, 1)
            after = 2 * last - t.narrow(dim, size - 2, 1)
        else:
            before, after = first, last
        return torch.cat([before, t, after], dim=dim)

    def along(t: torch.Tensor, dim: int, k0: int, k1: int) -> torch.Tensor:
        # fine sample k lies at padded index (k + 0.5) / n: between padded entries j and j + 1
        pos = (torch.arange(k0, k1, dtype=torch.float32, device=t.device) + 0.5) / n
        j = pos.floor().long()
        f = (pos - j).to(t.dtype)
        shape = [1] * t.dim()
        shape[dim] = -1
        return t.index_select(dim, j) * (1 - f).view(shape) + t.index_select(dim, j + 1) * f.view(shape)

    h, w = points.shape[:2]
    k0, k1 = rows
    padded = pad(pad(points, 0), 1)
    return along(along(padded, 0, k0, k1), 1, 0, (w + 1) * n)


def fit_texels(start: torch.Tensor, lookups: TexelLookups, weights: torch.Tensor, targets: torch.Tensor,
               load: torch.Tensor, n: int, area: float, iters: int, free: torch.Tensor | None = None) -> torch.Tensor:
    """Texels (h, w, C) minimising  area * sum_q |bilinear(x)(q) - f(q)|^2 + sum_p w_p |gather_p(x) - t_p|^2.

    q runs over the fine grid of cell_samples (n per cell and axis; `load` = quadrature_load of f there), p
    over the lookups (weights (P,), targets (P, C)). Conjugate gradients on the normal equations, per channel,
    from `start`, `iters` steps, changing only the texels where `free` (h, w, C or broadcastable) is set; not
    clamped. fit_texels_reference is the same problem solved densely.
    """
    w = weights[:, None]
    keep = torch.ones_like(start) if free is None else free.to(start.dtype).expand_as(start)

    def normal(x: torch.Tensor) -> torch.Tensor:
        return keep * (area * _apply_mass(x, n) + lookups.scatter(w * lookups.gather(x)))

    # Jacobi preconditioner: the normal matrix's diagonal (the centres weigh on a few texels each, very unevenly)
    _, mass = _hat_weights(n)
    diag = area * float(mass[1]) ** 2 + TexelLookups(lookups.index, lookups.weight.square(), lookups.size).scatter(w)
    inv_diag = keep / diag.clamp_min(1e-30)
    x = start.clone()
    r = keep * (area * load + lookups.scatter(w * targets)) - normal(x)
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum(dim=(0, 1))
    for _ in range(iters):
        q = normal(p)
        step = rz / (p * q).sum(dim=(0, 1)).clamp_min(1e-30)
        x.add_(step * p)
        r.sub_(step * q)
        z = inv_diag * r
        rz_next = (r * z).sum(dim=(0, 1))
        p = z + (rz_next / rz.clamp_min(1e-30)) * p
        rz = rz_next
    return x


def fit_premultiplied(start: torch.Tensor, lookups: TexelLookups, weights: torch.Tensor, targets: torch.Tensor,
                      load: torch.Tensor, n: int, area: float, iters: int, free: torch.Tensor) -> torch.Tensor:
    """fit_texels for premultiplied RGBA, kept valid (clamp_premultiplied) by one active-set round: the texels
    the first solution pushes out of range are clamped and held there, and the others are solved again, so the
    clamping does not undo the fit around them (e.g. at an opaque image's edge). Texels outside `free` (h, w, 1)
    keep `start`."""
    raw = fit_texels(start, lookups, weights, targets, load, n, area, iters, free)
    valid = clamp_premultiplied(raw)
    held = free & (valid == raw)
    return clamp_premultiplied(fit_texels(valid, lookups, weights, targets, load, n, area, iters, held))


def fit_texels_reference(points: np.ndarray, weights: np.ndarray, targets: np.ndarray, fine: np.ndarray, n: int,
                         area: float, size: tuple[int, int]) -> np.ndarray:
    """fit_texels' problem solved exactly in float64 with dense matrices (for tests on small blocks).

    points (P, 2) texel index coords, weights (P,), targets (P, C); fine ((h+1) n, (w+1) n, C) the
    continuous target at cell_samples. Returns the minimiser (h, w, C).
    """
    h, w = size

    def bilinear_rows(pts: np.ndarray) -> np.ndarray:
        rows = np.zeros((len(pts), h * w))
        for i, (x, y) in enumerate(pts):
            c0, r0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - c0, y - r0
            for dr, dc, wt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                               (1, 1, fx * fy)):
                if 0 <= r0 + dr < h and 0 <= c0 + dc < w:
                    rows[i, (r0 + dr) * w + c0 + dc] += wt
        return rows

    quad = bilinear_rows(cell_samples((0, (h + 1) * n), w, n).reshape(-1, 2).double().numpy())
    look = bilinear_rows(np.asarray(points, np.float64))
    f = np.asarray(fine, np.float64).reshape(len(quad), -1)
    lhs = area * quad.T @ quad + look.T @ (np.asarray(weights, np.float64)[:, None] * look)
    rhs = area * quad.T @ f + look.T @ (np.asarray(weights, np.float64)[:, None] * np.asarray(targets, np.float64))
    return np.linalg.solve(lhs, rhs).reshape(h, w, -1)


def clamp_premultiplied(x: torch.Tensor) -> torch.Tensor:
    """(..., 4) premultiplied RGBA -> the nearest valid one: alpha in [0, 1], colour in [0, alpha]."""
    alpha = x[..., 3:].clamp(0.0, 1.0)
    return torch.cat([torch.minimum(x[..., :3].clamp_min(0.0), alpha), alpha], dim=-1)


def refine_inverse(points: torch.Tensor, target_uv: torch.Tensor, uv_field: torch.Tensor,
                   origin: tuple[int, int], iters: int = 2, max_shift: float = 1.0) -> torch.Tensor:
    """Frame points (..., 2) of B moved so the frame's own uv field maps them onto target_uv (..., 2).

    The compositor places a texel where the baked uv field (T, read at pixel centres) says, while B (the
    inverse map, a coarse grid) only approximates T's inverse. Newton steps on T, bilinear in uv_field (2, h, w)
    (the field's crop whose first pixel is frame pixel `origin`), make the two agree. A point keeps B's position
    where T does not bring it closer to target_uv within max_shift frame pixels (occluders, unknown B).
    """
    _, fh, fw = uv_field.shape
    field = uv_field.unsqueeze(0)
    size = points.new_tensor([fw, fh])
    offset = points.new_tensor(origin, dtype=points.dtype)

    def t_of(p: torch.Tensor) -> torch.Tensor:
        grid = ((p - offset) / size * 2.0 - 1.0).reshape(1, -1, 1, 2)
        out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, :, 0].T.reshape(p.shape)

    def sq(v: torch.Tensor) -> torch.Tensor:
        return (v * v).sum(dim=-1, keepdim=True)

    known = torch.isfinite(points).all(dim=-1, keepdim=True)
    origin_xy = torch.nan_to_num(points, nan=0.0)
    p = best = origin_xy
    res = target_uv - t_of(p)
    err = sq(res)
    dx, dy = p.new_tensor([0.5, 0.0]), p.new_tensor([0.0, 0.5])
    for _ in range(iters):
        jx, jy = t_of(p + dx) - t_of(p - dx), t_of(p + dy) - t_of(p - dy)  # d uv per frame pixel
        a, b, c, d = jx[..., 0], jy[..., 0], jx[..., 1], jy[..., 1]
        det = a * d - b * c
        step = torch.stack([d * res[..., 0] - b * res[..., 1], a * res[..., 1] - c * res[..., 0]], dim=-1)
        p = p + torch.where(det.abs()[..., None] > 1e-12, step / det[..., None], torch.zeros_like(step))
        res = target_uv - t_of(p)
        new_err = sq(res)
        better = (new_err < err) & (sq(p - origin_xy) <= max_shift * max_shift)
        best = torch.where(better, p, best)
        err = torch.where(better, new_err, err)
    return torch.where(known, best, points)


def premultiply(rgba_u8: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """(h, w, 4) uint8 straight alpha (host array or tensor) -> (4, h, w) float32 premultiplied in [0, 1]."""
    if isinstance(rgba_u8, torch.Tensor):
        t = rgba_u8.to(device) if device is not None else rgba_u8
    else:
        t = torch.from_numpy(np.array(rgba_u8, dtype=np.uint8)).to(device)
    t = t.permute(2, 0, 1).to(torch.float32) / 255.0
    return torch.cat([t[:3] * t[3:4], t[3:4]], dim=0).contiguous()


def shrink_image(rgba: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop rgba (h, w, 4) uint8 to box (x0, y0, x1, y1) and area-filter it to size (w', h'), premultiplied so
    transparent pixels lend no colour; a crop alone copies pixels exactly."""
    x0, y0, x1, y1 = box
    crop = rgba[y0:y1, x0:x1]
    if size == (x1 - x0, y1 - y0):
        return np.array(crop)  # a copy: the decoded image may be a shared, read-only cache entry
    img = Image.fromarray(np.ascontiguousarray(crop), "RGBA").convert("RGBa")
    return np.asarray(img.resize(size, Image.Resampling.BOX).convert("RGBA"), dtype=np.uint8).copy()


def intersect(a: Rect, b: Rect) -> Rect | None:
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def rotation_matrix(degrees: float) -> np.ndarray:
    """Counter-clockwise on screen (y points down): maps local (x, y) to screen offsets."""
    th = np.deg2rad(degrees)
    c, s = np.cos(th), np.sin(th)
    return np.array([[c, s], [-s, c]])
