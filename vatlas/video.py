"""Video I/O: decode a clip (any ffmpeg-decodable file, or a folder of numbered images) to uint8 frames,
write H.264 MP4 and PNG sequences, and hash content for cache keys.

Public API
----------
``read_video(path, *, size=None, frames=None, stride=1, fps=None) -> Video``
    ``Video.frames`` is ``(T, H, W, 3)`` uint8 RGB. ``size=(W, H)`` resizes every frame with ``cv2.INTER_AREA``;
    ``frames=(start, stop)`` selects decoded frames ``start <= k < stop`` (``stop=None``: to the end), then
    ``stride`` keeps every ``stride``-th of those. ``fps`` overrides the reported rate; folders of images have no
    rate of their own and report 30 unless ``fps`` is given. ``Video.fps`` is the rate of the *source*
    (divide by ``stride`` for the playback rate of the kept frames).
    Folders: files with an image extension (``IMAGE_EXTENSIONS``) sorted numerically ("2.png" before "10.png").
``write_mp4(path, frames, fps, *, crf=18, preset="medium", progress=False) -> Path``
    libx264, yuv420p, frame rate as an exact Fraction, one packet per input frame. yuv420p needs even sizes:
    odd widths/heights are **padded** by one replicated edge column/row (the written video is then 1 px larger).
``write_png_sequence(directory, frames) -> list[Path]``: ``00000.png``, ``00001.png``, ... (lossless).
``content_hash(frames_or_path) -> str``: sha256 hex of an array (shape + dtype + bytes), a file's bytes,
    or a folder's image files (names + bytes, in reading order).

Every problem with the input (missing, empty, unreadable, wrong type, truncated, bad frame range) raises
``vatlas.errors.VideoError`` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

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
                    break
                if index >= start and (index - start) % stride == 0:
                    out.append(_resize(frame.to_ndarray(format="rgb24"), size))
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoError(
                f"{path}: truncated or corrupted: decoding failed after {decoded} frames ({_one_line(exc)})"
            ) from None
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
    return Video(np.stack(out), reported, path, source_size, (start, end), stride)


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)  # strerror leaves out the file name we already show
    return " ".join(str(text).split()) or type(exc).__name__


def _check_frames(frames: np.ndarray | Sequence[np.ndarray], target: Path) -> None:
    first = frames[0] if len(frames) else None
    if first is None:
        raise VideoError(f"{target}: no frames to write")
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise VideoError(f"{target}: frames must be (H, W, 3) uint8, got {first.shape} {first.dtype}")


def _even_pad(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as an exact Fraction (29.97002997... -> 30000/1001, 25.0 -> 25)."""
    return Fraction(fps).limit_denominator(1001)


def write_mp4(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
    progress: bool = False,
) -> Path:
    """Encode RGB uint8 frames to an H.264 MP4 (libx264, yuv420p); odd sizes are edge-padded to even."""
    path = Path(path)
    _check_frames(frames, path)
    if not fps > 0:
        raise VideoError(f"{path}: fps must be positive, got {fps}")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = fps_fraction(fps)
    items: Iterable[np.ndarray] = frames
    if progress:
        from tqdm import tqdm

        items = tqdm(frames, desc=f"writing {path.name}", unit="frame")
    tmp = path.with_name(path.name + ".part.mp4")
    try:
        _encode_h264(tmp, items, width, height, rate, crf, preset, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        if isinstance(exc, av.error.FFmpegError):
            raise VideoError(f"{path}: encoding failed ({_one_line(exc)})") from None
        raise
    tmp.replace(path)
    return path


def _encode_h264(
    target: Path,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    rate: Fraction,
    crf: int,
    preset: str,
    name: Path,
) -> None:
    # faststart puts the index first, so browsers can play the file while it downloads.
    with av.open(str(target), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = "yuv420p"
        # Frames carry their own 1/fps time base: the muxer replaces the stream's when it writes the header,
        # and frames stamped with that one collapse onto the same pts (dts errors on longer clips).
        frame_time_base = Fraction(1) / rate
        stream.codec_context.options = {"crf": str(int(crf)), "preset": preset}
        for index, frame in enumerate(frames):
            if frame.shape[:2] != (height, width):
                raise VideoError(
                    f"{name}: frame {index} has size {frame.shape[:2]}, expected {(height, width)}"
                )
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even_pad(frame)), format="rgb24")
            video_frame.pts = index
            video_frame.time_base = frame_time_base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


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
