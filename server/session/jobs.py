"""Long jobs next to the live sessions: video uploads, fits (when the fit module is present) and exports.

Heavy work runs in threads; progress is handed to the event loop with `call_soon_threadsafe` and streamed.

Uploads are untrusted: FFmpeg's automatic format detection would follow an HLS playlist or a concat list to
files and URLs of the server's choosing. Before a fit, the upload is opened only with the demuxers of
`ALLOWED_DEMUXERS` and only the ``file`` protocol, and its video stream is remuxed (packets copied, nothing
re-encoded) into a Matroska file the server wrote itself; the fit reads that file, never the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from vatlas.server.session.bundles import check_bundle_name
from vatlas.server.session.errors import INTERNAL_MESSAGE, CoreError, scrub_paths
from vatlas.v1 import bundles_pb2, render_pb2

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# containers a fit may read; no playlists (hls, dash), lists (concat), image globs or device inputs
ALLOWED_DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "mpegts")
UNTRUSTED_OPEN_OPTIONS = {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": "file"}
SANITIZED_NAME = "source.mkv"
FILENAME = re.compile(r"[^A-Za-z0-9_.-]")
EXPORT_FORMATS = ("mp4", "png_zip")
PRESETS = ("", "draft", "standard", "best")


class Jobs:
    """Uploads, fits and exports for one ServerCore."""

    def __init__(self, core: Any, work_dir: Path | None) -> None:
        self.core = core
        self._tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="vatlas-jobs-")
        self.work_dir = Path(work_dir) if work_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.uploads: dict[str, Path] = {}
        self._exports = asyncio.Semaphore(2)  # exports share the GPU with live rendering
        self._fitting: set[str] = set()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---------------------------------------------------------------- uploads

    async def upload(self, chunks: AsyncIterator[bundles_pb2.UploadChunk]) -> bundles_pb2.UploadResult:
        """Store a streamed file; the first chunk names it. Larger than max_upload_bytes -> RESOURCE_EXHAUSTED."""
        limit = self.core.limits.max_upload_bytes
        upload_id = "u" + secrets.token_hex(8)
        directory = self.work_dir / "uploads" / upload_id
        path: Path | None = None
        total = 0
        handle = None
        try:
            async for chunk in chunks:
                if path is None:
                    name = FILENAME.sub("_", Path(chunk.filename).name)[:128].lstrip(".")
                    if not name:
                        raise CoreError("INVALID_ARGUMENT", "the first upload chunk must carry a file name")
                    directory.mkdir(parents=True, exist_ok=True)
                    path = directory / name
                    handle = open(path, "wb")  # noqa: SIM115 - closed in finally
                total += len(chunk.data)
                if total > limit:
                    raise CoreError("RESOURCE_EXHAUSTED", f"upload is larger than {limit} bytes")
                handle.write(chunk.data)
        except CoreError:
            if handle is not None:
                handle.close()
                handle = None
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            if handle is not None:
                handle.close()
        if path is None:
            raise CoreError("INVALID_ARGUMENT", "empty upload")
        self.uploads[upload_id] = path
        return bundles_pb2.UploadResult(upload_id=upload_id, bytes=total)

    # ---------------------------------------------------------------- fits

    async def start_fit(self, request: bundles_pb2.StartFitRequest) -> AsyncIterator[bundles_pb2.FitProgress]:
        """Validate, then run `vatlas fit` (models.fit) in a worker thread and stream progress.

        UNIMPLEMENTED when this build has no fit module. The fit reports no per-iteration progress to callers,
        so the stream carries a heartbeat (stage "fitting", elapsed seconds in `message`) until it is done.
        """
        _require_fit_module()
        path = self.uploads.get(request.upload_id)
        if path is None:
            raise CoreError("NOT_FOUND", f"no upload {request.upload_id!r}")
        name = check_bundle_name(request.name)
        out = self.core.bundles.path(name)
        if out.exists() or name in self._fitting:
            raise CoreError("ALREADY_EXISTS", f"a bundle named {name!r} already exists")
        if len(self._fitting) >= MAX_CONCURRENT_FITS:  # a fit takes the GPU for minutes: one at a time
            raise CoreError("RESOURCE_EXHAUSTED", f"a fit is already running ({', '.join(sorted(self._fitting))})")
        if request.preset not in PRESETS:
            raise CoreError("INVALID_ARGUMENT", f"preset {request.preset!r} is not one of draft, standard, best")
        try:
            roi = json.loads(request.roi_json)
        except json.JSONDecodeError as exc:
            raise CoreError("INVALID_ARGUMENT", f"roi_json is not JSON: {exc}") from None
        if not isinstance(roi, dict) or not isinstance(roi.get("polygons"), list):
            raise CoreError("INVALID_ARGUMENT", 'roi_json must look like {"ref_frame": 0, "polygons": [[[x, y], ...]]}')
        if request.width > 8192 or request.height > 8192 or request.iterations > 10_000_000:
            raise CoreError("INVALID_ARGUMENT", "width/height must be <= 8192 and iterations <= 10^7")
        if bool(request.width) != bool(request.height):
            raise CoreError("INVALID_ARGUMENT", "give both width and height, or neither")
        roi_path = path.with_name(f"{name}.roi.json")
        roi_path.write_text(json.dumps(roi))
        device = str(self.core.config.device)
        argv = ["fit", str(path.with_name(SANITIZED_NAME)), "--roi", str(roi_path), "--out", str(out), "--quiet",
                "--preset", request.preset or "standard",
                "--device", "cuda" if device.startswith("cuda") else device]
        if request.iterations:
            argv += ["--iters", str(request.iterations)]
        if request.width:
            argv += ["--size", f"{request.width}x{request.height}"]
        return self._run_fit(argv, name, path)

    async def _run_fit(self, argv: list[str], name: str, upload: Path) -> AsyncIterator[bundles_pb2.FitProgress]:
        from vatlas.cli import build_parser

        def work() -> None:
            try:
                args = build_parser().parse_args(argv)
            except SystemExit:
                raise CoreError("INVALID_ARGUMENT", f"bad fit options: {' '.join(argv[5:])}") from None
            sanitize_upload(upload, upload.with_name(SANITIZED_NAME))
            try:
                args.func(args)
            except Exception as exc:  # noqa: BLE001 - every failure of the fit is reported to the client
                user = type(exc).__name__ in _USER_ERRORS
                if not user:
                    log.exception("fit %s failed", name)
                detail = scrub_paths(str(exc), self.work_dir, self.core.bundles.models_dir) if user else \
                    INTERNAL_MESSAGE
                raise CoreError("FAILED_PRECONDITION" if user else "INTERNAL", f"fit failed: {detail}") from None

        self._fitting.add(name)
        started = time.monotonic()
        task = _in_daemon_thread(work, f"vatlas-fit-{name}")
        try:
            yield bundles_pb2.FitProgress(stage="fitting", fraction=0.0, message="started")
            while not task.done():
                await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
                if not task.done():
                    yield bundles_pb2.FitProgress(stage="fitting", fraction=0.0,
                                                  message=f"{time.monotonic() - started:.0f} s elapsed")
            task.result()
            info = self.core.bundles.info(name)
            yield bundles_pb2.FitProgress(stage="done", fraction=1.0, done=True, bundle=info,
                                          message=f"fit finished in {time.monotonic() - started:.1f} s")
        finally:
            if task.done():
                self._fitting.discard(name)
            else:  # the client went away: a thread cannot be stopped; it finishes and writes the bundle
                task.add_done_callback(lambda t: (self._fitting.discard(name), t.exception()))

    # ---------------------------------------------------------------- exports

    async def export(self, request: render_pb2.ExportRequest,
                     authorized: frozenset[str] | set[str] = frozenset()) -> AsyncIterator[render_pb2.ExportEvent]:
        """Validate, then stream progress events and the file in chunks (the last one has done=True)."""
        session = self.core._viewable(request.session_id, request.join_token, authorized)
        engine = await self.core._ensure_engine(session)
        fmt = request.format or "mp4"
        if fmt not in EXPORT_FORMATS:
            raise CoreError("INVALID_ARGUMENT", f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        n = session.bundle.num_frames
        end = request.end_frame or n
        if not request.start_frame < end <= n:
            raise CoreError("INVALID_ARGUMENT", f"frame range [{request.start_frame}, {end}) is not inside the clip "
                                                f"(0..{n})")
        crf = request.crf or 18
        if not 0 <= crf <= 51:
            raise CoreError("INVALID_ARGUMENT", f"crf {crf} is out of range 0..51")
        return self._run_export(engine, session.session_id, fmt, list(range(request.start_frame, end)), crf)

    async def _run_export(self, engine: Any, session_id: str, fmt: str, frames: list[int],
                          crf: int) -> AsyncIterator[render_pb2.ExportEvent]:
        from vatlas.server.export import export_clip

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        directory = Path(tempfile.mkdtemp(prefix="export-", dir=self.work_dir))
        filename = f"{session_id}.mp4" if fmt == "mp4" else f"{session_id}.zip"

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, done / max(total, 1))

        def work() -> Path:
            if fmt == "mp4":
                return export_clip(engine, directory / filename, frames=frames, crf=crf, progress=progress)
            pngs = export_clip(engine, directory / "frames", frames=frames, progress=progress)
            archive = directory / filename
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                for png in sorted(pngs.iterdir()):
                    zf.write(png, png.name)
            return archive

        try:
            async with self._exports:
                task = asyncio.ensure_future(asyncio.to_thread(work))
                task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    yield render_pb2.ExportEvent(fraction=float(item) * 0.99, stage="rendering")
                try:
                    path = task.result()
                except (ValueError, OSError) as exc:
                    log.error("export of session %s failed: %s", session_id, exc)
                    raise CoreError("INTERNAL", f"export failed: {INTERNAL_MESSAGE}") from None
            total = path.stat().st_size
            sent = 0
            with open(path, "rb") as f:
                while True:
                    data = f.read(CHUNK)
                    sent += len(data)
                    last = sent >= total
                    yield render_pb2.ExportEvent(fraction=1.0 if last else 0.99, stage="sending", chunk=data,
                                                 done=last, filename=filename, total_bytes=total)
                    if last:
                        break
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def sanitize_upload(upload: Path, out: Path) -> None:
    """Copy the upload's video stream into `out` (Matroska), reading only allowed containers from the file itself.

    Raises FAILED_PRECONDITION (the fit's error for bad input) for anything else: playlists, concat lists,
    unknown or broken files.
    """
    import av

    if out.exists():
        return  # an earlier fit of this upload made it
    partial = out.with_name(out.name + ".part")
    allowed = "MP4/MOV, Matroska/WebM, AVI or MPEG-TS"
    try:
        with av.open(str(upload), mode="r", options=UNTRUSTED_OPEN_OPTIONS) as source:
            if not source.streams.video:
                raise CoreError("FAILED_PRECONDITION", "fit failed: the upload has no video stream")
            stream = source.streams.video[0]
            with av.open(str(partial), mode="w", format="matroska") as sink:
                copy = sink.add_stream_from_template(stream)
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = copy
                    sink.mux(packet)
    except CoreError:
        partial.unlink(missing_ok=True)
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        partial.unlink(missing_ok=True)
        log.info("upload %s refused: %s", upload.name, exc)
        raise CoreError("FAILED_PRECONDITION", f"fit failed: the upload is not a video file in an allowed "
                                               f"container ({allowed})") from None
    partial.replace(out)


def _in_daemon_thread(fn: Any, name: str) -> asyncio.Future:
    """Run fn in a daemon thread (a fit must not hold up the process at shutdown); a future of its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


_USER_ERRORS = ("CliError", "VatlasError", "VideoError", "RoiError", "FitError", "BundleError", "ValueError")
HEARTBEAT_SECONDS = 2.0
MAX_CONCURRENT_FITS = 1


def _require_fit_module() -> None:
    try:
        importlib.import_module("vatlas.models.fit")
    except ModuleNotFoundError as exc:
        if exc.name != "vatlas.models.fit":
            raise
        raise CoreError("UNIMPLEMENTED", "fitting is not available on this server (no vatlas.models.fit)") from None
