"""Per-frame image encoders: JPEG (nvJPEG on CUDA via torchvision, else OpenCV), WebP and lossless PNG."""

from __future__ import annotations

import importlib.util
from functools import cache

import cv2
import numpy as np
import torch

FORMATS = ("jpeg", "webp", "png")
MIME_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


@cache
def nvjpeg_available() -> bool:
    """torchvision's encode_jpeg runs on CUDA tensors (nvJPEG) when both are present."""
    return torch.cuda.is_available() and importlib.util.find_spec("torchvision") is not None


def _check(frames: torch.Tensor | np.ndarray, fmt: str, quality: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[3] != 3 or frames.dtype not in (torch.uint8, np.uint8):
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {shape} {frames.dtype}")


def encode(frames: torch.Tensor | np.ndarray, fmt: str = "jpeg", quality: int = 85) -> list[bytes]:
    """Encode each RGB frame of (N, H, W, 3) uint8 -> one encoded image per frame (bytes on the host)."""
    fmt = fmt.lower().replace("jpg", "jpeg")
    _check(frames, fmt, quality)
    if fmt == "jpeg" and isinstance(frames, torch.Tensor) and frames.is_cuda and nvjpeg_available():
        return _encode_nvjpeg(frames, quality)
    host = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return [_encode_cv2(frame, fmt, quality) for frame in host]


def _encode_nvjpeg(frames: torch.Tensor, quality: int) -> list[bytes]:
    from torchvision.io import encode_jpeg

    chw = [f.permute(2, 0, 1).contiguous() for f in frames]
    encoded = encode_jpeg(chw, quality=int(quality))
    if len(encoded) == 1:
        return [encoded[0].cpu().numpy().tobytes()]
    # One device-to-host copy for the whole batch instead of one synchronising copy per frame.
    host = torch.cat(encoded).cpu().numpy()
    offsets = np.cumsum([0] + [int(e.numel()) for e in encoded])
    return [host[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _encode_cv2(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "webp":
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
    else:  # PNG: lossless; a low compression level keeps it fast
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {frame.shape} frame as {fmt}")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    """Encoded image -> (H, W, 3) uint8 RGB (tests and tools)."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
