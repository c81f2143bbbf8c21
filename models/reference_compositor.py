"""A readable float64 reference of the compositor (RNA eq. 13, as layers over the source), used to check the
fast paths. See docs/DESIGN.md, "Editing and compositing".

Same conventions as the server: uv addresses the atlas like grid_sample(align_corners=False, border padding);
illumination is upsampled bilinearly with align_corners=False (PyTorch's rule: negative source coordinates
clamp to 0); the output is rounded half up and clamped to [0, 255].
"""

from __future__ import annotations

import numpy as np
from vatlas.models.bundle import Bundle, decode_uv


def sample_atlas(atlas: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of atlas (S, S, C) at uv (..., 2) in [-1, 1], clamped at the border -> (..., C)."""
    s = atlas.shape[0]
    x = np.clip((uv[..., 0].astype(np.float64) + 1.0) * s / 2.0 - 0.5, 0.0, s - 1.0)
    y = np.clip((uv[..., 1].astype(np.float64) + 1.0) * s / 2.0 - 0.5, 0.0, s - 1.0)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1 = np.minimum(x0 + 1, s - 1)
    y1 = np.minimum(y0 + 1, s - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    a = atlas.astype(np.float64)
    return ((a[y0, x0] * (1 - fx) + a[y0, x1] * fx) * (1 - fy)
            + (a[y1, x0] * (1 - fx) + a[y1, x1] * fx) * fy)


def upsample_bilinear(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) -> (height, width, C), bilinear, align_corners=False."""
    h, w = field.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    f = field.astype(np.float64)
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bottom = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


MODES = ("layers", "reconstruction")


def edited_atlas(bundle: Bundle, edit_rgba_atlas: np.ndarray | None) -> np.ndarray:
    """E over A in [0, 1]: a straight-alpha RGBA layer (uint8 or float in [0, 1]) composited over A."""
    base = bundle.atlas.astype(np.float64) / 255.0
    if edit_rgba_atlas is None:
        return base
    layer = premultiplied_layer(edit_rgba_atlas)
    return layer[..., :3] + (1.0 - layer[..., 3:]) * base


def premultiplied_layer(edit_rgba_atlas: np.ndarray) -> np.ndarray:
    """A straight-alpha RGBA layer (uint8, or float in [0, 1]) -> premultiplied (alpha * rgb, alpha) float64."""
    layer = edit_rgba_atlas.astype(np.float64)
    if edit_rgba_atlas.dtype == np.uint8:
        layer = layer / 255.0
    alpha = layer[..., 3:4]
    return np.concatenate([layer[..., :3] * alpha, alpha], axis=-1)


def apply_transform(k: np.ndarray, rgb01: np.ndarray) -> np.ndarray:
    """K (..., 3, 4) applied to rgb (..., 3) in [0, 1] units: K [rgb; 1]."""
    return np.einsum("...ij,...j->...i", k[..., :3], rgb01) + k[..., 3]


def reference_composite(bundle: Bundle, frame: int, edit_rgba_atlas: np.ndarray | None = None, *,
                        layer: np.ndarray | None = None, adjust: np.ndarray | None = None,
                        atlas_edit: np.ndarray | None = None, mode: str = "layers") -> np.ndarray:
    """Composite one frame in float64 -> (H, W, 3) float64 in [0, 255], before rounding.

    The paint layer E is `layer` (S, S, 4) premultiplied (alpha * rgb, alpha) in [0, 1] albedo units, or a
    straight-alpha `edit_rgba_atlas`; none means no paint. `adjust` is K (S, S, 3, 4) (identity where no
    adjustment applies) or None.

    mode "layers": a = m * alpha_E(uv); out = (1 - a) * c + m * l * (alpha * rgb)_E(uv) * 255.
    mode "reconstruction": out = c + m * (l * X(uv) * 255 - c), X = `atlas_edit` (S, S, 3) if given, else E over A.
    Then, with K: out = out + m * (K(uv) [out / 255; 1] * 255 - out).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if layer is None and edit_rgba_atlas is not None:
        layer = premultiplied_layer(edit_rgba_atlas)
    uv = decode_uv(bundle.uv[frame]).astype(np.float64)
    c = bundle.frames[frame].astype(np.float64)
    m = bundle.mask[frame].astype(np.float64)[..., None] / 255.0
    light = upsample_bilinear(bundle.illumination[frame].astype(np.float64), bundle.height, bundle.width)
    base = bundle.atlas.astype(np.float64) / 255.0
    if mode == "layers":
        if layer is None:
            out = c.copy()
        else:
            paint = sample_atlas(layer, uv)
            out = (1.0 - m * paint[..., 3:]) * c + m * light * paint[..., :3] * 255.0
    else:
        if atlas_edit is not None:
            shown = atlas_edit.astype(np.float64)
        elif layer is not None:
            shown = layer[..., :3] + (1.0 - layer[..., 3:]) * base
        else:
            shown = base
        out = c + m * (light * sample_atlas(shown, uv) * 255.0 - c)
    if adjust is not None:
        k = sample_atlas(adjust.reshape(*adjust.shape[:2], 12), uv).reshape(*uv.shape[:-1], 3, 4)
        out = out + m * (apply_transform(k, out / 255.0) * 255.0 - out)
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round half up and clamp, as the compositor does."""
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)
