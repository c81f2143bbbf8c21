"""Edit documents: ``{"version": 1, "ops": [...]}`` as JSON on disk or msgpack on the wire.

On disk an op's `image` is a path relative to the document or a ``data:`` URI; in memory and in msgpack it is
the encoded image bytes. Loading validates every op (CoreError names the op and its index).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
from vatlas.server.edits.ops import OpLimits, validate_op
from vatlas.server.errors import CoreError

from vatlas.errors import VatlasError

DOCUMENT_VERSION = 1
IMAGE_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


class DocumentError(VatlasError):
    """An edit document is missing, malformed, of another version, or holds an invalid op."""


def _mime(data: bytes) -> str:
    for magic, mime in IMAGE_MIME.items():
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def image_to_data_uri(data: bytes) -> str:
    return f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def resolve_image(ref: Any, base_dir: Path | None, max_bytes: int) -> bytes:
    """A path (relative to the document), a data: URI, or bytes -> image bytes."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return bytes(ref)
    if not isinstance(ref, str) or not ref:
        raise DocumentError("image must be a path or a data: URI")
    if ref.startswith("data:"):
        header, sep, payload = ref.partition(",")
        if not sep or not header.endswith(";base64"):
            raise DocumentError("image data: URI must be base64 (data:image/png;base64,...)")
        if len(payload) > max_bytes * 4 // 3 + 8:
            raise DocumentError(f"image data: URI is larger than {max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DocumentError(f"image data: URI is not valid base64 ({exc})") from None
    path = Path(ref)
    if not path.is_absolute():
        if base_dir is None:
            raise DocumentError(f"image path {ref!r} is relative but the document has no folder")
        path = base_dir / path
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(f"image {path} is {size} bytes (limit {max_bytes})")
        return path.read_bytes()
    except OSError as exc:
        raise DocumentError(f"image {path}: {exc.strerror or exc}") from None


def parse_document(doc: Any, *, base_dir: Path | None = None, limits: OpLimits | None = None,
                   name: str = "document") -> list[dict[str, Any]]:
    """A decoded document mapping -> validated ops (images as bytes)."""
    limits = limits or OpLimits()
    if not isinstance(doc, dict):
        raise DocumentError(f"{name}: an edit document is an object {{\"version\": 1, \"ops\": [...]}}")
    if doc.get("version") != DOCUMENT_VERSION:
        raise DocumentError(f"{name}: edit document version {doc.get('version')!r} is not supported "
                            f"(this vatlas reads version {DOCUMENT_VERSION})")
    ops = doc.get("ops")
    if not isinstance(ops, list):
        raise DocumentError(f"{name}: 'ops' must be a list")
    out = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise DocumentError(f"{name}: op #{i} is not an object")
        op = dict(op)
        if "image" in op and op["image"] not in (None, "", b""):
            try:
                op["image"] = resolve_image(op["image"], base_dir, limits.max_image_bytes)
            except DocumentError as exc:
                raise DocumentError(f"{name}: op #{i} ({op.get('id', '?')}): {exc}") from None
        if isinstance(op.get("set"), dict) and op["set"].get("image") not in (None, "", b""):
            op["set"] = dict(op["set"])
            op["set"]["image"] = resolve_image(op["set"]["image"], base_dir, limits.max_image_bytes)
        try:
            out.append(validate_op(op, limits))
        except CoreError as exc:
            raise DocumentError(f"{name}: op #{i} ({exc.op_id or '?'}): {exc.message}") from None
    return out


def load_document(path: str | Path, limits: OpLimits | None = None) -> list[dict[str, Any]]:
    """Read a JSON edit document; raises DocumentError naming the file and the op at fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DocumentError(f"{path}: not a UTF-8 JSON file") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_document(doc, base_dir=path.parent, limits=limits, name=str(path))


def _jsonable(op: dict[str, Any]) -> dict[str, Any]:
    out = dict(op)
    if isinstance(out.get("image"), (bytes, bytearray)):
        out["image"] = image_to_data_uri(bytes(out["image"]))
    if isinstance(out.get("set"), dict):
        out["set"] = _jsonable(out["set"])
    return out


def document_json(ops: Iterable[dict[str, Any]]) -> str:
    """Ops -> a self-contained JSON document (images as data: URIs)."""
    return json.dumps({"version": DOCUMENT_VERSION, "ops": [_jsonable(op) for op in ops]}, indent=1)


def save_document(path: str | Path, ops: Iterable[dict[str, Any]]) -> Path:
    """Write a JSON document atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(document_json(ops), encoding="utf-8")
    tmp.replace(path)
    return path


def document_msgpack(ops: Iterable[dict[str, Any]]) -> bytes:
    """Ops -> msgpack bytes (images stay binary)."""
    return msgpack.packb({"version": DOCUMENT_VERSION, "ops": list(ops)}, use_bin_type=True)


def parse_msgpack(data: bytes, limits: OpLimits | None = None) -> list[dict[str, Any]]:
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise DocumentError(f"not a msgpack edit document ({exc})") from None
    return parse_document(doc, limits=limits, name="msgpack document")
