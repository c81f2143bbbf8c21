"""Tracked stickers: an RGBA image anchored at a point of frame N, carried to every frame by T then B.

The anchor goes to the atlas through T (bilinear lookup of frame N's uv) and back to frame t through the
inverse map B. The sticker stays rigid; optionally it follows the surface's local scale and rotation, taken
from the polar decomposition of L_t = J_t J_N^-1 (J = dB/duv by central differences). It is drawn on top of
the composited frame, its alpha multiplied by the soft mask at each pixel so occluders hide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vatlas.server.edits.adjust import graded_image
from vatlas.server.edits.raster import (
    IMAGE_OVERSAMPLE,
    AtlasGeometry,
    premultiply,
    rotation_matrix,
    shrink_image,
)
from vatlas.server.edits.region import outside_region


@dataclass
class StickerTrack:
    """Per-frame placement: centre (T, 2) frame pixels (NaN where unknown) and the affine (T, 2, 2) that maps
    sticker-local [-0.5, 0.5]^2 to frame-pixel offsets."""

    centre: np.ndarray
    matrix: np.ndarray
    image: torch.Tensor  # (h, w, 4) uint8 straight RGBA, at most IMAGE_OVERSAMPLE per frame pixel it covers
    opacity: float

    def nbytes(self) -> int:
        """Memory this sticker keeps."""
        return self.centre.nbytes + self.matrix.nbytes + self.image.numel() * self.image.element_size()


def _polar(mat: np.ndarray) -> tuple[float, float]:
    """(scale, angle) of the closest similarity to a 2x2 map (angle in pixel coordinates, radians)."""
    angle = float(np.arctan2(mat[1, 0] - mat[0, 1], mat[0, 0] + mat[1, 1]))
    scale = float(np.sqrt(abs(np.linalg.det(mat))))
    return scale, angle


def track_sticker(geom: AtlasGeometry, op: dict[str, Any], device: torch.device) -> StickerTrack:
    """Place a sticker op on every frame of the bundle."""
    frame = int(op["frame"])
    anchor = np.asarray(op["position"], dtype=np.float64)
    uv0 = geom.uv_at(frame, anchor[None])[0]
    g = geom.bundle.inverse_map.shape[1]
    step = 2.0 / g  # one B grid cell
    probes = np.stack([uv0, uv0 + [step, 0], uv0 - [step, 0], uv0 + [0, step], uv0 - [0, step]])
    frames = np.arange(geom.bundle.num_frames)
    b = geom.inverse_at(frames, probes)  # (T, 5, 2)
    jac = np.stack([(b[:, 1] - b[:, 2]) / (2 * step), (b[:, 3] - b[:, 4]) / (2 * step)], axis=-1)  # (T, 2, 2)
    centre = b[:, 0].copy()
    if not np.isfinite(centre[frame]).all():  # the inverse map is unknown there: nothing to follow
        raise outside_region(op.get("id", ""))
    j_ref = jac[frame]
    rgba = graded_image(op)
    h, w = rgba.shape[:2]
    size = np.asarray(op.get("size", [w, h]), dtype=np.float64) * float(op.get("scale", 1.0))
    base = rotation_matrix(float(op.get("rotation", 0.0))) * size[None, :]
    follow_scale, follow_rotation = bool(op.get("follow_scale", False)), bool(op.get("follow_rotation", False))
    matrix = np.repeat(base[None], len(frames), axis=0)
    ref_ok = np.isfinite(j_ref).all() and abs(np.linalg.det(j_ref)) > 1e-9
    # B is only approximately T^-1: shift every frame by the frame-N residual carried through L_t so the
    # sticker sits exactly on its anchor in frame N.
    residual = anchor - centre[frame] if np.isfinite(centre[frame]).all() else np.zeros(2)
    for t in frames:
        if not (ref_ok and np.isfinite(jac[t]).all()):
            centre[t] = centre[t] + residual
            continue
        local = jac[t] @ np.linalg.inv(j_ref)
        centre[t] = centre[t] + local @ residual
        scale, angle = _polar(local)
        follow = np.eye(2)
        if follow_rotation:
            c, s = np.cos(angle), np.sin(angle)
            follow = np.array([[c, -s], [s, c]])
        if follow_scale:
            follow = follow * scale
        matrix[t] = follow @ base
    return StickerTrack(centre=centre, matrix=matrix, image=_stored_image(rgba, matrix, device),
                        opacity=float(op.get("opacity", 1.0)))


def _stored_image(rgba: np.ndarray, matrix: np.ndarray, device: torch.device) -> torch.Tensor:
    """The sticker image downsampled to the largest size it is drawn at (frame pixels per axis, any frame)."""
    h, w = rgba.shape[:2]
    lengths = np.linalg.norm(matrix, axis=1)  # (T, 2): frame pixels along the sticker's x and y axes
    lengths = lengths[np.isfinite(lengths).all(axis=1)]
    if len(lengths) == 0:
        return torch.from_numpy(rgba.copy()).to(device)
    span_x, span_y = lengths.max(axis=0)
    sw = min(w, max(1, int(np.ceil(span_x * IMAGE_OVERSAMPLE))))
    sh = min(h, max(1, int(np.ceil(span_y * IMAGE_OVERSAMPLE))))
    return torch.from_numpy(shrink_image(rgba, (0, 0, w, h), (sw, sh))).to(device)


def draw_sticker(out: torch.Tensor, mask: torch.Tensor, track: StickerTrack, frame: int) -> None:
    """Blend a sticker into one composited frame in place: out (H, W, 3) uint8, mask (H, W) uint8."""
    centre = track.centre[frame]
    mat = track.matrix[frame]
    if not np.isfinite(centre).all() or not np.isfinite(mat).all() or abs(np.linalg.det(mat)) < 1e-9:
        return
    height, width = out.shape[:2]
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) @ mat.T + centre
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return
    device = out.device
    inv = torch.as_tensor(np.linalg.inv(mat), dtype=torch.float32, device=device)
    ys = torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    offset = torch.stack([gx, gy], dim=-1) - torch.as_tensor(centre, dtype=torch.float32, device=device)
    local = offset @ inv.T  # in [-0.5, 0.5] inside the sticker
    src = F.grid_sample(premultiply(track.image).unsqueeze(0), (local * 2.0).unsqueeze(0), mode="bilinear",
                        padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    m = mask[y0:y1, x0:x1].to(torch.float32).unsqueeze(-1) * (track.opacity / 255.0)
    alpha = src[..., 3:4] * m
    region = out[y0:y1, x0:x1].to(torch.float32)
    blended = region * (1.0 - alpha) + src[..., :3] * (m * 255.0)
    out[y0:y1, x0:x1] = torch.floor(blended + 0.5).clamp_(0, 255).to(torch.uint8)
