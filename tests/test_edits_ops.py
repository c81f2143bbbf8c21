"""Op validation: every field checked, clear codes and messages, images guarded before decode."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from test_edits_fixtures import png_bytes, solid_rgba
from vatlas.server.edits.ops import OpLimits, decode_image, validate_op
from vatlas.server.errors import CoreError

LIMITS = OpLimits(num_frames=4, max_points=16, max_image_side=64, max_image_pixels=64 * 64)
STROKE = {"id": "s1", "type": "stroke", "space": "frame", "frame": 1, "points": [[1, 2], [3.5, 4]],
          "width": 5, "color": [1, 0.5, 0, 1], "hardness": 0.5, "mode": "paint"}


def _err(op: dict, limits: OpLimits = LIMITS) -> CoreError:
    with pytest.raises(CoreError) as info:
        validate_op(op, limits)
    return info.value


def test_valid_stroke_is_normalised_and_keeps_only_set_fields() -> None:
    out = validate_op({**STROKE, "opacity": None, "mode": ""}, LIMITS)
    assert out["points"] == [[1.0, 2.0], [3.5, 4.0]]
    assert isinstance(out["width"], float) and out["frame"] == 1
    assert "opacity" not in out and "mode" not in out  # unset (proto3 empty) fields are dropped


def test_proto_vec2_form_is_accepted() -> None:
    out = validate_op({**STROKE, "points": [{"x": 1, "y": 2}]}, LIMITS)
    assert out["points"] == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"id": "bad id!"}, "op id"),
        ({"id": "x" * 65}, "op id"),
        ({"type": "blur"}, "unknown op type"),
        ({"width": -1}, "width"),
        ({"width": math.nan}, "finite"),
        ({"width": "3"}, "number"),
        ({"color": [1, 0, 0]}, "color"),
        ({"color": [1, 0, 0, 1.5]}, "color[3]"),
        ({"hardness": 2}, "hardness"),
        ({"mode": "smudge"}, "mode"),
        ({"space": "world"}, "space"),
        ({"frame": 4}, "out of range"),
        ({"frame": True}, "integer"),
        ({"points": [[1, math.inf]]}, "finite"),
        ({"points": [[1, 2, 3]]}, "[x, y]"),
        ({"points": []}, "points"),
        ({"rect": [0, 0, 1, 1]}, "not allowed"),
    ],
)
def test_bad_fields_are_invalid_argument(change: dict, needle: str) -> None:
    err = _err({**STROKE, **change})
    assert err.code == "INVALID_ARGUMENT"
    assert needle in err.message
    assert err.to_dict()["code"] == "INVALID_ARGUMENT"


def test_too_many_points_is_resource_exhausted() -> None:
    err = _err({**STROKE, "points": [[0, 0]] * 17})
    assert err.code == "RESOURCE_EXHAUSTED" and err.op_id == "s1"


def test_frame_space_needs_frame_and_type_specific_fields() -> None:
    assert "needs 'frame'" in _err({"id": "a", "type": "stroke", "points": [[0, 0]]}).message
    assert "image" in _err({"id": "t", "type": "texture", "space": "atlas", "position": [0, 0]}).message
    img = png_bytes(solid_rgba(4, 4))
    assert "rect" in _err({"id": "t", "type": "texture", "frame": 0, "image": img}).message
    assert "3 points" in _err({"id": "a", "type": "adjustment", "space": "atlas", "points": [[0, 0], [1, 1]]}).message
    assert "position" in _err({"id": "k", "type": "sticker", "frame": 0, "image": img}).message
    assert "space" in _err({"id": "k", "type": "sticker", "space": "atlas", "position": [1, 1],
                            "image": img}).message


def test_images_checked_before_decode() -> None:
    ok = validate_op({"id": "t", "type": "texture", "space": "atlas", "position": [1, 1],
                      "image": png_bytes(solid_rgba(8, 4))}, LIMITS)
    assert decode_image(ok["image"]).shape == (4, 8, 4)
    assert "decodable" in _err({"id": "t", "type": "texture", "space": "atlas", "position": [1, 1],
                                "image": b"\x89PNG garbage"}).message
    big = _err({"id": "t", "type": "texture", "space": "atlas", "position": [1, 1],
                "image": png_bytes(solid_rgba(65, 4))})
    assert big.code == "RESOURCE_EXHAUSTED"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="GIF")
    assert "not allowed" in _err({"id": "t", "type": "texture", "space": "atlas", "position": [1, 1],
                                  "image": buf.getvalue()}).message


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # A tiny file that claims 20000 x 20000 pixels: refused without decoding it.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 200_000
    err = _err({"id": "t", "type": "texture", "space": "atlas", "position": [1, 1], "image": data},
               OpLimits(max_image_side=30000, max_image_pixels=10_000_000))
    assert err.code in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT")


def test_control_ops() -> None:
    assert validate_op({"type": "delete", "target": "s1"}, LIMITS) == {"type": "delete", "target": "s1"}
    upd = validate_op({"id": "u1", "type": "update", "target": "s1", "set": {"width": 3, "color": ""}}, LIMITS)
    assert upd["set"] == {"width": 3.0}
    assert "target" in _err({"type": "restore"}).message
    assert "visible" in _err({"type": "set_visible", "target": "s1"}).message
    assert "cannot set" in _err({"type": "update", "target": "s1", "set": {"target": "x"}}).message
    assert "at least one" in _err({"type": "update", "target": "s1", "set": {}}).message
    assert "width" in _err({"type": "update", "target": "s1", "set": {"width": -2}}).message
    assert "not allowed" in _err({"type": "delete", "target": "s1", "width": 3}).message


def test_non_mapping_is_rejected() -> None:
    with pytest.raises(CoreError):
        validate_op(["stroke"], LIMITS)  # type: ignore[arg-type]
    with pytest.raises(CoreError):
        validate_op({**STROKE, "points": np.zeros((2, 2)).tolist() + [None]}, LIMITS)
