"""The msgpack mirror of the `vatlas.v1` protos: one generic converter driven by message descriptors.

Mirror form (what WebSocket clients send and receive, and what the edit engine takes as ops):

* a message is a map keyed by the proto field names (snake_case, exactly as in the .proto);
* ``vatlas.v1.Vec2`` is a two-element array ``[x, y]`` wherever it appears;
* ``bytes`` fields are msgpack bin, strings are msgpack str, enums are plain integers;
* a oneof is the single key of the member that is set (``{"op": {...}}``), never more than one;
* unset fields are left out: fields with presence (``optional``, messages, oneof members) when not set,
  implicit proto3 scalars when they hold their default (0, "", false, empty bytes), empty repeated/map
  fields. A ``nil`` value on input means "not set" too (JavaScript encoders turn ``undefined`` into nil);
* repeated fields are arrays, map fields are maps.

Input is checked strictly: unknown keys, wrong types, out-of-range integers, two members of one oneof and
nesting deeper than ``MAX_DEPTH`` raise `WireError` naming the field path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgpack
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

import vatlas_wire.v1.bundles_pb2
import vatlas_wire.v1.common_pb2
import vatlas_wire.v1.edits_pb2
import vatlas_wire.v1.render_pb2
import vatlas_wire.v1.sessions_pb2  # noqa: F401 - registers every vatlas.v1 message in the default pool

PACKAGE = "vatlas.v1"
VEC2 = "vatlas.v1.Vec2"
MAX_DEPTH = 24

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_FLOAT32_MAX = 3.4028234663852886e38


class WireError(ValueError):
    """A mirror-form message does not match its proto schema (the message names the field path)."""


def message_classes() -> dict[str, type[Message]]:
    """Every message class of the vatlas.v1 package by full name (map entries left out)."""
    pool = descriptor_pool.Default()
    classes: dict[str, type[Message]] = {}
    for module in (vatlas_wire.v1.common_pb2, vatlas_wire.v1.edits_pb2, vatlas_wire.v1.bundles_pb2, vatlas_wire.v1.render_pb2,
                   vatlas_wire.v1.sessions_pb2):
        file_desc = pool.FindFileByName(module.DESCRIPTOR.name)
        for desc in _walk(file_desc.message_types_by_name.values()):
            classes[desc.full_name] = message_factory.GetMessageClass(desc)
    return classes


def _walk(descs: Any) -> Iterator[Descriptor]:
    for desc in descs:
        if desc.GetOptions().map_entry:
            continue
        yield desc
        yield from _walk(desc.nested_types)


# ---------------------------------------------------------------- proto -> mirror


def to_mirror(msg: Message) -> dict[str, Any]:
    """A proto message as a mirror-form dict (see the module docstring)."""
    return _message_to_mirror(msg)


def _message_to_mirror(msg: Message) -> Any:
    if msg.DESCRIPTOR.full_name == VEC2:
        return [float(msg.x), float(msg.y)]  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():  # only set / non-default fields, in field-number order
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value_to_mirror(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value_to_mirror(field, v) for v in value]
        else:
            out[field.name] = _value_to_mirror(field, value)
    return out


def _value_to_mirror(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_to_mirror(value)
    if field.type in _FLOAT_TYPES:
        return float(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


# ---------------------------------------------------------------- mirror -> proto


def from_mirror(data: Any, message_class: type[Message]) -> Message:
    """Build a proto message from its mirror form; raises WireError on any mismatch."""
    msg = message_class()
    _fill(msg, data, msg.DESCRIPTOR.name, 0)
    return msg


def _fill(msg: Message, data: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    desc = msg.DESCRIPTOR
    if desc.full_name == VEC2:
        if not isinstance(data, (list, tuple)) or len(data) != 2:
            raise WireError(f"{path}: expected [x, y]")
        msg.x = _float(data[0], f"{path}[0]", FieldDescriptor.TYPE_FLOAT)  # type: ignore[attr-defined]
        msg.y = _float(data[1], f"{path}[1]", FieldDescriptor.TYPE_FLOAT)  # type: ignore[attr-defined]
        return
    if not isinstance(data, dict):
        raise WireError(f"{path}: expected a map, got {_type_name(data)}")
    seen_oneofs: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise WireError(f"{path}: field names must be strings, got {_type_name(key)}")
        field = desc.fields_by_name.get(key)
        if field is None:
            raise WireError(f"{path}: unknown field {key!r}")
        if value is None:
            continue
        fpath = f"{path}.{key}"
        oneof = field.containing_oneof
        if oneof is not None and not _is_synthetic(oneof):
            if oneof.name in seen_oneofs:
                raise WireError(f"{path}: oneof {oneof.name!r} has both {seen_oneofs[oneof.name]!r} and {key!r}")
            seen_oneofs[oneof.name] = key
        if _is_map(field):
            _fill_map(msg, field, value, fpath, depth)
        elif field.is_repeated:
            if not isinstance(value, (list, tuple)):
                raise WireError(f"{fpath}: expected an array, got {_type_name(value)}")
            target = getattr(msg, key)
            for i, item in enumerate(value):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill(target.add(), item, f"{fpath}[{i}]", depth + 1)
                else:
                    target.append(_scalar(field, item, f"{fpath}[{i}]"))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, key)
            sub.SetInParent()  # an empty map still marks the field (or oneof member) as set
            _fill(sub, value, fpath, depth + 1)
        else:
            setattr(msg, key, _scalar(field, value, fpath))


def _fill_map(msg: Message, field: FieldDescriptor, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, dict):
        raise WireError(f"{path}: expected a map, got {_type_name(value)}")
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    target = getattr(msg, field.name)
    for k, v in value.items():
        key = _scalar(key_field, k, f"{path}<key>")
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(target[key], v, f"{path}[{k!r}]", depth + 1)
        else:
            target[key] = _scalar(value_field, v, f"{path}[{k!r}]")


def _is_synthetic(oneof: Any) -> bool:
    # proto3 `optional` fields live in a one-member synthetic oneof named "_<field>"
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    ftype = field.type
    if ftype in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{path}: expected an integer, got {_type_name(value)}")
        lo, hi = _INT_RANGES[ftype]
        if not lo <= value <= hi:
            raise WireError(f"{path}: {value} is out of range [{lo}, {hi}]")
        return value
    if ftype in _FLOAT_TYPES:
        return _float(value, path, ftype)
    if ftype == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise WireError(f"{path}: expected a boolean, got {_type_name(value)}")
        return value
    if ftype == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise WireError(f"{path}: expected a string, got {_type_name(value)}")
        return value
    if ftype == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise WireError(f"{path}: expected binary data, got {_type_name(value)}")
        return bytes(value)
    raise WireError(f"{path}: unsupported field type {ftype}")


def _float(value: Any, path: str, ftype: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{path}: expected a number, got {_type_name(value)}")
    result = float(value)
    # float32 fields would silently turn huge values into inf; NaN passes here and is judged by validators
    if ftype == FieldDescriptor.TYPE_FLOAT and math.isfinite(result) and abs(result) > _FLOAT32_MAX:
        raise WireError(f"{path}: {value} does not fit a 32-bit float")
    return result


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


# ---------------------------------------------------------------- msgpack framing


def pack(msg: Message) -> bytes:
    """A proto message as msgpack bytes of its mirror form."""
    return msgpack.packb(to_mirror(msg), use_bin_type=True)


def unpack(data: bytes, message_class: type[Message]) -> Message:
    """msgpack bytes of a mirror form -> proto message; raises WireError on bad bytes or schema mismatch."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError) as exc:
        raise WireError(f"not valid msgpack: {exc}") from None
    except TypeError:  # a map key msgpack cannot hash (an array or a map), e.g. the frame 81 91 00 00
        raise WireError("not valid msgpack: map keys must be strings or numbers") from None
    return from_mirror(obj, message_class)


def pack_dict(obj: Any) -> bytes:
    """msgpack of an already-mirrored value (ops in the op log)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack_dict(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
