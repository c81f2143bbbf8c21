"""Edit ops: validation and normalisation of the dict mirror of `vatlas.v1.EditOp`.

An op dict uses the proto's field names; `points`/`position` are `[x, y]` pairs, `color` is RGBA in
[0, 1], `image` is encoded PNG/JPEG/WebP bytes. Empty strings, empty lists and empty bytes count as
unset (that is how proto3 carries them). `validate_op` never fills defaults: the returned dict keeps
only the fields the client set, so last-writer-wins merging of `update` ops stays per property.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from vatlas.server.errors import CoreError
from vatlas_wire.v1.op_kinds import CONTROL_TYPES, OBJECT_TYPES, OP_TYPES
from vatlas_wire.v1.op_kinds import FIELDS_BY_TYPE as PROTO_FIELDS

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Coordinates beyond this are surely a client bug (and would overflow float32 arithmetic later).
MAX_COORD = 1.0e6
# Decoded images kept for reuse, process-wide (validation and the engine both decode an op's image).
DECODE_CACHE_BYTES = 128 * 1024 * 1024

# An adjustment's colour change, and an image's own colour grade (texture and sticker: its colour control).
COLOUR_FIELDS = ("exposure", "contrast", "saturation", "hue", "temperature")
# Fields each object type may carry (besides id/type), as edits.proto declares them; anything else is rejected.
FIELDS_BY_TYPE: dict[str, frozenset[str]] = {kind: frozenset(fields) for kind, fields in PROTO_FIELDS.items()}
MAX_Z = 1.0e9
MAX_ROI_REGION = 255  # EditOp.roi_region: 0 = the whole ROI, k = its k-th polygon only
SETTABLE_FIELDS = frozenset().union(*FIELDS_BY_TYPE.values())


@dataclass(frozen=True)
class OpLimits:
    """Bounds on op sizes; `num_frames`/`frame_size` come from the bundle when known."""

    max_points: int = 4096
    max_width: float = 512.0
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_side: int = 4096
    max_image_pixels: int = 4096 * 4096
    num_frames: int | None = None
    max_abs_coord: float = MAX_COORD
    # Checked once an op is placed in the atlas (engine): points after clipping to the frame and densifying
    # (a longer path is followed more coarsely), texel-segment distance evaluations per op (a second or two
    # of a busy CPU core, milliseconds on a GPU), and the edit memory one session's ops may keep (images at
    # atlas resolution, geometry; deleted ops too, since they can be restored).
    max_raster_points: int = 16384
    max_raster_work: int = 1 << 25
    max_edit_bytes: int = 256 * 1024 * 1024

    @classmethod
    def for_bundle(cls, bundle: Any, **overrides: Any) -> OpLimits:
        return cls(num_frames=int(bundle.num_frames), **overrides)


def _fail(message: str, op_id: str, code: str = "INVALID_ARGUMENT") -> CoreError:
    return CoreError(code, message, op_id)


def _number(value: Any, name: str, op_id: str, lo: float = -math.inf, hi: float = math.inf,
            *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(f"{name} must be a number, got {type(value).__name__}", op_id)
    x = float(value)
    if not math.isfinite(x):
        raise _fail(f"{name} must be finite, got {x}", op_id)
    if x < lo or x > hi or (lo_open and x == lo):
        bracket = "(" if lo_open else "["
        raise _fail(f"{name}={x:g} is out of range {bracket}{lo:g}, {hi:g}]", op_id)
    return x


def _vec2(value: Any, name: str, op_id: str, limits: OpLimits) -> list[float]:
    if isinstance(value, dict):  # tolerate the proto Vec2 mirror {"x":..,"y":..}
        value = [value.get("x", 0.0), value.get("y", 0.0)]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(f"{name} must be an [x, y] pair", op_id)
    m = limits.max_abs_coord
    return [_number(value[0], f"{name}.x", op_id, -m, m), _number(value[1], f"{name}.y", op_id, -m, m)]


def _floats(value: Any, name: str, op_id: str, n: int, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise _fail(f"{name} must be a list of {n} numbers", op_id)
    return [_number(v, f"{name}[{i}]", op_id, lo, hi) for i, v in enumerate(value)]


def _choice(value: Any, name: str, op_id: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise _fail(f"{name} must be one of {', '.join(options)}; got {value!r}", op_id)
    return str(value)


def _bool(value: Any, name: str, op_id: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(f"{name} must be true or false", op_id)
    return bool(value)


def _points(value: Any, op_id: str, limits: OpLimits) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail("points must be a non-empty list of [x, y] pairs", op_id)
    if len(value) > limits.max_points:
        raise _fail(f"too many points ({len(value)} > {limits.max_points})", op_id, "RESOURCE_EXHAUSTED")
    return [_vec2(p, f"points[{i}]", op_id, limits) for i, p in enumerate(value)]


def _frame(value: Any, op_id: str, limits: OpLimits) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _fail("frame must be an integer", op_id)
    t = int(value)
    if t < 0 or (limits.num_frames is not None and t >= limits.num_frames):
        n = limits.num_frames
        raise _fail(f"frame {t} is out of range" + (f" (the clip has frames 0..{n - 1})" if n else ""), op_id)
    return t


def image_info(data: bytes, limits: OpLimits, op_id: str = "") -> tuple[int, int]:
    """Check size and format from the header only (decompression-bomb guard); returns (w, h)."""
    if len(data) > limits.max_image_bytes:
        raise _fail(f"image is {len(data)} bytes (limit {limits.max_image_bytes})", op_id, "RESOURCE_EXHAUSTED")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _fail(f"image is not a decodable PNG, JPEG or WebP ({exc})", op_id) from None
    if fmt not in IMAGE_FORMATS:
        raise _fail(f"image format {fmt} is not allowed (PNG, JPEG or WebP)", op_id)
    if w < 1 or h < 1 or max(w, h) > limits.max_image_side or w * h > limits.max_image_pixels:
        raise _fail(f"image is {w}x{h} (limits: side {limits.max_image_side}, {limits.max_image_pixels} pixels)",
                    op_id, "RESOURCE_EXHAUSTED")
    return w, h


class _DecodeCache:
    """Decoded images by content, least recently used first out, bounded by bytes (encoded + decoded) rather
    than by count: 64 decoded 4096 x 4096 images would be 4 GB."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, data: bytes) -> np.ndarray:
        with self._lock:
            hit = self._items.get(data)
            if hit is not None:
                self._items.move_to_end(data)
                return hit
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()
        arr.setflags(write=False)
        cost = len(data) + arr.nbytes
        with self._lock:
            if data not in self._items and cost <= self.max_bytes:
                self._items[data] = arr
                self.bytes += cost
                while self.bytes > self.max_bytes:
                    key, old = self._items.popitem(last=False)
                    self.bytes -= len(key) + old.nbytes
        return arr


_decoded = _DecodeCache(DECODE_CACHE_BYTES)


def decode_image(data: bytes, limits: OpLimits | None = None, op_id: str = "") -> np.ndarray:
    """Encoded image -> (h, w, 4) uint8 RGBA (read-only, cached by content)."""
    image_info(bytes(data), limits or OpLimits(), op_id)
    try:
        return _decoded.get(bytes(data))
    except (OSError, ValueError, SyntaxError) as exc:
        raise _fail(f"image could not be decoded ({exc})", op_id) from None


def _image(value: Any, op_id: str, limits: OpLimits) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _fail("image must be PNG, JPEG or WebP bytes", op_id)
    data = bytes(value)
    decode_image(data, limits, op_id)
    return data


def _field_validators(limits: OpLimits, op_id: str) -> dict[str, Callable[[Any], Any]]:
    w = limits.max_width
    return {
        "space": lambda v: _choice(v, "space", op_id, ("frame", "atlas")),
        "frame": lambda v: _frame(v, op_id, limits),
        "points": lambda v: _points(v, op_id, limits),
        "width": lambda v: _number(v, "width", op_id, 0.0, w, lo_open=True),
        "color": lambda v: _floats(v, "color", op_id, 4, 0.0, 1.0),
        "hardness": lambda v: _number(v, "hardness", op_id, 0.0, 1.0),
        "mode": lambda v: _choice(v, "mode", op_id, ("paint", "erase")),
        "image": lambda v: _image(v, op_id, limits),
        "rect": lambda v: _rect(v, op_id, limits),
        "position": lambda v: _vec2(v, "position", op_id, limits),
        "scale": lambda v: _number(v, "scale", op_id, 0.0, 100.0, lo_open=True),
        "rotation": lambda v: _number(v, "rotation", op_id, -1.0e4, 1.0e4),
        "opacity": lambda v: _number(v, "opacity", op_id, 0.0, 1.0),
        "region": lambda v: _choice(v, "region", op_id, ("polygon", "path")),
        "exposure": lambda v: _number(v, "exposure", op_id, -8.0, 8.0),
        "contrast": lambda v: _number(v, "contrast", op_id, -1.0, 1.0),
        "saturation": lambda v: _number(v, "saturation", op_id, -1.0, 1.0),
        "hue": lambda v: _number(v, "hue", op_id, -360.0, 360.0),
        "temperature": lambda v: _number(v, "temperature", op_id, -1.0, 1.0),
        "size": lambda v: _size(v, op_id, limits),
        "follow_scale": lambda v: _bool(v, "follow_scale", op_id),
        "follow_rotation": lambda v: _bool(v, "follow_rotation", op_id),
        "visible": lambda v: _bool(v, "visible", op_id),
        "z": lambda v: _number(v, "z", op_id, -MAX_Z, MAX_Z),
        "roi_region": lambda v: _count(v, "roi_region", op_id, MAX_ROI_REGION),
    }


def _count(value: Any, name: str, op_id: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= hi:
        raise _fail(f"{name} must be an integer in 0..{hi}", op_id)
    return int(value)


def _rect(value: Any, op_id: str, limits: OpLimits) -> list[float]:
    m = limits.max_abs_coord
    x, y, w, h = _floats(value, "rect", op_id, 4, -m, m)
    if w <= 0 or h <= 0:
        raise _fail("rect width and height must be positive", op_id)
    return [x, y, w, h]


def _size(value: Any, op_id: str, limits: OpLimits) -> list[float]:
    w, h = _floats(value, "size", op_id, 2, 0.0, float(limits.max_image_side) * 4)
    if w <= 0 or h <= 0:
        raise _fail("size must be positive", op_id)
    return [w, h]


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes, bytearray, list, tuple, dict)) and len(value) == 0)


def _clean_fields(raw: dict[str, Any], allowed: frozenset[str], limits: OpLimits, op_id: str,
                  what: str) -> dict[str, Any]:
    validators = _field_validators(limits, op_id)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if _is_unset(value):
            continue
        if key not in allowed:
            raise _fail(f"field {key!r} is not allowed in {what}", op_id)
        out[key] = validators[key](value)
    return out


def check_object(op: dict[str, Any], op_id: str = "") -> None:
    """Cross-field checks of a complete object op (after an update merge too)."""
    op_id = op_id or op.get("id", "")
    kind = op["type"]
    space = op.get("space", "frame")
    if kind == "sticker" and space != "frame":
        raise _fail("a sticker is anchored on a frame: space must be 'frame'", op_id)
    if space == "frame" and "frame" not in op:
        raise _fail(f"a {kind} in frame space needs 'frame'", op_id)
    if kind == "stroke" and "points" not in op:
        raise _fail("a stroke needs points", op_id)
    if kind == "texture":
        if "image" not in op:
            raise _fail("a texture needs an image", op_id)
        if space == "frame" and "rect" not in op:
            raise _fail("a texture on a frame needs rect [x, y, w, h]", op_id)
        if space == "atlas" and "position" not in op:
            raise _fail("a texture in atlas space needs position (its centre)", op_id)
    if kind == "adjustment":
        region = op.get("region", "polygon")
        pts = op.get("points", [])
        if region == "polygon" and len(pts) < 3:
            raise _fail("an adjustment polygon needs at least 3 points", op_id)
        if region == "path" and not pts:
            raise _fail("an adjustment path needs points", op_id)
    if kind == "sticker":
        if "image" not in op:
            raise _fail("a sticker needs an image", op_id)
        if "position" not in op:
            raise _fail("a sticker needs position (its anchor on the frame)", op_id)


def validate_op(op: dict[str, Any], limits: OpLimits | None = None) -> dict[str, Any]:
    """Check every field of one op; returns a normalised copy (numbers as float, unset fields dropped).

    Raises CoreError(INVALID_ARGUMENT | RESOURCE_EXHAUSTED). Unknown targets (NOT_FOUND) are the engine's call.
    """
    limits = limits or OpLimits()
    if not isinstance(op, dict):
        raise _fail("an op must be a mapping", "")
    raw_id = op.get("id", "")
    op_id = raw_id if isinstance(raw_id, str) else ""
    kind = op.get("type")
    if kind not in OP_TYPES:
        raise _fail(f"unknown op type {kind!r} (expected one of {', '.join(OP_TYPES)})", op_id)
    id_optional = kind in CONTROL_TYPES and raw_id == ""  # acks of control ops may go by sequence number
    if not isinstance(raw_id, str) or not (id_optional or ID_PATTERN.match(raw_id)):
        raise _fail(f"op id {raw_id!r} must be 1..64 characters of [A-Za-z0-9_.:-]", op_id)
    out: dict[str, Any] = {"type": kind}
    if op_id:
        out["id"] = op_id
    rest = {k: v for k, v in op.items() if k not in ("id", "type")}
    if kind in OBJECT_TYPES:
        out.update(_clean_fields(rest, FIELDS_BY_TYPE[kind], limits, op_id, f"a {kind}"))
        check_object(out, op_id)
        return out
    target = rest.pop("target", None)
    if not isinstance(target, str) or not ID_PATTERN.match(target):
        raise _fail(f"{kind} needs a target op id, got {target!r}", op_id)
    out["target"] = target
    if kind == "set_visible":
        if "visible" not in rest:
            raise _fail("set_visible needs visible", op_id)
        out["visible"] = _bool(rest.pop("visible"), "visible", op_id)
    if kind == "update":
        changes = rest.pop("set", None)
        if not isinstance(changes, dict) or not changes:
            raise _fail("update needs 'set' with at least one property", op_id)
        changes = {k: v for k, v in changes.items() if k not in ("id", "type") or v != ""}
        bad = sorted(set(changes) - SETTABLE_FIELDS - {"visible"})
        if bad:
            raise _fail(f"update cannot set {', '.join(bad)}", op_id)
        cleaned = _clean_fields(changes, SETTABLE_FIELDS | {"visible"}, limits, op_id, "update.set")
        if not cleaned:
            raise _fail("update needs 'set' with at least one property", op_id)
        out["set"] = cleaned
    leftover = sorted(k for k, v in rest.items() if not _is_unset(v))
    if leftover:
        raise _fail(f"field(s) {', '.join(leftover)} not allowed in {kind}", op_id)
    return out

