"""Colour adjustments applied to atlas content: exposure, contrast, saturation, hue, temperature."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from vatlas.server.edits.ops import COLOUR_FIELDS, decode_image

# Rec. 709 luma weights.
LUMA = (0.2126, 0.7152, 0.0722)
GRADE_ROWS = 256  # rows of an image graded at once (graded_image)
# Full warm (+1) scales red up and blue down by this fraction.
TEMPERATURE_GAIN = 0.25


def is_identity(params: dict[str, Any]) -> bool:
    return all(float(params.get(k, 0.0)) == 0.0 for k in COLOUR_FIELDS)


def _hue_matrix(degrees: float, device: torch.device) -> torch.Tensor:
    """Rotation about the grey axis (the SVG/CSS hue-rotate matrix), applied as rgb @ M.T."""
    th = math.radians(degrees)
    c, s = math.cos(th), math.sin(th)
    m = [
        [0.213 + c * 0.787 - s * 0.213, 0.715 - c * 0.715 - s * 0.715, 0.072 - c * 0.072 + s * 0.928],
        [0.213 - c * 0.213 + s * 0.143, 0.715 + c * 0.285 + s * 0.140, 0.072 - c * 0.072 - s * 0.283],
        [0.213 - c * 0.213 - s * 0.787, 0.715 - c * 0.715 + s * 0.715, 0.072 + c * 0.928 + s * 0.072],
    ]
    return torch.tensor(m, dtype=torch.float32, device=device)


def apply_adjustment(rgb: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """rgb (..., 3) in [0, 1] -> adjusted rgb (..., 3) in [0, 1]. 0 for every parameter = identity."""
    out = rgb
    exposure = float(params.get("exposure", 0.0))
    if exposure:
        out = out * (2.0 ** exposure)
    temperature = float(params.get("temperature", 0.0))
    if temperature:
        g = TEMPERATURE_GAIN * temperature
        out = out * torch.tensor([1.0 + g, 1.0, 1.0 - g], device=out.device)
    contrast = float(params.get("contrast", 0.0))
    if contrast:
        out = (out - 0.5) * (1.0 + contrast) + 0.5
    luma = torch.tensor(LUMA, device=out.device)
    saturation = float(params.get("saturation", 0.0))
    if saturation:
        y = (out * luma).sum(-1, keepdim=True)
        out = y + (out - y) * (1.0 + saturation)
    hue = float(params.get("hue", 0.0))
    if hue:
        out = out @ _hue_matrix(hue, out.device).T
    return out.clamp(0.0, 1.0)


def graded_image(op: dict[str, Any]) -> np.ndarray:
    """A texture's or sticker's image (h, w, 4) uint8 RGBA with its own colour grade applied (the op's exposure,
    contrast, saturation, hue and temperature; alpha kept): the image's colour control."""
    rgba = decode_image(op["image"], op_id=op.get("id", ""))
    params = {k: op[k] for k in COLOUR_FIELDS if op.get(k)}
    if not params:
        return rgba
    out = rgba.copy()
    # a band of rows at a time: a 4096^2 image would otherwise take ~1 GB of float intermediates per op
    for top in range(0, rgba.shape[0], GRADE_ROWS):
        band = torch.from_numpy(rgba[top:top + GRADE_ROWS, :, :3].astype(np.float32) / 255.0)
        out[top:top + GRADE_ROWS, :, :3] = (apply_adjustment(band, params) * 255.0).round().to(torch.uint8).numpy()
    return out


def adjustment_affine(params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine form of apply_adjustment before its final clamp: rgb -> rgb @ M.T + b, as (M (3,3), b (3,)).

    Every step is affine in RGB, so a chain of adjustments is one 3x4 transform per texel (see layers.py).
    Built in float64, returned as float32.
    """
    m = torch.eye(3, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)

    def then(step: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        nonlocal m, b
        m = step @ m
        b = step @ b + (offset if offset is not None else 0.0)

    exposure = float(params.get("exposure", 0.0))
    if exposure:
        then(torch.eye(3, dtype=torch.float64) * (2.0 ** exposure))
    temperature = float(params.get("temperature", 0.0))
    if temperature:
        g = TEMPERATURE_GAIN * temperature
        then(torch.diag(torch.tensor([1.0 + g, 1.0, 1.0 - g], dtype=torch.float64)))
    contrast = float(params.get("contrast", 0.0))
    if contrast:
        # (x - 0.5) * (1 + k) + 0.5 = (1 + k) x - 0.5 k
        then(torch.eye(3, dtype=torch.float64) * (1.0 + contrast), torch.full((3,), -0.5 * contrast,
                                                                             dtype=torch.float64))
    saturation = float(params.get("saturation", 0.0))
    if saturation:
        # y + (x - y)(1 + s) = (1 + s) x - s y, with y = luma . x
        luma = torch.tensor(LUMA, dtype=torch.float64)
        then(torch.eye(3, dtype=torch.float64) * (1.0 + saturation) - saturation * luma[None, :].expand(3, 3))
    hue = float(params.get("hue", 0.0))
    if hue:
        then(_hue_matrix(hue, torch.device("cpu")).to(torch.float64))
    return m.to(torch.float32), b.to(torch.float32)
