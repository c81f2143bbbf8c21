"""Generate the web client's TypeScript message types and decoders from the vatlas.v1 proto descriptors.

Two files, both under clients/web/src/generated/:

* messages.ts: the msgpack mirror form used on the WebSocket (see protos/vatlas_wire/v1/mirror.py): field names as
  in the proto, `Vec2` as `[x, y]`, bytes as `Uint8Array`, a oneof member as an ordinary key of which at most
  one is set. Every field is optional because the mirror leaves out unset and default-valued fields; this is
  the form the client builds what it sends in.
* received.ts: what the server sends (WsResponse and everything it carries) as the client reads it, with
  decoders that put back every proto3 default the mirror left out, so readers need no fallbacks. Fields with
  presence (`optional` scalars, messages, oneof members) stay undefined when unset.

Usage: python scripts/gen_ts_types.py [--check] [--out PATH]  (received.ts is written beside PATH)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "clients" / "web" / "src" / "generated" / "messages.ts"
RECEIVED_NAME = "received.ts"
# The root of everything the server sends on the WebSocket.
RECEIVED_ROOT = "vatlas.v1.WsResponse"
# An EditOp keeps exactly the fields it was sent with: an update's `set` means "only these fields", the
# client's own ops (sparse) and the server's share one document, and ops go back to the server as they came.
KEPT_AS_SENT = frozenset({"vatlas.v1.EditOp"})
# Dependency order, so the file reads top-down like the protos.
PROTO_MODULES = ("common_pb2", "edits_pb2", "bundles_pb2", "render_pb2", "sessions_pb2")

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "number",
    FieldDescriptor.TYPE_FLOAT: "number",
    FieldDescriptor.TYPE_INT32: "number",
    FieldDescriptor.TYPE_UINT32: "number",
    FieldDescriptor.TYPE_SINT32: "number",
    FieldDescriptor.TYPE_FIXED32: "number",
    FieldDescriptor.TYPE_SFIXED32: "number",
    # msgpack decodes 64-bit integers below 2^53 as numbers; sequence numbers never get near that.
    FieldDescriptor.TYPE_INT64: "number",
    FieldDescriptor.TYPE_UINT64: "number",
    FieldDescriptor.TYPE_SINT64: "number",
    FieldDescriptor.TYPE_FIXED64: "number",
    FieldDescriptor.TYPE_SFIXED64: "number",
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "Uint8Array",
}


def _load_files() -> list[FileDescriptor]:
    import importlib

    return [importlib.import_module(f"vatlas_wire.v1.{name}").DESCRIPTOR for name in PROTO_MODULES]


def _proto_glob() -> str:
    """Where the protos live, as their import paths name them (e.g. protos/vatlas/v1/*.proto)."""
    folder = _load_files()[0].name.rsplit("/", 1)[0]
    return f"protos/{folder}/*.proto"


def _ts_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message.GetOptions().map_entry:
            key = _ts_type(message.fields_by_name["key"])
            key = "string" if key != "number" else "number"
            return f"Record<{key}, {_ts_type(message.fields_by_name['value'])}>"
        base = message.name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        base = field.enum_type.name
    else:
        base = _SCALARS[field.type]
    if _is_repeated(field) and not (field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry):
        return f"{base}[]"
    return base


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 6 exposes is_repeated; older versions only the label.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _real_oneofs(message: Descriptor) -> list:
    # proto3 `optional` fields live in synthetic one-member oneofs; those are plain optional fields here.
    return [oneof for oneof in message.oneofs if not (len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}")]


def _message(message: Descriptor) -> list[str]:
    if message.GetOptions().map_entry:
        return []
    if message.full_name == "vatlas.v1.Vec2":
        return ["/** vatlas.v1.Vec2 travels as [x, y]. */", "export type Vec2 = [number, number];", ""]
    lines = [f"/** vatlas.v1.{message.name} */"]
    oneofs = _real_oneofs(message)
    if not message.fields:
        return [*lines, f"export type {message.name} = Record<string, never>;", ""]
    lines.append(f"export interface {message.name} {{")
    oneof_of = {field.name: oneof.name for oneof in oneofs for field in oneof.fields}
    for field in message.fields:
        note = f"  // oneof {oneof_of[field.name]}" if field.name in oneof_of else ""
        lines.append(f"  {field.name}?: {_ts_type(field)};{note}")
    lines.append("}")
    for oneof in oneofs:
        const = f"{message.name}_{oneof.name}".upper()
        members = ", ".join(f'"{field.name}"' for field in oneof.fields)
        lines.append(f"/** Members of oneof `{oneof.name}` in {message.name} (set at most one). */")
        lines.append(f"export const {const} = [{members}] as const;")
    lines.append("")
    return lines


def _enum(enum: EnumDescriptor) -> list[str]:
    lines = [f"/** vatlas.v1.{enum.name} */", f"export const {enum.name} = {{"]
    lines += [f"  {value.name}: {value.number}," for value in enum.values]
    lines += ["} as const;", f"export type {enum.name} = (typeof {enum.name})[keyof typeof {enum.name}];", ""]
    return lines


def generate() -> str:
    """Return the TypeScript source for every message and enum of vatlas.v1."""
    out = [
        f"// GENERATED by scripts/gen_ts_types.py from {_proto_glob()}. Do not edit by hand.",
        "// Msgpack mirror form: proto field names, Vec2 as [x, y], bytes as Uint8Array, unset fields left out.",
        "/* eslint-disable */",
        "",
    ]
    for file in _load_files():
        out.append(f"// ---- {file.name} ----")
        out.append("")
        for enum in file.enum_types_by_name.values():
            out += _enum(enum)
        for message in file.message_types_by_name.values():
            out += _message(message)
    out += _op_kinds()
    return "\n".join(out).rstrip() + "\n"


def _op_kinds() -> list[str]:
    """The op kinds and each object kind's fields, as edits.proto's options declare them (vatlas.v1.op_kinds)."""
    from vatlas_wire.v1.op_kinds import CONTROL_TYPES, FIELDS_BY_TYPE, OBJECT_TYPES

    def quoted(names: tuple[str, ...]) -> str:
        return ", ".join(f'"{n}"' for n in names)

    lines = ["// ---- op kinds (EditOp options in edits.proto) ----", "",
             f"export const OBJECT_TYPES = [{quoted(OBJECT_TYPES)}] as const;",
             f"export const CONTROL_TYPES = [{quoted(CONTROL_TYPES)}] as const;",
             "/** The fields each object kind may carry (besides id and type). */",
             "export const FIELDS_BY_TYPE: Readonly<Record<(typeof OBJECT_TYPES)[number], readonly string[]>> = {"]
    lines += [f"  {kind}: [{quoted(fields)}]," for kind, fields in FIELDS_BY_TYPE.items()]
    return lines + ["};", ""]


# ---------------------------------------------------------------- received.ts: decoders that fill defaults

_DEFAULTS = {"number": "num", "string": "str", "boolean": "bool", "Uint8Array": "bytes"}

_RECEIVED_HELPERS = """\
type Fields = Record<string, unknown>;

// The server's mirror is strict about types, so a value of another type only comes from a broken peer: it
// reads as the default, like a missing one.
const fields = (v: unknown): Fields => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Fields) : {});
const num = (v: unknown): number => (typeof v === "number" ? v : 0);
const str = (v: unknown): string => (typeof v === "string" ? v : "");
const bool = (v: unknown): boolean => v === true;
const bytes = (v: unknown): Uint8Array => (v instanceof Uint8Array ? v : new Uint8Array());
const vec2 = (v: unknown): Vec2 => (Array.isArray(v) ? [num(v[0]), num(v[1])] : [0, 0]);
const list = <T>(v: unknown, item: (x: unknown) => T): T[] => (Array.isArray(v) ? v.map(item) : []);
const record = <T>(v: unknown, item: (x: unknown) => T): Record<string, T> =>
  Object.fromEntries(Object.entries(fields(v)).map(([key, value]) => [key, item(value)]));
const present = (v: unknown): boolean => v !== undefined && v !== null;
"""


def _received_messages() -> list[Descriptor]:
    """Messages reachable from WsResponse, in the protos' order (map entries and Vec2 left out)."""
    by_name = {m.full_name: m for f in _load_files() for m in f.message_types_by_name.values()}
    reached: set[str] = set()
    todo = [RECEIVED_ROOT]
    while todo:
        name = todo.pop()
        if name in reached or name == "vatlas.v1.Vec2":
            continue
        reached.add(name)
        if name in KEPT_AS_SENT:
            continue
        for field in by_name[name].fields:
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            message = field.message_type
            if message.GetOptions().map_entry:
                message = message.fields_by_name["value"].message_type
                if message is None:
                    continue
            todo.append(message.full_name)
    return [m for m in by_name.values() if m.full_name in reached]


def _has_presence(field: FieldDescriptor) -> bool:
    if _is_repeated(field):
        return False
    return field.type == FieldDescriptor.TYPE_MESSAGE or field.containing_oneof is not None


def _item_decoder(field: FieldDescriptor) -> str:
    """The decoder of one value of `field` (one element when repeated)."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "vatlas.v1.Vec2":
            return "vec2"
        return f"decode{field.message_type.name}"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "num"
    return _DEFAULTS[_SCALARS[field.type]]


def _value_decoder(field: FieldDescriptor, value: str) -> str:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return f"record({value}, {_item_decoder(message.fields_by_name['value'])})"
    if _is_repeated(field):
        return f"list({value}, {_item_decoder(field)})"
    return f"{_item_decoder(field)}({value})"


def _decoder(message: Descriptor) -> list[str]:
    name = message.name
    if message.full_name in KEPT_AS_SENT:
        return [f"/** vatlas.v1.{name} as received: kept exactly as sent (see the note at the top). */",
                f"export const decode{name} = (raw: unknown): {name} => fields(raw) as {name};", ""]
    if not message.fields:
        return [f"/** vatlas.v1.{name} as received. */", f"export type {name} = Record<string, never>;",
                f"export const decode{name} = (_raw: unknown): {name} => ({{}});", ""]
    lines = [f"/** vatlas.v1.{name} as received. */", f"export interface {name} {{"]
    for field in message.fields:
        mark = "?" if _has_presence(field) else ""
        lines.append(f"  {field.name}{mark}: {_ts_type(field)};")
    lines += ["}", "", f"export function decode{name}(raw: unknown): {name} {{", "  const m = fields(raw);"]
    filled = [f"{f.name}: {_value_decoder(f, f'm.{f.name}')}," for f in message.fields if not _has_presence(f)]
    optional = [f for f in message.fields if _has_presence(f)]
    if not optional:
        return [*lines, "  return {", *(f"    {line}" for line in filled), "  };", "}", ""]
    lines += [f"  const out: {name} = {{", *(f"    {line}" for line in filled), "  };"] if filled else [
        f"  const out: {name} = {{}};"]
    for field in optional:
        lines.append(f"  if (present(m.{field.name})) out.{field.name} = {_value_decoder(field, f'm.{field.name}')};")
    return [*lines, "  return out;", "}", ""]


def generate_received() -> str:
    """Return the TypeScript source of received.ts: the received form of every message the server sends."""
    messages = _received_messages()
    kept = sorted(m.name for m in messages if m.full_name in KEPT_AS_SENT)
    out = [
        f"// GENERATED by scripts/gen_ts_types.py from {_proto_glob()}. Do not edit by hand.",
        "// What the server sends, as the client reads it. The mirror leaves out every field that holds its proto3",
        '// default; the decoders put the defaults back (0, "", false, empty bytes, [], {}), so readers need no',
        "// fallbacks. Fields with presence stay undefined when unset: `optional` scalars, messages, oneof members.",
        f"// {', '.join(kept)} stays as sent: an update's `set` names only the fields it changes, the client's own",
        "// ops and the server's share one document, and ops go back to the server as they came.",
        "/* eslint-disable */",
        "",
        f'import type {{ {", ".join([*kept, "Vec2"])} }} from "./messages";',
        f'export type {{ {", ".join([*kept, "Vec2"])} }} from "./messages";',
        "",
        _RECEIVED_HELPERS,
    ]
    for message in messages:
        out += _decoder(message)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file on disk is not current")
    args = parser.parse_args(argv)
    outputs = {args.out: generate(), args.out.with_name(RECEIVED_NAME): generate_received()}
    if args.check:
        stale = [path for path, text in outputs.items()
                 if not path.exists() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python scripts/gen_ts_types.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
