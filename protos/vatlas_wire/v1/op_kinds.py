"""The op kinds and the fields each object kind takes, read from the options on `vatlas.v1.EditOp` (edits.proto
declares them once; the server's validation, the Python client and the web client's generated types use them)."""

from __future__ import annotations

from vatlas_wire.v1 import edits_pb2

_OPTIONS = edits_pb2.EditOp.DESCRIPTOR.GetOptions()
OBJECT_TYPES: tuple[str, ...] = tuple(_OPTIONS.Extensions[edits_pb2.object_kinds])
CONTROL_TYPES: tuple[str, ...] = tuple(_OPTIONS.Extensions[edits_pb2.control_kinds])
OP_TYPES = OBJECT_TYPES + CONTROL_TYPES


def _kinds(field: object) -> list[str]:
    return list(field.GetOptions().Extensions[edits_pb2.kinds])  # type: ignore[attr-defined]


# Fields each object kind may carry (besides id and type), in the proto's order.
FIELDS_BY_TYPE: dict[str, tuple[str, ...]] = {
    kind: tuple(f.name for f in edits_pb2.EditOp.DESCRIPTOR.fields if kind in _kinds(f) or "*" in _kinds(f))
    for kind in OBJECT_TYPES
}
