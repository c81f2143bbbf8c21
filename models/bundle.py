"""The baked bundle: everything the render server needs from a fitted atlas, in one versioned file.

A bundle is a ZIP archive (stored, not compressed: the arrays are read straight into memory) holding
``manifest.json`` and one ``.npy`` entry per array. The manifest carries the format version, metadata
and a SHA-256 per array, so truncation, corruption and version skew are caught at load time.

Coordinate conventions (shared by the model, the edit engine and the compositor):

* Frames are ``(T, H, W, 3)`` uint8 at the working resolution; pixel centres at integer + 0.5.
* ``uv`` lies in ``[-1, 1]^2`` and addresses the atlas texture like ``grid_sample(align_corners=False)``:
  texel ``(i, j)`` of an ``S x S`` atlas has its centre at ``u = (j + 0.5) / S * 2 - 1`` (``v`` likewise
  from ``i``). ``u`` follows x, ``v`` follows y.
* "Atlas space" for edit ops is measured in reference-frame pixels: ``x = W / 2 + u * span / 2`` and
  ``y = H / 2 + v * span / 2`` with ``span = atlas_span_px``. The fit anchors T(x, y, ref) ~ (x, y) there,
  so atlas coordinates read like reference-frame coordinates.
* ``uv`` is stored as uint16 fixed point: ``uv = q / 65535 * 2 - 1`` (about 1/30 of a texel at 1024^2).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE_FORMAT = "vatlas-bundle"
BUNDLE_VERSION = 1
UV_SCALE = 65535.0
UV_STEP = 2.0 / UV_SCALE
# On the device uv is stored as int16 q_s = q - 32768, so uv = q_s * step + (32768 * step - 1).
UV_OFFSET = 32768.0 * UV_STEP - 1.0

ARRAY_FIELDS = ("frames", "atlas", "atlas_coverage", "uv", "mask", "illumination", "inverse_map")


class BundleError(Exception):
    """A bundle file is missing, truncated, corrupted or of an incompatible version."""


def encode_uv(uv: np.ndarray) -> np.ndarray:
    """Float uv in [-1, 1] -> uint16 fixed point (values outside are clamped)."""
    q = np.rint((np.clip(uv, -1.0, 1.0) + 1.0) * (UV_SCALE / 2.0))
    return q.astype(np.uint16)


def decode_uv(q: np.ndarray) -> np.ndarray:
    """uint16 fixed point -> float32 uv in [-1, 1]."""
    return q.astype(np.float32) * np.float32(2.0 / UV_SCALE) - np.float32(1.0)


@dataclass
class Bundle:
    """A fitted, baked RNA model. Arrays are numpy; see the module docstring for conventions."""

    frames: np.ndarray  # (T, H, W, 3) uint8, working-resolution input frames
    fps: float
    ref_frame: int
    roi_polygons: list[list[list[float]]]  # ROI polygons on the reference frame, working-res pixels
    atlas: np.ndarray  # (S, S, 3) uint8 RGB texture of A over uv [-1, 1]^2
    atlas_coverage: np.ndarray  # (S, S) uint8, 255 where some visible ROI pixel maps
    uv: np.ndarray  # (T, H, W, 2) uint16 fixed point, see encode_uv
    mask: np.ndarray  # (T, H, W) uint8 soft ROI visibility mask (0..255)
    illumination: np.ndarray  # (T, h, w, 3) float16 multiplicative illumination, h <= H, w <= W
    inverse_map: np.ndarray  # (T, G, G, 2) float32 frame pixel (x, y) of atlas grid points; NaN = unknown
    atlas_span_px: float  # reference-frame pixels covered by uv [-1, 1]
    source: dict[str, Any] = field(default_factory=dict)  # path, sha256, original size, frame range, stride
    config: dict[str, Any] = field(default_factory=dict)  # the fit configuration
    metrics: dict[str, Any] = field(default_factory=dict)  # fit quality metrics

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
    def atlas_size(self) -> int:
        return int(self.atlas.shape[0])

    def uv_float(self, t: int | slice = slice(None)) -> np.ndarray:
        return decode_uv(self.uv[t])

    def atlas_to_uv(self, xy: np.ndarray) -> np.ndarray:
        """Atlas-space points (reference-frame pixels) -> uv."""
        xy = np.asarray(xy, dtype=np.float64)
        center = np.array([self.width / 2.0, self.height / 2.0])
        return (xy - center) / (self.atlas_span_px / 2.0)

    def uv_to_atlas(self, uv: np.ndarray) -> np.ndarray:
        """uv -> atlas-space points (reference-frame pixels)."""
        uv = np.asarray(uv, dtype=np.float64)
        center = np.array([self.width / 2.0, self.height / 2.0])
        return uv * (self.atlas_span_px / 2.0) + center

    def validate(self) -> None:
        """Check shapes and dtypes agree; raises BundleError."""
        t, h, w = self.frames.shape[:3]
        checks = [
            (self.frames.dtype == np.uint8 and self.frames.ndim == 4 and self.frames.shape[3] == 3, "frames"),
            (self.atlas.dtype == np.uint8 and self.atlas.ndim == 3 and self.atlas.shape[0] == self.atlas.shape[1]
             and self.atlas.shape[2] == 3, "atlas"),
            (self.atlas_coverage.shape == self.atlas.shape[:2] and self.atlas_coverage.dtype == np.uint8,
             "atlas_coverage"),
            (self.uv.dtype == np.uint16 and self.uv.shape == (t, h, w, 2), "uv"),
            (self.mask.dtype == np.uint8 and self.mask.shape == (t, h, w), "mask"),
            (self.illumination.dtype == np.float16 and self.illumination.ndim == 4
             and self.illumination.shape[0] == t and self.illumination.shape[3] == 3, "illumination"),
            (self.inverse_map.dtype == np.float32 and self.inverse_map.ndim == 4 and self.inverse_map.shape[0] == t
             and self.inverse_map.shape[3] == 2, "inverse_map"),
            (0 <= self.ref_frame < t, "ref_frame"),
            (self.atlas_span_px > 0 and self.fps > 0, "atlas_span_px/fps"),
        ]
        bad = [name for ok, name in checks if not ok]
        if bad:
            raise BundleError(f"bundle arrays are inconsistent: {', '.join(bad)}")

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary (what `vatlas info` prints)."""
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "frames": self.num_frames,
            "size": [self.width, self.height],
            "fps": self.fps,
            "ref_frame": self.ref_frame,
            "roi_polygons": len(self.roi_polygons),
            "atlas_size": self.atlas_size,
            "atlas_span_px": self.atlas_span_px,
            "atlas_coverage": float((self.atlas_coverage > 0).mean()),
            "illumination_size": [int(self.illumination.shape[2]), int(self.illumination.shape[1])],
            "inverse_map_grid": int(self.inverse_map.shape[1]),
            "source": self.source,
            "metrics": self.metrics,
            "config": self.config,
            "bytes": {name: int(getattr(self, name).nbytes) for name in ARRAY_FIELDS},
        }


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written bundle."""
    bundle.validate()
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    checksums: dict[str, str] = {}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in ARRAY_FIELDS:
            data = _npy_bytes(getattr(bundle, name))
            checksums[name] = hashlib.sha256(data).hexdigest()
            zf.writestr(f"{name}.npy", data)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "fps": bundle.fps,
            "ref_frame": bundle.ref_frame,
            "roi_polygons": bundle.roi_polygons,
            "atlas_span_px": bundle.atlas_span_px,
            "source": bundle.source,
            "config": bundle.config,
            "metrics": bundle.metrics,
            "sha256": checksums,
        }
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check only the manifest (cheap; used by listings)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle file") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: not a vatlas bundle or truncated ({exc})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a vatlas bundle (format {manifest.get('format')!r})")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{path}: bundle version {manifest.get('version')} is not supported (this vatlas reads {BUNDLE_VERSION})"
        )
    return manifest


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify every checksum; raises BundleError with the file name on any problem."""
    path = Path(path)
    manifest = read_manifest(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in ARRAY_FIELDS:
                data = zf.read(f"{name}.npy")
                if hashlib.sha256(data).hexdigest() != manifest["sha256"].get(name):
                    raise BundleError(f"{path}: checksum mismatch in {name!r} (file corrupted)")
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
    except BundleError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: truncated or corrupted bundle ({exc})") from None
    bundle = Bundle(
        fps=float(manifest["fps"]),
        ref_frame=int(manifest["ref_frame"]),
        roi_polygons=manifest["roi_polygons"],
        atlas_span_px=float(manifest["atlas_span_px"]),
        source=manifest.get("source", {}),
        config=manifest.get("config", {}),
        metrics=manifest.get("metrics", {}),
        **arrays,
    )
    bundle.validate()
    return bundle
