"""Everything a fit needs before it starts, as a library call: check the output, choose the schedule, decode the
clip, resize it to the working size, scale the ROI and record the source (`vatlas fit` and the server's fit
jobs both call `prepare_fit`, then `run_prepared`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vatlas.errors import VatlasError
from vatlas.roi import Roi


class FitInputError(VatlasError):
    """Bad input for a fit (one line for people: the CLI prints it, a fit job answers it)."""


@dataclass
class FitData:
    """The clip a fit runs on: the frames and ROI at the working size, and the source's frames and ROI when the
    bundle is delivered at another size (`prepare_fit` makes one from a FitRequest; `models.fit.fit` from arrays)."""

    frames_np: np.ndarray  # (T, H, W, 3) uint8
    roi: Roi  # at working resolution, ref_frame relative to these frames
    fps: float
    source: dict[str, Any] = field(default_factory=dict)  # the bundle's source record
    # the frames and ROI at the source's size, when the fit runs smaller: the bundle is delivered at this size
    source_frames: np.ndarray | None = None
    source_roi: Roi | None = None

    @functools.cached_property
    def roi_mask(self) -> np.ndarray:
        """(H, W) bool: the ROI on the working frames."""
        return self.roi.mask(self.frames_np.shape[1], self.frames_np.shape[2])

    @property
    def ref_frame(self) -> int:
        return self.roi.ref_frame

    @property
    def working_size(self) -> tuple[int, int]:
        return int(self.frames_np.shape[2]), int(self.frames_np.shape[1])

    @property
    def delivered_frames(self) -> np.ndarray:
        return self.frames_np if self.source_frames is None else self.source_frames

    @property
    def delivered_roi(self) -> Roi:
        return self.roi if self.source_roi is None else self.source_roi


@dataclass
class FitRequest:
    """What a user asks a fit for: the clip, its ROI (source pixels) and the schedule."""

    video: Path
    roi: Any  # vatlas.roi.Roi, in pixels of the source video
    out: Path
    size: tuple[int, int] | None = None  # working size; None: long side <= FitConfig.max_side
    frames: tuple[int, int | None] | None = None  # source frame range [start, stop)
    preset: str | None = None  # None: draft on a CPU, standard on a GPU
    iters: int | None = None
    batch_size: int | None = None
    atlas_size: int | None = None
    device: str = "auto"


@dataclass
class PreparedFit:
    """A fit ready to run: its clip, the config, the device and the record of which schedule and why."""

    data: FitData
    config: Any  # models.config.FitConfig
    device: str  # "cpu" or "cuda"
    preset_line: str  # which schedule, and why (printed by the CLI)

    @property
    def working_size(self) -> tuple[int, int]:
        return self.data.working_size


def check_output(out: Path) -> None:
    """Fail before any work when the bundle could not be written (the fit takes minutes to hours)."""
    if out.suffix.lower() != ".vatlas":
        raise FitInputError(f"--out must be a bundle ending in .vatlas (the server lists *.vatlas), got {str(out)!r}")
    if out.is_dir():
        raise FitInputError(f"--out {out} is a folder; give a file name ending in .vatlas")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FitInputError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise FitInputError(f"--out {out}: the folder {parent} is not writable")


def choose_preset(named: str | None, device_type: str) -> tuple[str, str]:
    """The preset and the one line that says why: as named, else draft on a CPU and standard on a GPU."""
    if named is None:
        named = "standard" if device_type == "cuda" else "draft"
        why = "the default on a GPU" if device_type == "cuda" else "the default on a CPU; --preset standard is GPU-sized"
    elif device_type == "cpu" and named != "draft":
        why = "sized for a GPU: hours on this CPU, --preset draft takes minutes"
    else:
        why = "as named"
    return named, f"preset: {named} ({why})"


def fit_config(request: FitRequest, device_type: str) -> tuple[Any, str]:
    """The FitConfig of a request on a device, and its preset line."""
    from .config import FitConfig

    if request.iters is not None and request.iters < 1:
        raise FitInputError(f"--iters must be >= 1, got {request.iters}")
    preset, line = choose_preset(request.preset, device_type)
    overrides: dict[str, Any] = {}
    if request.atlas_size is not None:
        overrides["bake"] = {"atlas_size": request.atlas_size}
    if request.batch_size is not None:
        if request.batch_size < 16:
            raise FitInputError(f"--batch-size must be >= 16, got {request.batch_size}")
        overrides["schedule"] = {"batch_size": request.batch_size}
    try:
        config = FitConfig.preset(preset, **overrides)
        if request.iters is not None:
            config = config.scaled_iters(request.iters)
    except ValueError as exc:
        raise FitInputError(str(exc)) from None
    return config, line


def prepare_fit(request: FitRequest) -> PreparedFit:
    """Check the request, decode the clip and lay out the fit (raises FitInputError, VideoError, RoiError)."""
    from vatlas.video import content_hash, read_video

    from .config import working_size
    from .fit import FitError, resolve_device

    check_output(request.out)
    if not request.video.exists():
        raise FitInputError(f"{request.video}: no such video file or folder")
    try:
        device = resolve_device(request.device)
    except FitError as exc:
        raise FitInputError(str(exc)) from None
    config, preset_line = fit_config(request, device.type)
    roi = request.roi
    video = read_video(request.video, frames=request.frames)
    src_w, src_h = video.source_size
    start = video.frame_range[0]
    roi.validate(src_w, src_h, start + video.num_frames)
    if not start <= roi.ref_frame < start + video.num_frames:
        raise FitInputError(f"reference frame {roi.ref_frame} is outside the selected frames "
                            f"{start}:{start + video.num_frames}")
    if video.num_frames < 2:
        raise FitInputError(f"{request.video}: need at least 2 frames, got {video.num_frames}")
    w, h = working_size((src_w, src_h), request.size, config.max_side)
    frames = video.frames
    if (w, h) != (video.width, video.height):
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    work_roi = roi.scaled(w / src_w, h / src_h)
    work_roi.ref_frame = roi.ref_frame - start
    config.size = (w, h)
    source = {
        "path": str(request.video.resolve()),
        "sha256": content_hash(request.video),
        "size": [src_w, src_h],
        "frame_range": list(video.frame_range),
        "stride": video.stride,
        "working_size": [w, h],
        **video.info,  # timestamps, rotation, colour and audio, for an export like the source
    }
    data = FitData(frames, work_roi, video.fps, source)
    if frames is not video.frames:  # fit small, deliver at full size: the bundle is baked over the source frames
        data.source_frames = video.frames
        data.source_roi = roi.scaled(1.0, 1.0)
        data.source_roi.ref_frame = work_roi.ref_frame
    return PreparedFit(data=data, config=config, device=device.type, preset_line=preset_line)


def run_prepared(prepared: PreparedFit, out: Path, **options: Any) -> tuple[Any, dict[str, Any]]:
    """models.fit.run_fit on a prepared fit (options: resume, show_progress, verbose, progress_sink, preview,
    preview_seconds); raises FitInputError for what the fit itself finds wrong with its input."""
    from .fit import FitError, run_fit

    try:
        return run_fit(prepared.data, prepared.config, device=prepared.device, out=out, **options)
    except FitError as exc:
        raise FitInputError(str(exc)) from None
