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

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import decode_uv
from vatlas.server.edits.adjust import adjustment_affine, graded_image, is_identity
from vatlas.server.edits.ops import OpLimits
from vatlas.server.edits.raster import (
    DENSIFY_FRAME_PX,
    IMAGE_OVERSAMPLE,
    AtlasGeometry,
    Box,
    Rect,
    Segments,
    TexelLookups,
    brush_coverage,
    brush_reach,
    cell_points,
    clip_polygon,
    clip_polyline,
    densify_pieces,
    distance_work,
    fit_premultiplied,
    intersect,
    polygon_coverage,
    polygon_reach,
    polygon_work,
    premultiply,
    quadrature_load,
    refine_inverse,
    rotation_matrix,
    sample_image,
    scale_from_probes,
    scale_probes,
    shrink_image,
    union,
)
from vatlas.server.edits.roi_labels import regions_at
from vatlas.server.errors import CoreError

DEFAULT_STROKE_WIDTH = 8.0
DEFAULT_HARDNESS = 0.8
DEFAULT_COLOR = (1.0, 0.0, 0.0, 1.0)
# Adjustment weights (coverage x opacity) are cached per op over its rectangle, up to this many texels in all
# (64 MB of fp32): rebuilding K over a rectangle then needs no polygon coverage again.
WEIGHT_CACHE_TEXELS = 16 * 1024 * 1024
# Illumination below this is not trusted when dividing an edit by it (deep shadow, or a bad fit).
MIN_LIGHT = 0.05
ADJUST_CHANNELS = 12  # K as 3 rows of (r, g, b, offset)
# Frames whose inverse map and light stay on the device for frame-space ops (ops name their frame and look
# it up when drawn, so no op keeps a frame-sized copy of its own).
FRAME_FIELDS_CACHE = 8
# Fitting a frame-space paste (raster.fit_texels), on atlases of at most FIT_MAX_TEXEL_PX frame pixels per texel
# (coarser texels cannot follow an opaque edge: the fit rings inside it, and plain sampling is kept):
# * FIT_ITERS preconditioned CG steps (converged after about 4);
# * FIT_CENTRE_WEIGHT, how much frame N's pixel centres weigh against the paste as a continuous surface (1: a
#   centre counts as much as a pixel's area of the surface); full below EXACT_TEXEL_PX per texel, falling with
#   the texel's area above (coarser texels cannot honour neighbouring centres exactly, and weighing them then
#   only sharpens the paste on the other frames);
# * the surface's edge ramps over 1 frame pixel (what a warp of the pasted frame shows), widened to
#   EDGE_RAMP_TEXELS texels where texels are coarser (a sharper ramp than the texels can hold rings);
# * FIT_SAMPLES_PER_PX quadrature samples per frame pixel and axis (2..4 per cell between texel centres);
# * pixel centres up to FIT_REACH_PX outside the rectangle are fitted too (to transparent).
FIT_MAX_TEXEL_PX = 0.75
FIT_ITERS = 6
FIT_CENTRE_WEIGHT = 0.5
EXACT_TEXEL_PX = 0.5
EDGE_RAMP_TEXELS = 2.0
FIT_SAMPLES_PER_PX = 4.0
FIT_MIN_SAMPLES, FIT_MAX_SAMPLES = 2, 4
FIT_BLOCK_SAMPLES = 1 << 20  # quadrature samples evaluated at a time (bounds the temporaries)
FIT_REACH_PX = 1.0


def paste_corners(op: dict[str, Any]) -> np.ndarray:
    """A frame-space texture's corners (4, 2): its rect turned by `rotation` about the rect's centre."""
    x, y, w, h = (float(v) for v in op["rect"])
    rotation = float(op.get("rotation", 0.0))
    if not rotation:
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * [w, h]
    return local @ rotation_matrix(rotation).T + [x + w / 2.0, y + h / 2.0]


def paste_box(op: dict[str, Any]) -> tuple[float, float, float, float]:
    """The axis-aligned box [x, y, w, h] around a frame-space texture (its rect when it is not turned)."""
    if not float(op.get("rotation", 0.0)):
        x, y, w, h = (float(v) for v in op["rect"])
        return x, y, w, h
    corners = paste_corners(op)
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


@dataclass
class AtlasOp:
    """An object op made ready for rasterisation: geometry in atlas pixels, images on the device."""

    kind: str  # "paint" (stroke/texture) or "adjust"
    rect: Rect | None
    op: dict[str, Any]
    points: torch.Tensor | None = None  # atlas-pixel polyline/polygon (NaN rows between clipped pieces)
    width: float = 0.0  # atlas pixels
    image: torch.Tensor | None = None  # (h, w, 4) uint8 straight RGBA: the stored part of the image
    extra: dict[str, Any] = field(default_factory=dict)
    segs: Segments | None = None  # the segments points stands for (stroke, path, polygon edges)

    def nbytes(self) -> int:
        """Memory this op keeps (its caches of derived data aside)."""
        total = sum(t.numel() * t.element_size() for t in (self.points, self.image) if t is not None)
        total += 0 if self.segs is None else self.segs.device.numel() * 4 + self.segs.host.nbytes
        return total + sum(v.numel() * v.element_size() for k, v in self.extra.items()
                           if isinstance(v, torch.Tensor) and k != "weight")


def raster_budget(op_id: str, work: int, limits: OpLimits) -> None:
    """Refuse an op whose rasterisation would take more than limits.max_raster_work texel-segment pairs."""
    if work > limits.max_raster_work:
        raise CoreError("RESOURCE_EXHAUSTED", f"the op needs {work} texel-segment evaluations (limit "
                      f"{limits.max_raster_work}): use fewer points, a thinner brush or a smaller area", op_id)


class AtlasLayers:
    """The edit layers of one session; every method expects the engine's lock to be held."""

    def __init__(self, geometry: AtlasGeometry, atlas_u8: np.ndarray, device: torch.device,
                 texture_dtype: torch.dtype, limits: OpLimits | None = None) -> None:
        self.geom = geometry
        self.device = device
        self.limits = limits or OpLimits()
        self._fields: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
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
        self._regions: torch.Tensor | None = None  # each texel's ROI region (roi_labels), once an op names one

    # ---- preparation -------------------------------------------------------------------------------------
    # Every op's geometry is clipped to what can reach a texel before anything is densified or rasterised:
    # frame-space geometry to the frame (T clamps beyond it anyway), atlas-space geometry to the atlas. Then
    # the points per op are capped and the raster work is counted and refused above its budget.
    def _frame_box(self, margin: float) -> Box:
        b = self.geom.bundle
        return -margin, -margin, b.width + margin, b.height + margin

    def _atlas_box(self, margin: float) -> Box:
        ox, oy = self.geom.origin
        span = self.geom.bundle.atlas_span_px
        return ox - margin, oy - margin, ox + span + margin, oy + span + margin

    def _map_pieces(self, frame: int, pieces: list[np.ndarray], *extra: np.ndarray) -> list[np.ndarray]:
        """T of several point sets in one lookup (the per-call cost dominates a small op's preparation)."""
        sets = [*pieces, *extra]
        if not sets:
            return []
        mapped = self.geom.frame_to_atlas(frame, np.concatenate(sets))
        return np.split(mapped, np.cumsum([len(p) for p in sets])[:-1])

    def _path(self, op: dict[str, Any], width: float) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """A brush path -> (atlas pieces, the frame-space dense pieces, width in atlas pixels)."""
        pts = np.asarray(op["points"], dtype=np.float64)
        if op.get("space", "frame") == "atlas":
            pieces = clip_polyline(pts, self._atlas_box(width / 2.0 + 2.0 * self.geom.texel_px))
            return pieces, [], width
        frame = int(op["frame"])
        pieces = clip_polyline(pts, self._frame_box(width / 2.0 + 1.0))
        if not pieces:
            return [], [], width
        dense = densify_pieces(pieces, DENSIFY_FRAME_PX, self.limits.max_raster_points)
        *mapped, probes = self._map_pieces(frame, dense, scale_probes(np.concatenate(pieces).mean(axis=0)))
        return mapped, dense, width * scale_from_probes(probes)

    def _points_tensor(self, pieces: list[np.ndarray]) -> torch.Tensor:
        gap = np.full((1, 2), np.nan)
        rows = [r for i, p in enumerate(pieces) for r in ((gap, p) if i else (p,))]
        return self._tensor(np.concatenate(rows) if rows else np.zeros((0, 2)))

    def prepare(self, op: dict[str, Any]) -> AtlasOp:
        """Map a stroke, texture or adjustment into atlas space and find its texel rectangle.

        Raises CoreError(RESOURCE_EXHAUSTED) when drawing it would exceed the raster budget.
        """
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
        cached = self._fields.get(frame)
        if cached is not None:
            self._fields.move_to_end(frame)
            return cached
        bundle = self.geom.bundle
        inv_map = torch.from_numpy(np.ascontiguousarray(bundle.inverse_map[frame]))
        light = torch.from_numpy(np.ascontiguousarray(bundle.illumination[frame].astype(np.float32)))
        fields = {"inverse": inv_map.permute(2, 0, 1).unsqueeze(0).to(self.device),
                  "light": light.permute(2, 0, 1).unsqueeze(0).to(self.device)}
        self._fields[frame] = fields
        while len(self._fields) > FRAME_FIELDS_CACHE:
            self._fields.popitem(last=False)
        return fields

    def _prepare_stroke(self, op: dict[str, Any]) -> AtlasOp:
        color = op.get("color", DEFAULT_COLOR)
        extra: dict[str, Any] = {"rgb": self._tensor(np.asarray(color[:3]))}
        pieces, dense, width = self._path(op, float(op.get("width", DEFAULT_STROKE_WIDTH)))
        if op.get("space", "frame") != "atlas" and op.get("mode", "paint") != "erase":  # an erase has no colour
            frame = int(op["frame"])
            extra["frame"] = frame
            if dense:
                # Where B is unknown the stroke's own frame points stand in: their mean light.
                light = self._frame_fields(frame)["light"]
                extra["light_fallback"] = self._light_at(light, self._tensor(np.concatenate(dense))).mean(dim=0)
            else:
                extra["light_fallback"] = torch.ones(3, device=self.device)
        segs = Segments.of_pieces(pieces, self.device)
        rect = self.geom.rect_around(np.concatenate(pieces), width / 2.0) if pieces else None
        raster_budget(op.get("id", ""), distance_work(self.geom, rect, segs, brush_reach(width, self.geom.texel_px)),
                      self.limits)
        return AtlasOp("paint", rect, op, points=self._points_tensor(pieces), width=width, extra=extra, segs=segs)

    def _prepare_texture(self, op: dict[str, Any]) -> AtlasOp:
        rgba = graded_image(op)
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
            aop = AtlasOp("paint", rect, op, extra={"centre": self._tensor(centre), "inv": self._tensor(inv),
                                                    "footprint": footprint})
        else:
            x, y, rw, rh = op["rect"]
            frame = int(op["frame"])
            outline = clip_polygon(paste_corners(op), self._frame_box(1.0))
            ring = [np.concatenate([outline, outline[:1]])] if len(outline) else []
            dense = densify_pieces(ring, DENSIFY_FRAME_PX, self.limits.max_raster_points)
            mid = outline.mean(axis=0) if len(outline) else np.array([x + rw / 2, y + rh / 2])
            *mapped, probes = self._map_pieces(frame, dense, scale_probes(mid))
            rect = self.geom.rect_around(mapped[0], 1.0) if mapped else None
            # A texel's size in image pixels, through T's local scale in the middle of the rectangle's visible part.
            frame_px = self.geom.texel_px / scale_from_probes(probes)
            # A texel whose frame point is unknown samples nothing of the image, so any light will do there.
            aop = AtlasOp("paint", rect, op, extra={"frame": frame, "light_fallback": torch.ones(3, device=self.device),
                                                    "footprint": (frame_px * w / rw, frame_px * h / rh),
                                                    "texel_frame_px": frame_px})
        aop.extra["size"] = (w, h)
        self._store_image(aop, rgba)
        return aop

    def _store_image(self, aop: AtlasOp, rgba: np.ndarray) -> None:
        """Keep only the part of the image its texels can sample, at the resolution the atlas shows it
        (IMAGE_OVERSAMPLE image pixels a texel at most)."""
        h, w = rgba.shape[:2]
        box = (0, 0, w, h)
        if aop.rect is not None:
            coords, _ = self._image_coords(aop, aop.rect)
            # The texels sample_image gives any coverage (its edge rule), and so the image pixels they read.
            edge = torch.minimum(coords, 1.0 - coords) * coords.new_tensor([w, h])
            hit = (edge / coords.new_tensor(aop.extra["footprint"]).clamp_min(1e-6) + 0.5 > 0).all(dim=-1)
            if not bool(hit.any()):
                aop.rect = None  # no texel samples the image: nothing to draw, nothing to keep
            else:
                picked = coords[hit]
                lo = (picked.amin(dim=0).clamp(0, 1) * picked.new_tensor([w, h])).tolist()
                hi = (picked.amax(dim=0).clamp(0, 1) * picked.new_tensor([w, h])).tolist()
                # Bilinear lookups and the edge's anti-aliasing reach about a footprint (plus a pixel) beyond.
                fx, fy = aop.extra["footprint"]
                mx, my = fx + 2.0, fy + 2.0
                box = (max(int(math.floor(lo[0] - mx)), 0), max(int(math.floor(lo[1] - my)), 0),
                       min(int(math.ceil(hi[0] + mx)), w), min(int(math.ceil(hi[1] + my)), h))
        if aop.rect is None:
            box = (0, 0, 1, 1)
        bw, bh = box[2] - box[0], box[3] - box[1]
        fx, fy = aop.extra["footprint"]
        sw = min(bw, max(1, math.ceil(bw * IMAGE_OVERSAMPLE / max(fx, 1e-9))))
        sh = min(bh, max(1, math.ceil(bh * IMAGE_OVERSAMPLE / max(fy, 1e-9))))
        aop.extra["window"] = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
        aop.image = torch.from_numpy(shrink_image(rgba, box, (sw, sh))).to(self.device)

    def _prepare_adjustment(self, op: dict[str, Any]) -> AtlasOp:
        pts = np.asarray(op["points"], dtype=np.float64)
        region = op.get("region", "polygon")
        width_frame = float(op.get("width", 0.0 if region == "polygon" else DEFAULT_STROKE_WIDTH))
        hardness = float(op.get("hardness", DEFAULT_HARDNESS))
        texel = self.geom.texel_px
        atlas_space = op.get("space", "frame") == "atlas"
        if region == "path":
            pieces, _, width = self._path(op, width_frame)
            outline = np.concatenate(pieces) if pieces else np.zeros((0, 2))
            segs = Segments.of_pieces(pieces, self.device)
            points = self._points_tensor(pieces)
        else:
            if atlas_space:
                # Beyond this margin the polygon's coverage of any texel is exactly 0 or 1 whatever its edges there.
                width = width_frame
                outline = clip_polygon(pts, self._atlas_box(polygon_reach((1.0 - hardness) * width, texel) + texel))
            else:
                ring = clip_polygon(pts, self._frame_box(0.0))
                closed = [np.concatenate([ring, ring[:1]])] if len(ring) else []
                dense = densify_pieces(closed, DENSIFY_FRAME_PX, self.limits.max_raster_points)
                mapped = self._map_pieces(int(op["frame"]), dense)
                outline = mapped[0][:-1] if mapped else np.zeros((0, 2))
                width = self._width_to_atlas(op, width_frame, ring.mean(axis=0)) if width_frame and len(ring) else 0.0
            segs = Segments.of_pieces([np.concatenate([outline, outline[:1]])] if len(outline) else [], self.device)
            points = self._tensor(outline)
        rect = self.geom.rect_around(outline, width / 2.0 + 1.0) if len(outline) else None
        if is_identity(op):
            rect = None  # nothing to change anywhere
        if region == "path":
            work = distance_work(self.geom, rect, segs, brush_reach(width, texel))
        else:
            reach = polygon_reach((1.0 - hardness) * width, texel)
            work = distance_work(self.geom, rect, segs, reach) + polygon_work(rect, segs)
        raster_budget(op.get("id", ""), work, self.limits)
        matrix, offset = adjustment_affine(op)
        return AtlasOp("adjust", rect, op, points=points, width=width, segs=segs,
                       extra={"matrix": matrix.to(self.device), "offset": offset.to(self.device)})

    def _width_to_atlas(self, op: dict[str, Any], width: float, at: np.ndarray) -> float:
        return width * self.geom.local_scale(int(op["frame"]), at)

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
        return self._inverse_at(aop, self.geom.texel_uv(sub, self.device))

    def _inverse_at(self, aop: AtlasOp, uv: torch.Tensor) -> torch.Tensor:
        """B on the op's frame at uv points (h, w, 2) -> frame points (h, w, 2); NaN where unknown."""
        inverse = self._frame_fields(aop.extra["frame"])["inverse"]
        frame_xy = F.grid_sample(inverse, uv.unsqueeze(0), mode="bilinear", padding_mode="border",
                                 align_corners=False)[0]
        return frame_xy.permute(1, 2, 0)

    def _light_of_texels(self, aop: AtlasOp, frame_xy: torch.Tensor) -> torch.Tensor:
        """The op's frame light at each texel's frame point (h, w, 3); its fallback where B is unknown."""
        known = torch.isfinite(frame_xy).all(dim=-1, keepdim=True)
        light = self._light_at(self._frame_fields(aop.extra["frame"])["light"], torch.nan_to_num(frame_xy, nan=0.0))
        return torch.where(known, light, aop.extra["light_fallback"])

    def _image_coords(self, aop: AtlasOp, sub: Rect) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A texture's image [0, 1] coords at the texel centres of sub (h, w, 2), and their frame points (frame
        space only)."""
        if "inv" in aop.extra:
            return (self._centres_of(sub) - aop.extra["centre"]) @ aop.extra["inv"].T + 0.5, None
        frame_xy = self._frame_points(aop, sub)
        return self._paste_coords(aop, frame_xy), frame_xy  # unknown B: outside the image

    # ---- rasterisation -----------------------------------------------------------------------------------
    def _paint_into(self, target: torch.Tensor, aop: AtlasOp, sub: Rect) -> None:
        """Alpha-over one paint op into target, the (h, w, 4) premultiplied view of E over `sub`."""
        op = aop.op
        opacity = float(op.get("opacity", 1.0))
        region = self._region_weight(aop, sub)
        if op["type"] == "stroke":
            assert aop.segs is not None
            cov = brush_coverage(self.geom, sub, aop.segs, aop.width, float(op.get("hardness", DEFAULT_HARDNESS)),
                                 self.device)
            if region is not None:
                cov = cov * region
            color = op.get("color", DEFAULT_COLOR)
            alpha = (cov * (opacity * float(color[3]))).unsqueeze(-1)
            target.mul_(1.0 - alpha)
            if op.get("mode", "paint") == "erase":
                return  # erase only removes what lies beneath
            rgb = aop.extra["rgb"]
            if "frame" in aop.extra:
                rgb = rgb / self._light_of_texels(aop, self._frame_points(aop, sub))
            target[..., :3].add_(alpha * rgb)
            target[..., 3:].add_(alpha)
            return
        assert aop.image is not None
        if "frame" in aop.extra:
            src, frame_xy = self._frame_texture(aop, sub)
            src = src * opacity
            src[..., :3] /= self._light_of_texels(aop, frame_xy)
        else:
            coords, _ = self._image_coords(aop, sub)
            src = sample_image(premultiply(aop.image), coords, aop.extra["footprint"], aop.extra["size"],
                               aop.extra["window"]) * opacity
        if region is not None:
            src = src * region.unsqueeze(-1)
        target.mul_(1.0 - src[..., 3:4]).add_(src)

    # ---- frame-space textures: fitted so that frame N shows them as pasted ----------------------------------
    def _frame_texture(self, aop: AtlasOp, sub: Rect) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame-space texture's premultiplied texels over sub (frame N's colours, before the light is
        divided out) and their frame points (h, w, 2).

        Fitted over the op's whole rectangle, then cropped, so a partial rebuild gets the very same texels.
        """
        assert aop.rect is not None and aop.image is not None
        rect = aop.rect
        r0, r1, c0, c1 = rect
        image = premultiply(aop.image)
        fields = self._paste_fields(aop)
        uv = self.geom.texel_uv(rect, self.device)
        frame_xy = self._inverse_at(aop, uv)
        if fields is not None:
            frame_xy = refine_inverse(frame_xy, uv, fields["uv"], fields["origin"])
        texels = sample_image(image, self._paste_coords(aop, frame_xy), aop.extra["footprint"], aop.extra["size"],
                              aop.extra["window"])
        if fields is not None and FIT_ITERS > 0 and float(aop.extra["texel_frame_px"]) <= FIT_MAX_TEXEL_PX:
            texels = self._fit_texture(aop, image, texels, frame_xy, fields)
        s0, s1, t0, t1 = sub
        crop = (slice(s0 - r0, s1 - r0), slice(t0 - c0, t1 - c0))
        return texels[crop], frame_xy[crop]

    def _paste_coords(self, aop: AtlasOp, frame_xy: torch.Tensor) -> torch.Tensor:
        """Frame-N points (..., 2) -> the pasted image's [0, 1] coords; unknown points fall outside it."""
        x, y, rw, rh = aop.op["rect"]
        rotation = float(aop.op.get("rotation", 0.0))
        if rotation:  # turned about the rectangle's centre: back through the inverse rotation
            centre = frame_xy.new_tensor([x + rw / 2.0, y + rh / 2.0])
            inv = frame_xy.new_tensor(rotation_matrix(rotation).T)  # a rotation's inverse is its transpose
            coords = (frame_xy - centre) @ inv.T / frame_xy.new_tensor([rw, rh]) + 0.5
        else:
            coords = (frame_xy - frame_xy.new_tensor([x, y])) / frame_xy.new_tensor([rw, rh])
        return torch.nan_to_num(coords, nan=-10.0)

    def _paste_fields(self, aop: AtlasOp) -> dict[str, Any] | None:
        """Frame N's fields around the pasted rectangle, for fitting its texels: the pixels the fit constrains
        (centres within FIT_REACH_PX + 0.5 of the rectangle), their uv and visibility, and a wider uv crop that
        also holds the frame points of the op's texels. None when no pixel of the frame is near the rectangle."""
        b = self.geom.bundle
        frame = int(aop.extra["frame"])
        x, y, rw, rh = paste_box(aop.op)
        reach = FIT_REACH_PX + 0.5
        px0, py0 = max(math.ceil(x - reach - 0.5), 0), max(math.ceil(y - reach - 0.5), 0)
        px1, py1 = min(math.floor(x + rw + reach - 0.5) + 1, b.width), min(math.floor(y + rh + reach - 0.5) + 1, b.height)
        if px1 <= px0 or py1 <= py0:
            return None
        # The texels reach about 1 atlas pixel and 1.5 texels past the rectangle (rect_around): a few frame pixels.
        margin = 4 + math.ceil(2.0 * float(aop.extra["texel_frame_px"]))
        cx0, cy0 = max(px0 - margin, 0), max(py0 - margin, 0)
        cx1, cy1 = min(px1 + margin, b.width), min(py1 + margin, b.height)
        uv = torch.from_numpy(decode_uv(np.asarray(b.uv[frame, cy0:cy1, cx0:cx1]))).to(self.device)
        mask = torch.from_numpy(np.asarray(b.mask[frame, py0:py1, px0:px1], dtype=np.float32) / 255.0)
        return {"uv": uv.permute(2, 0, 1).contiguous(), "origin": (cx0, cy0), "pixels": (px0, py0, px1, py1),
                "pixel_uv": uv[py0 - cy0:py1 - cy0, px0 - cx0:px1 - cx0], "mask": mask.to(self.device)}

    def _fit_texture(self, aop: AtlasOp, image: torch.Tensor, start: torch.Tensor, texel_xy: torch.Tensor,
                     fields: dict[str, Any]) -> torch.Tensor:
        """raster.fit_texels for a frame-space texture: frame N's visible pixel centres read back the image as
        pasted there, and between them the texels follow the image as a continuous surface (bilinear in its
        pixels, its edge a ramp of 1 px or EDGE_RAMP_TEXELS texels: about what a warp of the pasted frame
        shows on the other frames)."""
        assert aop.rect is not None
        r0, r1, c0, c1 = aop.rect
        h, w = r1 - r0, c1 - c0
        s = self.geom.size
        x, y, rw, rh = paste_box(aop.op)
        iw, ih = aop.extra["size"]
        texel_px = float(aop.extra["texel_frame_px"])
        pw, ph = (float(v) for v in aop.op["rect"][2:])
        pixel = (iw / pw, ih / ph)  # one frame pixel, in image pixels: the 1 px edge ramp of the pasted frame
        ramp = max(1.0, EDGE_RAMP_TEXELS * texel_px)
        corner = start.new_tensor([c0, r0])

        def image_at(frame_xy: torch.Tensor, footprint: tuple[float, float] = pixel) -> torch.Tensor:
            return sample_image(image, self._paste_coords(aop, frame_xy), footprint, aop.extra["size"],
                                aop.extra["window"])

        # Frame N's pixel centres, read through the compositor's own uv.
        px0, py0, px1, py1 = fields["pixels"]
        ys = torch.arange(py0, py1, device=self.device, dtype=torch.float32) + 0.5
        xs = torch.arange(px0, px1, device=self.device, dtype=torch.float32) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([gx, gy], dim=-1)
        lookups = TexelLookups.at(((fields["pixel_uv"] + 1.0) / 2.0 * s - 0.5 - corner).reshape(-1, 2), (h, w))
        # Hidden pixels show nothing of the paste on frame N: only the visible ones constrain it there.
        weights = FIT_CENTRE_WEIGHT * min(1.0, (EXACT_TEXEL_PX / texel_px) ** 2) * fields["mask"]
        targets = image_at(centres).reshape(-1, 4)

        # The continuous term: the midpoint rule over the cells between texel centres, at frame points
        # interpolated from the texels' (refined) ones.
        n = int(min(FIT_MAX_SAMPLES, max(FIT_MIN_SAMPLES, math.ceil(FIT_SAMPLES_PER_PX * texel_px))))
        rows = max(1, FIT_BLOCK_SAMPLES // ((w + 1) * n * n) - 1)
        load = start.new_zeros(start.shape)
        for top in range(0, h, rows):
            bottom = min(top + rows, h)
            frame_xy = cell_points(texel_xy, (top * n, (bottom + 1) * n), n)
            load[top:bottom] = quadrature_load(image_at(frame_xy, (pixel[0] * ramp, pixel[1] * ramp)), n)
        # Only texels within reach of the pixels the fit constrains may change: the rest of the op's rectangle
        # stays exactly transparent, so pixels away from the paste stay the source's bit for bit.
        gap = torch.hypot((x - texel_xy[..., 0]).clamp_min(0) + (texel_xy[..., 0] - x - rw).clamp_min(0),
                          (y - texel_xy[..., 1]).clamp_min(0) + (texel_xy[..., 1] - y - rh).clamp_min(0))
        free = (gap <= FIT_REACH_PX + texel_px).unsqueeze(-1)  # NaN (unknown B) compares False
        return fit_premultiplied(torch.where(free, start, 0.0), lookups, weights.reshape(-1), targets, load, n,
                                 (texel_px / n) ** 2, FIT_ITERS, free)

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
        assert aop.segs is not None
        hardness = float(op.get("hardness", DEFAULT_HARDNESS))
        if op.get("region", "polygon") == "path":
            cov = brush_coverage(self.geom, rect, aop.segs, aop.width, hardness, self.device)
        else:
            cov = polygon_coverage(self.geom, rect, aop.segs, (1.0 - hardness) * aop.width, self.device)
        region = self._region_weight(aop, rect)
        if region is not None:
            cov = cov * region
        return (cov * float(op.get("opacity", 1.0))).unsqueeze(-1)

    def _region_weight(self, aop: AtlasOp, sub: Rect) -> torch.Tensor | None:
        """1 on the texels of sub in the op's `roi_region`, 0 elsewhere (h, w); None for an op on the whole ROI."""
        region = int(aop.op.get("roi_region", 0))
        if not region:
            return None
        if self._regions is None:
            labels = regions_at(self.geom.bundle, self._centres.cpu().numpy())
            self._regions = torch.from_numpy(labels).to(self.device)
        return (self._view(self._regions, sub) == region).to(torch.float32)

    @staticmethod
    def _view(t: torch.Tensor, rect: Rect) -> torch.Tensor:
        r0, r1, c0, c1 = rect
        return t[r0:r1, c0:c1]

    # Every change is drawn into a scratch copy of its rectangle and copied into the layers only once it is
    # complete, so an op that fails half-way (out of memory, say) leaves the layers exactly as they were.
    def paint_on_top(self, aop: AtlasOp) -> None:
        """A new paint op above every other paint op: alpha-over it into E over its rectangle."""
        if aop.rect is None:
            return
        view = self._view(self.paint, aop.rect)
        scratch = view.clone()
        self._paint_into(scratch, aop, aop.rect)
        view.copy_(scratch)
        self.version += 1

    def rebuild(self, rect: Rect | None, paints: list[AtlasOp], adjustments: list[AtlasOp]) -> None:
        """Re-composite every live op overlapping rect, in order: the paint layer, then K."""
        self.rebuild_paint(rect, paints)
        self.rebuild_adjust(rect, adjustments)

    def rebuild_paint(self, rect: Rect | None, paints: list[AtlasOp]) -> None:
        """E over rect from transparent, every live paint op overlapping it in order."""
        if rect is None:
            return
        scratch = torch.zeros_like(self._view(self.paint, rect))
        for aop in paints:
            sub = intersect(aop.rect, rect) if aop.rect else None
            if sub:
                local = (sub[0] - rect[0], sub[1] - rect[0], sub[2] - rect[2], sub[3] - rect[2])
                self._paint_into(self._view(scratch, local), aop, sub)
        self._view(self.paint, rect).copy_(scratch)
        self.version += 1

    def rebuild_adjust(self, rect: Rect | None, adjustments: list[AtlasOp]) -> None:
        """K over rect from the live adjustments in op order; K is dropped when none is left."""
        placed = [a for a in adjustments if a.rect is not None]
        if not placed:
            if self.adjust is not None:
                self.adjust = None
                self.version += 1
            return
        fresh = self.adjust is None
        if fresh:
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
        if fresh:  # allocated only now that the work is done, so a failure above leaves no K behind
            s = self.layer.shape[-1]
            self.adjust = torch.zeros((1, ADJUST_CHANNELS, s, s), device=self.device, dtype=self.texture_dtype)
        assert self.adjust is not None
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
