"""Image conversions between what users hold (paths, PIL images, numpy arrays) and what the wire carries."""

from __future__ import annotations

import io
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

ImageSource = str | PathLike | bytes | Image.Image | np.ndarray

# Formats the server decodes (edits.proto: PNG, JPEG or WebP); anything else is re-encoded as PNG.
_WIRE_FORMATS = {"PNG", "JPEG", "WEBP"}


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 3) or (H, W, 4) uint8, or float in [0, 1], to a PIL image."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"image array must be uint8 or float in [0, 1], got {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def encode_image(source: ImageSource) -> bytes:
    """Bytes to send in an op's `image` field: files in PNG/JPEG/WebP pass through, the rest become PNG."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        data = path.read_bytes()
    elif isinstance(source, Image.Image):
        return _png_bytes(source)
    elif isinstance(source, np.ndarray):
        return _png_bytes(_array_to_pil(source))
    else:
        raise TypeError(f"image must be a path, bytes, PIL image or numpy array, not {type(source).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format in _WIRE_FORMATS:
                return data
            return _png_bytes(img)
    except (OSError, SyntaxError) as exc:  # PIL raises these for undecodable data
        raise ValueError(f"not a decodable image ({len(data)} bytes): {exc}") from exc


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _png_bytes(img: Image.Image) -> bytes:
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_to_array(data: bytes, fmt: str, width: int, height: int) -> np.ndarray:
    """A rendered frame's bytes to an (H, W, 3) uint8 array ("raw" is packed RGB)."""
    if fmt == "raw":
        expected = width * height * 3
        if len(data) != expected:
            raise ValueError(f"raw frame has {len(data)} bytes, expected {width}x{height}x3 = {expected}")
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).copy()
