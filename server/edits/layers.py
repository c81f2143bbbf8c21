"""Atlas-space edit layers on the device, updated incrementally over dirty rectangles.

State: the base atlas A, the paint result E_paint (textures and strokes over A in op order; an erase blends
back toward A, which is exactly "remove the paint beneath"), and the final E = adjustments(E_paint) with its
premultiplied delta D = E - A in the compositor's texture layout. A new paint op on top is blended straight
into E_paint over its own rectangle; anything else (delete, update, undo, visibility) re-composites the ops
overlapping the affected rectangle from A, in order.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from vatlas.server.edits.adjust import apply_adjustment, is_identity
from vatlas.server.edits.ops import decode_image
from vatlas.server.edits.raster import (
    DENSIFY_FRAME_PX,
    AtlasGeometry,
    Rect,
    brush_coverage,
    densify,
    polygon_coverage,
    premultiply,
    rotation_matrix,
    sample_image,
    scale_from_probes,
    scale_probes,
)

DEFAULT_STROKE_WIDTH = 8.0
DEFAULT_HARDNESS = 0.8
DEFAULT_COLOR = (1.0, 0.0, 0.0, 1.0)
# Adjustment weights (coverage x opacity) are cached per op over its rectangle, up to this many texels in all
# (64 MB of fp32): a stroke under an adjustment then re-applies it without recomputing the polygon coverage.
WEIGHT_CACHE_TEXELS = 16 * 1024 * 1024


@dataclass
class AtlasOp:
    """An object op made ready for rasterisation: geometry in atlas pixels, images on the device."""

    kind: str  # "paint" (stroke/texture) or "adjust"
    rect: Rect | None
    op: dict[str, Any]
    points: torch.Tensor | None = None  # atlas-pixel polyline/polygon
    width: float = 0.0  # atlas pixels
    image: torch.Tensor | None = None  # (4, h, w) premultiplied
    extra: dict[str, Any] = field(default_factory=dict)


def intersect(a: Rect, b: Rect) -> Rect | None:
    r0, r1, c0, c1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


class AtlasLayers:
    """The edit layers of one session; every method expects the engine's lock to be held."""

    def __init__(self, geometry: AtlasGeometry, atlas_u8: np.ndarray, device: torch.device,
                 texture_dtype: torch.dtype) -> None:
        self.geom = geometry
        self.device = device
        self.texture_dtype = texture_dtype
        self.base = torch.from_numpy(np.ascontiguousarray(atlas_u8)).to(device).to(torch.float32) / 255.0
        self.paint = self.base.clone()
        self.edited = self.base.clone()
        s = self.base.shape[0]
        self.delta = torch.zeros((1, 3, s, s), device=device, dtype=texture_dtype)
        self.version = 0
        # Atlas points of every texel centre: rectangles slice it instead of rebuilding a grid per op.
        self._centres = geometry.texel_centres((0, s, 0, s), device)
        self._weight_owners: weakref.WeakValueDictionary[int, AtlasOp] = weakref.WeakValueDictionary()

    # ---- preparation -------------------------------------------------------------------------------------
    def _to_atlas(self, op: dict[str, Any], pts: np.ndarray, *, closed: bool = False) -> np.ndarray:
        if op.get("space", "frame") == "atlas":
            return pts
        if closed and len(pts) > 1:
            pts = np.concatenate([pts, pts[:1]])
        dense = densify(pts, DENSIFY_FRAME_PX)
        mapped = self.geom.frame_to_atlas(int(op["frame"]), dense)
        return mapped[:-1] if closed and len(pts) > 1 else mapped

    def _width_to_atlas(self, op: dict[str, Any], width: float, at: np.ndarray) -> float:
        if op.get("space", "frame") == "atlas":
            return width
        return width * self.geom.local_scale(int(op["frame"]), at)

    def prepare(self, op: dict[str, Any]) -> AtlasOp:
        """Map a stroke, texture or adjustment into atlas space and find its texel rectangle."""
        kind = op["type"]
        if kind == "stroke":
            return self._prepare_stroke(op)
        if kind == "texture":
            return self._prepare_texture(op)
        if kind == "adjustment":
            return self._prepare_adjustment(op)
        raise ValueError(f"{kind} is not an atlas-layer op")

    def _prepare_stroke(self, op: dict[str, Any]) -> AtlasOp:
        pts = np.asarray(op["points"], dtype=np.float64)
        width = float(op.get("width", DEFAULT_STROKE_WIDTH))
        if op.get("space", "frame") == "atlas":
            atlas_pts = pts
        else:
            # One lookup for the polyline and the 4 scale probes (the per-call cost dominates a stroke's prep).
            dense = densify(pts, DENSIFY_FRAME_PX)
            mapped = self.geom.frame_to_atlas(int(op["frame"]), np.concatenate([dense, scale_probes(pts.mean(axis=0))]))
            atlas_pts = mapped[:-4]
            width *= scale_from_probes(mapped[-4:])
        rect = self.geom.rect_around(atlas_pts, width / 2.0)
        color = op.get("color", DEFAULT_COLOR)
        return AtlasOp("paint", rect, op, points=self._tensor(atlas_pts), width=width,
                       extra={"rgb": self._tensor(np.asarray(color[:3]))})

    def _prepare_texture(self, op: dict[str, Any]) -> AtlasOp:
        rgba = decode_image(op["image"], op_id=op.get("id", ""))
        image = premultiply(rgba, self.device)
        h, w = rgba.shape[:2]
        if op.get("space", "frame") == "atlas":
            scale = float(op.get("scale", 1.0))
            rot = rotation_matrix(float(op.get("rotation", 0.0)))
            size = np.array([w, h], dtype=np.float64) * scale
            corners = (np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * size) @ rot.T
            centre = np.asarray(op["position"], dtype=np.float64)
            rect = self.geom.rect_around(corners + centre, 1.0)
            # Atlas offset -> image [0,1] coords: inverse of (local - 0.5) * size rotated.
            inv = np.linalg.inv(rot * size[None, :])
            return AtlasOp("paint", rect, op, image=image,
                           extra={"centre": self._tensor(centre), "inv": self._tensor(inv)})
        x, y, rw, rh = op["rect"]
        outline = np.array([[x, y], [x + rw, y], [x + rw, y + rh], [x, y + rh]], dtype=np.float64)
        atlas_outline = self._to_atlas(op, outline, closed=True)
        rect = self.geom.rect_around(atlas_outline, 1.0)
        inv_map = torch.from_numpy(np.ascontiguousarray(self.geom.bundle.inverse_map[int(op["frame"])]))
        return AtlasOp("paint", rect, op, image=image,
                       extra={"inverse": inv_map.permute(2, 0, 1).unsqueeze(0).to(self.device)})

    def _prepare_adjustment(self, op: dict[str, Any]) -> AtlasOp:
        pts = np.asarray(op["points"], dtype=np.float64)
        region = op.get("region", "polygon")
        atlas_pts = self._to_atlas(op, pts, closed=region == "polygon")
        width_frame = float(op.get("width", 0.0 if region == "polygon" else DEFAULT_STROKE_WIDTH))
        width = self._width_to_atlas(op, width_frame, pts.mean(axis=0)) if width_frame else 0.0
        rect = self.geom.rect_around(atlas_pts, width / 2.0 + 1.0)
        if is_identity(op):
            rect = None  # nothing to change anywhere
        return AtlasOp("adjust", rect, op, points=self._tensor(atlas_pts), width=width)

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        """Host array -> float32 tensor on the device, without waiting for the GPU (pinned, non-blocking)."""
        host = torch.from_numpy(np.array(arr, dtype=np.float32))
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _centres_of(self, rect: Rect) -> torch.Tensor:
        return self._view(self._centres, rect)

    # ---- rasterisation -----------------------------------------------------------------------------------
    def _paint_into(self, target: torch.Tensor, base: torch.Tensor, aop: AtlasOp, sub: Rect) -> None:
        """Blend one paint op into target (the E_paint view of `sub`); base is A over `sub`."""
        op = aop.op
        centres = self._centres_of(sub)
        opacity = float(op.get("opacity", 1.0))
        if op["type"] == "stroke":
            assert aop.points is not None
            cov = brush_coverage(centres, aop.points, aop.width, float(op.get("hardness", DEFAULT_HARDNESS)),
                                 self.geom.texel_px)
            color = op.get("color", DEFAULT_COLOR)
            alpha = (cov * (opacity * float(color[3]))).unsqueeze(-1)
            if op.get("mode", "paint") == "erase":
                target.add_(alpha * (base - target))
            else:
                target.mul_(1.0 - alpha).add_(alpha * aop.extra["rgb"])
            return
        assert aop.image is not None
        if "inv" in aop.extra:
            coords = (centres - aop.extra["centre"]) @ aop.extra["inv"].T + 0.5
        else:
            uv = self.geom.texel_uv(sub, self.device)
            frame_xy = torch.nn.functional.grid_sample(aop.extra["inverse"], uv.unsqueeze(0), mode="bilinear",
                                                       padding_mode="border", align_corners=False)[0]
            frame_xy = frame_xy.permute(1, 2, 0)
            x, y, rw, rh = op["rect"]
            coords = (frame_xy - frame_xy.new_tensor([x, y])) / frame_xy.new_tensor([rw, rh])
            coords = torch.nan_to_num(coords, nan=-10.0)  # unknown B: outside the image
        src = sample_image(aop.image, coords) * opacity
        target.mul_(1.0 - src[..., 3:4]).add_(src[..., :3])

    def _adjust_weight(self, aop: AtlasOp, sub: Rect) -> torch.Tensor:
        """Coverage x opacity of an adjustment over sub (h, w, 1); cached over its whole rect when it fits."""
        cached = aop.extra.get("weight")
        if cached is None and aop.rect is not None:
            r0, r1, c0, c1 = aop.rect
            # Ops dropped by updates free their caches with them; deleted ones stay (they can be restored).
            in_use = sum(o.extra["weight"].numel() for o in self._weight_owners.values())
            if in_use + (r1 - r0) * (c1 - c0) <= WEIGHT_CACHE_TEXELS:
                cached = aop.extra["weight"] = self._coverage_weight(aop, aop.rect)
                self._weight_owners[id(aop)] = aop
        if cached is None:
            return self._coverage_weight(aop, sub)
        r0, r1, c0, c1 = sub
        return cached[r0 - aop.rect[0]:r1 - aop.rect[0], c0 - aop.rect[2]:c1 - aop.rect[2]]

    def _coverage_weight(self, aop: AtlasOp, rect: Rect) -> torch.Tensor:
        op = aop.op
        assert aop.points is not None
        centres = self._centres_of(rect)
        hardness = float(op.get("hardness", DEFAULT_HARDNESS))
        if op.get("region", "polygon") == "path":
            cov = brush_coverage(centres, aop.points, aop.width, hardness, self.geom.texel_px)
        else:
            cov = polygon_coverage(centres, aop.points, (1.0 - hardness) * aop.width, self.geom.texel_px)
        return (cov * float(op.get("opacity", 1.0))).unsqueeze(-1)

    def _adjust_into(self, target: torch.Tensor, aop: AtlasOp, sub: Rect) -> None:
        weight = self._adjust_weight(aop, sub)
        target.add_(weight * (apply_adjustment(target, aop.op) - target))

    @staticmethod
    def _view(t: torch.Tensor, rect: Rect) -> torch.Tensor:
        r0, r1, c0, c1 = rect
        return t[r0:r1, c0:c1]

    def paint_on_top(self, aop: AtlasOp, adjustments: list[AtlasOp]) -> None:
        """A new paint op above every other paint op: blend it in, then refresh its rectangle."""
        if aop.rect is None:
            return
        self._paint_into(self._view(self.paint, aop.rect), self._view(self.base, aop.rect), aop, aop.rect)
        self.finalize(aop.rect, adjustments)

    def rebuild(self, rect: Rect | None, paints: list[AtlasOp], adjustments: list[AtlasOp]) -> None:
        """Re-composite every live paint op overlapping rect from A, in order, then the adjustments."""
        if rect is None:
            return
        view = self._view(self.paint, rect)
        view.copy_(self._view(self.base, rect))
        for aop in paints:
            sub = intersect(aop.rect, rect) if aop.rect else None
            if sub:
                self._paint_into(self._view(self.paint, sub), self._view(self.base, sub), aop, sub)
        self.finalize(rect, adjustments)

    def finalize(self, rect: Rect, adjustments: list[AtlasOp]) -> None:
        """E = adjustments(E_paint) and D = E - A over rect."""
        edited = self._view(self.edited, rect)
        edited.copy_(self._view(self.paint, rect))
        for aop in adjustments:
            sub = intersect(aop.rect, rect) if aop.rect else None
            if sub:
                self._adjust_into(self._view(self.edited, sub), aop, sub)
        r0, r1, c0, c1 = rect
        d = (edited - self._view(self.base, rect)).permute(2, 0, 1)
        self.delta[0, :, r0:r1, c0:c1] = d.to(self.texture_dtype)
        self.version += 1

    def edited_texture(self) -> torch.Tensor:
        """A_edit as a (1, 3, S, S) texture (for the reconstruct mode)."""
        return self.edited.permute(2, 0, 1).unsqueeze(0).to(self.texture_dtype).contiguous()
