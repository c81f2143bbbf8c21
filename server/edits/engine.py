"""EditEngine: the live edit document of one session, its atlas layers and the renderer.

Object ops (stroke, texture, adjustment, sticker) are kept in document order by id; control ops (update,
delete, restore, set_visible) change them with last-writer-wins per property. Every change re-rasterises
only the atlas rectangle it affects. One internal lock makes every public method thread-safe.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.models.bundle import Bundle
from vatlas.server.compositor import Compositor
from vatlas.server.edits.layers import AtlasLayers, AtlasOp, union
from vatlas.server.edits.ops import FIELDS_BY_TYPE, OpLimits, check_object, validate_op
from vatlas.server.edits.raster import AtlasGeometry
from vatlas.server.edits.region import check_on_region
from vatlas.server.edits.stickers import StickerTrack, draw_sticker, track_sticker
from vatlas.server.errors import CoreError

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

    def nbytes(self) -> int:
        """Edit memory this object keeps (counted against OpLimits.max_edit_bytes)."""
        return sum(part.nbytes() for part in (self.atlas_op, self.sticker) if part is not None)


@contextlib.contextmanager
def _out_of_memory_is_refusal(op_id: str) -> Iterator[None]:
    """An allocation that fails while an op is placed or drawn refuses that op (RESOURCE_EXHAUSTED), like a
    budget would; the budgets keep this rare, and the caller leaves no trace of the op either way."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise CoreError("RESOURCE_EXHAUSTED", "out of memory while drawing this op", op_id) from None
    except RuntimeError as exc:  # the CPU allocator says so only in its message
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            raise
        raise CoreError("RESOURCE_EXHAUSTED", "out of memory while drawing this op", op_id) from None


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
        self.layers = AtlasLayers(self.geometry, bundle.atlas, self.device, self.compositor.texture_dtype,
                                  self.limits)
        self._objects: dict[str, _Object] = {}
        self._bytes = 0  # sum of the objects' nbytes()
        self._lock = threading.RLock()

    # ---- document ----------------------------------------------------------------------------------------
    def apply(self, op: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply one op; returns the state of the object it created or changed.

        Raises CoreError: INVALID_ARGUMENT, NOT_FOUND (unknown target), ALREADY_EXISTS (id reused),
        RESOURCE_EXHAUSTED (over the raster or memory budget). A refused op leaves no trace: the document,
        the layers and the memory count are as they were.
        """
        clean = validate_op(op, self.limits)
        with self._lock:
            kind = clean["type"]
            if kind in FIELDS_BY_TYPE:
                return self._create(clean)
            obj = self._objects.get(clean["target"])
            if obj is None:
                raise CoreError("NOT_FOUND", f"no op with id {clean['target']!r}", clean.get("id", ""))
            op_id = clean.get("id", "")
            if kind == "update":
                self._update(obj, clean)
            elif kind == "delete":
                self._set_live(obj, op_id, deleted=True)
            elif kind == "restore":
                self._set_live(obj, op_id, deleted=False)
            else:
                self._set_live(obj, op_id, visible=clean["visible"])
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

    def edit_bytes(self) -> int:
        """Edit memory the document's objects keep (deleted ones too: they can be restored)."""
        with self._lock:
            return self._bytes

    def _check_memory(self, more: int, op_id: str) -> None:
        if self._bytes + more > self.limits.max_edit_bytes:
            raise CoreError("RESOURCE_EXHAUSTED", f"this session's edits would keep {self._bytes + more} bytes "
                          f"(limit {self.limits.max_edit_bytes}): delete some or use smaller images", op_id)

    def _create(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["id"] in self._objects:
            raise CoreError("ALREADY_EXISTS", f"an op with id {op['id']!r} already exists", op["id"])
        obj = _Object(op=op)
        self._prepare(obj)
        size = obj.nbytes()
        self._check_memory(size, op["id"])
        aop = obj.atlas_op
        if aop is not None:
            with _out_of_memory_is_refusal(op["id"]):
                below = self._live(aop.kind)
                if aop.kind == "paint" and all(_z(a.op) <= _z(op) for a in below):
                    self.layers.paint_on_top(aop)
                else:  # adjustments, and paint put below what is there: that part of the layer is rebuilt
                    self._refresh(aop.rect, aop.kind, extra=obj)
        # Registered only once drawn: an op that failed above is in no later rebuild, undo or document.
        self._objects[op["id"]] = obj
        self._bytes += size
        return self._state(obj)

    def _prepare(self, obj: _Object, op_id: str | None = None) -> None:
        """Place obj's op (on the region, in the atlas); a refusal names `op_id` (the op that asked: an update
        or restore of obj), by default obj's own id."""
        op_id = obj.op.get("id", "") if op_id is None else op_id
        try:
            check_on_region(self.bundle, obj.op)
            with _out_of_memory_is_refusal(op_id):
                if obj.op["type"] == "sticker":
                    obj.sticker = track_sticker(self.geometry, obj.op, self.device)
                else:
                    obj.atlas_op = self.layers.prepare(obj.op)
        except CoreError as exc:
            raise CoreError(exc.code, exc.message, op_id) from None
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise CoreError("INVALID_ARGUMENT", f"op cannot be placed: {exc}", op_id) from None

    def _update(self, obj: _Object, update: dict[str, Any]) -> None:
        """Change properties and/or visibility at once: either all of it shows, or (on an error) none."""
        op_id = update.get("id", "")
        changes = dict(update["set"])
        visible = changes.pop("visible", None)
        candidate = _Object(op=obj.op, visible=obj.visible if visible is None else visible, deleted=obj.deleted,
                            atlas_op=obj.atlas_op, sticker=obj.sticker)
        if changes:
            allowed = FIELDS_BY_TYPE[obj.op["type"]]
            bad = sorted(set(changes) - allowed)
            if bad:
                raise CoreError("INVALID_ARGUMENT", f"a {obj.op['type']} has no {', '.join(bad)}", op_id)
            candidate.op = {**obj.op, **changes}
            check_object(candidate.op, op_id)
            candidate.atlas_op = candidate.sticker = None
            self._prepare(candidate, op_id)  # a deleted op is placed too, to refuse what could never be restored
            if candidate.deleted:
                candidate.atlas_op = candidate.sticker = None
        self._replace(obj, candidate, op_id, redraw=bool(changes))

    def _set_live(self, obj: _Object, op_id: str, *, visible: bool | None = None,
                  deleted: bool | None = None) -> None:
        candidate = _Object(op=obj.op, visible=obj.visible if visible is None else visible,
                            deleted=obj.deleted if deleted is None else deleted,
                            atlas_op=obj.atlas_op, sticker=obj.sticker)
        if candidate.deleted and not obj.deleted:
            # A deleted op keeps only its op dict (a restore places it again), so deleting frees its memory
            # and deleted ops cannot pile up beyond the session's budget.
            candidate.atlas_op = candidate.sticker = None
        elif obj.deleted and not candidate.deleted:
            self._prepare(candidate, op_id)
        self._replace(obj, candidate, op_id, redraw=False)

    def _replace(self, obj: _Object, new: _Object, op_id: str, *, redraw: bool) -> None:
        """obj takes new's state within the memory budget, redrawing what changed (all of it when redraw)."""
        growth = new.nbytes() - obj.nbytes()
        if growth > 0:
            self._check_memory(growth, op_id)
        was_live, is_live = obj.visible and not obj.deleted, new.visible and not new.deleted
        rect: Any = None
        if redraw or was_live != is_live:
            if was_live and obj.atlas_op is not None:
                rect = obj.atlas_op.rect
            if is_live and new.atlas_op is not None:
                rect = union(rect, new.atlas_op.rect)
        self._swap(obj, new, rect, op_id)
        self._bytes += growth

    def _swap(self, obj: _Object, new: _Object, rect: Any, op_id: str) -> None:
        """Give obj the state of new and redraw rect; if the redraw fails obj keeps its old state (the layers
        are only written once a redraw is complete, so they keep theirs too)."""
        old = (obj.op, obj.visible, obj.deleted, obj.atlas_op, obj.sticker)
        obj.op, obj.visible, obj.deleted, obj.atlas_op, obj.sticker = (new.op, new.visible, new.deleted,
                                                                        new.atlas_op, new.sticker)
        aop = obj.atlas_op or old[3]
        if rect is None or aop is None:
            return
        try:
            with _out_of_memory_is_refusal(op_id):
                self._refresh(rect, aop.kind)
        except BaseException:
            obj.op, obj.visible, obj.deleted, obj.atlas_op, obj.sticker = old
            raise

    def _stack(self, extra: _Object | None = None) -> list[_Object]:
        """Live objects bottom to top: by z, equal z in creation order (`extra`: one not registered yet)."""
        live = [o for o in self._objects.values() if o.visible and not o.deleted]
        return sorted(live + ([extra] if extra is not None else []), key=lambda o: _z(o.op))

    def _live(self, kind: str, extra: _Object | None = None) -> list[AtlasOp]:
        return [o.atlas_op for o in self._stack(extra) if o.atlas_op is not None and o.atlas_op.kind == kind]

    def _refresh(self, rect: Any, kind: str, extra: _Object | None = None) -> None:
        """Rebuild the layer an op of `kind` lives in over rect (paint ops never change K, nor adjustments E)."""
        if kind == "paint":
            self.layers.rebuild_paint(rect, self._live("paint", extra))
        else:
            self.layers.rebuild_adjust(rect, self._live("adjust", extra))

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
            stickers = [o.sticker for o in self._stack() if o.sticker is not None]
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
                raise CoreError("NOT_FOUND", f"no sticker with id {op_id!r}", op_id)
            return obj.sticker.centre.copy()


def _z(op: dict[str, Any]) -> float:
    """An object's stacking position (EditOp.z; 0 when it has none)."""
    return float(op.get("z", 0.0))


def _resize(frames: torch.Tensor, scale: float) -> torch.Tensor:
    n, h, w, _ = frames.shape
    size = (max(int(round(h * scale)), 1), max(int(round(w * scale)), 1))
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    mode = "area" if scale < 1.0 else "bilinear"
    y = F.interpolate(x, size=size, mode=mode) if mode == "area" else F.interpolate(
        x, size=size, mode=mode, align_corners=False)
    return torch.floor(y + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
