"""The session's edit document as the core sees it: live objects with last-writer-wins properties.

The edit engine keeps its own (GPU) state; this light mirror lets the core check ops against the current
state before they are sequenced (unknown target, duplicate id, delete of a deleted object), compute the
inverse of an op for undo, and build snapshots for late joiners, without reaching into the engine.

`state()` / `Document.from_state()` are the document as a compacted op log keeps it (L7): every object's
merged create op with its flags, in creation order. Deleted objects nobody can restore any more are dropped
by `compact()`; their ids stay taken (`retired`), so a retried create still answers ALREADY_EXISTS.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from vatlas.server.edits.ops import FIELDS_BY_TYPE, OBJECT_TYPES, check_object
from vatlas.server.errors import CoreError

# Values that mean "no change" for properties an object may not have set; used to undo an update that set a
# property the object did not carry before. Properties with no neutral value (width, colour, ...) are only
# restored when the object had them.
NEUTRAL_VALUES: dict[str, Any] = {
    "opacity": 1.0, "scale": 1.0, "rotation": 0.0, "exposure": 0.0, "contrast": 0.0, "saturation": 0.0,
    "hue": 0.0, "temperature": 0.0, "follow_scale": False, "follow_rotation": False, "visible": True,
    "mode": "paint", "hardness": 1.0, "z": 0.0,
}


@dataclass
class DocObject:
    op: dict[str, Any]  # the create op with every update merged in
    order: int  # creation order (document order)
    deleted: bool = False
    visible: bool = True
    seq: int = 0  # the sequence number of the op that created it
    # who made it: {"participant_id", "name", "color"} as they were then (the layer list's colour for people
    # who join later, or after the author left)
    author: dict[str, str] | None = None


class Document:
    """Live objects keyed by op id, in creation order."""

    def __init__(self) -> None:
        self.objects: dict[str, DocObject] = {}
        self.retired: set[str] = set()  # ids of deleted objects dropped by compact()
        self.image_bytes = 0  # image bytes the objects carry as uploaded (deleted ones kept here too)
        self._next_order = 0

    def check(self, op: dict[str, Any]) -> None:
        """Raise CoreError if a validated op cannot apply to the current state."""
        op_id = op.get("id", "")
        kind = op["type"]
        if kind in OBJECT_TYPES:
            if op_id in self.objects or op_id in self.retired:
                raise CoreError("ALREADY_EXISTS", f"an object with id {op_id!r} already exists", op_id)
            return
        target = op["target"]
        obj = self.objects.get(target)
        if obj is None:
            gone = " (it was deleted long ago)" if target in self.retired else ""
            raise CoreError("NOT_FOUND", f"{kind}: no object with id {target!r}{gone}", op_id)
        if kind == "delete" and obj.deleted:
            raise CoreError("FAILED_PRECONDITION", f"object {target!r} is already deleted", op_id)
        if kind == "restore" and not obj.deleted:
            raise CoreError("FAILED_PRECONDITION", f"object {target!r} is not deleted", op_id)
        if kind in ("update", "set_visible") and obj.deleted:
            raise CoreError("FAILED_PRECONDITION", f"object {target!r} is deleted", op_id)
        if kind == "update":
            obj_type = obj.op["type"]
            bad = sorted(set(op["set"]) - FIELDS_BY_TYPE[obj_type] - {"visible"})
            if bad:
                raise CoreError("INVALID_ARGUMENT", f"a {obj_type} has no {', '.join(bad)}", op_id)
            merged = {**obj.op, **{k: v for k, v in op["set"].items() if k != "visible"}}
            check_object(merged, op_id)

    def inverse(self, op: dict[str, Any]) -> dict[str, Any] | None:
        """The op that undoes `op` in the current state (call before applying it); None if nothing to undo."""
        kind = op["type"]
        if kind in OBJECT_TYPES:
            return {"type": "delete", "target": op["id"]}
        target = op["target"]
        obj = self.objects[target]
        if kind == "delete":
            return {"type": "restore", "target": target}
        if kind == "restore":
            return {"type": "delete", "target": target}
        if kind == "set_visible":
            return {"type": "set_visible", "target": target, "visible": obj.visible}
        previous: dict[str, Any] = {}
        for key in op["set"]:
            if key == "visible":
                previous[key] = obj.visible
            elif key in obj.op:
                previous[key] = copy.deepcopy(obj.op[key])
            elif key in NEUTRAL_VALUES:
                previous[key] = NEUTRAL_VALUES[key]
        return {"type": "update", "target": target, "set": previous} if previous else None

    def next_z(self) -> float:
        """The stacking position one above every object's (deleted ones too: a restore keeps its place)."""
        return float(math.floor(max((float(o.op.get("z", 0.0)) for o in self.objects.values()), default=0.0))) + 1.0

    def image_growth(self, op: dict[str, Any]) -> int:
        """How many image bytes a checked op adds to the document (negative: frees)."""
        if op["type"] in OBJECT_TYPES:
            return _image_bytes(op)
        if op["type"] == "update" and "image" in op["set"]:
            return len(op["set"]["image"] or b"") - _image_bytes(self.objects[op["target"]].op)
        return 0

    def apply(self, op: dict[str, Any], seq: int = 0, author: dict[str, str] | None = None) -> None:
        """Apply a checked op (`seq`: its sequence number, `author`: who sent it; kept for objects it creates)."""
        self.image_bytes += self.image_growth(op)
        kind = op["type"]
        if kind in OBJECT_TYPES:
            self.objects[op["id"]] = DocObject(op=copy.deepcopy(op), order=self._next_order, seq=seq,
                                               author=dict(author) if author else None)
            self._next_order += 1
            return
        obj = self.objects[op["target"]]
        if kind == "delete":
            obj.deleted = True
        elif kind == "restore":
            obj.deleted = False
        elif kind == "set_visible":
            obj.visible = bool(op["visible"])
        else:
            for key, value in op["set"].items():
                if key == "visible":
                    obj.visible = bool(value)
                else:
                    obj.op[key] = copy.deepcopy(value)

    def authors(self) -> list[tuple[str, dict[str, str]]]:
        """(op id, author) of the live objects whose author is known, in document order."""
        return [(o.op["id"], o.author) for o in sorted(self.objects.values(), key=lambda o: o.order)
                if o.author and not o.deleted]

    def live_ops(self) -> list[dict[str, Any]]:
        """One op per live (not deleted) object in document order; hidden objects carry visible=False."""
        out = []
        for obj in sorted(self.objects.values(), key=lambda o: o.order):
            if obj.deleted:
                continue
            op = dict(obj.op)
            if not obj.visible:
                op["visible"] = False
            out.append(op)
        return out

    def compact(self, keep: set[str]) -> int:
        """Drop deleted objects whose ids are not in `keep` (undo/redo steps may still restore those); their
        ids stay taken. Returns how many were dropped."""
        gone = [k for k, o in self.objects.items() if o.deleted and k not in keep]
        for key in gone:
            self.image_bytes -= _image_bytes(self.objects.pop(key).op)
        self.retired.update(gone)
        return len(gone)

    def state(self) -> dict[str, Any]:
        """The document as a snapshot record keeps it (op dicts shared, not copied: updates replace values)."""
        ordered = sorted(self.objects.values(), key=lambda o: o.order)
        return {"objects": [{"op": dict(o.op), "deleted": o.deleted, "visible": o.visible, "seq": o.seq,
                             **({"author": o.author} if o.author else {})} for o in ordered],
                "retired": sorted(self.retired), "next_order": self._next_order}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Document:
        doc = cls()
        for i, item in enumerate(state.get("objects", ())):
            op = item["op"]
            doc.objects[op["id"]] = DocObject(op=op, order=i, deleted=bool(item.get("deleted")),
                                              visible=bool(item.get("visible", True)), seq=int(item.get("seq", 0)),
                                              author=_author(item.get("author")))
        doc.retired = set(state.get("retired", ()))
        doc.image_bytes = sum(_image_bytes(o.op) for o in doc.objects.values())
        doc._next_order = max(int(state.get("next_order", 0)), len(doc.objects))
        return doc

    def engine_ops(self) -> list[dict[str, Any]]:
        """Ops that rebuild this document in an empty edit engine: each object's merged create op in
        creation order, then what hides or deletes it."""
        out: list[dict[str, Any]] = []
        for obj in sorted(self.objects.values(), key=lambda o: o.order):
            out.append(obj.op)
            if not obj.visible:
                out.append({"type": "set_visible", "target": obj.op["id"], "visible": False})
            if obj.deleted:
                out.append({"type": "delete", "target": obj.op["id"]})
        return out


def _author(value: Any) -> dict[str, str] | None:
    """An author entry read back from a snapshot (anything malformed is dropped, not fatal)."""
    if not isinstance(value, dict):
        return None
    return {k: str(value[k]) for k in ("participant_id", "name", "color") if isinstance(value.get(k), str)} or None


def _image_bytes(op: dict[str, Any]) -> int:
    image = op.get("image")
    return len(image) if isinstance(image, (bytes, bytearray)) else 0
