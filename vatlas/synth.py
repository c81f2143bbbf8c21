"""Synthetic scenes with exact ground truth: the project's test oracle.

A procedural, colourful, high-frequency texture lies on a flat "world" plane. A camera moves smoothly over it
(pan, zoom, rotation, mild perspective): frame ``t`` sees world point ``G_t(p)`` at pixel ``p``, where ``G_t``
is a homography (``frame_to_world[t]``). Textured occluders (rounded boxes with their own moving texture and
anti-aliased edges) cross the region of interest; an optional illumination field (a global colour gain that
varies over time times a soft shadow drifting over the plane) multiplies the background colour only.

Atlas space is the reference frame (frame 0): atlas point ``a`` is the world point ``G_0(a)``, so pixel ``p`` of
frame ``t`` has atlas point ``G_0^-1 G_t p`` and ``gt_uv`` holds it in the bundle convention of
``models/bundle.py`` (``x = W/2 + u * span/2``, ``span = atlas_span_px = 1.25 * max(W, H)``). All coordinates
are continuous pixel coordinates (pixel centres at integer + 0.5).

Public API
----------
``make_scene(frames=48, size=(256, 144), seed=0, occluders=1, lighting=True, fps=30.0) -> SynthScene``

``SynthScene`` fields (T frames of H x W):

* ``frames`` (T, H, W, 3) uint8: the rendered video. ``fps``. ``roi``: a ``vatlas.roi.Roi`` on frame 0.
* ``gt_uv`` (T, H, W, 2) float32: uv of the *background surface* seen (or hidden behind an occluder) at each
  pixel; not clamped, so it may leave [-1, 1] far from the reference view.
* ``gt_visibility`` (T, H, W) float32 in [0, 1]: the pixel shows the ROI surface: ROI coverage mapped to frame
  ``t`` (anti-aliased at the ROI border) times ``1 - occluder coverage`` (anti-aliased occluder edges).
* ``gt_illumination`` (T, H, W, 3) float32: multiplicative illumination of the background (1 without lighting).
  Background pixels are ``round(illumination * texture)``; the illumination of frame 0 has gain 1.
* ``atlas_span_px``, ``frame_to_world`` (T, 3, 3), ``atlas_to_frame`` (T, 3, 3) homographies.
* ``render_edited(rgba, at=(x, y))`` (T, H, W, 3) uint8: what a perfect editor outputs when the RGBA image is
  pasted with its top-left corner at reference-frame point ``(x, y)``: the image becomes a texture on the plane
  and ``out = c + vis * illum * (over(edit, texture) - texture)``, i.e. ``illum * over(edit, texture)`` where
  the ROI is fully visible and the input frame bit for bit where ``vis = 0``.
* ``ground_truth_bundle(atlas_size=1024)`` -> ``models.bundle.Bundle``: the perfect "fit" of this scene.
* ``gt_track(points_ref (N, 2)) -> (T, N, 2)``: where reference-frame points are in every frame.

Deterministic per seed (one ``numpy.random.Generator``); 48 frames of 256x144 take well under 2 s on a CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vatlas.models.bundle import Bundle, encode_uv
from vatlas.roi import Roi
from vatlas.video import content_hash

SPAN_FACTOR = 1.25
INVERSE_MAP_GRID = 64
_ROI_SUPERSAMPLE = 4
# Centre of pixel index i is continuous coordinate i + 0.5: C maps indices to continuous coordinates.
_C = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_C_INV = np.linalg.inv(_C)


def _translate(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 3x3 homography (points with w <= 0 become NaN)."""
    xy = np.asarray(xy, dtype=np.float64)
    w = xy[..., 0] * h[2, 0] + xy[..., 1] * h[2, 1] + h[2, 2]
    w = np.where(w > 1e-12, w, np.nan)
    x = (xy[..., 0] * h[0, 0] + xy[..., 1] * h[0, 1] + h[0, 2]) / w
    y = (xy[..., 0] * h[1, 0] + xy[..., 1] * h[1, 1] + h[1, 2]) / w
    return np.stack([x, y], axis=-1)


def _index_homography(h: np.ndarray) -> np.ndarray:
    """A continuous-coordinate homography expressed on pixel indices (what cv2 warps use)."""
    return _C_INV @ h @ _C


@dataclass
class _Occluder:
    half_size: np.ndarray  # (2,) box half extents (px)
    radius: float  # corner radius (px)
    centre0: np.ndarray  # (2,) frame position at t = 0
    velocity: np.ndarray  # (2,) px per frame
    angle0: float
    spin: float  # radians per frame
    texture: np.ndarray  # (h, w, 3) float32, indexed by local coordinates + half_size

    def centre(self, t: int) -> np.ndarray:
        return self.centre0 + self.velocity * t

    def bounding_radius(self) -> float:
        return float(np.linalg.norm(self.half_size))

    def render(
        self, t: int, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]] | None:
        """Coverage (h, w) in [0, 1] and colour (h, w, 3) in frame t, over the box (rows, cols) they fill.

        None when the occluder is outside the frame. Only its bounding box is computed (speed).
        """
        centre = self.centre(t)
        reach = self.bounding_radius() + 2.0
        x0, x1 = max(int(np.floor(centre[0] - reach)), 0), min(int(np.ceil(centre[0] + reach)), width)
        y0, y1 = max(int(np.floor(centre[1] - reach)), 0), min(int(np.ceil(centre[1] + reach)), height)
        if x0 >= x1 or y0 >= y1:
            return None
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + np.float32(0.5)
        angle = self.angle0 + self.spin * t
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dx, dy = xs - np.float32(centre[0]), ys - np.float32(centre[1])
        local_x = cos * dx + sin * dy
        local_y = -sin * dx + cos * dy
        # Signed distance of a rounded box; 0.5 - sd is its pixel coverage to first order (anti-aliasing).
        inner = (self.half_size - self.radius).astype(np.float32)
        qx, qy = np.abs(local_x) - inner[0], np.abs(local_y) - inner[1]
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        sd = outside + np.minimum(np.maximum(qx, qy), 0) - np.float32(self.radius)
        coverage = np.clip(0.5 - sd, 0.0, 1.0).astype(np.float32)
        colour = cv2.remap(
            self.texture,
            local_x + np.float32(self.half_size[0] - 0.5),
            local_y + np.float32(self.half_size[1] - 0.5),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        return coverage, colour, (slice(y0, y1), slice(x0, x1))


@dataclass
class SynthScene:
    """A rendered synthetic clip and its ground truth; see the module docstring."""

    frames: np.ndarray
    fps: float
    roi: Roi
    gt_uv: np.ndarray
    gt_visibility: np.ndarray
    gt_illumination: np.ndarray
    atlas_span_px: float
    frame_to_world: np.ndarray  # (T, 3, 3) continuous frame coords -> world texture coords
    world_texture: np.ndarray = field(repr=False)  # (Hw, Ww, 3) float32 unlit background colour (0..255)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def atlas_to_frame(self) -> np.ndarray:
        """(T, 3, 3): reference-frame (atlas-space) point -> frame-t point."""
        return np.linalg.inv(self.frame_to_world) @ self.frame_to_world[0]

    def gt_track(self, points_ref: np.ndarray) -> np.ndarray:
        """(N, 2) reference-frame points -> (T, N, 2) their positions in every frame (may leave the frame)."""
        points = np.asarray(points_ref, dtype=np.float64).reshape(-1, 2)
        return np.stack([apply_homography(h, points) for h in self.atlas_to_frame]).astype(np.float32)

    def background(self, t: int) -> np.ndarray:
        """(H, W, 3) float32 unlit background texture as seen by frame t."""
        return cv2.warpPerspective(
            self.world_texture,
            _index_homography(self.frame_to_world[t]),
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )

    def render_edited(self, rgba: np.ndarray, *, at: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Frames as a perfect editor renders them with ``rgba`` pasted at reference-frame point ``at``."""
        rgba = np.asarray(rgba)
        if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ValueError(f"edit image must be (h, w, 4) uint8, got {rgba.shape} {rgba.dtype}")
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        premultiplied = np.concatenate([rgba[..., :3].astype(np.float32) * alpha, alpha], axis=2)
        paste = _translate(-float(at[0]), -float(at[1]))  # reference-frame point -> edit image point
        out = np.empty_like(self.frames)
        for t in range(self.num_frames):
            frame_to_edit = paste @ self.atlas_to_frame_inv(t)
            edit = cv2.warpPerspective(
                premultiplied,
                _index_homography(frame_to_edit),
                (self.width, self.height),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            texture = self.background(t)
            # over(E, A) - A = E_premultiplied - E_alpha * A
            delta = edit[..., :3] - edit[..., 3:4] * texture
            weight = self.gt_visibility[t][..., None] * self.gt_illumination[t]
            result = self.frames[t].astype(np.float32) + weight * delta
            out[t] = np.clip(np.rint(result), 0, 255).astype(np.uint8)
        return out

    def atlas_to_frame_inv(self, t: int) -> np.ndarray:
        """Frame-t point -> reference-frame (atlas-space) point."""
        return np.linalg.inv(self.frame_to_world[0]) @ self.frame_to_world[t]

    def ground_truth_bundle(self, atlas_size: int = 1024) -> Bundle:
        """A perfect bundle: exact atlas, uv, soft mask, illumination and inverse map of this scene."""
        if atlas_size < 2:
            raise ValueError(f"atlas_size must be >= 2, got {atlas_size}")
        size = int(atlas_size)
        texel = self.atlas_span_px / size
        origin = np.array([self.width / 2.0, self.height / 2.0]) - self.atlas_span_px / 2.0
        # Atlas texel index (j, i) -> atlas-space point: its centre (j + 0.5) * texel + origin.
        texel_to_atlas = np.array(
            [[texel, 0.0, 0.5 * texel + origin[0]], [0.0, texel, 0.5 * texel + origin[1]], [0.0, 0.0, 1.0]]
        )
        atlas = cv2.warpPerspective(
            self.world_texture,
            _C_INV @ self.frame_to_world[0] @ texel_to_atlas,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        atlas_roi = Roi(0, [(poly - origin) / texel for poly in self.roi.polygons])
        coverage = atlas_roi.mask(size, size).astype(np.uint8) * 255
        t, h, w = self.gt_visibility.shape
        half = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
        illumination = np.stack(
            [cv2.resize(self.gt_illumination[k], half, interpolation=cv2.INTER_AREA) for k in range(t)]
        )
        return Bundle(
            frames=self.frames.copy(),
            fps=float(self.fps),
            ref_frame=0,
            roi_polygons=self.roi.to_json()["polygons"],
            atlas=np.clip(np.rint(atlas), 0, 255).astype(np.uint8),
            atlas_coverage=coverage,
            uv=encode_uv(self.gt_uv),
            mask=np.clip(np.rint(self.gt_visibility * 255.0), 0, 255).astype(np.uint8),
            illumination=illumination.astype(np.float16),
            inverse_map=self._inverse_map(INVERSE_MAP_GRID),
            atlas_span_px=float(self.atlas_span_px),
            source={
                "path": "synthetic",
                "sha256": content_hash(self.frames),
                "stride": 1,
                "synthetic": dict(self.params),
                "size": [w, h],
                "frame_range": [0, t],
            },
            config={"kind": "ground_truth"},
            metrics={},
        )

    def _inverse_map(self, grid: int) -> np.ndarray:
        centres = (np.arange(grid) + 0.5) / grid * 2.0 - 1.0
        uv = np.stack(np.meshgrid(centres, centres), axis=-1)  # [i, j] = (u_j, v_i)
        atlas_points = uv * (self.atlas_span_px / 2.0) + np.array([self.width / 2.0, self.height / 2.0])
        out = np.stack([apply_homography(h, atlas_points) for h in self.atlas_to_frame])
        inside = (
            (out[..., 0] >= 0)
            & (out[..., 0] <= self.width)
            & (out[..., 1] >= 0)
            & (out[..., 1] <= self.height)
        )
        out[~inside] = np.nan
        return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Scene construction


def _camera_path(rng: np.random.Generator, frames: int, width: int, height: int) -> np.ndarray:
    """(T, 3, 3) smooth frame -> world homographies (world = frame 0's view up to the path's own start)."""
    tau = np.linspace(0.0, 1.0, frames)
    scale = float(max(width, height))
    direction = rng.uniform(0, 2 * np.pi)
    pan_fraction = rng.uniform(0.1, 0.2)  # of the frame size along each axis, so the ROI stays mostly in view
    wobble_amp = rng.uniform(0.01, 0.03, size=2) * scale
    wobble_freq = rng.uniform(0.5, 1.2, size=2)
    wobble_phase = rng.uniform(0, 2 * np.pi, size=2)
    zoom_rate = rng.uniform(-0.15, 0.15)
    spin = np.deg2rad(rng.uniform(-6.0, 6.0))
    tilt0 = rng.uniform(-0.08, 0.08, size=2) / scale
    tilt1 = rng.uniform(-0.08, 0.08, size=2) / scale
    centre = np.array([width / 2.0, height / 2.0])
    out = np.empty((frames, 3, 3))
    for k, s in enumerate(tau):
        wobble = wobble_amp * (np.sin(2 * np.pi * wobble_freq * s + wobble_phase) - np.sin(wobble_phase))
        pan = pan_fraction * s * np.array([np.cos(direction) * width, np.sin(direction) * height]) + wobble
        zoom = np.exp(zoom_rate * s + 0.03 * np.sin(2 * np.pi * wobble_freq[0] * s))
        angle = spin * s
        rotation_scale = np.array(
            [
                [zoom * np.cos(angle), -zoom * np.sin(angle), 0.0],
                [zoom * np.sin(angle), zoom * np.cos(angle), 0.0],
                [0.0, 0.0, 1.0],
            ]
        )
        tilt = tilt0 + (tilt1 - tilt0) * s
        perspective = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [tilt[0], tilt[1], 1.0]])
        out[k] = _translate(*(centre + pan)) @ rotation_scale @ perspective @ _translate(*(-centre))
    return out


def _noise_texture(rng: np.random.Generator, width: int, height: int, cells: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) float32 multi-octave value noise in roughly [0, 1], independent per channel (colourful)."""
    total = np.zeros((height, width, 3), np.float32)
    weight_sum = 0.0
    for cell in cells:
        grid = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        layer = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        weight = float(cell) ** 0.25
        total += weight * layer
        weight_sum += weight
    total /= weight_sum
    lo, hi = np.percentile(total, [1, 99])
    return np.clip((total - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _world_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Colourful texture with detail at every scale from ~3 px up, in 0..255 (kept away from 0 and 255)."""
    base = _noise_texture(rng, width, height, (96, 48, 24, 12, 6, 3))
    canvas = (base * 255.0).astype(np.uint8)
    # Shapes add sharp edges and corners: what optical flow locks onto best.
    count = max(8, width * height // 900)
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(2, 12))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(canvas, (x, y), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (x, y), (x + r, y + int(rng.integers(2, 12))), colour, -1, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-20, 21)), y + int(rng.integers(-20, 21)))
            cv2.line(canvas, (x, y), end, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    # Random (aperiodic, so flow cannot lock onto the wrong period) 4 px blocks add fine, sharp detail.
    blocks = rng.random((height // 4 + 1, width // 4 + 1)).astype(np.float32)
    blocks = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:height, :width]
    texture = canvas.astype(np.float32) * (0.8 + 0.2 * blocks[..., None])
    texture = cv2.GaussianBlur(texture, (0, 0), 0.6)  # band-limit so resampling does not alias
    # 24..200 leaves headroom for illumination gains up to ~1.25 without clipping.
    return (24.0 + texture * (176.0 / 255.0)).astype(np.float32)


def _random_roi(rng: np.random.Generator, width: int, height: int) -> Roi:
    centre = np.array([width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)])
    radii = np.array([width * rng.uniform(0.2, 0.27), height * rng.uniform(0.24, 0.32)])
    count = int(rng.integers(4, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi / count, size=count) + np.arange(count) * 2 * np.pi / count)
    reach = rng.uniform(0.8, 1.0, size=count)
    points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii * reach[:, None]
    return Roi(0, [np.round(points, 2)])


def _make_occluder(
    rng: np.random.Generator,
    frames: int,
    width: int,
    height: int,
    target: np.ndarray,
    t_cross: float,
    roi_centre0: np.ndarray,
    roi_radius: float,
) -> _Occluder:
    """An occluder passing over ``target`` (a frame point) mid-clip and clear of the ROI on frame 0."""
    half = np.array([rng.uniform(0.04, 0.09) * width, rng.uniform(0.15, 0.3) * height])
    radius = float(rng.uniform(0.2, 0.9) * half.min())
    heading = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0.0)
    direction = np.array([np.cos(heading), np.sin(heading)])
    clearance = (roi_radius + float(np.linalg.norm(half))) * 1.1
    speed = clearance / max(t_cross, 1.0)
    # Frame 0 must show the whole ROI (it defines the atlas): push the start back until it is clear.
    for _ in range(60):
        start = target - direction * speed * t_cross
        if np.linalg.norm(start - roi_centre0) >= clearance:
            break
        speed *= 1.15
    tex_size = (int(2 * half[0]) + 4, int(2 * half[1]) + 4)
    noise = _noise_texture(rng, tex_size[0], tex_size[1], (16, 8, 4))
    stripes = (
        0.5 + 0.5 * np.sin(np.arange(tex_size[0], dtype=np.float32) * rng.uniform(0.4, 1.2))[None, :, None]
    )
    tint = rng.uniform(0.2, 1.0, size=3).astype(np.float32)
    texture = (255.0 * tint * (0.35 + 0.45 * noise + 0.2 * stripes)).astype(np.float32)
    return _Occluder(
        half_size=half,
        radius=radius,
        centre0=start,
        velocity=direction * speed,
        angle0=float(rng.uniform(-0.4, 0.4) + (np.pi / 2 if rng.random() < 0.5 else 0.0)),
        spin=float(rng.uniform(-0.01, 0.01)),
        texture=np.ascontiguousarray(np.clip(texture, 0, 255)),
    )


def _illumination_model(
    rng: np.random.Generator, frames: int, width: int, height: int, roi_centre: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(T, 3) gains with gain 1 on frame 0, (T, 2) world shadow centres, shadow sigma and depth."""
    tau = np.linspace(0.0, 1.0, frames)[:, None]
    amplitude = rng.uniform(0.1, 0.18)
    tint = np.array([1.0, rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.2)])
    freq, phase = rng.uniform(0.6, 1.2), rng.uniform(0, 2 * np.pi)
    gains = 1.0 + amplitude * tint * (np.sin(2 * np.pi * freq * tau + phase) - np.sin(phase)) / 2.0
    scale = float(max(width, height))
    heading = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading), np.sin(heading)])
    shadow = roi_centre + direction * (tau - 0.5) * 1.2 * scale
    return gains, shadow, 0.18 * scale, float(rng.uniform(0.25, 0.4))


def make_scene(
    frames: int = 48,
    size: tuple[int, int] = (256, 144),
    seed: int = 0,
    occluders: int = 1,
    lighting: bool = True,
    fps: float = 30.0,
) -> SynthScene:
    """Render a synthetic clip with ground truth; see the module docstring."""
    width, height = int(size[0]), int(size[1])
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least 32x32, got {width}x{height}")
    if not 0 <= occluders <= 16:
        raise ValueError(f"occluders must be in 0..16, got {occluders}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rng = np.random.default_rng(seed)
    span = SPAN_FACTOR * max(width, height)
    camera = _camera_path(rng, frames, width, height)

    # The world texture must cover every frame and the reference frame's whole atlas square.
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    centre = np.array([width / 2.0, height / 2.0])
    atlas_corners = centre + (corners / np.array([width, height]) - 0.5) * span
    seen = np.concatenate(
        [apply_homography(h, corners) for h in camera] + [apply_homography(camera[0], atlas_corners)]
    )
    lo = np.floor(seen.min(axis=0)) - 8
    hi = np.ceil(seen.max(axis=0)) + 8
    world_w, world_h = int(hi[0] - lo[0]), int(hi[1] - lo[1])
    frame_to_world = np.stack([_translate(-lo[0], -lo[1]) @ h for h in camera])
    texture = _world_texture(rng, world_w, world_h)

    roi = _random_roi(rng, width, height)
    roi_poly = roi.polygons[0]
    roi_centre = roi_poly.mean(axis=0)
    roi_radius = float(np.linalg.norm(roi_poly - roi_centre, axis=1).max())
    atlas_to_frame = np.linalg.inv(frame_to_world) @ frame_to_world[0]
    occluder_list = []
    for k in range(occluders):
        # The first occluder crosses the ROI centre; the others cross random points of the ROI.
        target_ref = roi_centre if k == 0 else roi_poly[rng.integers(len(roi_poly))] * 0.6 + roi_centre * 0.4
        t_mid = int(round(rng.uniform(0.45, 0.7) * (frames - 1)))
        target = apply_homography(atlas_to_frame[t_mid], target_ref)
        occluder_list.append(
            _make_occluder(rng, frames, width, height, target, t_mid, roi_centre, roi_radius)
        )
    if lighting:
        gains, shadow_centres, shadow_sigma, shadow_depth = _illumination_model(
            rng, frames, width, height, apply_homography(frame_to_world[0], roi_centre)
        )

    # ROI coverage on the reference frame, anti-aliased by supersampling.
    ss = _ROI_SUPERSAMPLE
    roi_fine = roi.scaled(ss, ss).mask(height * ss, width * ss).astype(np.float32)
    roi_ref = cv2.resize(roi_fine, (width, height), interpolation=cv2.INTER_AREA)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    pixels = np.stack([xs, ys], axis=-1)
    coarse_w, coarse_h = max(2, width // 4), max(2, height // 4)
    cy, cx = np.mgrid[0:coarse_h, 0:coarse_w].astype(np.float64) + 0.5
    coarse_pixels = np.stack([cx * (width / coarse_w), cy * (height / coarse_h)], axis=-1)
    out_frames = np.empty((frames, height, width, 3), np.uint8)
    gt_uv = np.empty((frames, height, width, 2), np.float32)
    gt_vis = np.empty((frames, height, width), np.float32)
    gt_illum = np.ones((frames, height, width, 3), np.float32)
    world_to_ref = np.linalg.inv(frame_to_world[0])
    for t in range(frames):
        frame_to_ref = world_to_ref @ frame_to_world[t]
        gt_uv[t] = (apply_homography(frame_to_ref, pixels) - centre) / (span / 2.0)
        background = cv2.warpPerspective(
            texture,
            _index_homography(frame_to_world[t]),
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        if lighting:
            # The shadow is smooth: evaluate it on a 1/4 grid and upsample (same pixel-centre alignment).
            world = apply_homography(frame_to_world[t], coarse_pixels)
            d2 = ((world - shadow_centres[t]) ** 2).sum(axis=-1)
            shade = (1.0 - shadow_depth * np.exp(-d2 / (2.0 * shadow_sigma**2))).astype(np.float32)
            shade = cv2.resize(shade, (width, height), interpolation=cv2.INTER_LINEAR)
            gt_illum[t] = shade[..., None] * gains[t].astype(np.float32)
        colour = gt_illum[t] * background
        roi_t = cv2.warpPerspective(
            roi_ref,
            _index_homography(frame_to_ref),
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        uncovered = np.ones((height, width), np.float32)
        for occ in occluder_list:
            drawn = occ.render(t, width, height)
            if drawn is None:
                continue
            cover, occ_colour, box = drawn
            colour[box] = colour[box] * (1.0 - cover[..., None]) + occ_colour * cover[..., None]
            uncovered[box] *= 1.0 - cover
        gt_vis[t] = np.clip(roi_t * uncovered, 0.0, 1.0)
        out_frames[t] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)

    params = {
        "frames": frames,
        "size": [width, height],
        "seed": seed,
        "occluders": occluders,
        "lighting": lighting,
        "fps": fps,
    }
    return SynthScene(
        frames=out_frames,
        fps=float(fps),
        roi=roi,
        gt_uv=gt_uv,
        gt_visibility=gt_vis,
        gt_illumination=gt_illum,
        atlas_span_px=float(span),
        frame_to_world=frame_to_world,
        world_texture=texture,
        params=params,
    )
