"""A fit in a process of its own, for the server's fit jobs: `python -m vatlas.models.fit_job REQUEST.json`.

The request is JSON {"video", "roi" (vatlas.roi JSON, source pixels), "out", "size" ([w, h] or null), "preset"
(null: the device's default), "iters", "device", "preview_seconds"}. Progress goes to stdout as fit_events lines;
bad input ends with one {"event": "error"} line and exit code 2. A process of its own, so that stopping a fit
(SIGTERM to its group) frees everything it held, the GPU included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vatlas.errors import VatlasError

from .fit_events import JsonEvents
from .prepare import FitRequest, prepare_fit, run_prepared

INPUT_ERROR_EXIT = 2


def request_from_json(data: dict[str, Any]) -> tuple[FitRequest, float]:
    """A fit job's request file -> (FitRequest, preview seconds)."""
    from vatlas.roi import Roi

    roi = data["roi"]
    size = data.get("size")
    request = FitRequest(video=Path(data["video"]), roi=Roi(roi["ref_frame"], roi["polygons"]), out=Path(data["out"]),
                         size=(int(size[0]), int(size[1])) if size else None, preset=data.get("preset") or None,
                         iters=data.get("iters") or None, device=str(data.get("device") or "auto"))
    return request, float(data.get("preview_seconds") or 0.0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vatlas.models.fit_job REQUEST.json", file=sys.stderr)
        return INPUT_ERROR_EXIT
    events = JsonEvents(sys.stdout)
    try:
        request, preview_seconds = request_from_json(json.loads(Path(args[0]).read_text()))
        prepared = prepare_fit(request)
        print(prepared.preset_line, file=sys.stderr)
        bundle, metrics = run_prepared(prepared, request.out, show_progress=False, **events.hooks(preview_seconds))
    except VatlasError as exc:
        events.write("error", message=str(exc))
        return INPUT_ERROR_EXIT
    events.done(str(request.out), bundle, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
