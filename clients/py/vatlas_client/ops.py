"""Builders for `vatlas.v1.EditOp`: one function per op type, keyword arguments named as in edits.proto.

Each returns the op proto, ready for `Session.send(op)`; the `Session` methods of the same names build and send
in one call. Coordinates are pixels of frame `frame` (space="frame") or reference-frame pixels (space="atlas").
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar, overload

from vatlas_wire.v1 import edits_pb2

from .images import ImageSource, encode_image, image_size

Point = Sequence[float]
Color = str | Sequence[float]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_HEX_COLOR = re.compile(r"^#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def new_op_id(kind: str = "op") -> str:
    """A fresh op id such as ``stroke-1f3a9c0b2d4e`` (unique across clients)."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def _check_id(op_id: str) -> str:
    if not _ID_PATTERN.match(op_id):
        raise ValueError(f"op id must be 1..64 chars of [A-Za-z0-9_.:-], got {op_id!r}")
    return op_id


def to_rgba(color: Color) -> list[float]:
    """"#rrggbb[aa]" or 3/4 floats in [0, 1] -> RGBA floats in [0, 1]."""
    if isinstance(color, str):
        if not _HEX_COLOR.match(color):
            raise ValueError(f"colour must be '#rrggbb' or '#rrggbbaa', got {color!r}")
        digits = color[1:]
        values = [int(digits[i : i + 2], 16) / 255.0 for i in range(0, len(digits), 2)]
    else:
        values = [float(c) for c in color]
    if len(values) == 3:
        values.append(1.0)
    if len(values) != 4 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"colour must have 3 or 4 components in [0, 1], got {color!r}")
    return values


def _vec2(point: Point) -> edits_pb2.Vec2:
    if len(point) != 2:
        raise ValueError(f"a point is (x, y), got {point!r}")
    return edits_pb2.Vec2(x=float(point[0]), y=float(point[1]))


def _placed(kind: str, op_id: str | None, space: str, frame: int | None) -> edits_pb2.EditOp:
    if space not in ("frame", "atlas"):
        raise ValueError(f"space must be 'frame' or 'atlas', got {space!r}")
    if space == "frame" and frame is None:
        raise ValueError(f"{kind} in frame space needs frame=<index>")
    op = edits_pb2.EditOp(id=_check_id(op_id or new_op_id(kind)), type=kind, space=space)
    if frame is not None:
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        op.frame = int(frame)
    return op


def _set_optional(op: edits_pb2.EditOp, **values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(op, name, value)


def stroke(
    points: Iterable[Point],
    *,
    frame: int | None = None,
    space: str = "frame",
    width: float = 8.0,
    color: Color = (1.0, 1.0, 1.0, 1.0),
    hardness: float | None = None,
    mode: str = "paint",
    roi_region: int | None = None,
    id: str | None = None,
) -> edits_pb2.EditOp:
    """A brush stroke along a polyline (mode "paint" or "erase"); `roi_region` k keeps it to the ROI's k-th
    polygon (1-based; every object op takes it)."""
    if mode not in ("paint", "erase"):
        raise ValueError(f"stroke mode must be 'paint' or 'erase', got {mode!r}")
    op = _placed("stroke", id, space, frame)
    op.points.extend(_vec2(p) for p in points)
    op.width = float(width)
    op.color.extend(to_rgba(color))
    op.mode = mode
    _set_optional(op, hardness=hardness, roi_region=roi_region)
    return op


@overload
def texture(
    image: ImageSource, *, frame: int, rect: Sequence[float], space: Literal["frame"] = "frame",
    opacity: float | None = None, roi_region: int | None = None, id: str | None = None,
) -> edits_pb2.EditOp: ...


@overload
def texture(
    image: ImageSource, *, position: Point, space: Literal["atlas"] = "atlas", scale: float | None = None,
    rotation: float | None = None, opacity: float | None = None, roi_region: int | None = None,
    id: str | None = None,
) -> edits_pb2.EditOp: ...


def texture(
    image: ImageSource,
    *,
    frame: int | None = None,
    rect: Sequence[float] | None = None,
    position: Point | None = None,
    space: str | None = None,
    scale: float | None = None,
    rotation: float | None = None,
    opacity: float | None = None,
    roi_region: int | None = None,
    id: str | None = None,
) -> edits_pb2.EditOp:
    """An image pasted onto the surface, in one of two forms:

    - ``texture(image, frame=N, rect=[x, y, w, h])``: on frame N at that rectangle (both are required);
    - ``texture(image, position=(x, y))``: centred there in atlas space (reference-frame pixels, no frame),
      sized by ``scale`` (image pixels times scale) and turned by ``rotation``.

    `space` follows from the form; giving it ("frame" or "atlas") only checks that it agrees.
    """
    if space is None:
        space = "atlas" if position is not None and rect is None and frame is None else "frame"
    if space == "frame":
        if position is not None:
            raise ValueError("a texture on a frame is placed with rect=[x, y, w, h]; position=(x, y) is for "
                             "atlas space (leave frame out)")
        if rect is None or frame is None:
            raise ValueError("texture needs frame=<index> and rect=[x, y, w, h] (on a frame), or only "
                             "position=(x, y) (atlas space, reference-frame pixels)")
        if scale is not None:
            raise ValueError("scale is for atlas-space textures; on a frame the rect sets the size")
    elif space == "atlas" and (rect is not None or position is None):
        raise ValueError("an atlas-space texture is placed with position=(x, y) (reference-frame pixels), "
                         "not rect")
    op = _placed("texture", id, space, frame)
    op.image = encode_image(image)
    if rect is not None:
        if len(rect) != 4:
            raise ValueError(f"rect is [x, y, w, h], got {rect!r}")
        op.rect.extend(float(v) for v in rect)
    if position is not None:
        op.position.CopyFrom(_vec2(position))
    _set_optional(op, scale=scale, rotation=rotation, opacity=opacity, roi_region=roi_region)
    return op


def adjustment(
    points: Iterable[Point],
    *,
    frame: int | None = None,
    space: str = "frame",
    region: str = "polygon",
    width: float | None = None,
    exposure: float | None = None,
    contrast: float | None = None,
    saturation: float | None = None,
    hue: float | None = None,
    temperature: float | None = None,
    roi_region: int | None = None,
    id: str | None = None,
) -> edits_pb2.EditOp:
    """A colour adjustment inside a polygon (region="polygon") or along a brush path of `width` ("path")."""
    if region not in ("polygon", "path"):
        raise ValueError(f"adjustment region must be 'polygon' or 'path', got {region!r}")
    op = _placed("adjustment", id, space, frame)
    op.points.extend(_vec2(p) for p in points)
    op.region = region
    _set_optional(op, width=width, exposure=exposure, contrast=contrast, saturation=saturation, hue=hue,
                  temperature=temperature, roi_region=roi_region)
    return op


def sticker(
    image: ImageSource,
    *,
    frame: int,
    position: Point,
    size: Sequence[float] | None = None,
    follow_scale: bool = True,
    follow_rotation: bool = True,
    rotation: float | None = None,
    opacity: float | None = None,
    roi_region: int | None = None,
    id: str | None = None,
) -> edits_pb2.EditOp:
    """A rigid image tracked through the clip, anchored at point `position` of frame `frame`, `size` = [w, h]
    pixels of that frame (default: the image's own size in pixels)."""
    data = encode_image(image)
    if size is None:
        size = image_size(data)
    if len(size) != 2 or not all(float(v) > 0 for v in size):
        raise ValueError(f"sticker size is [w, h] in frame pixels, both > 0, got {size!r}")
    op = _placed("sticker", id, "frame", frame)
    op.image = data
    op.position.CopyFrom(_vec2(position))
    op.size.extend(float(v) for v in size)
    op.follow_scale = follow_scale
    op.follow_rotation = follow_rotation
    _set_optional(op, rotation=rotation, opacity=opacity, roi_region=roi_region)
    return op


def update(target: str, *, id: str | None = None, **properties: Any) -> edits_pb2.EditOp:
    """Change properties of op `target` (e.g. ``update("stroke-1", opacity=0.5, color="#ff0000")``)."""
    if not properties:
        raise ValueError("update needs at least one property to set")
    changes = edits_pb2.EditOp()
    for name, value in properties.items():
        if name in ("id", "type", "target", "set"):
            raise ValueError(f"update cannot set {name!r}")
        if name not in edits_pb2.EditOp.DESCRIPTOR.fields_by_name:
            raise ValueError(f"EditOp has no property {name!r}")
        if name == "color":
            changes.color.extend(to_rgba(value))
        elif name == "image":
            changes.image = encode_image(value)
        elif name in ("position",):
            changes.position.CopyFrom(_vec2(value))
        elif name == "points":
            changes.points.extend(_vec2(p) for p in value)
        elif name in ("rect", "size"):
            getattr(changes, name).extend(float(v) for v in value)
        else:
            setattr(changes, name, value)
    op = edits_pb2.EditOp(id=_check_id(id or new_op_id("update")), type="update", target=target)
    op.set.CopyFrom(changes)
    return op


def delete(target: str, *, id: str | None = None) -> edits_pb2.EditOp:
    """Remove op `target`'s object."""
    return edits_pb2.EditOp(id=_check_id(id or new_op_id("delete")), type="delete", target=target)


def restore(target: str, *, id: str | None = None) -> edits_pb2.EditOp:
    """Bring back a deleted object."""
    return edits_pb2.EditOp(id=_check_id(id or new_op_id("restore")), type="restore", target=target)


def set_visible(target: str, visible: bool, *, id: str | None = None) -> edits_pb2.EditOp:
    """Show or hide op `target`'s object without deleting it."""
    return edits_pb2.EditOp(
        id=_check_id(id or new_op_id("visible")), type="set_visible", target=target, visible=visible
    )


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _with_signature_of(builder: Callable[..., Any]) -> Callable[[_Method], _Method]:
    """Give a Session method that forwards **kwargs to `builder` the builder's signature (plus `timeout`), so
    help() and editors show the real keywords and their defaults instead of **kwargs."""
    def decorate(method: _Method) -> _Method:
        params = list(inspect.signature(builder).parameters.values())
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        timeout = inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation="float | None")
        method.__signature__ = inspect.Signature([self_param, *params, timeout],  # type: ignore[attr-defined]
                                                 return_annotation="Ack")
        method.__doc__ = f"{(method.__doc__ or '').strip()}\n\n{inspect.getdoc(builder)}"
        return method
    return decorate
