"""Long jobs next to the live sessions: video uploads, fits (when the fit module is present) and exports.

Heavy work runs in threads; progress is handed to the event loop with `call_soon_threadsafe` and streamed.

Uploads are untrusted: FFmpeg's automatic format detection would follow an HLS playlist or a concat list to
files and URLs of the server's choosing. Before a fit, the upload is opened only with the demuxers of
`ALLOWED_DEMUXERS` and only the ``file`` protocol, and its video stream is remuxed (packets copied, nothing
re-encoded) into a Matroska file the server wrote itself; the fit reads that file, never the upload.

Quotas (M4): the uploads kept on disk share `max_upload_store_bytes` (the oldest unused ones are removed to
make room); a cancelled upload is removed at once, and uploads left by an earlier run (their ids lived in its
memory) are removed at start. A fit runs as a `vatlas.models.fit_job` child process (prepare_fit and fit, as a library) within `max_fit_pixels`,
`max_fit_iterations` and `max_fit_video_bytes`; it is stopped, and its slot freed, when its caller goes away,
unless the request says `detach`. Each fit is a `FitJob` known by id: the child's progress and
previews (its stdout's fit_events lines) are published to whoever follows it (its caller, `attach` callers); ended fits are kept for
`list_fits` / `attach` (the last MAX_FIT_RECORDS, not across restarts). An export's slot and folder are freed only once its worker has stopped
(L8): a cancelled export stops at its next frame.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import importlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vatlas.server.errors import INTERNAL_MESSAGE, CoreError, scrub_paths
from vatlas.server.session.bundles import check_bundle_name
from vatlas_wire.v1 import bundles_pb2, common_pb2, render_pb2

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# containers a fit may read; no playlists (hls, dash), lists (concat), image globs or device inputs
ALLOWED_DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "mpegts")
UNTRUSTED_OPEN_OPTIONS = {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": "file"}
SANITIZED_NAME = "source.mkv"
FILENAME = re.compile(r"[^A-Za-z0-9_.-]")
EXPORT_FORMATS = ("mp4", "png_zip")
PRESETS = ("", "draft", "standard", "best")


@dataclass
class Upload:
    """An upload kept on disk until it is removed to make room (or the server restarts)."""

    path: Path
    size: int  # the upload and the sanitized copy made of it
    created: float = field(default_factory=time.monotonic)
    fits: int = 0  # fits reading it now: never removed then
    lock: threading.Lock = field(default_factory=threading.Lock)  # one sanitizing thread at a time
    timestamps: list[int] | None = None  # the sanitized copy's frame pts, for seeking (upload_frame)


@dataclass
class FitJob:
    """One fit, running or recently ended: its latest event and preview, and the queues of who follows it."""

    fit_id: str
    name: str
    detach: bool
    created: float = field(default_factory=time.monotonic)
    latest: bundles_pb2.FitProgress = field(default_factory=bundles_pb2.FitProgress)  # without its preview
    preview: bundles_pb2.FitProgress | None = None  # the event that carried the latest preview
    error: CoreError | None = None
    running: bool = True
    watchers: set[asyncio.Queue] = field(default_factory=set)
    task: asyncio.Future | None = None
    stopped_by: str = "its caller went away"  # why a cancelled fit stopped, for its error

    def subscribe(self) -> asyncio.Queue:
        """A queue of this fit's events from now on, starting with its current state (None ends it)."""
        queue: asyncio.Queue = asyncio.Queue()
        if self.latest.fit_id:
            first = bundles_pb2.FitProgress()
            first.CopyFrom(self.latest)
            if self.preview is not None and not first.done:
                first.preview, first.preview_frame = self.preview.preview, self.preview.preview_frame
            queue.put_nowait(first)
        if self.running:
            self.watchers.add(queue)
        else:
            queue.put_nowait(None)
        return queue

    def publish(self, event: bundles_pb2.FitProgress) -> None:
        """Hand an event to every watcher; one that falls WATCH_BACKLOG behind loses its oldest events."""
        if event.preview:
            self.preview = event
            if self.latest.fit_id:  # a preview event also carries the progress it was made at
                kept = bundles_pb2.FitProgress()
                kept.CopyFrom(event)
                kept.ClearField("preview")
                kept.ClearField("preview_frame")
                self.latest = kept
        else:
            self.latest = event
        for queue in self.watchers:
            while queue.qsize() >= WATCH_BACKLOG:
                queue.get_nowait()
            queue.put_nowait(event)

    def heartbeat(self, elapsed: float) -> bundles_pb2.FitProgress:
        event = bundles_pb2.FitProgress()
        event.CopyFrom(self.latest)
        event.elapsed_seconds = elapsed
        if not event.stage_number:
            event.message = f"preparing the video ({elapsed:.0f} s)"
        return event

    def end(self) -> None:
        self.running = False
        for queue in self.watchers:
            queue.put_nowait(None)
        self.watchers.clear()

    def info(self) -> bundles_pb2.FitInfo:
        error = common_pb2.Error(code=self.error.code, message=self.error.message) if self.error else None
        return bundles_pb2.FitInfo(fit_id=self.fit_id, name=self.name, running=self.running, progress=self.latest,
                                   error=error, detached=self.detach)


class ExportCancelled(Exception):
    """Raised in an export's worker thread at its next frame once the export's caller went away."""


class Jobs:
    """Uploads, fits and exports for one ServerCore."""

    def __init__(self, core: Any, work_dir: Path | None) -> None:
        self.core = core
        self._tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="vatlas-jobs-")
        self.work_dir = Path(work_dir) if work_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.uploads: dict[str, Upload] = {}
        self._uploading = 0  # bytes of uploads still streaming in (count against the store too)
        self._exports = asyncio.Semaphore(core.limits.max_concurrent_exports)
        self.exports_running = 0  # export worker threads alive (holding a slot)
        self._fitting: dict[str, asyncio.subprocess.Process | None] = {}  # bundle name -> fit process
        self.fits: dict[str, FitJob] = {}  # by fit id: running ones and the last MAX_FIT_RECORDS ended ones
        self._background: set[asyncio.Future] = set()  # the fits' tasks (they outlive their callers)

    def clean_orphans(self) -> None:
        """Remove uploads and export folders an earlier run left (nobody can name them any more)."""
        shutil.rmtree(self.work_dir / "uploads", ignore_errors=True)
        for stale in self.work_dir.glob("export-*"):
            shutil.rmtree(stale, ignore_errors=True)

    async def close(self) -> None:
        """Stop running fits, detached ones too (they are this server's children), and wait for them."""
        for process in list(self._fitting.values()):
            if process is not None and process.returncode is None:
                _kill_group(process, signal.SIGKILL)
        for job in self.fits.values():
            if job.task is not None:
                job.task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=FIT_STOP_SECONDS)
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---------------------------------------------------------------- uploads

    def store_bytes(self) -> int:
        """Bytes of the uploads on disk, the ones still streaming in included."""
        return sum(u.size for u in self.uploads.values()) + self._uploading

    def _make_room(self, more: int) -> None:
        """Remove the oldest unused uploads until `more` bytes fit max_upload_store_bytes, or refuse."""
        quota = self.core.limits.max_upload_store_bytes
        for upload_id, upload in sorted(self.uploads.items(), key=lambda kv: kv[1].created):
            if self.store_bytes() + more <= quota:
                break
            if upload.fits == 0:
                del self.uploads[upload_id]
                shutil.rmtree(upload.path.parent, ignore_errors=True)
                log.info("upload %s removed to make room for a new one", upload_id)
        if self.store_bytes() + more > quota:
            raise CoreError("RESOURCE_EXHAUSTED", f"uploads on this server already take {self.store_bytes()} "
                                                  f"bytes (limit {quota}); try again when a fit has finished")

    async def upload(self, chunks: AsyncIterator[bundles_pb2.UploadChunk]) -> bundles_pb2.UploadResult:
        """Store a streamed file; the first chunk names it, the last has `last` set. Larger than
        max_upload_bytes, or than what the upload store has room for -> RESOURCE_EXHAUSTED. Anything that ends
        it early removes it: a refusal, an error, a cancelled call (whose stream gRPC ends as if it were
        complete: hence `last`)."""
        limit = self.core.limits.max_upload_bytes
        announced = 0
        upload_id = "u" + secrets.token_hex(8)
        directory = self.work_dir / "uploads" / upload_id
        path: Path | None = None
        total = 0
        handle = None
        finished = False
        try:
            async for chunk in chunks:
                if finished:
                    raise CoreError("INVALID_ARGUMENT", "an upload chunk came after the one marked last")
                finished = chunk.last
                if path is None:
                    name = FILENAME.sub("_", Path(chunk.filename).name)[:128].lstrip(".")
                    if not name:
                        raise CoreError("INVALID_ARGUMENT", "the first upload chunk must carry a file name")
                    announced = chunk.total_bytes
                    if announced > limit:
                        raise CoreError("RESOURCE_EXHAUSTED", f"upload is larger than {limit} bytes "
                                                              f"({announced} announced)")
                    if announced:
                        self._make_room(announced)  # refused now rather than after most of it was sent
                    directory.mkdir(parents=True, exist_ok=True)
                    path = directory / name
                    handle = open(path, "wb")  # noqa: SIM115 - closed in finally
                size = len(chunk.data)
                if total + size > limit:
                    raise CoreError("RESOURCE_EXHAUSTED", f"upload is larger than {limit} bytes")
                self._make_room(size)
                total += size
                self._uploading += size
                handle.write(chunk.data)
            if path is not None and not finished:
                raise CoreError("INVALID_ARGUMENT", "the upload ended without a chunk marked last (cancelled?): "
                                                    "nothing was kept")
            if path is not None and announced and total != announced:
                raise CoreError("INVALID_ARGUMENT", f"the upload announced {announced} bytes and sent {total}: "
                                                    "nothing was kept")
        except BaseException:  # a refusal, a cancelled call or a lost client: nothing stays on disk
            if handle is not None:
                handle.close()
                handle = None
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            self._uploading -= total
            if handle is not None:
                handle.close()
        if path is None:
            raise CoreError("INVALID_ARGUMENT", "empty upload")
        self.uploads[upload_id] = Upload(path, total)
        return bundles_pb2.UploadResult(upload_id=upload_id, bytes=total)

    async def upload_frame(self, request: bundles_pb2.UploadFrameRequest) -> bundles_pb2.UploadFrame:
        """One decoded frame of an upload as JPEG (scaled to max_side), with the video's size and frame count.
        The first call sanitizes the upload (as a fit would): FAILED_PRECONDITION for what is not a video."""
        upload = self.uploads.get(request.upload_id)
        if upload is None:
            raise CoreError("NOT_FOUND", f"no upload {request.upload_id!r}")
        return await asyncio.to_thread(self._upload_frame, upload, request)

    def _upload_frame(self, upload: Upload, request: bundles_pb2.UploadFrameRequest) -> bundles_pb2.UploadFrame:
        import cv2

        from vatlas.video import VideoError, frame_timestamps, read_frame

        frames, width, height = self._sanitized(upload)
        sanitized = upload.path.with_name(SANITIZED_NAME)
        if not frames:
            raise CoreError("FAILED_PRECONDITION", "the upload has no frames")
        if request.frame >= frames:
            raise CoreError("OUT_OF_RANGE", f"frame {request.frame} is beyond the video's {frames} frames")
        try:
            if upload.timestamps is None:
                upload.timestamps = frame_timestamps(sanitized)
            rgb, fps = read_frame(sanitized, request.frame, upload.timestamps)
        except VideoError:
            raise CoreError("FAILED_PRECONDITION", f"frame {request.frame} of the upload cannot be decoded") from None
        side = request.max_side or max(width, height)
        scale = min(1.0, side / max(width, height))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
        if not ok:
            raise CoreError("INTERNAL", f"frame {request.frame}: {INTERNAL_MESSAGE}")
        return bundles_pb2.UploadFrame(upload_id=request.upload_id, frame=request.frame, frames=frames, width=width,
                                       height=height, fps=fps, jpeg=jpeg.tobytes(),
                                       image_width=int(rgb.shape[1]), image_height=int(rgb.shape[0]))

    # ---------------------------------------------------------------- fits

    async def start_fit(self, request: bundles_pb2.StartFitRequest) -> AsyncIterator[bundles_pb2.FitProgress]:
        """Validate, then run the fit (models.fit_job) in a child process; returns its caller's event stream.

        UNIMPLEMENTED when this build has no fit module. Events carry the child's overall fraction, stage, ETA
        and loss readout (its fit_events lines), a preview of the reconstruction every PREVIEW_SECONDS, and a
        heartbeat when the child is silent (preparing the upload); the last one has `done` and the bundle.
        Closing the stream stops the fit unless the request says `detach`; `attach` follows it by id.
        """
        _require_fit_module()
        limits = self.core.limits
        upload = self.uploads.get(request.upload_id)
        if upload is None:
            raise CoreError("NOT_FOUND", f"no upload {request.upload_id!r}")
        name = check_bundle_name(request.name)
        out = self.core.bundles.path(name)
        if out.exists() or name in self._fitting:
            raise CoreError("ALREADY_EXISTS", f"a bundle named {name!r} already exists")
        if len(self._fitting) >= limits.max_concurrent_fits:
            raise CoreError("RESOURCE_EXHAUSTED", f"a fit is already running ({', '.join(sorted(self._fitting))})")
        if request.preset not in PRESETS:
            raise CoreError("INVALID_ARGUMENT", f"preset {request.preset!r} is not one of draft, standard, best")
        roi = parse_roi(request.roi_json)
        if bool(request.width) != bool(request.height):
            raise CoreError("INVALID_ARGUMENT", "give both width and height, or neither")
        if request.width * request.height > limits.max_fit_pixels:
            raise CoreError("INVALID_ARGUMENT", f"a fit works on at most {limits.max_fit_pixels} pixels a frame; "
                                                f"{request.width}x{request.height} is more")
        if request.iterations > limits.max_fit_iterations:
            raise CoreError("INVALID_ARGUMENT", f"iterations must be <= {limits.max_fit_iterations}")
        path = upload.path
        device = str(self.core.config.device)
        size = (request.width, request.height) if request.width else None
        request_path = path.with_name(f"{name}.fit.json")
        request_path.write_text(json.dumps({
            "video": str(path.with_name(SANITIZED_NAME)), "roi": roi.to_json(), "out": str(out),
            "size": list(size) if size else None,
            "preset": request.preset or None,  # else the device's choice: draft on a CPU, standard on a GPU
            "iters": request.iterations or None, "preview_seconds": PREVIEW_SECONDS,
            "device": "cuda" if device.startswith("cuda") else device}))
        self._fitting[name] = None  # the slot is taken from here until the fit process has ended
        job = FitJob("f" + secrets.token_hex(8), name, request.detach)
        self.fits[job.fit_id] = job
        watch = self._watch(job, job.subscribe(), owner=True)  # subscribed before the job's first event
        job.task = asyncio.ensure_future(self._drive(job, request_path, upload, size, roi))
        self._background.add(job.task)
        job.task.add_done_callback(self._background.discard)
        self._forget_old_fits()
        return watch

    def list_fits(self) -> bundles_pb2.ListFitsResponse:
        """Running fits, then finished ones, newest first."""
        jobs = sorted(self.fits.values(), key=lambda j: (not j.running, -j.created))
        return bundles_pb2.ListFitsResponse(fits=[job.info() for job in jobs])

    async def attach(self, request: bundles_pb2.AttachFitRequest) -> AsyncIterator[bundles_pb2.FitProgress]:
        """Follow a fit by id: its latest state (with its latest preview), then live events; leaving never
        stops it. An ended fit answers its last event, then its error if it failed."""
        job = self.fits.get(request.fit_id)
        if job is None:
            raise CoreError("NOT_FOUND", f"no fit {request.fit_id!r} (finished fits are kept for a while, "
                                         "not across restarts)")
        return self._watch(job, job.subscribe(), owner=False)

    async def cancel(self, request: bundles_pb2.CancelFitRequest) -> bundles_pb2.FitInfo:
        """Stop a running fit (a detached one too) and remove its partial bundle; the fit as it ended."""
        job = self.fits.get(request.fit_id)
        if job is None:
            raise CoreError("NOT_FOUND", f"no fit {request.fit_id!r}")
        if not job.running or job.task is None:
            raise CoreError("FAILED_PRECONDITION", f"the fit of {job.name!r} has already ended")
        job.stopped_by = "it was cancelled"
        job.task.cancel()
        # its process is stopped and its partial outputs removed before the answer
        await asyncio.wait({job.task}, timeout=2 * FIT_STOP_SECONDS)
        return job.info()

    def _forget_old_fits(self) -> None:
        ended = sorted((j for j in self.fits.values() if not j.running), key=lambda j: j.created)
        for job in ended[:max(0, len(ended) - MAX_FIT_RECORDS)]:
            del self.fits[job.fit_id]

    async def _watch(self, job: FitJob, queue: asyncio.Queue, *, owner: bool) -> AsyncIterator[
            bundles_pb2.FitProgress]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
            if job.error is not None:
                raise job.error
        finally:
            job.watchers.discard(queue)
            if owner and not job.detach and job.running and job.task is not None:
                log.info("fit %s stopped: its caller went away", job.name)
                job.task.cancel()

    def _sanitized(self, upload: Upload) -> tuple[int, int, int]:
        """The upload's sanitized copy (made once, a worker thread; counted in the upload's size) and its
        (frames, width, height)."""
        sanitized = upload.path.with_name(SANITIZED_NAME)
        with upload.lock:
            existed = sanitized.exists()
            frames, width, height = sanitize_upload(upload.path, sanitized)
            if not existed and sanitized.exists():
                upload.size += sanitized.stat().st_size
        return frames, width, height

    def _prepare_fit(self, upload: Upload, size: tuple[int, int] | None, roi: Any) -> None:
        """Sanitize the upload (a worker thread), check the ROI against the video and refuse a clip whose
        decoded frames pass the budget."""
        frames, width, height = self._sanitized(upload)
        if not frames:
            return
        from vatlas.models.config import FitConfig, working_size

        from vatlas.errors import RoiError

        try:
            roi.validate(width, height, frames)
        except RoiError as exc:
            raise CoreError("INVALID_ARGUMENT", f"{exc} (the video is {width}x{height}, {frames} frames)") from None
        w, h = working_size((width, height), size, FitConfig().max_side)
        need = frames * 3 * (width * height + (w * h if (w, h) != (width, height) else 0))
        budget = self.core.limits.max_fit_video_bytes
        if need > budget:
            raise CoreError("RESOURCE_EXHAUSTED", f"the fit would hold {need} bytes of decoded frames ({frames} "
                                                  f"frames of {width}x{height}; limit {budget}): trim the clip")

    async def _drive(self, job: FitJob, request_path: Path, upload: Upload, size: tuple[int, int] | None,
                     roi: Any) -> None:
        """Run one fit to its end (or until cancelled: its caller left), publishing its events to the job."""
        started = time.monotonic()
        process: asyncio.subprocess.Process | None = None
        prepare: asyncio.Future | None = None
        name = job.name
        upload.fits += 1
        try:
            job.publish(bundles_pb2.FitProgress(fit_id=job.fit_id, stage="fitting", message="started"))
            prepare = asyncio.ensure_future(asyncio.to_thread(self._prepare_fit, upload, size, roi))
            await asyncio.shield(prepare)  # a thread cannot be stopped: the slot waits for it (below)
            env = dict(os.environ)
            device = str(self.core.config.device)
            if device.startswith("cuda:"):  # the job takes "cuda": show it only the server's GPU
                env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vatlas.models.fit_job", str(request_path), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
                limit=EVENT_LINE_BYTES)
            self._fitting[name] = process
            errors = asyncio.ensure_future(_tail(process.stderr))
            assert process.stdout is not None
            failure: str | None = None  # the job's one-line message for bad input
            while True:
                try:
                    line = await asyncio.wait_for(process.stdout.readline(), HEARTBEAT_SECONDS)
                except TimeoutError:  # the child is silent (loading, decoding): say that it is alive
                    job.publish(job.heartbeat(time.monotonic() - started))
                    continue
                except ValueError:  # a line beyond EVENT_LINE_BYTES: not one of ours
                    continue
                if not line:
                    break
                event = child_event(line, job, time.monotonic() - started)
                if event is not None:
                    job.publish(event)
                else:
                    failure = child_failure(line) or failure
            await process.wait()
            lines = await errors
            if process.returncode != 0:
                raise self._fit_error(name, process.returncode, failure, lines)
            info = self.core.bundles.info(name)
            job.publish(bundles_pb2.FitProgress(
                fit_id=job.fit_id, stage="done", fraction=1.0, done=True, bundle=info,
                stage_number=job.latest.stage_number, stage_count=job.latest.stage_count,
                elapsed_seconds=time.monotonic() - started,
                message=f"fit finished in {time.monotonic() - started:.1f} s"))
        except CoreError as exc:
            job.error = exc
        except asyncio.CancelledError:
            job.error = CoreError("CANCELLED", f"the fit was stopped: {job.stopped_by}")
        except Exception:  # noqa: BLE001 - a server bug: the fit's watchers get INTERNAL, the log the details
            log.exception("fit %s failed", name)
            job.error = CoreError("INTERNAL", f"fit failed: {INTERNAL_MESSAGE}")
        finally:
            try:
                await self._stop_fit(name, process, prepare)
            finally:
                upload.fits -= 1
                self._fitting.pop(name, None)
                job.end()

    async def _stop_fit(self, name: str, process: asyncio.subprocess.Process | None,
                        prepare: asyncio.Future | None) -> None:
        """Stop what is left of a fit that did not finish (its process, its sanitizing thread) and remove its
        partial outputs; nothing to do after a finished one."""
        if prepare is not None and not prepare.done():
            await asyncio.wait({prepare})
        if prepare is not None and not prepare.cancelled():
            prepare.exception()  # retrieved (it was raised, or the fit was stopped meanwhile)
        if process is None or process.returncode is not None:
            return
        _kill_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), FIT_STOP_SECONDS)
        except TimeoutError:
            _kill_group(process, signal.SIGKILL)
            await process.wait()
        out = self.core.bundles.path(name)
        for partial in (out, out.with_name(out.name + ".ckpt")):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)

    def _fit_error(self, name: str, code: int, failure: str | None, lines: list[str]) -> CoreError:
        """The job's failure as a client-safe error: its one-line message for bad input, else INTERNAL."""
        from vatlas.models.fit_job import INPUT_ERROR_EXIT

        if code == INPUT_ERROR_EXIT and failure is not None:
            detail = scrub_paths(failure, self.work_dir, self.core.bundles.models_dir)
            return CoreError("FAILED_PRECONDITION", f"fit failed: {detail}")
        log.error("fit %s exited with %s:\n%s", name, code, "\n".join(lines[-30:]))
        return CoreError("INTERNAL", f"fit failed: {INTERNAL_MESSAGE}")

    # ---------------------------------------------------------------- exports

    async def export(self, request: render_pb2.ExportRequest,
                     authorized: frozenset[str] | set[str] = frozenset()) -> AsyncIterator[render_pb2.ExportEvent]:
        """Validate, then stream progress events and the file in chunks (the last one has done=True)."""
        session = self.core.viewable(request.session_id, request.join_token, authorized)
        engine = await self.core.ensure_engine(session)
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
        cancelled = threading.Event()
        filename = f"{session_id}.mp4" if fmt == "mp4" else f"{session_id}.zip"

        def progress(done: int, total: int) -> None:
            if cancelled.is_set():
                raise ExportCancelled
            loop.call_soon_threadsafe(queue.put_nowait, done / max(total, 1))

        await self._exports.acquire()  # released when the worker has stopped, never before
        directory = Path(tempfile.mkdtemp(prefix="export-", dir=self.work_dir))
        holders = [2]  # the worker and this stream: the folder goes when both are done with it

        def let_go() -> None:
            holders[0] -= 1
            if holders[0] == 0:
                shutil.rmtree(directory, ignore_errors=True)

        def work() -> Path:
            try:
                if fmt == "mp4":
                    return export_clip(engine, directory / filename, frames=frames, crf=crf, progress=progress)
                pngs = export_clip(engine, directory / "frames", frames=frames, progress=progress)
                archive = directory / filename
                with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                    for png in sorted(pngs.iterdir()):
                        if cancelled.is_set():
                            raise ExportCancelled
                        zf.write(png, png.name)
                return archive
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        def worker_done(_: Any) -> None:
            self.exports_running -= 1
            self._exports.release()
            let_go()

        self.exports_running += 1
        task = _in_daemon_thread(work, f"vatlas-export-{session_id}")
        task.add_done_callback(worker_done)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield render_pb2.ExportEvent(fraction=float(item) * 0.99, stage="rendering")
            await asyncio.wait({task})
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
            cancelled.set()  # a worker still rendering stops at its next frame
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: an ExportCancelled after a cancel is expected
            let_go()


def parse_roi(text: str) -> Any:
    """StartFitRequest.roi_json as a vatlas.roi.Roi, bounded (MAX_ROI_JSON_BYTES, MAX_ROI_POLYGONS,
    MAX_ROI_VERTICES); INVALID_ARGUMENT with one plain sentence otherwise. Checked against the video's size and
    frame count once the upload has been read (`_prepare_fit`)."""
    from vatlas.errors import RoiError
    from vatlas.roi import Roi

    shape = 'roi_json must look like {"ref_frame": 0, "polygons": [[[x, y], ...]]}'
    if len(text) > MAX_ROI_JSON_BYTES:
        raise CoreError("INVALID_ARGUMENT", f"roi_json is longer than {MAX_ROI_JSON_BYTES} bytes")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CoreError("INVALID_ARGUMENT", f"roi_json is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("polygons"), list):
        raise CoreError("INVALID_ARGUMENT", shape)
    ref_frame = data.get("ref_frame", 0)
    if not isinstance(ref_frame, int) or isinstance(ref_frame, bool):
        raise CoreError("INVALID_ARGUMENT", f"roi_json: ref_frame must be an integer, got {ref_frame!r}")
    polygons = data["polygons"]
    if len(polygons) > MAX_ROI_POLYGONS:
        raise CoreError("INVALID_ARGUMENT", f"the ROI has {len(polygons)} polygons; at most {MAX_ROI_POLYGONS}")
    vertices = sum(len(p) if isinstance(p, list) else 0 for p in polygons)
    if vertices > MAX_ROI_VERTICES:
        raise CoreError("INVALID_ARGUMENT", f"the ROI has {vertices} vertices; at most {MAX_ROI_VERTICES}")
    try:
        return Roi(ref_frame, polygons)
    except (RoiError, ValueError, TypeError) as exc:
        raise CoreError("INVALID_ARGUMENT", str(exc)) from None


def child_event(line: bytes, job: FitJob, elapsed: float) -> bundles_pb2.FitProgress | None:
    """One fit_events line of a fit job as a FitProgress of `job` (None for what is not a progress or preview)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("event") not in ("progress", "preview"):
        return None
    event = bundles_pb2.FitProgress()
    event.CopyFrom(job.latest)
    event.fit_id, event.elapsed_seconds = job.fit_id, elapsed
    event.ClearField("message")
    try:
        if data["event"] == "progress":
            event.stage = str(data["stage"])
            event.fraction = min(max(float(data["fraction"]), 0.0), 1.0)
            event.iteration = int(data.get("done") or 0)
            event.stage_number, event.stage_count = int(data["stage_number"]), int(data["stage_count"])
            event.eta_seconds = float(data["eta_seconds"] or 0.0)
            event.readout = str(data.get("readout") or "")
        else:
            event.preview = base64.b64decode(data["jpeg"], validate=True)
            event.preview_frame = int(data["frame"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    return event


def child_failure(line: bytes) -> str | None:
    """The message of a fit job's {"event": "error"} line (bad input), else None."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and data.get("event") == "error" and isinstance(data.get("message"), str):
        return data["message"]
    return None


async def _tail(stream: Any, keep: int = 200) -> list[str]:
    """The last `keep` lines of a child's output (read to the end, so the child never blocks on a full pipe)."""
    lines: list[str] = []
    while True:
        line = await stream.readline()
        if not line:
            return lines
        lines.append(line.decode(errors="replace").rstrip())
        del lines[:-keep]


def _kill_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def sanitize_upload(upload: Path, out: Path) -> tuple[int, int, int]:
    """Copy the upload's video stream into `out` (Matroska), reading only allowed containers from the file itself.

    Returns (frames, width, height) of the stream (frames counted as packets copied; also kept beside `out`
    as JSON). Raises FAILED_PRECONDITION (the fit's error for bad input) for anything else: playlists, concat
    lists, unknown or broken files.
    """
    import av

    info = out.with_name(out.name + ".json")
    if out.exists():  # an earlier fit of this upload made it
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known = json.loads(info.read_text())
            return int(known["frames"]), int(known["width"]), int(known["height"])
        return 0, 0, 0
    partial = out.with_name(out.name + ".part")
    allowed = "MP4/MOV, Matroska/WebM, AVI or MPEG-TS"
    frames = 0
    try:
        with av.open(str(upload), mode="r", options=UNTRUSTED_OPEN_OPTIONS) as source:
            if not source.streams.video:
                raise CoreError("FAILED_PRECONDITION", "fit failed: the upload has no video stream")
            stream = source.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            with av.open(str(partial), mode="w", format="matroska") as sink:
                copy = sink.add_stream_from_template(stream)
                for packet in source.demux(stream):
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = copy
                    sink.mux(packet)
                    frames += 1
    except CoreError:
        partial.unlink(missing_ok=True)
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        partial.unlink(missing_ok=True)
        log.info("upload %s refused: %s", upload.name, exc)
        raise CoreError("FAILED_PRECONDITION", f"fit failed: the upload is not a video file in an allowed "
                                               f"container ({allowed})") from None
    partial.replace(out)
    info.write_text(json.dumps({"frames": frames, "width": width, "height": height}))
    return frames, width, height


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


HEARTBEAT_SECONDS = 2.0  # a fit's watchers hear from it at least this often
FIT_STOP_SECONDS = 5.0  # SIGTERM, then SIGKILL
PREVIEW_SECONDS = 3.0  # a preview of the reconstruction this often while training
EVENT_LINE_BYTES = 4 * 1024 * 1024  # one fit_events line of the fit child (a preview is tens of kB)
WATCH_BACKLOG = 64  # events queued for one fit watcher before its oldest are dropped
MAX_FIT_RECORDS = 16  # ended fits kept for list_fits / attach
MAX_ROI_JSON_BYTES = 1024 * 1024
MAX_ROI_POLYGONS = 64
MAX_ROI_VERTICES = 20_000


def _require_fit_module() -> None:
    try:
        importlib.import_module("vatlas.models.fit")
    except ModuleNotFoundError as exc:
        if exc.name != "vatlas.models.fit":
            raise
        raise CoreError("UNIMPLEMENTED", "fitting is not available on this server (no vatlas.models.fit)") from None
