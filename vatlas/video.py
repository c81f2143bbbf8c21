"""Video I/O: decode a clip (any ffmpeg-decodable file, or a folder of numbered images) to uint8 frames,
write H.264 / ProRes movies and PNG sequences the way an editor delivers them, and hash content for cache keys.

Public API
----------
``read_video(path, *, size=None, frames=None, stride=1, fps=None) -> Video``
    ``Video.frames`` is ``(T, H, W, 3)`` uint8 RGB. ``size=(W, H)`` resizes every frame with ``cv2.INTER_AREA``;
    ``frames=(start, stop)`` selects decoded frames ``start <= k < stop`` (``stop=None``: to the end), then
    ``stride`` keeps every ``stride``-th of those. ``fps`` overrides the reported rate; folders of images have no
    rate of their own and report 30 unless ``fps`` is given. ``Video.fps`` is the rate of the *source*
    (divide by ``stride`` for the playback rate of the kept frames).
    Folders: files with an image extension (``IMAGE_EXTENSIONS``) sorted numerically ("2.png" before "10.png").
    ``Video.info`` is what an export needs to deliver like the source (JSON-friendly; a fit stores it in
    ``bundle.source``): ``time_base`` and ``frame_rate`` ("num/den"), ``pts`` of every kept frame and
    ``end_pts`` (where the clip's last frame ends) in that time base, ``at_start``/``at_end`` (the range
    touches the stream's first/last frame), ``display_matrix`` (9 ints, FFmpeg's layout) and ``rotation``
    (degrees counter-clockwise) when the source has one, ``color`` (``range`` "limited"/"full", and the
    ``primaries``/``transfer``/``matrix`` codes of ISO/IEC 23091-2 that are specified) and ``audio``
    (``stream`` index, ``codec``, ``time_base``) when the file has an audio stream. Folders have none of these.
``write_video(path, frames, *, codec="h264", fps=None, timing=None, display_matrix=None, color=None,
audio=None, crf=18, preset="medium", progress=False) -> Path``
    ``codec`` "h264" (libx264; .mp4 or .mov) or "prores" (ProRes 4444, 4:4:4 10-bit, prores_ks; .mov).
    Known limit: with the FFmpeg 8 that PyAV bundles, prores_ks output for a width that is not a multiple of
    16 differs slightly from run to run (rate control; 56-77 dB on an 854x480 ramp), so it is not bit-exact.
    ``timing`` (a ``Timing``: pts in a time base, e.g. the source's) keeps variable frame rates; without it
    frames are stamped at ``fps`` as an exact Fraction. One packet per input frame. H.264 is yuv420p at even
    sizes and yuv444p (High 4:4:4) at odd ones: 4:2:0 H.264 cannot code an odd size (its crop unit is 2 px)
    and PyAV cannot write a container's cropping, so 4:4:4 is the only way to deliver the exact size.
    ``display_matrix`` and ``color`` are written as the source had them (frames are converted to YUV with
    the source's matrix and range, as reading converted them to RGB). ``audio`` (an ``AudioCopy``) remuxes
    one audio stream of a file, cut to a span, without re-encoding it.
``write_mp4(path, frames, fps, *, crf=18, preset="medium", progress=False) -> Path``: ``write_video`` with H.264.
``timing_from_source(source, frames, num_frames, fps) -> Timing`` and
``audio_from_source(source, frames, num_frames) -> (AudioCopy | None, note)``: what a bundle's ``source``
    dict (``Video.info`` plus ``path``/``sha256``) asks for when ``frames`` of its ``num_frames`` are exported.
``frame_timestamps(path) -> list[int]`` and ``read_frame(path, index, timestamps) -> (rgb, fps)``: one frame of a
    file, decoded from the key frame before it (the upload scrubber).
``write_png_sequence(directory, frames) -> list[Path]``: ``00000.png``, ``00001.png``, ... (lossless).
``content_hash(frames_or_path) -> str``: sha256 hex of an array (shape + dtype + bytes), a file's bytes,
    or a folder's image files (names + bytes, in reading order).

Every problem with the input (missing, empty, unreadable, wrong type, truncated, bad frame range) raises
``vatlas.errors.VideoError`` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vatlas.errors import VideoError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 30.0


@dataclass
class Video:
    """Decoded frames plus where they came from."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    path: Path
    source_size: tuple[int, int]  # (W, H) before any resize
    frame_range: tuple[int, int]  # decoded indices [start, stop) that were read
    stride: int = 1
    info: dict[str, Any] = field(default_factory=dict)  # timing, orientation, colour, audio (module docstring)

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
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def read_video(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    frames: tuple[int, int | None] | None = None,
    stride: int = 1,
    fps: float | None = None,
) -> Video:
    """Decode a video file or a folder of numbered images; see the module docstring."""
    path = Path(path)
    start, stop = _check_read_args(path, size, frames, stride, fps)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, size, start, stop, stride, fps)
    return _read_file(path, size, start, stop, stride, fps)


def _check_read_args(
    path: Path,
    size: tuple[int, int] | None,
    frames: tuple[int, int | None] | None,
    stride: int,
    fps: float | None,
) -> tuple[int, int | None]:
    if size is not None and (len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1):
        raise VideoError(f"{path}: size must be (W, H) with positive integers, got {size!r}")
    if int(stride) < 1:
        raise VideoError(f"{path}: stride must be >= 1, got {stride}")
    if fps is not None and not fps > 0:
        raise VideoError(f"{path}: fps must be positive, got {fps}")
    if frames is None:
        return 0, None
    start, stop = int(frames[0]), (None if frames[1] is None else int(frames[1]))
    if start < 0 or (stop is not None and stop <= start):
        raise VideoError(f"{path}: frame range must satisfy 0 <= start < stop, got {frames!r}")
    return start, stop


def _resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    return cv2.resize(frame, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_image_files(directory: Path) -> list[Path]:
    """Image files in a folder, in numeric order (the frame order of a numbered-frame folder)."""
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_folder(
    directory: Path,
    size: tuple[int, int] | None,
    start: int,
    stop: int | None,
    stride: int,
    fps: float | None,
) -> Video:
    files = list_image_files(directory)
    if not files:
        raise VideoError(f"{directory}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    end = len(files) if stop is None else stop
    if start >= len(files) or end > len(files):
        raise VideoError(f"{directory}: frame range {start}..{stop} is beyond its {len(files)} frames")
    out: list[np.ndarray] = []
    source_size: tuple[int, int] | None = None
    for file in files[start:end:stride]:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VideoError(f"{file}: not a readable image")
        frame_size = (bgr.shape[1], bgr.shape[0])
        if source_size is None:
            source_size = frame_size
        elif frame_size != source_size:
            raise VideoError(f"{file}: frame size {frame_size} differs from the first frame's {source_size}")
        out.append(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
    assert source_size is not None
    return Video(
        np.stack(out), float(fps or DEFAULT_FOLDER_FPS), directory, source_size, (start, end), stride
    )


def _read_file(
    path: Path, size: tuple[int, int] | None, start: int, stop: int | None, stride: int, fps: float | None
) -> Video:
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video ({_one_line(exc)})") from None
    out: list[np.ndarray] = []
    pts: list[int | None] = []
    end_pts: int | None = None
    at_end = True
    last: av.VideoFrame | None = None
    first: av.VideoFrame | None = None
    decoded = 0
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: contains no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected = int(stream.frames or 0)  # 0 when the container does not say
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        source_size = (int(stream.codec_context.width), int(stream.codec_context.height))
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if stop is not None and index >= stop:
                    end_pts, at_end = frame.pts, False  # the first frame after the range ends the clip
                    break
                if index >= start and (index - start) % stride == 0:
                    # to_ndarray converts with the frame's own matrix and range; writing mirrors that.
                    out.append(_resize(frame.to_ndarray(format="rgb24"), size))
                    pts.append(frame.pts)
                    if first is None:
                        first = frame
                if index >= start:
                    last = frame
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"{path}: truncated or corrupted: decoding failed after {decoded} frames ({_one_line(exc)})"
            ) from None
        audio = container.streams.audio[0] if container.streams.audio else None
        info = _stream_info(stream, rate, first, last, pts, end_pts, start == 0, at_end, audio)
    if decoded == 0:
        raise VideoError(f"{path}: no frames could be decoded (empty or truncated video)")
    reached_end = stop is None or decoded < stop + 1
    if reached_end and expected and decoded < expected:
        raise VideoError(f"{path}: truncated: decoded {decoded} of {expected} frames")
    if stop is not None and decoded < stop:
        raise VideoError(f"{path}: frame range {start}..{stop} is beyond its {decoded} frames")
    if not out:
        raise VideoError(f"{path}: frame range starts at {start} but the video has {decoded} frames")
    reported = float(fps) if fps else (float(rate) if rate else DEFAULT_FOLDER_FPS)
    end = decoded if stop is None else stop
    return Video(np.stack(out), reported, path, source_size, (start, end), stride, info)


def frame_timestamps(path: str | Path) -> list[int]:
    """The pts of every frame of a file's video stream, in presentation order, read from its packets (nothing
    is decoded: cheap even for a long clip). ``read_frame`` seeks with them."""
    path = Path(path)
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"{path}: contains no video stream")
            stream = container.streams.video[0]
            stamps = [int(p.pts) for p in container.demux(stream) if p.pts is not None]
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video ({_one_line(exc)})") from None
    return sorted(stamps)


def read_frame(path: str | Path, index: int, timestamps: Sequence[int]) -> tuple[np.ndarray, float]:
    """Frame ``index`` (RGB uint8) of a video file and its stream's rate, decoded from the key frame before it
    rather than from the start: a scrubbing client asks for late frames again and again. ``timestamps`` are
    the file's ``frame_timestamps``. Falls back to decoding from the start if the seek lands past the frame."""
    path = Path(path)
    if not 0 <= index < len(timestamps):
        raise VideoError(f"{path}: frame {index} is beyond its {len(timestamps)} frames")
    target = int(timestamps[index])
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else DEFAULT_FOLDER_FPS
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts > target:
                    break
                if frame.pts == target:
                    return frame.to_ndarray(format="rgb24"), fps
    except (av.error.FFmpegError, ValueError) as exc:
        raise VideoError(f"{path}: frame {index} cannot be decoded ({_one_line(exc)})") from None
    video = read_video(path, frames=(index, index + 1))
    return video.frames[0], video.fps


# H.273 / FFmpeg enum values that mean "not said"; those are left out of Video.info["color"].
_UNSPECIFIED_COLOR = {"primaries": 2, "transfer": 2, "matrix": 2}
_RANGES = {1: "limited", 2: "full"}


def _stream_info(
    stream: av.video.stream.VideoStream,
    rate: Fraction | None,
    first: av.VideoFrame | None,
    last: av.VideoFrame | None,
    pts: list[int | None],
    end_pts: int | None,
    at_start: bool,
    at_end: bool,
    audio: av.audio.stream.AudioStream | None,
) -> dict[str, Any]:
    """Video.info for a decoded file (see the module docstring)."""
    info: dict[str, Any] = {}
    if rate:
        info["frame_rate"] = _fraction_text(Fraction(rate))
    if end_pts is None and last is not None and last.pts is not None:
        end_pts = _stream_end(stream, rate, last)
    timestamps_ok = (
        stream.time_base is not None and pts and None not in pts and end_pts is not None
        and all(a < b for a, b in zip([*pts, end_pts], [*pts, end_pts][1:], strict=False))
    )
    if timestamps_ok:  # frames without pts (some raw streams) or out of order: export falls back to the rate
        info.update(time_base=_fraction_text(Fraction(stream.time_base)), pts=[int(t) for t in pts],
                    end_pts=int(end_pts), at_start=at_start, at_end=at_end)
    if first is not None:
        matrix = _display_matrix(first)
        if matrix is not None:
            info["display_matrix"] = matrix
            info["rotation"] = float(first.rotation)
        color: dict[str, Any] = {}
        if int(first.color_range) in _RANGES:
            color["range"] = _RANGES[int(first.color_range)]
        for key, value in (("primaries", first.color_primaries), ("transfer", first.color_trc),
                           ("matrix", first.colorspace)):
            if value is not None and int(value) != _UNSPECIFIED_COLOR[key]:
                color[key] = int(value)
        if color:
            info["color"] = color
    if audio is not None and audio.codec_context is not None:
        info["audio"] = {"stream": int(audio.index), "codec": audio.codec_context.name,
                         "time_base": _fraction_text(Fraction(audio.time_base))}
    return info


def _stream_end(stream: av.video.stream.VideoStream, rate: Fraction | None, last: av.VideoFrame) -> int:
    """Where the last frame stops showing, in the stream's time base.

    The last frame's own duration is exact for constant rates but, in an MP4 with B-frames, it is a
    decode-order gap; the container's track length is right for variable rates but counted in the movie
    timescale (often 1/1000 s). So: the frame's duration when the two agree to within that rounding, else
    the container's length."""
    duration = int(last.duration or 0)
    if duration <= 0 and rate and stream.time_base:
        duration = max(1, round(1 / (Fraction(rate) * stream.time_base)))
    from_frame = int(last.pts) + duration
    if not stream.duration or stream.start_time is None or not stream.time_base:
        return from_frame
    from_track = int(stream.start_time + stream.duration)
    if from_track <= last.pts or abs(from_track - from_frame) * Fraction(stream.time_base) < Fraction(1, 500):
        return from_frame
    return from_track


def _display_matrix(frame: av.VideoFrame) -> list[int] | None:
    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and side.buffer_size == 36:
            matrix = [int(v) for v in np.frombuffer(bytes(side), dtype=np.int32)]
            return None if matrix == _IDENTITY_MATRIX else matrix
    return None


_IDENTITY_MATRIX = [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]


def _fraction_text(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)  # strerror leaves out the file name we already show
    return " ".join(str(text).split()) or type(exc).__name__


def _check_frames(frames: np.ndarray | Sequence[np.ndarray], target: Path) -> None:
    first = frames[0] if len(frames) else None
    if first is None:
        raise VideoError(f"{target}: no frames to write")
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise VideoError(f"{target}: frames must be (H, W, 3) uint8, got {first.shape} {first.dtype}")


_NTSC_BASES = (24, 30, 48, 60, 120, 240)


def fps_fraction(fps: float | Fraction) -> Fraction:
    """A frame rate as an exact Fraction (29.97 or 29.97002997... -> 30000/1001, 25.0 -> 25)."""
    if isinstance(fps, Fraction):
        return fps
    for base in _NTSC_BASES:
        # "29.97" and "23.976" are the NTSC rates rounded for display, never 2997/100 or 2997/125.
        if abs(fps - base * 1000 / 1001) < 0.002:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


# ------------------------------------------------------------------------------------------ writing movies

# codec -> the containers it may go in; PNG sequences are folders (no suffix)
MOVIE_CODECS = {"h264": (".mp4", ".mov"), "prores": (".mov",)}
CODECS = (*MOVIE_CODECS, "png")
_DEFAULT_CODEC = {".mp4": "h264", ".mov": "prores", "": "png"}
# Sources whose audio export may open: plain local media files, never playlists, lists or devices.
_AUDIO_OPEN_OPTIONS = {"protocol_whitelist": "file",
                       "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mxf"}
# ISO/IEC 23091-2 matrix codes -> the swscale matrix PyAV converts with (bt470bg and smpte170m are both 601).
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_COLOR_ATTRS = (("primaries", "color_primaries"), ("transfer", "color_trc"), ("matrix", "colorspace"))


def choose_codec(target: str | Path, codec: str | None = None) -> str:
    """The codec for an output path: ``codec`` checked against the suffix, else the suffix's default
    (.mp4 -> h264, .mov -> prores, no suffix -> png). Raises ValueError (one line) for other combinations."""
    target = Path(target)
    suffix = target.suffix.lower()
    if codec is None:
        if suffix not in _DEFAULT_CODEC:
            raise ValueError(f"{target.name}: write .mp4 (H.264), .mov (ProRes or H.264) or a folder of PNGs "
                             f"(no suffix), not {suffix!r}")
        return _DEFAULT_CODEC[suffix]
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    allowed = MOVIE_CODECS.get(codec, ("",))
    if suffix not in allowed:
        where = " or ".join(allowed) if codec != "png" else "a folder (no suffix)"
        raise ValueError(f"{target.name}: {codec} is written to {where}, not {suffix or 'a folder'!r}")
    return codec


@dataclass(frozen=True)
class Timing:
    """When each written frame is shown: ``pts`` in ``time_base`` (strictly increasing), ``end`` where the
    last frame stops, and the nominal ``rate`` (the header's frame rate and the encoder's rate control)."""

    time_base: Fraction
    pts: tuple[int, ...]
    end: int
    rate: Fraction

    def __post_init__(self) -> None:
        stamps = (*self.pts, self.end)
        if not self.pts or any(a >= b for a, b in zip(stamps, stamps[1:], strict=False)):
            raise VideoError("timestamps must be strictly increasing")
        if self.time_base <= 0 or self.rate <= 0:
            raise VideoError("time base and rate must be positive")

    @classmethod
    def constant(cls, fps: float | Fraction, count: int) -> Timing:
        """``count`` frames at a constant rate, stamped 0, 1, 2, ... in a 1/fps time base."""
        rate = fps_fraction(fps)
        return cls(1 / rate, tuple(range(count)), count, rate)

    def duration(self, index: int) -> int:
        return (self.pts[index + 1] if index + 1 < len(self.pts) else self.end) - self.pts[index]


@dataclass(frozen=True)
class AudioCopy:
    """Remux audio stream ``stream`` of ``path``: the packets that start in ``[start, stop)`` seconds of the
    source's clock (None: open-ended), shifted so that source time ``origin`` becomes 0 in the output."""

    path: Path
    stream: int
    origin: Fraction = Fraction(0)
    start: Fraction | None = None
    stop: Fraction | None = None


class AudioCopyError(VideoError):
    """The audio could not be copied; raised before any video frame is taken from the input."""


def write_video(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    codec: str = "h264",
    fps: float | None = None,
    timing: Timing | None = None,
    display_matrix: Sequence[int] | None = None,
    color: dict[str, Any] | None = None,
    audio: AudioCopy | None = None,
    crf: int = 18,
    preset: str = "medium",
    progress: bool = False,
) -> Path:
    """Encode RGB uint8 frames to a movie (H.264 or ProRes); see the module docstring."""
    path = Path(path)
    _check_frames(frames, path)
    try:
        choose_codec(path, codec)
    except ValueError as exc:
        raise VideoError(str(exc)) from None
    if codec == "png":
        raise VideoError(f"{path}: PNG sequences are written with write_png_sequence")
    if timing is None:
        if fps is None or not fps > 0:
            raise VideoError(f"{path}: fps must be positive, got {fps}")
        timing = Timing.constant(fps, len(frames))
    elif len(timing.pts) != len(frames):
        raise VideoError(f"{path}: {len(timing.pts)} timestamps for {len(frames)} frames")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    items: Iterable[np.ndarray] = frames
    if progress:
        from tqdm import tqdm

        items = tqdm(frames, desc=f"writing {path.name}", unit="frame")
    tmp = path.with_name(f"{path.stem}.part{path.suffix}")  # the suffix picks the muxer
    settings = _VideoSettings(codec, width, height, timing, display_matrix, color or {}, crf, preset)
    try:
        _encode(tmp, items, settings, audio, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        if isinstance(exc, av.error.FFmpegError):
            raise VideoError(f"{path}: encoding failed ({_one_line(exc)})") from None
        raise
    tmp.replace(path)
    return path


def write_mp4(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
    progress: bool = False,
) -> Path:
    """Encode RGB uint8 frames to an H.264 MP4 at a constant ``fps`` (exact Fraction), at their own size."""
    if not fps > 0:
        raise VideoError(f"{path}: fps must be positive, got {fps}")
    return write_video(path, frames, codec="h264", fps=fps, crf=crf, preset=preset, progress=progress)


@dataclass(frozen=True)
class _VideoSettings:
    codec: str
    width: int
    height: int
    timing: Timing
    display_matrix: Sequence[int] | None
    color: dict[str, Any]
    crf: int
    preset: str

    @property
    def range_code(self) -> int | None:
        """FFmpeg's colour range to write: the source's, except ProRes, which is always video (limited) range."""
        if self.codec == "prores":
            return 1 if self.color else None
        return {"limited": 1, "full": 2}.get(self.color.get("range", ""))

    @property
    def pix_fmt(self) -> str:
        if self.codec == "prores":
            # ProRes 4444, not 422 HQ: the edits are drawn at full chroma, which 4:2:2 halves (a sharp
            # coloured edge came back at 36 dB against 83 dB), and it codes odd widths without a smeared edge.
            return "yuv444p10le"
        return "yuv420p" if self.width % 2 == 0 and self.height % 2 == 0 else "yuv444p"


def _add_video_stream(container: av.container.OutputContainer, s: _VideoSettings) -> av.video.stream.VideoStream:
    encoder = "prores_ks" if s.codec == "prores" else "libx264"
    stream = container.add_stream(encoder, rate=s.timing.rate)
    stream.width, stream.height, stream.pix_fmt = s.width, s.height, s.pix_fmt
    # The encoder runs in the timing's own time base, so source timestamps (VFR included) pass unrounded;
    # the muxer rescales to its track timescale when it writes the header.
    stream.codec_context.time_base = s.timing.time_base
    if s.codec == "prores":
        stream.codec_context.options = {"profile": "4444", "vendor": "apl0"}  # apl0: as Apple tools write it
    else:
        stream.codec_context.options = {"crf": str(int(s.crf)), "preset": s.preset}
    if s.range_code is not None:
        stream.codec_context.color_range = s.range_code
    for key, attr in _COLOR_ATTRS:
        if key in s.color:
            setattr(stream.codec_context, attr, int(s.color[key]))
    if s.display_matrix is not None:
        stream.set_display_matrix([int(v) for v in s.display_matrix])
    return stream


def _to_yuv(frame: np.ndarray, s: _VideoSettings) -> av.VideoFrame:
    """RGB -> the encoder's YUV with the source's matrix and range: the inverse of what reading did."""
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    kwargs: dict[str, Any] = {}
    if s.color.get("matrix") in _SWS_MATRIX:
        kwargs["dst_colorspace"] = _SWS_MATRIX[s.color["matrix"]]
    if s.range_code is not None:
        kwargs["dst_color_range"] = s.range_code
    yuv = rgb.reformat(format=s.pix_fmt, **kwargs)
    # Exact tags on the frame too: reformat knows only swscale's matrices, and ProRes writes the frame's.
    for key, attr in _COLOR_ATTRS:
        if key in s.color:
            setattr(yuv, attr, int(s.color[key]))
    return yuv


def _encode(
    target: Path, frames: Iterable[np.ndarray], s: _VideoSettings, audio: AudioCopy | None, name: Path
) -> None:
    with _AudioSource(audio, name) as pending:
        # faststart puts the index first, so browsers can play the file while it downloads. Edit lists
        # count in the movie timescale (default 1/1000 s, which moves a cut's audio start and a track's
        # end by up to 1 ms): use the audio's time base, else the video's.
        scale = (pending.time_base or s.timing.time_base).denominator
        options = {"movflags": "faststart", "movie_timescale": str(min(scale, 2**31 - 1))}
        with av.open(str(target), mode="w", options=options) as container:
            stream = _add_video_stream(container, s)
            pending.attach(container)
            muxer = _VideoMuxer(container, s.timing, pending)
            for index, frame in enumerate(frames):
                if frame.shape[:2] != (s.height, s.width):
                    raise VideoError(
                        f"{name}: frame {index} has size {frame.shape[:2]}, expected {(s.height, s.width)}"
                    )
                video_frame = _to_yuv(frame, s)
                video_frame.pts = s.timing.pts[index]
                video_frame.time_base = s.timing.time_base
                for packet in stream.encode(video_frame):
                    muxer.mux(packet)
            for packet in stream.encode(None):
                muxer.mux(packet)
            muxer.close()
            pending.mux_rest()


class _VideoMuxer:
    """Muxes encoded video one packet late so the track lasts exactly as long as the timing says. An MP4
    track's length is the sum of its decode-order sample durations (the dts gaps, then the last packet's
    duration), while its edit list ends at the largest pts + duration: so every packet carries its frame's
    shown duration, and the last in decode order (with B-frames not the last shown) fills up the rest."""

    def __init__(self, container: av.container.OutputContainer, timing: Timing, audio: _AudioSource) -> None:
        self.container, self.timing, self.audio = container, timing, audio
        self.durations = {pts: timing.duration(i) for i, pts in enumerate(timing.pts)}
        self.held: av.Packet | None = None
        self.first_dts: int | None = None

    def mux(self, packet: av.Packet) -> None:
        if packet.dts is None:
            return
        if self.first_dts is None:
            self.first_dts = packet.dts
        if packet.pts in self.durations:  # packets are in the encoder's time base = the timing's
            packet.duration = self.durations[packet.pts]
        if self.held is not None:
            self._write(self.held)
        self.held = packet

    def close(self) -> None:
        if self.held is None or self.first_dts is None:
            return
        end_dts = self.first_dts + self.timing.end - self.timing.pts[0]
        self.held.duration = max(end_dts - self.held.dts, 1)
        self._write(self.held)
        self.held = None

    def _write(self, packet: av.Packet) -> None:
        self.audio.mux_until(packet)
        self.container.mux(packet)


class _AudioSource:
    """The audio packets to copy, read up front (audio is small next to video) and muxed in step with the
    video so the muxer never has to buffer a whole track. Every failure is an AudioCopyError raised before
    the first video frame is taken."""

    def __init__(self, audio: AudioCopy | None, name: Path) -> None:
        self.audio, self.name = audio, name
        self.source: av.container.InputContainer | None = None
        self.stream: av.stream.Stream | None = None
        self.container: av.container.OutputContainer | None = None
        self.packets: deque[av.Packet] = deque()

    @property
    def time_base(self) -> Fraction | None:
        return Fraction(self.stream.time_base) if self.stream is not None else None

    def __enter__(self) -> _AudioSource:
        if self.audio is None:
            return self
        try:
            self.source = av.open(str(self.audio.path), mode="r", options=_AUDIO_OPEN_OPTIONS)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise AudioCopyError(f"{self.name}: cannot open the audio source ({_one_line(exc)})") from None
        streams = [st for st in self.source.streams if st.index == self.audio.stream]
        if not streams or streams[0].type != "audio" or streams[0].time_base is None:
            self.source.close()
            raise AudioCopyError(f"{self.name}: the source has no audio stream #{self.audio.stream}")
        self.stream = streams[0]
        return self

    def attach(self, container: av.container.OutputContainer) -> None:
        """Add the copied stream to ``container`` (before anything is muxed) and read its packets."""
        if self.audio is None or self.stream is None:
            return
        codec = self.stream.codec_context.name
        if codec not in container.supported_codecs:
            raise AudioCopyError(f"{self.name}: {codec} audio cannot go in a {self.name.suffix} file")
        self.container = container
        out_stream = container.add_stream_from_template(self.stream)
        self.packets = deque(self._select(out_stream, self.audio))

    def _select(self, out_stream: av.stream.Stream, audio: AudioCopy) -> Iterator[av.Packet]:
        assert self.source is not None and self.stream is not None
        time_base = Fraction(self.stream.time_base)
        shift = round(audio.origin / time_base)
        try:
            for packet in self.source.demux(self.stream):
                if packet.dts is None or packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                start = (packet.pts if packet.pts is not None else packet.dts) * time_base
                if (audio.start is not None and start < audio.start) or (audio.stop is not None
                                                                         and start >= audio.stop):
                    continue
                packet.dts -= shift
                if packet.pts is not None:
                    packet.pts -= shift
                packet.stream = out_stream
                yield packet
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioCopyError(f"{self.name}: reading the source's audio failed ({_one_line(exc)})") from None

    def mux_until(self, video_packet: av.Packet) -> None:
        """Mux the audio that starts before this video packet's decode time."""
        if self.container is None or video_packet.dts is None or video_packet.time_base is None:
            return
        limit = video_packet.dts * Fraction(video_packet.time_base)
        while self.packets and self.packets[0].dts * Fraction(self.packets[0].time_base) <= limit:
            self.container.mux(self.packets.popleft())

    def mux_rest(self) -> None:
        while self.container is not None and self.packets:
            self.container.mux(self.packets.popleft())

    def __exit__(self, *exc: object) -> None:
        if self.source is not None:
            self.source.close()


def timing_from_source(source: dict[str, Any], frames: Sequence[int], num_frames: int, fps: float) -> Timing:
    """The source's own timestamps for bundle frames ``frames`` (rebased to start at 0), or a constant
    rate at ``fps`` when the bundle has none (folders, older bundles) or they don't match its frames."""
    frames = [int(f) for f in frames]
    pts, end = source.get("pts"), source.get("end_pts")
    rate = _parse_fraction(source.get("frame_rate")) or fps_fraction(fps)
    time_base = _parse_fraction(source.get("time_base"))
    usable = (isinstance(pts, list) and len(pts) == num_frames and end is not None and time_base
              and all(0 <= f < num_frames for f in frames)
              and all(a < b for a, b in zip(frames, frames[1:], strict=False)))
    if not usable or not frames:
        return Timing.constant(rate, len(frames))
    stamps = [int(t) for t in pts] + [int(end)]
    base = stamps[frames[0]]
    # A frame lasts until the next source frame, so a cut keeps the last frame's duration too.
    return Timing(time_base, tuple(stamps[f] - base for f in frames), stamps[frames[-1] + 1] - base, rate)


def audio_from_source(source: dict[str, Any], frames: Sequence[int],
                      num_frames: int) -> tuple[AudioCopy | None, str | None]:
    """The audio copy for an export of ``frames``, or (None, why not); (None, None) when the source had none."""
    audio = source.get("audio")
    if not isinstance(audio, dict):
        return None, None
    frames = [int(f) for f in frames]
    pts, end = source.get("pts"), source.get("end_pts")
    time_base = _parse_fraction(source.get("time_base"))
    if not (isinstance(pts, list) and len(pts) == num_frames and end is not None and time_base):
        return None, "the bundle has no source timestamps to cut the audio by"
    if not frames or frames != list(range(frames[0], frames[-1] + 1)) or not 0 <= frames[0] <= frames[-1] < num_frames:
        return None, "the exported frames are not one contiguous span"
    path = Path(str(source.get("path", "")))
    if not path.is_file():
        return None, f"the source file {path.name or '?'} is not there any more"
    if source.get("sha256") and content_hash(path) != source["sha256"]:
        return None, f"the source file {path.name} changed since the fit"
    stamps = [int(t) for t in pts] + [int(end)]
    origin = stamps[frames[0]] * time_base
    start = None if frames[0] == 0 and source.get("at_start") else origin
    stop = None if frames[-1] == num_frames - 1 and source.get("at_end") else stamps[frames[-1] + 1] * time_base
    return AudioCopy(path, int(audio.get("stream", -1)), origin, start, stop), None


def _parse_fraction(text: Any) -> Fraction | None:
    try:
        value = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def write_png_sequence(directory: str | Path, frames: np.ndarray | Sequence[np.ndarray]) -> list[Path]:
    """Write frames as ``00000.png``, ``00001.png``, ... into ``directory`` (created if needed)."""
    directory = Path(directory)
    _check_frames(frames, directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        target = directory / f"{index:05d}.png"
        if not cv2.imwrite(str(target), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
            raise VideoError(f"{target}: could not write image")
        paths.append(target)
    return paths


def _hash_file(digest: hashlib._Hash, file: Path) -> None:
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def content_hash(frames_or_path: np.ndarray | str | Path) -> str:
    """sha256 hex of frame data, a file's bytes, or a frame folder's images (used as a cache key)."""
    digest = hashlib.sha256()
    if isinstance(frames_or_path, np.ndarray):
        arr = np.ascontiguousarray(frames_or_path)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(memoryview(arr).cast("B"))
        return digest.hexdigest()
    path = Path(frames_or_path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise VideoError(f"{path}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        for file in files:
            digest.update(file.name.encode() + b"\0")
            _hash_file(digest, file)
    else:
        _hash_file(digest, path)
    return digest.hexdigest()
