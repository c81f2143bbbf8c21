"""The proto <-> msgpack mirror (vatlas_wire.v1.mirror): every vatlas.v1 message round-trips, bad input is refused."""

from __future__ import annotations

import contextlib
import math
import random

import msgpack
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from vatlas_wire.v1 import common_pb2, edits_pb2, mirror, sessions_pb2

ALL_CLASSES = mirror.message_classes()


def _scalar_value(field: FieldDescriptor, rng: random.Random):
    t = field.type
    if t in (FieldDescriptor.TYPE_FLOAT,):
        return float(rng.choice([0.5, -3.25, 1024.0, 1e-3])) if rng.random() < 0.9 else 7.0
    if t == FieldDescriptor.TYPE_DOUBLE:
        return rng.uniform(-1e6, 1e6)
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(["a", "stroke", "ünïcode ✓", "x" * 40])
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    if t == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([1, 2**64 - 1, 12345678901234])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice([1, 2**32 - 1, 77])
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return rng.choice([-(2**31), 2**31 - 1, -5])
    return rng.choice([-(2**63), 2**63 - 1, 9])


def _populate(msg: Message, rng: random.Random, depth: int, oneof_pick: int) -> None:
    desc: Descriptor = msg.DESCRIPTOR
    chosen = {}
    for oneof in desc.oneofs:
        if len(oneof.fields) > 1 or oneof.name != "_" + oneof.fields[0].name:
            chosen[oneof.name] = oneof.fields[oneof_pick % len(oneof.fields)].name
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in chosen and chosen[oneof.name] != field.name:
            continue
        is_map = field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
        if is_map:
            target = getattr(msg, field.name)
            vf = field.message_type.fields_by_name["value"]
            for k in ("l1", "total"):
                target[k] = _scalar_value(vf, rng)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 2:
                continue
            if field.is_repeated:
                for _ in range(2):
                    _populate(getattr(msg, field.name).add(), rng, depth + 1, oneof_pick)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _populate(sub, rng, depth + 1, oneof_pick)
        elif field.is_repeated:
            getattr(msg, field.name).extend(_scalar_value(field, rng) for _ in range(3))
        else:
            setattr(msg, field.name, _scalar_value(field, rng))


def test_covers_every_message_of_the_package() -> None:
    names = set(ALL_CLASSES)
    for expected in ("vatlas.v1.EditOp", "vatlas.v1.WsRequest", "vatlas.v1.WsResponse", "vatlas.v1.FitProgress",
                     "vatlas.v1.RenderRequest", "vatlas.v1.Error", "vatlas.v1.ServerEvent", "vatlas.v1.Vec2"):
        assert expected in names
    for expected in ("vatlas.v1.UploadProgress", "vatlas.v1.UploadFrameRequest", "vatlas.v1.UploadFrame",
                     "vatlas.v1.FitInfo", "vatlas.v1.ListFitsResponse", "vatlas.v1.AttachFitRequest"):
        assert expected in names
    assert len(names) >= 40


def test_every_ws_call_and_bundles_rpc_has_a_handler() -> None:
    """The WebSocket mirrors the services: each WsRequest call is handled, each Bundles RPC is served."""
    from vatlas.server.doors.grpc_door import BundlesDoor
    from vatlas.server.doors.ws_door import WsConnection
    from vatlas_wire.v1 import bundles_pb2

    handled_inline = {"hello", "session", "stop_playback"}  # the connection's own handshake and streams
    for field in sessions_pb2.WsRequest.DESCRIPTOR.oneofs_by_name["call"].fields:
        assert field.name in handled_inline or hasattr(WsConnection, f"_call_{field.name}"), field.name
    for method in bundles_pb2.DESCRIPTOR.services_by_name["Bundles"].methods:
        assert method.name in BundlesDoor.__dict__, method.name


@pytest.mark.parametrize("full_name", sorted(ALL_CLASSES))
def test_every_message_round_trips_through_msgpack(full_name: str) -> None:
    cls = ALL_CLASSES[full_name]
    rng = random.Random(full_name)
    max_members = max([len(o.fields) for o in cls.DESCRIPTOR.oneofs] + [1])
    for pick in range(max_members):
        msg = cls()
        _populate(msg, rng, 0, pick)
        data = mirror.pack(msg)
        back = mirror.unpack(data, cls)
        assert back == msg, f"{full_name} (oneof pick {pick}) changed in the round trip"
        assert mirror.unpack(mirror.pack(back), cls) == msg
    empty = cls()
    assert mirror.to_mirror(empty) in ({}, [0.0, 0.0])
    assert mirror.unpack(mirror.pack(empty), cls) == empty


def test_mirror_form_details() -> None:
    op = edits_pb2.EditOp(id="s1", type="stroke", points=[edits_pb2.Vec2(x=1.5, y=2.0)], image=b"\x00\xff",
                          frame=0, position=edits_pb2.Vec2(x=3, y=4))
    op.set.opacity = 0.5
    form = mirror.to_mirror(op)
    assert form["points"] == [[1.5, 2.0]]
    assert form["position"] == [3.0, 4.0]
    assert form["frame"] == 0  # optional field set to its default is kept (presence)
    assert "width" not in form and "mode" not in form  # unset optional / default implicit fields left out
    assert form["set"] == {"opacity": 0.5}
    raw = msgpack.unpackb(mirror.pack(op), raw=True)
    assert isinstance(raw[b"image"], bytes)  # bin, not str
    assert isinstance(raw[b"type"], bytes) and raw[b"type"] == b"stroke"
    req = sessions_pb2.WsRequest(request_id=7, session=sessions_pb2.ClientMessage(undo=sessions_pb2.Undo()))
    assert mirror.to_mirror(req) == {"request_id": 7, "session": {"undo": {}}}  # oneof = one key, empty message kept
    hello = sessions_pb2.Hello(protocol_version=common_pb2.PROTOCOL_VERSION_CURRENT)
    assert mirror.to_mirror(hello) == {"protocol_version": 1}  # enum-valued numbers stay ints
    # nil means unset (JavaScript undefined)
    assert mirror.from_mirror({"id": "a", "width": None}, edits_pb2.EditOp) == edits_pb2.EditOp(id="a")


@pytest.mark.parametrize(
    ("data", "cls", "fragment"),
    [
        ({"bogus": 1}, edits_pb2.EditOp, "unknown field 'bogus'"),
        ({"id": 5}, edits_pb2.EditOp, "EditOp.id: expected a string"),
        ({"frame": 2**40}, edits_pb2.EditOp, "out of range"),
        ({"frame": True}, edits_pb2.EditOp, "expected an integer"),
        ({"frame": 1.5}, edits_pb2.EditOp, "expected an integer"),
        ({"width": "wide"}, edits_pb2.EditOp, "expected a number"),
        ({"width": 1e300}, edits_pb2.EditOp, "32-bit float"),
        ({"points": [[1, 2, 3]]}, edits_pb2.EditOp, "EditOp.points[0]: expected [x, y]"),
        ({"points": {"x": 1}}, edits_pb2.EditOp, "expected an array"),
        ({"image": "text"}, edits_pb2.EditOp, "expected binary data"),
        ({"follow_scale": 1}, edits_pb2.EditOp, "expected a boolean"),
        ({"set": [1]}, edits_pb2.EditOp, "expected a map"),
        ({"request_id": -1}, sessions_pb2.WsRequest, "out of range"),
        ({"hello": {}, "render": {}}, sessions_pb2.WsRequest, "oneof 'call'"),
        ({"teleport": {}}, sessions_pb2.WsRequest, "unknown field 'teleport'"),
        ([1, 2], sessions_pb2.WsRequest, "expected a map"),
        ({1: 2}, sessions_pb2.WsRequest, "field names must be strings"),
    ],
)
def test_bad_input_is_refused_with_the_field_path(data, cls, fragment: str) -> None:
    with pytest.raises(mirror.WireError) as info:
        mirror.from_mirror(data, cls)
    assert fragment in str(info.value)


def test_deep_nesting_and_garbage_bytes_are_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["set"] = {}
        node = node["set"]
    with pytest.raises(mirror.WireError, match="nested deeper"):
        mirror.from_mirror(deep, edits_pb2.EditOp)
    rng = random.Random(3)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        with contextlib.suppress(mirror.WireError):  # any other exception type fails the test
            mirror.unpack(blob, sessions_pb2.WsRequest)


def test_nan_passes_the_wire_and_is_left_to_validators() -> None:
    op = mirror.from_mirror({"width": float("nan")}, edits_pb2.EditOp)
    assert math.isnan(op.width)


def test_op_kinds_and_their_fields_come_from_the_proto_options() -> None:
    """edits.proto declares the kinds and each kind's fields once; the server validates by exactly that table."""
    from vatlas.server.edits.ops import FIELDS_BY_TYPE, OBJECT_TYPES, OP_TYPES
    from vatlas_wire.v1 import edits_pb2

    options = edits_pb2.EditOp.DESCRIPTOR.GetOptions()
    assert OBJECT_TYPES == tuple(options.Extensions[edits_pb2.object_kinds]) == ("stroke", "texture", "adjustment",
                                                                                  "sticker")
    assert OP_TYPES[len(OBJECT_TYPES):] == ("update", "delete", "restore", "set_visible")
    for field in edits_pb2.EditOp.DESCRIPTOR.fields:
        kinds = set(field.GetOptions().Extensions[edits_pb2.kinds])
        for kind in OBJECT_TYPES:
            assert (field.name in FIELDS_BY_TYPE[kind]) == bool(kinds & {kind, "*"}), (kind, field.name)
    assert "color" in FIELDS_BY_TYPE["stroke"] and "color" not in FIELDS_BY_TYPE["texture"]
