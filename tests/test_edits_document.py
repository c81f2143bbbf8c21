"""Edit documents: JSON on disk (image paths and data: URIs), msgpack, replay, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_edits_fixtures import png_bytes, shifted_bundle, solid_rgba
from vatlas.server.edits.document import (
    DocumentError,
    document_json,
    document_msgpack,
    image_to_data_uri,
    load_document,
    parse_msgpack,
    save_document,
)
from vatlas.server.edits.engine import EditEngine
from vatlas.server.edits.ops import OpLimits


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_paths_and_data_uris_load_and_replay(tmp_path: Path) -> None:
    logo = png_bytes(solid_rgba(6, 4, (10, 200, 30, 255)))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.png").write_bytes(logo)
    doc = {"version": 1, "ops": [
        {"id": "t1", "type": "texture", "space": "frame", "frame": 0, "image": "img/logo.png", "rect": [10, 10, 6, 4]},
        {"id": "k1", "type": "sticker", "frame": 1, "position": [20, 20], "image": image_to_data_uri(logo)},
        {"id": "s1", "type": "stroke", "space": "atlas", "points": [[5, 5], [30, 30]], "width": 3},
        {"type": "update", "target": "s1", "set": {"width": 5}},
    ]}
    ops = load_document(_write(tmp_path / "doc.json", doc), OpLimits(num_frames=4))
    assert ops[0]["image"] == logo and ops[1]["image"] == logo
    bundle = shifted_bundle()
    engine = EditEngine(bundle, "cpu")
    engine.apply_many(ops)
    assert [o["id"] for o in engine.objects()] == ["t1", "k1", "s1"]
    # The engine's document round-trips through JSON and msgpack to the same layers.
    saved = save_document(tmp_path / "out.json", engine.document()["ops"])
    for replayed_ops in (load_document(saved), parse_msgpack(document_msgpack(engine.document()["ops"]))):
        replay = EditEngine(bundle, "cpu")
        replay.apply_many(replayed_ops)
        assert torch.equal(replay.layers.layer, engine.layers.layer)
        assert np.array_equal(replay.render([0, 1]).numpy(), engine.render([0, 1]).numpy())
    assert json.loads(document_json(ops))["ops"][0]["image"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"version": 2, "ops": []}), "version 2"),
        (json.dumps({"version": 1, "ops": {}}), "'ops' must be a list"),
        (json.dumps({"version": 1, "ops": [5]}), "op #0 is not an object"),
        (json.dumps({"version": 1, "ops": [{"id": "t", "type": "texture", "space": "atlas", "position": [0, 0],
                                            "image": "missing.png"}]}), "missing.png"),
        (json.dumps({"version": 1, "ops": [{"id": "t", "type": "texture", "space": "atlas", "position": [0, 0],
                                            "image": "data:image/png;base64,@@@"}]}), "base64"),
        (json.dumps({"version": 1, "ops": [{"id": "s", "type": "stroke", "space": "atlas",
                                            "points": [[0, 0]], "width": -1}]}), "op #0 (s): width"),
    ],
)
def test_bad_documents_give_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(content)
    with pytest.raises(DocumentError) as info:
        load_document(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_bad_msgpack(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="nope.json"):
        load_document(tmp_path / "nope.json")
    with pytest.raises(DocumentError, match="msgpack"):
        parse_msgpack(b"\xc1\xc1")
