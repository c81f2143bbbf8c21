"""Uploaded files are untrusted (H4): playlists and concat lists that point at server files never reach a fit."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import start_in_process_server
from serve_helpers import GrpcStubs
from vatlas.server.errors import CoreError
from vatlas.server.session.jobs import SANITIZED_NAME, sanitize_upload
from vatlas_wire.v1 import bundles_pb2

from vatlas.video import read_video, write_mp4

ROI = '{"ref_frame": 0, "polygons": [[[4, 4], [40, 4], [40, 30], [4, 30]]]}'


@pytest.fixture(scope="module")
def secret_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video on the server's disk that no client uploaded."""
    path = tmp_path_factory.mktemp("private") / "private.mp4"
    frames = np.stack([np.full((48, 64, 3), 30 * i, np.uint8) for i in range(6)])
    write_mp4(path, frames, 10.0)
    return path


@pytest.fixture(scope="module")
def upload_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("upload-models")
    (models / "tiny.vatlas").symlink_to(tiny_models_dir / "tiny.vatlas")
    server = start_in_process_server(models)
    yield server
    server.stop()


def crafted(kind: str, target: Path) -> tuple[str, bytes]:
    if kind == "hls":
        return "clip.m3u8", (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile://{target}\n"
                             "#EXT-X-ENDLIST\n").encode()
    if kind == "hls-as-mp4":  # the name does not matter: detection reads the content
        return "clip.mp4", f"#EXTM3U\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n".encode()
    return "clip.txt", f"ffconcat version 1.0\nfile '{target}'\n".encode()


@pytest.mark.parametrize("kind", ["hls", "hls-as-mp4", "concat"])
def test_a_crafted_upload_cannot_make_a_fit_read_server_files(upload_server, secret_clip: Path, kind: str) -> None:
    stubs = GrpcStubs(upload_server.grpc_target, upload_server.token)
    try:
        filename, data = crafted(kind, secret_clip)
        upload = stubs.bundles.UploadVideo(iter([bundles_pb2.UploadChunk(filename=filename, data=data, last=True)]),
                                           metadata=stubs.metadata)
        name = f"stolen-{kind}"
        with pytest.raises(grpc.RpcError) as info:
            for _ in stubs.bundles.StartFit(bundles_pb2.StartFitRequest(
                    upload_id=upload.upload_id, name=name, roi_json=ROI, preset="draft", iterations=20, width=64,
                    height=48), metadata=stubs.metadata, timeout=300):
                pass
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        assert "allowed container" in info.value.details()
        assert str(secret_clip.parent) not in info.value.details()
        assert not (upload_server.core.bundles.models_dir / f"{name}.vatlas").exists()
    finally:
        stubs.close()


def test_a_real_video_is_copied_packet_for_packet(secret_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / SANITIZED_NAME
    sanitize_upload(secret_clip, out)
    original, copy = read_video(secret_clip), read_video(out)
    assert copy.frames.shape == original.frames.shape and np.array_equal(copy.frames, original.frames)
    with pytest.raises(CoreError) as info:
        garbage = tmp_path / "garbage.mp4"
        garbage.write_bytes(b"not a video at all" * 100)
        sanitize_upload(garbage, tmp_path / "other.mkv")
    assert info.value.code == "FAILED_PRECONDITION" and not (tmp_path / "other.mkv").exists()
