"""Export the edited clip to an H.264 MP4 or a PNG sequence, rendering in batches as the writer pulls frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from vatlas.server.edits.engine import DEFAULT_MODE, EditEngine

from vatlas.video import write_mp4, write_png_sequence

ProgressCallback = Callable[[int, int], None]  # (frames done, total)


class RenderedFrames:
    """A lazy sequence of rendered frames (host uint8), rendered `batch` at a time in order."""

    def __init__(self, engine: EditEngine, frames: list[int], *, mode: str, batch: int = 8,
                 progress: ProgressCallback | None = None, show_progress: bool = False, desc: str = "") -> None:
        self.engine, self.frames, self.mode, self.batch = engine, frames, mode, max(int(batch), 1)
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
            self._cache = self.engine.render(chunk, mode=self.mode).cpu().numpy()
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


def export_clip(engine: EditEngine, out: str | Path, *, frames: list[int] | None = None, mode: str | None = None,
                crf: int = 18, batch: int = 8, progress: ProgressCallback | None = None,
                show_progress: bool = False) -> Path:
    """Render `frames` (default all) and write `out`: ``*.mp4`` -> H.264, anything else -> a PNG folder.

    mode defaults to "layers" (the edits over the source; see EditEngine.render for "reconstruction").
    """
    out = Path(out)
    frames = list(range(engine.bundle.num_frames)) if frames is None else list(frames)
    if not frames:
        raise ValueError("no frames to export")
    engine.compositor.frame_index(frames)  # range check before any file is touched
    suffix = out.suffix.lower()
    if suffix not in ("", ".mp4"):
        raise ValueError(f"{out}: export writes .mp4 or a folder of PNGs (no suffix), not {suffix}")
    seq = RenderedFrames(engine, frames, mode=mode or DEFAULT_MODE, batch=batch, progress=progress,
                         show_progress=show_progress, desc=f"exporting {out.name}")
    if suffix == ".mp4":
        return write_mp4(out, seq, engine.bundle.fps, crf=crf)
    write_png_sequence(out, seq)
    return out
