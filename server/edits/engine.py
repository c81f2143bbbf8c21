"""EditEngine: the live edit document of one session, its atlas layers and the renderer.

Object ops (stroke, texture, adjustment, sticker) are kept in document order by id; control ops (update,
delete, restore, set_visible) change them with last-writer-wins per property. Every change re-rasterises
only the atlas rectangle it affects. One internal lock makes every public method thread-safe.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import Bundle
from vatlas.server.compositor import Compositor
from vatlas.server.edits.layers import AtlasLayers, AtlasOp, union
from vatlas.server.edits.ops import FIELDS_BY_TYPE, OpError, OpLimits, check_object, validate_op
from vatlas.server.edits.raster import AtlasGeometry
from vatlas.server.edits.stickers import StickerTrack, draw_sticker, track_sticker

# "layers" (the default everywhere): the edits laid over the source frames, untouched pixels bit for bit;
# "reconstruction" (a diagnostic): the model's own rendering l * (E over A)(uv) inside the visible ROI.
MODES = ("layers", "reconstruction")
DEFAULT_MODE = "layers"


@dataclass
class _Object:
    op: dict[str, Any]  # the merged object op (mirror form, no defaults filled)
    visible: bool = True
    deleted: bool = False
    atlas_op: AtlasOp | None = None
    sticker: StickerTrack | None = None


class EditEngine:
    """Applies ops incrementally and renders edited frames (see docs/CONTRACTS.md)."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", *, limits: OpLimits | None = None,
                 compile: bool | None = None) -> None:
        bundle.validate()
        self.bundle = bundle
        self.compositor = Compositor(bundle, device, compile=compile)
        self.device = self.compositor.device
        self.limits = limits or OpLimits.for_bundle(bundle)
        self.geometry = AtlasGeometry(bundle, bundle.atlas_size)
        self.layers = AtlasLayers(self.geometry, bundle.atlas, self.device, self.compositor.texture_dtype)
        self._objects: dict[str, _Object] = {}
        self._lock = threading.RLock()

    # ---- document ----------------------------------------------------------------------------------------
    def apply(self, op: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply one op; returns the state of the object it created or changed.

        Raises OpError: INVALID_ARGUMENT, NOT_FOUND (unknown target), ALREADY_EXISTS (id reused).
        """
        clean = validate_op(op, self.limits)
        with self._lock:
            kind = clean["type"]
            if kind in FIELDS_BY_TYPE:
                return self._create(clean)
            obj = self._objects.get(clean["target"])
            if obj is None:
                raise OpError("NOT_FOUND", f"no op with id {clean['target']!r}", clean.get("id", ""))
            if kind == "update":
                self._update(obj, clean)
            elif kind == "delete":
                self._set_live(obj, deleted=True)
            elif kind == "restore":
                self._set_live(obj, deleted=False)
            else:
                self._set_live(obj, visible=clean["visible"])
            return self._state(obj)

    def apply_many(self, ops: Sequence[dict[str, Any]]) -> None:
        """Replay a document or log in order."""
        for op in ops:
            self.apply(op)

    def objects(self) -> list[dict[str, Any]]:
        """Live (not deleted) objects in document order, with their current properties and `visible`."""
        with self._lock:
            return [self._state(o) for o in self._objects.values() if not o.deleted]

    def get(self, op_id: str) -> dict[str, Any] | None:
        """One object's current state (deleted ones carry "deleted": true), or None if unknown."""
        with self._lock:
            obj = self._objects.get(op_id)
            return None if obj is None else self._state(obj)

    def document(self) -> dict[str, Any]:
        """The live edit document {"version": 1, "ops": [...]} (images as bytes)."""
        ops = []
        for state in self.objects():
            visible = state.pop("visible")
            ops.append(state)
            if not visible:
                ops.append({"type": "set_visible", "target": state["id"], "visible": False})
        return {"version": 1, "ops": ops}

    @staticmethod
    def _state(obj: _Object) -> dict[str, Any]:
        state = copy.copy(obj.op)
        state["visible"] = obj.visible
        if obj.deleted:
            state["deleted"] = True
        return state

    def _create(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["id"] in self._objects:
            raise OpError("ALREADY_EXISTS", f"an op with id {op['id']!r} already exists", op["id"])
        obj = _Object(op=op)
        self._prepare(obj)
        self._objects[op["id"]] = obj
        aop = obj.atlas_op
        if aop is not None:
            if aop.kind == "paint":
                self.layers.paint_on_top(aop)
            else:
                self.layers.rebuild_adjust(aop.rect, self._live("adjust"))
        return self._state(obj)

    def _prepare(self, obj: _Object) -> None:
        try:
            if obj.op["type"] == "sticker":
                obj.sticker = track_sticker(self.geometry, obj.op, self.device)
            else:
                obj.atlas_op = self.layers.prepare(obj.op)
        except OpError:
            raise
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise OpError("INVALID_ARGUMENT", f"op cannot be placed: {exc}", obj.op.get("id", "")) from None

    def _update(self, obj: _Object, update: dict[str, Any]) -> None:
        changes = dict(update["set"])
        visible = changes.pop("visible", None)
        if changes:
            allowed = FIELDS_BY_TYPE[obj.op["type"]]
            bad = sorted(set(changes) - allowed)
            if bad:
                raise OpError("INVALID_ARGUMENT", f"a {obj.op['type']} has no {', '.join(bad)}",
                              update.get("id", ""))
            merged = {**obj.op, **changes}
            check_object(merged, update.get("id", ""))
            old_rect = obj.atlas_op.rect if obj.atlas_op else None
            candidate = _Object(op=merged, visible=obj.visible, deleted=obj.deleted)
            self._prepare(candidate)  # may raise: leave obj untouched
            obj.op, obj.atlas_op, obj.sticker = merged, candidate.atlas_op, candidate.sticker
            if obj.atlas_op is not None and obj.visible and not obj.deleted:
                self._refresh(union(old_rect, obj.atlas_op.rect), obj.atlas_op.kind)
        if visible is not None:
            self._set_live(obj, visible=visible)

    def _set_live(self, obj: _Object, *, visible: bool | None = None, deleted: bool | None = None) -> None:
        before = obj.visible and not obj.deleted
        if visible is not None:
            obj.visible = visible
        if deleted is not None:
            obj.deleted = deleted
        after = obj.visible and not obj.deleted
        if before != after and obj.atlas_op is not None:
            self._refresh(obj.atlas_op.rect, obj.atlas_op.kind)

    def _live(self, kind: str) -> list[AtlasOp]:
        return [o.atlas_op for o in self._objects.values()
                if o.atlas_op is not None and o.atlas_op.kind == kind and o.visible and not o.deleted]

    def _refresh(self, rect: Any, kind: str) -> None:
        """Rebuild the layer an op of `kind` lives in over rect (paint ops never change K, nor adjustments E)."""
        if kind == "paint":
            self.layers.rebuild_paint(rect, self._live("paint"))
        else:
            self.layers.rebuild_adjust(rect, self._live("adjust"))

    # ---- rendering ---------------------------------------------------------------------------------------
    def warmup(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Compile the GPU compositor for these batch sizes now (a few seconds each; no-op when eager)."""
        if self.compositor.compiled:
            with self._lock:
                self.compositor.warmup(self.layers.layer, batch_sizes)

    def render(self, frames: Sequence[int] | int, *, scale: float = 1.0,
               region: Sequence[float] | None = None, mode: str = DEFAULT_MODE) -> torch.Tensor:
        """Edited frames -> uint8 (N, H', W', 3) on the engine's device.

        region = [x, y, w, h] in frame pixels crops first; scale then resizes (area filter when shrinking).
        mode "layers": the edits over the source (pixels no edit touches are the source's, bit for bit);
        "reconstruction": the model's reconstruction of the edited surface inside the visible ROI (diagnostic).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 < scale <= 4.0:
            raise ValueError(f"scale must be in (0, 4], got {scale}")
        with self._lock:
            idx = self.compositor.frame_index(frames)
            layer = self.layers.layer if mode == "layers" else self.layers.reconstruction_texture()
            out = self.compositor.composite(idx, layer, self.layers.adjust)
            stickers = [o.sticker for o in self._objects.values()
                        if o.sticker is not None and o.visible and not o.deleted]
            if stickers:
                host_frames = [frames] if isinstance(frames, int) else [int(f) for f in frames]  # no device sync
                for n, t in enumerate(host_frames):
                    for track in stickers:
                        draw_sticker(out[n], self.compositor.mask[t], track, t)
        if region is not None:
            out = self._crop(out, region)
        if scale != 1.0:
            out = _resize(out, scale)
        return out

    def _crop(self, out: torch.Tensor, region: Sequence[float]) -> torch.Tensor:
        if len(region) != 4:
            raise ValueError("region must be [x, y, w, h]")
        x, y, w, h = (int(round(float(v))) for v in region)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, out.shape[2]), min(y + h, out.shape[1])
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"region {list(region)} lies outside the {out.shape[2]}x{out.shape[1]} frame")
        return out[:, y0:y1, x0:x1]

    def render_atlas(self) -> torch.Tensor:
        """The edited atlas (E over A, then the adjustments) as uint8 (S, S, 3) on the engine's device: the
        client's atlas view."""
        with self._lock:
            return torch.floor(self.layers.atlas_view() * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)

    def edited_atlas(self) -> np.ndarray:
        """E over A as float64 (S, S, 3) in [0, 1] units: the reconstruction mode's atlas, before the
        adjustments (which that mode, like "layers", applies per pixel)."""
        with self._lock:
            return self.layers.over_atlas().detach().to("cpu", torch.float64).numpy()

    def edit_layer(self) -> np.ndarray:
        """The premultiplied paint layer E as float64 (S, S, 4) (for the float64 reference compositor)."""
        with self._lock:
            return self.layers.paint.detach().to("cpu", torch.float64).numpy()

    def adjust_transform(self) -> np.ndarray | None:
        """The adjustments' per-texel transform K as float64 (S, S, 3, 4), or None when none is live."""
        with self._lock:
            k = self.layers.adjust_transform()
            return None if k is None else k.to("cpu", torch.float64).numpy()

    def sticker_positions(self, op_id: str) -> np.ndarray:
        """Per-frame anchor positions (T, 2) of a sticker (NaN where B is unknown)."""
        with self._lock:
            obj = self._objects.get(op_id)
            if obj is None or obj.sticker is None:
                raise OpError("NOT_FOUND", f"no sticker with id {op_id!r}", op_id)
            return obj.sticker.centre.copy()


def _resize(frames: torch.Tensor, scale: float) -> torch.Tensor:
    n, h, w, _ = frames.shape
    size = (max(int(round(h * scale)), 1), max(int(round(w * scale)), 1))
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    mode = "area" if scale < 1.0 else "bilinear"
    y = F.interpolate(x, size=size, mode=mode) if mode == "area" else F.interpolate(
        x, size=size, mode=mode, align_corners=False)
    return torch.floor(y + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
