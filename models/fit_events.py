"""Machine-readable fit progress: one JSON object a line (`vatlas fit --json`, and a fit job's stdout).

{"event": "progress", "stage", "stage_number", "stage_count", "done", "units", "fraction", "eta_seconds" (null
until known), "elapsed_seconds", "readout"}; {"event": "preview", "frame", "width", "height", "jpeg" (base64)};
{"event": "done", "bundle", "frames", "width", "height", "roi_psnr", "seconds"}; {"event": "error", "message"}
(bad input, one line).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from typing import Any, TextIO

import cv2
import numpy as np


class JsonEvents:
    """Writes the events above, flushed each (a reader sees them live); one lock keeps lines whole across the
    fit's threads."""

    def __init__(self, target: str | TextIO) -> None:
        self._owned = isinstance(target, str) and target != "-"
        self.stream: TextIO = sys.stdout if target == "-" else \
            open(target, "w", encoding="utf-8") if isinstance(target, str) else target  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def progress(self, state: dict[str, Any]) -> None:
        self.write("progress", **state)

    def preview(self, rgb: np.ndarray, frame: int) -> None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.write("preview", frame=frame, width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                       jpeg=base64.b64encode(jpeg.tobytes()).decode("ascii"))

    def done(self, out: str, bundle: Any, metrics: dict[str, Any]) -> None:
        self.write("done", bundle=out, frames=bundle.num_frames, width=bundle.width, height=bundle.height,
                   roi_psnr=round(float(metrics["roi_psnr"]), 2), seconds=metrics["total_seconds"])

    def hooks(self, preview_seconds: float) -> dict[str, Any]:
        """The fit's keyword hooks that feed these events."""
        hooks: dict[str, Any] = {"progress_sink": self.progress}
        if preview_seconds > 0:
            hooks.update(preview=self.preview, preview_seconds=preview_seconds)
        return hooks

    def close(self) -> None:
        if self._owned:
            self.stream.close()
