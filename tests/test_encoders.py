"""Frame encoders: JPEG/WebP close to the input, PNG lossless, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vatlas.server.encoders import decode, encode


def _frames(n: int = 2, h: int = 40, w: int = 56) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs * 4, ys * 5, (xs + ys) * 2], axis=-1).astype(np.uint8)
    return np.stack([np.roll(base, k * 3, axis=1) for k in range(n)])


def test_png_is_lossless_and_per_frame() -> None:
    frames = _frames(3)
    data = encode(torch.from_numpy(frames), "png")
    assert len(data) == 3 and all(d.startswith(b"\x89PNG") for d in data)
    for d, f in zip(data, frames, strict=True):
        assert np.array_equal(decode(d), f)


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8"), ("jpg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_lossy_formats_are_close(fmt: str, magic: bytes) -> None:
    frames = _frames(2)
    data = encode(frames, fmt, quality=95)
    assert all(d.startswith(magic) for d in data)
    for d, f in zip(data, frames, strict=True):
        assert np.abs(decode(d).astype(int) - f).mean() < 3.0
    assert len(encode(frames, fmt, quality=10)[0]) < len(data[0])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="format"):
        encode(_frames(1), "gif")
    with pytest.raises(ValueError, match="quality"):
        encode(_frames(1), "jpeg", quality=0)
    with pytest.raises(ValueError, match="uint8"):
        encode(_frames(1).astype(np.float32), "png")
    with pytest.raises(ValueError, match="N, H, W, 3"):
        encode(_frames(1)[0], "png")
