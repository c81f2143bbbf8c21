"""The models directory: bundle listing (cheap, from headers) and loading (once, shared by sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from vatlas.models.bundle import Bundle, BundleError, load_bundle, read_manifest
from vatlas.server.edits.region import visible_boxes
from vatlas.server.errors import CoreError, scrub_paths
from vatlas_wire.v1 import bundles_pb2, edits_pb2

SUFFIX = ".vatlas"
# matched with fullmatch: "$" alone would also accept a trailing newline
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_bundle_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise CoreError("INVALID_ARGUMENT", f"bundle name {name!r} must be 1..64 characters of [A-Za-z0-9_.-]")
    return name


def _npy_shape(zf: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)  # the header only: no array data is read
    return tuple(int(s) for s in shape)


def _load_with_region(path: Path) -> Bundle:
    """Load a bundle and find where its region shows on each frame (a scan of every mask: in the loader's
    thread, not on the event loop that later asks for it)."""
    bundle = load_bundle(path)
    visible_boxes(bundle)
    return bundle


def roi_info(ref_frame: int, polygons: list[Any], boxes: np.ndarray | None) -> bundles_pb2.Roi:
    """The BundleInfo.roi message: polygons on the reference frame, and each frame's visible box if known."""
    roi = bundles_pb2.Roi(ref_frame=ref_frame)
    for polygon in polygons:
        roi.polygons.add().points.extend(edits_pb2.Vec2(x=float(p[0]), y=float(p[1])) for p in polygon)
    for x, y, w, h in boxes if boxes is not None else ():
        roi.visible.add(x=int(x), y=int(y), width=int(w), height=int(h))
    return roi


class BundleRegistry:
    """Bundles in `models_dir` by name (file stem); loaded ones stay in memory."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._loaded: dict[str, Bundle] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, name: str) -> Path:
        return self.models_dir / f"{check_bundle_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.models_dir.glob(f"*{SUFFIX}") if p.is_file())

    def info(self, name: str) -> bundles_pb2.BundleInfo:
        """BundleInfo from the loaded bundle, else from the file's manifest and array headers."""
        path = self.path(name)
        bundle = self._loaded.get(name)
        if bundle is not None:
            info = self._info_from(name, path, bundle.num_frames, bundle.width, bundle.height, bundle.fps,
                                   bundle.ref_frame, bundle.atlas_size, bundle.metrics, bundle.config, True)
            info.roi.CopyFrom(roi_info(bundle.ref_frame, bundle.roi_polygons, visible_boxes(bundle)))
            return info
        if not path.is_file():
            raise CoreError("NOT_FOUND", f"no bundle named {name!r} in the models directory")
        try:
            manifest = read_manifest(path)
            with zipfile.ZipFile(path) as zf:
                t, h, w = _npy_shape(zf, "frames.npy")[:3]
                s = _npy_shape(zf, "atlas.npy")[0]
        except (BundleError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise CoreError("FAILED_PRECONDITION", f"bundle {name!r} is unreadable: "
                                                   f"{scrub_paths(str(exc), self.models_dir)}") from None
        info = self._info_from(name, path, t, w, h, float(manifest.get("fps", 0.0)),
                               int(manifest.get("ref_frame", 0)), s, manifest.get("metrics", {}),
                               manifest.get("config", {}), False)
        polygons = manifest.get("roi_polygons")
        with contextlib.suppress(TypeError, ValueError, IndexError):  # malformed: LoadBundle names the problem
            info.roi.CopyFrom(roi_info(info.ref_frame, polygons if isinstance(polygons, list) else [], None))
        return info

    @staticmethod
    def _info_from(name: str, path: Path, frames: int, width: int, height: int, fps: float, ref_frame: int,
                   atlas_size: int, metrics: Any, config: Any, loaded: bool) -> bundles_pb2.BundleInfo:
        return bundles_pb2.BundleInfo(
            name=name, loaded=loaded, frames=frames, width=width, height=height, fps=fps, ref_frame=ref_frame,
            atlas_size=atlas_size, metrics_json=json.dumps({"metrics": metrics, "config": config}, default=str),
            file_bytes=path.stat().st_size if path.exists() else 0,
        )

    def list(self) -> list[bundles_pb2.BundleInfo]:
        infos = []
        for name in self.names():
            try:
                infos.append(self.info(name))
            except CoreError:
                continue  # a broken file is left out of the listing (LoadBundle names the problem)
        return infos

    async def load(self, name: str) -> Bundle:
        """Load once (in a thread: verifying checksums takes a while); concurrent callers share the load."""
        path = self.path(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            bundle = self._loaded.get(name)
            if bundle is not None:
                return bundle
            if not path.is_file():
                raise CoreError("NOT_FOUND", f"no bundle named {name!r} in the models directory")
            try:
                bundle = await asyncio.to_thread(_load_with_region, path)
            except BundleError as exc:
                raise CoreError("FAILED_PRECONDITION", scrub_paths(str(exc), self.models_dir)) from None
            self._loaded[name] = bundle
            return bundle
