"""Op builders, image encoding, error mapping and retry config of vatlas_client (no server needed)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from vatlas_client import (
    InvalidArgument,
    NotFound,
    OpRejected,
    Unauthenticated,
    Unavailable,
    VatlasError,
    _common,
    encode_image,
    ops,
)
from vatlas_client.errors import error_for_code, from_error_message, rejection
from vatlas_client.records import Ack, Frame
from vatlas_wire.v1 import common_pb2, render_pb2


def test_stroke_fields_and_generated_id() -> None:
    op = ops.stroke([(1, 2), (3.5, 4)], frame=2, width=5, color="#ff000080", hardness=0.5)
    assert op.type == "stroke" and op.space == "frame" and op.frame == 2
    assert [(p.x, p.y) for p in op.points] == [(1, 2), (3.5, 4)]
    assert op.width == 5 and op.hardness == 0.5 and op.mode == "paint"
    assert list(op.color) == pytest.approx([1.0, 0.0, 0.0, 128 / 255])
    assert op.id.startswith("stroke-") and op.id != ops.stroke([(0, 0)], frame=0).id


def test_atlas_space_has_no_frame() -> None:
    op = ops.stroke([(0, 0), (1, 1)], space="atlas")
    assert not op.HasField("frame")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ops.stroke([(0, 0)]), "needs frame"),
        (lambda: ops.stroke([(0, 0)], frame=0, mode="smudge"), "paint"),
        (lambda: ops.stroke([(0, 0, 0)], frame=0), "(x, y)"),
        (lambda: ops.stroke([(0, 0)], frame=0, color="red"), "colour"),
        (lambda: ops.stroke([(0, 0)], frame=0, color=(2, 0, 0)), "colour"),
        (lambda: ops.stroke([(0, 0)], frame=0, id="has space"), "op id"),
        (lambda: ops.texture(np.zeros((4, 4, 3), np.uint8), frame=0), "rect"),
        (lambda: ops.texture(np.zeros((4, 4, 3), np.uint8), rect=[0, 0, 4, 4]), "needs frame=<index> and rect"),
        (lambda: ops.texture(np.zeros((4, 4, 3), np.uint8), frame=0, position=(1, 1)), "position=(x, y) is for atlas"),
        (lambda: ops.texture(np.zeros((4, 4, 3), np.uint8), space="atlas", rect=[0, 0, 4, 4]), "not rect"),
        (lambda: ops.sticker(np.zeros((4, 4, 4), np.uint8), frame=0, position=(1, 1), size=[0, 3]), "both > 0"),
        (lambda: _common.export_format("x.mov", None), "exports .mp4 (H.264) or .zip (PNG frames), not '.mov'"),
        (lambda: _common.export_format("x", None), "without a suffix"),
        (lambda: _common.export_format("x.zip", "mp4"), "is written as .mp4"),
        (lambda: ops.sticker(np.zeros((4, 4, 4), np.uint8), frame=0, position=(1, 1), size=[1]), "size"),
        (lambda: ops.update("x"), "at least one"),
        (lambda: ops.update("x", nonsense=1), "no property"),
        (lambda: ops.adjustment([(0, 0)], frame=0, region="blob"), "region"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_update_sets_only_given_properties() -> None:
    op = ops.update("stroke-1", opacity=0.25, color="#00ff00", rect=[1, 2, 3, 4])
    assert op.type == "update" and op.target == "stroke-1"
    assert op.set.opacity == 0.25 and list(op.set.color) == [0.0, 1.0, 0.0, 1.0] and list(op.set.rect) == [1, 2, 3, 4]
    assert not op.set.HasField("scale") and not op.set.HasField("width")
    assert ops.set_visible("a", False).visible is False and ops.set_visible("a", False).HasField("visible")
    assert ops.delete("a").target == "a" and ops.restore("a").type == "restore"


def test_encode_image_from_array_pil_path_and_bytes(tmp_path) -> None:
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    png = encode_image(rgba)
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.shape == (6, 5, 4) and (decoded == rgba).all()
    floats = encode_image(np.full((3, 3, 3), 0.5, np.float32))
    assert np.asarray(Image.open(io.BytesIO(floats)))[0, 0].tolist() == [128, 128, 128]
    jpeg_path = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(jpeg_path)
    assert encode_image(jpeg_path) == jpeg_path.read_bytes()  # wire formats pass through untouched
    bmp = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bmp, format="BMP")
    assert Image.open(io.BytesIO(encode_image(bmp.getvalue()))).format == "PNG"
    with pytest.raises(ValueError, match="decodable"):
        encode_image(b"not an image")
    with pytest.raises(FileNotFoundError):
        encode_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((2, 2, 2), np.uint8))


def test_status_names_map_to_the_hierarchy() -> None:
    assert isinstance(error_for_code("NOT_FOUND", "no bundle 'x'"), NotFound)
    assert isinstance(error_for_code("UNAUTHENTICATED", "bad"), Unauthenticated)
    err = error_for_code("FAILED_PRECONDITION", "nope")
    assert type(err) is VatlasError and err.code == "FAILED_PRECONDITION" and "nope" in str(err)
    wire = common_pb2.Error(code="INVALID_ARGUMENT", message="width must be > 0", op_id="s1")
    assert isinstance(from_error_message(wire), InvalidArgument)
    rej = rejection(wire, "s1")
    assert isinstance(rej, OpRejected) and isinstance(rej, VatlasError)
    assert rej.code == "INVALID_ARGUMENT" and rej.op_id == "s1" and "width must be > 0" in str(rej)


def test_retry_policy_is_grpc_service_config() -> None:
    options = dict(_common.channel_options(retries=4))
    config = json.loads(options["grpc.service_config"])
    policies = [m for m in config["methodConfig"] if "retryPolicy" in m]
    assert len(policies) == 1 and policies[0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policies[0]["retryPolicy"]["maxAttempts"] == 5
    connect = [m for m in config["methodConfig"] if {"service": "vatlas.v1.Sessions", "method": "Connect"} in m["name"]]
    assert connect and "retryPolicy" not in connect[0]
    assert options["grpc.enable_retries"] == 1


def test_unreachable_server_is_unavailable_after_retries() -> None:
    from vatlas_client import Client

    with Client("127.0.0.1:1", timeout=5, retries=1) as client, pytest.raises(Unavailable):
        client.list_bundles()


def test_roi_forms_and_errors(tmp_path) -> None:
    path = tmp_path / "roi.json"
    path.write_text(json.dumps({"ref_frame": 2, "polygons": [[[0, 0], [4, 0], [4, 4]]]}))
    assert json.loads(_common.roi_json(path))["ref_frame"] == 2
    assert json.loads(_common.roi_json([[(0, 0), (1, 0), (1, 1)]]))["polygons"] == [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]]
    with pytest.raises(ValueError, match="polygons"):
        _common.roi_json({"polygons": [[[0, 0]]]})
    with pytest.raises(ValueError, match="folder"):
        _common.video_path(tmp_path)


def test_frame_and_ack_records() -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    frame = Frame.from_proto(render_pb2.RenderedFrame(frame=4, format="raw", width=3, height=2,
                                                      data=pixels.tobytes(), seq=9))
    assert (frame.to_numpy() == pixels).all() and frame.to_pil().size == (3, 2) and frame.seq == 9
    with pytest.raises(ValueError, match="expected"):
        Frame.from_proto(render_pb2.RenderedFrame(format="raw", width=3, height=3, data=b"x")).to_numpy()
    ack = Ack(7, "stroke-1")
    assert ack == 7 and ack.op_id == "stroke-1" and str(ack) == "7"


def test_texture_forms_sticker_size_and_export_format() -> None:
    image = np.zeros((6, 10, 4), np.uint8)
    on_frame = ops.texture(image, frame=2, rect=[1, 2, 10, 6])
    assert on_frame.space == "frame" and on_frame.frame == 2 and list(on_frame.rect) == [1, 2, 10, 6]
    in_atlas = ops.texture(image, position=(5, 5), scale=2.0)
    assert in_atlas.space == "atlas" and not in_atlas.HasField("frame") and in_atlas.scale == 2.0
    # a sticker without a size keeps the image's own pixel size
    assert list(ops.sticker(image, frame=0, position=(3, 3)).size) == [10, 6]
    assert _common.export_format("a/b.MP4", None) == "mp4" and _common.export_format("c.zip", None) == "png_zip"
    assert _common.export_format("c.zip", "png_zip") == "png_zip"


def test_session_op_methods_show_the_builders_keywords() -> None:
    import inspect

    from vatlas_client import AsyncSession, Session

    for cls in (Session, AsyncSession):
        for name in ("stroke", "texture", "adjustment", "sticker"):
            params = inspect.signature(getattr(cls, name)).parameters
            builder = inspect.signature(getattr(ops, name)).parameters
            assert list(params) == ["self", *builder, "timeout"], (cls, name)
    assert inspect.signature(Session.sticker).parameters["size"].default is None
