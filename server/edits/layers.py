"""Atlas-space edit layers on the device, updated incrementally over dirty rectangles.

State (see docs/DESIGN.md, "Editing and compositing"):

* the paint layer E, one premultiplied RGBA layer ``(alpha * rgb, alpha)`` of every texture and stroke in op
  order, over transparent (not over the atlas A): the compositor lays it over the source pixels. It is stored
  as albedo: a frame-space op made on frame N is divided by frame N's illumination at the frame point each
  texel comes from, so it comes back on frame N exactly as made and is re-lit on the others. An erase stroke
  scales the paint beneath by ``1 - alpha_erase``;
* the adjustments, all affine in RGB, folded into one per-texel 3x4 colour transform K (the op's weight folded
  in, composed in op order), stored as ``K - [I | 0]`` so that texels no adjustment touches hold exact zeros
  (bilinear sampling of zeros is exactly zero, so untouched pixels stay bit-exact). Allocated only while an
  adjustment is live.

A new paint op on top is blended straight into E over its own rectangle; anything else (delete, update, undo,
visibility) re-composites the ops overlapping the affected rectangle, in order.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.server.edits.adjust import adjustment_affine, is_identity
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
# (64 MB of fp32): rebuilding K over a rectangle then needs no polygon coverage again.
WEIGHT_CACHE_TEXELS = 16 * 1024 * 1024
# Illumination below this is not trusted when dividing an edit by it (deep shadow, or a bad fit).
MIN_LIGHT = 0.05
ADJUST_CHANNELS = 12  # K as 3 rows of (r, g, b, offset)


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
        s = self.base.shape[0]
        # E in the compositor's layout; `paint` is an (S, S, 4) view of the same memory for the rasterisers.
        self.layer = torch.zeros((1, 4, s, s), device=device, dtype=texture_dtype)
        self.paint = self.layer[0].permute(1, 2, 0)
        self.adjust: torch.Tensor | None = None  # (1, 12, S, S) K - [I | 0] while an adjustment is live
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

    def _frame_fields(self, frame: int) -> dict[str, torch.Tensor]:
        """What a frame-space paint op needs to find its texels' frame points and that frame's light."""
        bundle = self.geom.bundle
        inv_map = torch.from_numpy(np.ascontiguousarray(bundle.inverse_map[frame]))
        light = torch.from_numpy(np.ascontiguousarray(bundle.illumination[frame].astype(np.float32)))
        return {"inverse": inv_map.permute(2, 0, 1).unsqueeze(0).to(self.device),
                "light": light.permute(2, 0, 1).unsqueeze(0).to(self.device)}

    def _prepare_stroke(self, op: dict[str, Any]) -> AtlasOp:
        pts = np.asarray(op["points"], dtype=np.float64)
        width = float(op.get("width", DEFAULT_STROKE_WIDTH))
        color = op.get("color", DEFAULT_COLOR)
        extra: dict[str, Any] = {"rgb": self._tensor(np.asarray(color[:3]))}
        if op.get("space", "frame") == "atlas":
            atlas_pts = pts
        else:
            # One lookup for the polyline and the 4 scale probes (the per-call cost dominates a stroke's prep).
            dense = densify(pts, DENSIFY_FRAME_PX)
            mapped = self.geom.frame_to_atlas(int(op["frame"]), np.concatenate([dense, scale_probes(pts.mean(axis=0))]))
            atlas_pts = mapped[:-4]
            width *= scale_from_probes(mapped[-4:])
            if op.get("mode", "paint") != "erase":  # an erase has no colour to divide
                extra.update(self._frame_fields(int(op["frame"])))
                # Where B is unknown the stroke's own frame points stand in: their mean light.
                extra["light_fallback"] = self._light_at(extra["light"], self._tensor(dense)).mean(dim=0)
        rect = self.geom.rect_around(atlas_pts, width / 2.0)
        return AtlasOp("paint", rect, op, points=self._tensor(atlas_pts), width=width, extra=extra)

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
            # A texel's square projected on the image axes, in image pixels (anti-aliases the image's edge).
            footprint = tuple(self.geom.texel_px * np.abs(inv).sum(axis=1) * [w, h])
            return AtlasOp("paint", rect, op, image=image,
                           extra={"centre": self._tensor(centre), "inv": self._tensor(inv), "footprint": footprint})
        x, y, rw, rh = op["rect"]
        outline = np.array([[x, y], [x + rw, y], [x + rw, y + rh], [x, y + rh]], dtype=np.float64)
        atlas_outline = self._to_atlas(op, outline, closed=True)
        rect = self.geom.rect_around(atlas_outline, 1.0)
        extra: dict[str, Any] = self._frame_fields(int(op["frame"]))
        # A texel whose frame point is unknown samples nothing of the image, so any light will do there.
        extra["light_fallback"] = torch.ones(3, device=self.device)
        # A texel's size in image pixels, through T's local scale at the rectangle's centre.
        frame_px = self.geom.texel_px / self.geom.local_scale(int(op["frame"]), np.array([x + rw / 2, y + rh / 2]))
        extra["footprint"] = (frame_px * w / rw, frame_px * h / rh)
        return AtlasOp("paint", rect, op, image=image, extra=extra)

    def _prepare_adjustment(self, op: dict[str, Any]) -> AtlasOp:
        pts = np.asarray(op["points"], dtype=np.float64)
        region = op.get("region", "polygon")
        atlas_pts = self._to_atlas(op, pts, closed=region == "polygon")
        width_frame = float(op.get("width", 0.0 if region == "polygon" else DEFAULT_STROKE_WIDTH))
        width = self._width_to_atlas(op, width_frame, pts.mean(axis=0)) if width_frame else 0.0
        rect = self.geom.rect_around(atlas_pts, width / 2.0 + 1.0)
        if is_identity(op):
            rect = None  # nothing to change anywhere
        matrix, offset = adjustment_affine(op)
        return AtlasOp("adjust", rect, op, points=self._tensor(atlas_pts), width=width,
                       extra={"matrix": matrix.to(self.device), "offset": offset.to(self.device)})

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        """Host array -> float32 tensor on the device, without waiting for the GPU (pinned, non-blocking)."""
        host = torch.from_numpy(np.array(arr, dtype=np.float32))
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _centres_of(self, rect: Rect) -> torch.Tensor:
        return self._view(self._centres, rect)

    # ---- frame-space ops: frame points and their light ------------------------------------------------------
    def _light_at(self, light: torch.Tensor, frame_xy: torch.Tensor) -> torch.Tensor:
        """Illumination (1, 3, h, w) at frame points (..., 2) -> (..., 3), clamped to >= MIN_LIGHT.

        grid_sample(align_corners=False) over the whole frame is the rule the compositor upsamples the light
        with (F.interpolate, align_corners=False): frame point x maps to source index x * w / W - 0.5 in both.
        """
        bundle = self.geom.bundle
        size = frame_xy.new_tensor([bundle.width, bundle.height])
        grid = (frame_xy.reshape(1, -1, 1, 2) / size) * 2.0 - 1.0
        out = F.grid_sample(light, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, :, 0].T.reshape(*frame_xy.shape[:-1], 3).clamp_min(MIN_LIGHT)

    def _frame_points(self, aop: AtlasOp, sub: Rect) -> torch.Tensor:
        """B: the op's frame points of the texel centres of sub (h, w, 2); NaN where unknown."""
        uv = self.geom.texel_uv(sub, self.device)
        frame_xy = F.grid_sample(aop.extra["inverse"], uv.unsqueeze(0), mode="bilinear", padding_mode="border",
                                 align_corners=False)[0]
        return frame_xy.permute(1, 2, 0)

    def _light_of_texels(self, aop: AtlasOp, frame_xy: torch.Tensor) -> torch.Tensor:
        """The op's frame light at each texel's frame point (h, w, 3); its fallback where B is unknown."""
        known = torch.isfinite(frame_xy).all(dim=-1, keepdim=True)
        light = self._light_at(aop.extra["light"], torch.nan_to_num(frame_xy, nan=0.0))
        return torch.where(known, light, aop.extra["light_fallback"])

    # ---- rasterisation -----------------------------------------------------------------------------------
    def _paint_into(self, target: torch.Tensor, aop: AtlasOp, sub: Rect) -> None:
        """Alpha-over one paint op into target, the (h, w, 4) premultiplied view of E over `sub`."""
        op = aop.op
        centres = self._centres_of(sub)
        opacity = float(op.get("opacity", 1.0))
        if op["type"] == "stroke":
            assert aop.points is not None
            cov = brush_coverage(centres, aop.points, aop.width, float(op.get("hardness", DEFAULT_HARDNESS)),
                                 self.geom.texel_px)
            color = op.get("color", DEFAULT_COLOR)
            alpha = (cov * (opacity * float(color[3]))).unsqueeze(-1)
            target.mul_(1.0 - alpha)
            if op.get("mode", "paint") == "erase":
                return  # erase only removes what lies beneath
            rgb = aop.extra["rgb"]
            if "light" in aop.extra:
                rgb = rgb / self._light_of_texels(aop, self._frame_points(aop, sub))
            target[..., :3].add_(alpha * rgb)
            target[..., 3:].add_(alpha)
            return
        assert aop.image is not None
        if "inv" in aop.extra:
            coords = (centres - aop.extra["centre"]) @ aop.extra["inv"].T + 0.5
            src = sample_image(aop.image, coords, aop.extra["footprint"]) * opacity
        else:
            frame_xy = self._frame_points(aop, sub)
            x, y, rw, rh = op["rect"]
            coords = (frame_xy - frame_xy.new_tensor([x, y])) / frame_xy.new_tensor([rw, rh])
            coords = torch.nan_to_num(coords, nan=-10.0)  # unknown B: outside the image
            src = sample_image(aop.image, coords, aop.extra["footprint"]) * opacity
            src[..., :3] /= self._light_of_texels(aop, frame_xy)
        target.mul_(1.0 - src[..., 3:4]).add_(src)

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

    @staticmethod
    def _view(t: torch.Tensor, rect: Rect) -> torch.Tensor:
        r0, r1, c0, c1 = rect
        return t[r0:r1, c0:c1]

    def paint_on_top(self, aop: AtlasOp) -> None:
        """A new paint op above every other paint op: alpha-over it into E over its rectangle."""
        if aop.rect is None:
            return
        self._paint_into(self._view(self.paint, aop.rect), aop, aop.rect)
        self.version += 1

    def rebuild(self, rect: Rect | None, paints: list[AtlasOp], adjustments: list[AtlasOp]) -> None:
        """Re-composite every live op overlapping rect, in order: the paint layer, then K."""
        self.rebuild_paint(rect, paints)
        self.rebuild_adjust(rect, adjustments)

    def rebuild_paint(self, rect: Rect | None, paints: list[AtlasOp]) -> None:
        """E over rect from transparent, every live paint op overlapping it in order."""
        if rect is None:
            return
        self._view(self.paint, rect).zero_()
        for aop in paints:
            sub = intersect(aop.rect, rect) if aop.rect else None
            if sub:
                self._paint_into(self._view(self.paint, sub), aop, sub)
        self.version += 1

    def rebuild_adjust(self, rect: Rect | None, adjustments: list[AtlasOp]) -> None:
        """K over rect from the live adjustments in op order; K is dropped when none is left."""
        placed = [a for a in adjustments if a.rect is not None]
        if not placed:
            if self.adjust is not None:
                self.adjust = None
                self.version += 1
            return
        if self.adjust is None:
            s = self.layer.shape[-1]
            self.adjust = torch.zeros((1, ADJUST_CHANNELS, s, s), device=self.device, dtype=self.texture_dtype)
            # A fresh K holds nothing yet: every live adjustment's rectangle has to be filled, not just rect.
            for a in placed:
                rect = union(rect, a.rect)
        if rect is None:
            return
        r0, r1, c0, c1 = rect
        eye = torch.eye(3, device=self.device)
        matrix = eye.expand(r1 - r0, c1 - c0, 3, 3).clone()
        offset = torch.zeros((r1 - r0, c1 - c0, 3), device=self.device)
        for aop in placed:
            sub = intersect(aop.rect, rect)
            if sub is None:
                continue
            w = self._adjust_weight(aop, sub).unsqueeze(-1)  # (h, w, 1, 1)
            # x -> (1 - w) x + w (M_i x + b_i): the op's weight folded into its own affine step.
            step = eye + w * (aop.extra["matrix"] - eye)
            local = (sub[0] - r0, sub[1] - r0, sub[2] - c0, sub[3] - c0)
            m_view, b_view = self._view(matrix, local), self._view(offset, local)
            m_view.copy_(step @ m_view)
            b_view.copy_((step @ b_view.unsqueeze(-1)).squeeze(-1) + w[..., 0] * aop.extra["offset"])
        delta = torch.cat([matrix - eye, offset.unsqueeze(-1)], dim=-1)  # (h, w, 3, 4): K - [I | 0]
        self.adjust[0, :, r0:r1, c0:c1] = delta.reshape(r1 - r0, c1 - c0, ADJUST_CHANNELS).permute(2, 0, 1)
        self.version += 1

    # ---- read-outs ---------------------------------------------------------------------------------------
    def over_atlas(self) -> torch.Tensor:
        """E over A, (S, S, 3) in [0, 1] units (albedo; may exceed 1 where an edit is brighter than its light)."""
        return self.paint[..., :3] + (1.0 - self.paint[..., 3:]) * self.base

    def atlas_view(self) -> torch.Tensor:
        """What the client's atlas view shows: E over A with the adjustments applied, (S, S, 3) in [0, 1]."""
        over = self.over_atlas()
        if self.adjust is None:
            return over.clamp(0.0, 1.0)
        s = over.shape[0]
        k = self.adjust[0].permute(1, 2, 0).reshape(s, s, 3, 4)
        change = (k[..., :3] @ over.unsqueeze(-1)).squeeze(-1) + k[..., 3]
        return (over + change).clamp(0.0, 1.0)

    def reconstruction_texture(self) -> torch.Tensor:
        """(1, 4, S, S): E over A as an opaque layer, so the layers kernel shows l * (E over A)(uv) where m = 1."""
        opaque = torch.ones_like(self.layer[:, 3:])
        return torch.cat([self.over_atlas().permute(2, 0, 1).unsqueeze(0).to(self.texture_dtype), opaque], 1)

    def adjust_transform(self) -> torch.Tensor | None:
        """K as (S, S, 3, 4) (identity [I | 0] where no adjustment applies), or None when none is live."""
        if self.adjust is None:
            return None
        s = self.adjust.shape[-1]
        k = self.adjust[0].permute(1, 2, 0).reshape(s, s, 3, 4).clone()
        k[..., :3] += torch.eye(3, device=k.device, dtype=k.dtype)
        return k
