"""Regions of interest: polygons (or a raster mask) on a reference frame, in input-video pixels.

File formats read by ``load_roi``:

* JSON: ``{"ref_frame": 0, "polygons": [[[x, y], [x, y], ...], ...]}``. Several polygons are several ROIs
  (they must not overlap on the reference frame). Coordinates are continuous pixel coordinates of the input
  video (pixel centres at integer + 0.5, as in ``models/bundle.py``), so scaling a polygon is exact.
* An image mask (``.png``, ``.jpg``, ``.bmp``, ``.tif``): non-zero = ROI; the reference frame comes from the
  ``ref_frame`` argument (default 0). Its outer contours become ``polygons``; ``Roi.mask`` uses the raster
  itself (resized with nearest neighbour), so holes and exact edges are kept.

Rasterization: ``Roi.mask`` is ``cv2.fillPoly`` of the polygons shifted by -0.5 (continuous -> pixel index),
which includes the outline: a rectangle from x=2 to x=6 covers pixel columns 2..6.

Public API: ``Roi(ref_frame, polygons, raster=None)``, ``Roi.mask(height, width) -> bool (H, W)``,
``Roi.label_mask(height, width) -> uint8`` (k + 1 inside polygon k), ``Roi.scaled(sx, sy) -> Roi``,
``Roi.to_json() -> dict``, ``Roi.save(path)``, ``Roi.validate(width, height, num_frames)`` (ref frame in range,
polygons inside the frame, at least one pixel of area, no overlap), ``Roi.from_mask(mask, ref_frame)``,
``load_roi(path, ref_frame=None) -> Roi``, ``polygon_area(polygon) -> float``.
All problems with ROI input raise ``vatlas.errors.RoiError`` with a one-line message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vatlas.errors import RoiError

MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SHIFT = 8  # fillPoly fixed-point bits: polygons keep 1/256 px precision


@dataclass
class Roi:
    """One or more ROI polygons on frame ``ref_frame`` (optionally backed by a raster mask)."""

    ref_frame: int
    polygons: list[np.ndarray]  # each (N, 2) float64 (x, y), N >= 3
    raster: np.ndarray | None = field(default=None, repr=False)  # (H0, W0) bool, when loaded from a mask

    def __post_init__(self) -> None:
        if int(self.ref_frame) < 0:
            raise RoiError(f"ROI ref_frame must be >= 0, got {self.ref_frame}")
        self.ref_frame = int(self.ref_frame)
        polygons = []
        for k, poly in enumerate(self.polygons):
            try:
                arr = np.asarray(poly, dtype=np.float64)
            except (ValueError, TypeError):
                raise RoiError(f"ROI polygon {k} is not a list of [x, y] number pairs") from None
            if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 3:
                raise RoiError(
                    f"ROI polygon {k} must be a list of at least 3 [x, y] points, got shape {arr.shape}"
                )
            if not np.isfinite(arr).all():
                raise RoiError(f"ROI polygon {k} has non-finite coordinates")
            polygons.append(arr)
        if not polygons:
            raise RoiError("ROI has no polygons")
        self.polygons = polygons

    def mask(self, height: int, width: int) -> np.ndarray:
        """Rasterize to a bool (H, W) mask (union of all polygons)."""
        if self.raster is not None:
            resized = cv2.resize(
                self.raster.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
            )
            return resized > 0
        return self.label_mask(height, width) > 0

    def label_mask(self, height: int, width: int) -> np.ndarray:
        """uint8 (H, W): 0 outside, k + 1 inside polygon k (later polygons win where they overlap)."""
        labels = np.zeros((height, width), np.uint8)
        for k, pts in enumerate(self._fixed_point()):
            cv2.fillPoly(labels, [pts], k + 1, lineType=cv2.LINE_8, shift=_SHIFT)
        return labels

    def _fixed_point(self) -> list[np.ndarray]:
        # Pixel centres sit at +0.5 in continuous coordinates; fillPoly works in pixel indices.
        return [np.rint((poly - 0.5) * (1 << _SHIFT)).astype(np.int32) for poly in self.polygons]

    def scaled(self, sx: float, sy: float) -> Roi:
        """The same ROI for frames resized by (sx, sy) (e.g. new_width / old_width)."""
        factor = np.array([sx, sy], dtype=np.float64)
        return Roi(self.ref_frame, [poly * factor for poly in self.polygons], self.raster)

    def to_json(self) -> dict[str, Any]:
        return {"ref_frame": self.ref_frame, "polygons": [poly.tolist() for poly in self.polygons]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json()))
        return path

    def validate(self, width: int, height: int, num_frames: int) -> None:
        """Check the ROI fits a video of this size; raises RoiError."""
        if self.ref_frame >= num_frames:
            raise RoiError(f"ROI ref_frame {self.ref_frame} is beyond the video's {num_frames} frames")
        for k, poly in enumerate(self.polygons):
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= width or lo[1] >= height:
                raise RoiError(f"ROI polygon {k} lies outside the {width}x{height} frame")
        if self.raster is None:
            for k, poly in enumerate(self.polygons):
                if polygon_area(poly) < 1.0:
                    raise RoiError(f"ROI polygon {k} has an area below one pixel")
            areas = [int(Roi(self.ref_frame, [poly]).mask(height, width).sum()) for poly in self.polygons]
            if sum(areas) != int(self.mask(height, width).sum()):
                raise RoiError("ROI polygons overlap on the reference frame (several ROIs must be disjoint)")
        elif not self.mask(height, width).any():
            raise RoiError("ROI mask is empty")

    @classmethod
    def from_mask(cls, mask: np.ndarray, ref_frame: int = 0) -> Roi:
        """An ROI from a (H, W) mask, non-zero = inside; polygons are its outer contours."""
        binary = np.asarray(mask) > 0
        if binary.ndim != 2:
            raise RoiError(f"ROI mask must be 2-D, got shape {binary.shape}")
        contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        # Contour points are pixel indices; +0.5 puts them at pixel centres in continuous coordinates.
        polygons = [c[:, 0, :].astype(np.float64) + 0.5 for c in contours if len(c) >= 3]
        if not polygons:
            raise RoiError("ROI mask has no region of at least 3 pixels")
        return cls(ref_frame, polygons, binary)


def polygon_area(polygon: np.ndarray) -> float:
    """Area in square pixels (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def load_roi(path: str | Path, ref_frame: int | None = None) -> Roi:
    """Read an ROI from JSON or an image mask; an explicit ``ref_frame`` overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise RoiError(f"{path}: no such ROI file")
    if path.suffix.lower() in MASK_EXTENSIONS:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise RoiError(f"{path}: not a readable mask image")
        try:
            return Roi.from_mask(image, 0 if ref_frame is None else ref_frame)
        except RoiError as exc:
            raise RoiError(f"{path}: {exc}") from None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RoiError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("polygons"), list):
        raise RoiError(f'{path}: expected {{"ref_frame": int, "polygons": [[[x, y], ...], ...]}}')
    file_ref = data.get("ref_frame", 0)
    if not isinstance(file_ref, int) or isinstance(file_ref, bool):
        raise RoiError(f"{path}: ref_frame must be an integer, got {file_ref!r}")
    try:
        return Roi(file_ref if ref_frame is None else ref_frame, data["polygons"])
    except (RoiError, ValueError, TypeError) as exc:
        raise RoiError(f"{path}: {exc}") from None
