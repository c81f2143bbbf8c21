"""What the sync and asyncio clients share: channel options, retry policy, metadata, request building."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from vatlas_wire.v1 import bundles_pb2, common_pb2, render_pb2

PROTOCOL_VERSION = common_pb2.PROTOCOL_VERSION_CURRENT
UPLOAD_CHUNK_BYTES = 1 << 20
# Raw 1080p RGB frames are ~6 MB, over gRPC's 4 MiB default receive limit.
MAX_MESSAGE_BYTES = 64 << 20
_SERVICES = ("vatlas.v1.Bundles", "vatlas.v1.Sessions", "vatlas.v1.Render")

RoiLike = str | PathLike | dict | Sequence[Sequence[Sequence[float]]]


def service_config(retries: int, initial_backoff: float = 0.2, max_backoff: float = 2.0) -> str:
    """gRPC service config: retry every unary and server-streaming call on UNAVAILABLE.

    gRPC only retries before the first response arrives, so a stream that already delivered data is never
    replayed. The session stream (Connect) is excluded: it resumes at application level from the last
    sequence number instead.
    """
    method_configs: list[dict[str, Any]] = [{"name": [{"service": "vatlas.v1.Sessions", "method": "Connect"}]}]
    if retries > 0:
        method_configs.append({
            "name": [{"service": s} for s in _SERVICES],
            "retryPolicy": {
                "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
                "initialBackoff": f"{initial_backoff}s",
                "maxBackoff": f"{max_backoff}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        })
    return json.dumps({"methodConfig": method_configs})


def channel_options(retries: int) -> list[tuple[str, Any]]:
    """Options for both channel flavours."""
    return [
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        ("grpc.service_config", service_config(retries)),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Reconnect to a restarted server within ~2 s (gRPC's default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # No client keepalive pings: a gRPC server by default answers pings more often than every 5 minutes
        # on an idle stream with GOAWAY (too_many_pings), which would cut idle sessions.
    ]


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: protocol version, and the token as a bearer credential."""
    metadata = [("vatlas-protocol", str(PROTOCOL_VERSION))]
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return tuple(metadata)


def roi_json(roi: RoiLike) -> str:
    """ROI as the JSON StartFit expects, from a roi.json path, a dict, or a list of polygons on frame 0."""
    if isinstance(roi, (str, PathLike)):
        path = Path(roi)
        if not path.is_file():
            raise FileNotFoundError(f"ROI file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    elif isinstance(roi, dict):
        data = roi
    else:
        data = {"ref_frame": 0, "polygons": [[[float(x), float(y)] for x, y in poly] for poly in roi]}
    polygons = data.get("polygons") if isinstance(data, dict) else None
    if not polygons or not all(len(poly) >= 3 for poly in polygons):
        raise ValueError("ROI needs 'polygons': a list of polygons of at least 3 [x, y] points")
    return json.dumps({"ref_frame": int(data.get("ref_frame", 0)), "polygons": polygons})


def upload_chunks(path: Path, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> Iterator[bundles_pb2.UploadChunk]:
    """The UploadVideo stream: the first chunk names the file, every chunk carries data, the last says so."""
    with path.open("rb") as f:
        first = True
        data = f.read(chunk_bytes)
        while True:
            following = f.read(chunk_bytes) if data else b""
            yield bundles_pb2.UploadChunk(filename=path.name if first else "", data=data, last=not following)
            if not following:
                return
            data, first = following, False


def video_path(video: str | PathLike) -> Path:
    """A local video file to upload (frame folders must be encoded to a file first)."""
    path = Path(video)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: upload a video file (e.g. an .mp4), not a frame folder")
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    return path


def session_id_of(session: Any) -> str:
    """A session id from a Session, AsyncSession, SessionInfo or plain string."""
    if isinstance(session, str):
        if not session:
            raise ValueError("session id is empty")
        return session
    session_id = getattr(session, "session_id", None)
    if not isinstance(session_id, str) or not session_id:
        raise TypeError(f"expected a session or session id, got {type(session).__name__}")
    return session_id


def session_ref(session: Any, join_token: str | None) -> tuple[str, str]:
    """(session id, join token): the token comes from the session object unless given explicitly."""
    token = join_token if join_token is not None else getattr(session, "join_token", "")
    return session_id_of(session), token or ""


def render_request(
    session: Any, join_token: str | None, frame: int, fmt: str, quality: int, scale: float,
    region: Sequence[int] | None, atlas: bool, request_id: int,
) -> render_pb2.RenderRequest:
    """A RenderFrame request, checking arguments the server would reject anyway, with a clearer message."""
    if fmt not in ("jpeg", "webp", "png", "raw"):
        raise ValueError(f"format must be jpeg, webp, png or raw, got {fmt!r}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    session_id, token = session_ref(session, join_token)
    request = render_pb2.RenderRequest(
        session_id=session_id, join_token=token, frame=frame, format=fmt, quality=quality, scale=scale,
        atlas=atlas, request_id=request_id,
    )
    if region is not None:
        if len(region) != 4:
            raise ValueError(f"region is (x, y, width, height), got {region!r}")
        x, y, w, h = (int(v) for v in region)
        request.region.CopyFrom(render_pb2.Region(x=x, y=y, width=w, height=h))
    return request


EXPORT_SUFFIXES = {".mp4": "mp4", ".zip": "png_zip"}


def export_format(path: Any, fmt: str | None) -> str:
    """The export format a file name asks for (.mp4: H.264, .zip: PNG frames), checked against `fmt`: the
    file is what its name says, or nothing is written."""
    suffix = Path(path).suffix.lower()
    wanted = EXPORT_SUFFIXES.get(suffix)
    if wanted is None:
        raise ValueError(f"{Path(path).name}: the server exports .mp4 (H.264) or .zip (PNG frames), "
                         f"not {suffix or 'a name without a suffix'!r}; `vatlas export` writes ProRes .mov locally")
    if fmt is not None and fmt != wanted:
        raise ValueError(f"{Path(path).name}: format {fmt!r} is written as {'.zip' if fmt == 'png_zip' else '.mp4'}, "
                         f"not {suffix!r}")
    return wanted


def export_request(
    session: Any, join_token: str | None, fmt: str, start: int, end: int, crf: int
) -> render_pb2.ExportRequest:
    if fmt not in ("mp4", "png_zip"):
        raise ValueError(f"export format must be 'mp4' or 'png_zip', got {fmt!r}")
    session_id, token = session_ref(session, join_token)
    return render_pb2.ExportRequest(session_id=session_id, join_token=token, format=fmt, start_frame=start,
                                    end_frame=end, crf=crf)


def playback_request(
    session: Any, join_token: str | None, start: int, end: int, fps: float, loop: bool, fmt: str, quality: int,
    scale: float,
) -> render_pb2.PlaybackRequest:
    if fmt not in ("jpeg", "webp", "png", "raw"):
        raise ValueError(f"format must be jpeg, webp, png or raw, got {fmt!r}")
    session_id, token = session_ref(session, join_token)
    return render_pb2.PlaybackRequest(session_id=session_id, join_token=token, fps=fps, start_frame=start,
                                      end_frame=end, loop=loop, format=fmt, quality=quality, scale=scale)
