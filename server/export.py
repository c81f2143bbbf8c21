"""Export the edited clip like an editor delivers it: H.264 (.mp4/.mov), ProRes 4444 (.mov) or a PNG
sequence, rendering in batches as the writer pulls frames.

Movies keep what the fit recorded of the source in ``bundle.source`` (see vatlas.video): its timestamps (so
29.97 stays 30000/1001 and variable frame rates stay variable), its display matrix (rotation), its colour
range and primaries/transfer/matrix, and its audio, copied packet for packet and cut to the exported span.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from vatlas.server.edits.engine import DEFAULT_MODE, EditEngine

from vatlas.video import (
    AudioCopyError,
    audio_from_source,
    choose_codec,
    timing_from_source,
    write_png_sequence,
    write_video,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (frames done, total)


class RenderedFrames:
    """A lazy sequence of rendered frames (host uint8), rendered `batch` at a time in order."""

    def __init__(self, engine: EditEngine, frames: list[int], *, mode: str, batch: int = 8, scale: float = 1.0,
                 progress: ProgressCallback | None = None, show_progress: bool = False, desc: str = "") -> None:
        self.engine, self.frames, self.mode, self.batch = engine, frames, mode, max(int(batch), 1)
        self.scale = scale
        self.progress, self.show_progress, self.desc = progress, show_progress, desc
        self._start = -1
        self._cache: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.frames):
            raise IndexError(index)
        start = index - index % self.batch
        if start != self._start or self._cache is None:
            chunk = self.frames[start:start + self.batch]
            self._cache = self.engine.render(chunk, mode=self.mode, scale=self.scale).cpu().numpy()
            self._start = start
        return self._cache[index - start]

    def __iter__(self) -> Iterator[np.ndarray]:
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.frames), desc=self.desc, unit="frame")
        try:
            for i in range(len(self.frames)):
                frame = self[i]
                yield frame
                if bar is not None:
                    bar.update(1)
                if self.progress is not None:
                    self.progress(i + 1, len(self.frames))
        finally:
            if bar is not None:
                bar.close()


def parse_frame_range(text: str | None, num_frames: int) -> list[int]:
    """'a:b' (Python slice rules, b exclusive, either side optional) -> frame list; raises ValueError."""
    if text is None or text == "":
        return list(range(num_frames))
    start_text, sep, stop_text = text.partition(":")
    try:
        if not sep:
            start = int(start_text)
            stop = start + 1
        else:
            start = int(start_text) if start_text else 0
            stop = int(stop_text) if stop_text else num_frames
    except ValueError:
        raise ValueError(f"--frames must look like a:b, got {text!r}") from None
    if not (0 <= start < stop <= num_frames):
        raise ValueError(f"frame range {text!r} is out of range (the clip has frames 0..{num_frames - 1})")
    return list(range(start, stop))


def preview_scale(size: tuple[int, int], *, scale: float | None = None, max_side: int | None = None) -> float:
    """The render scale for a preview: ``scale`` as given, or the one that fits the long side of ``size``
    (W, H) into ``max_side`` (never enlarging); 1.0 (the full size) when neither is given."""
    if scale is not None and max_side is not None:
        raise ValueError("give a scale or a max side, not both")
    if scale is not None:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        return float(scale)
    if max_side is not None:
        if max_side < 16:
            raise ValueError(f"max side must be >= 16 pixels, got {max_side}")
        return min(1.0, max_side / max(size))
    return 1.0


def export_clip(engine: EditEngine, out: str | Path, *, frames: list[int] | None = None, mode: str | None = None,
                crf: int = 18, batch: int = 8, progress: ProgressCallback | None = None,
                show_progress: bool = False, codec: str | None = None, scale: float = 1.0,
                audio: bool = True) -> Path:
    """Render `frames` (default all) and write `out`; see the module docstring.

    codec: "h264", "prores" or "png"; by default from the suffix (.mp4 -> h264, .mov -> prores, none -> png).
    mode defaults to "layers" (the edits over the source; see EditEngine.render for "reconstruction").
    scale < 1 renders a smaller preview. audio=False leaves the source's audio out; when it cannot be
    copied (source file gone or changed, a codec the container does not take) the export goes on without it
    and says why in a warning.
    """
    out = Path(out)
    codec = choose_codec(out, codec)  # ValueError (one line) for a combination we do not write
    bundle = engine.bundle
    frames = list(range(bundle.num_frames)) if frames is None else list(frames)
    if not frames:
        raise ValueError("no frames to export")
    engine.compositor.frame_index(frames)  # range check before any file is touched
    seq = RenderedFrames(engine, frames, mode=mode or DEFAULT_MODE, batch=batch, scale=scale, progress=progress,
                         show_progress=show_progress, desc=f"exporting {out.name}")
    if codec == "png":
        write_png_sequence(out, seq)
        return out
    source = bundle.source or {}
    timing = timing_from_source(source, frames, bundle.num_frames, bundle.fps)
    copy, why_not = audio_from_source(source, frames, bundle.num_frames) if audio else (None, None)
    if why_not:
        log.warning("%s: exported without audio: %s", out.name, why_not)
    settings = {"codec": codec, "timing": timing, "display_matrix": source.get("display_matrix"),
                "color": source.get("color"), "crf": crf}
    try:
        return write_video(out, seq, audio=copy, **settings)
    except AudioCopyError as exc:  # raised before the first frame is rendered, so nothing is lost
        log.warning("exported without audio: %s", exc)
        return write_video(out, seq, **settings)
