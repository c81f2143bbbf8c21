"""Rendering for clients: request validation, and a worker thread with one coalescing slot per client.

Every client (a viewer) owns one slot keyed by a client key. A new request replaces the one still waiting in
the slot (the replaced request fails with ABORTED: latest request wins), so a client scrubbing fast never
builds a queue. The worker thread takes up to `batch` waiting requests at once, groups those that share a
session and geometry into one `EditEngine.render` call, encodes each distinct (frame, format, quality) once,
and hands results back to the event loop with `loop.call_soon_threadsafe`.

Fair share (L2): when more requests wait than one batch takes, single renders go before playback frames, and
among them the owners (connections) served least lately go first, so a connection running many playbacks
cannot make another one's render wait more than a batch or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vatlas.server.edits.region import MAX_MASK_SIDE
from vatlas.server.errors import INTERNAL_MESSAGE, CoreError
from vatlas_wire.v1 import render_pb2

log = logging.getLogger(__name__)

FORMATS = ("jpeg", "webp", "png", "raw")
DEFAULT_QUALITY = 85


@dataclass(frozen=True)
class RenderParams:
    """A validated render request (region in full-resolution pixels, (x, y, w, h))."""

    frame: int  # -1 for the atlas
    fmt: str
    quality: int
    scale: float
    region: tuple[int, int, int, int] | None

    @property
    def atlas(self) -> bool:
        return self.frame < 0


def check_format(fmt: str, quality: int, scale: float, min_scale: float) -> tuple[str, int, float]:
    """Validate format/quality/scale with the proto's "0 = default" rules."""
    fmt = fmt or "jpeg"
    if fmt not in FORMATS:
        raise CoreError("INVALID_ARGUMENT", f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    quality = quality or DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        raise CoreError("INVALID_ARGUMENT", f"quality {quality} is out of range 1..100")
    scale = scale or 1.0
    if not math.isfinite(scale) or not min_scale <= scale <= 1.0:
        raise CoreError("INVALID_ARGUMENT", f"scale {scale:g} is out of range [{min_scale:g}, 1]")
    return fmt, quality, float(scale)


def check_render_request(req: render_pb2.RenderRequest, num_frames: int, width: int, height: int,
                         atlas_size: int, min_scale: float) -> RenderParams:
    """Validate every field of a RenderRequest against the session's bundle."""
    fmt, quality, scale = check_format(req.format, req.quality, req.scale, min_scale)
    if req.atlas:
        frame, bound_w, bound_h = -1, atlas_size, atlas_size
    else:
        if req.frame >= num_frames:
            raise CoreError("INVALID_ARGUMENT", f"frame {req.frame} is out of range (the clip has frames "
                                                f"0..{num_frames - 1})")
        frame, bound_w, bound_h = int(req.frame), width, height
    region = None
    if req.HasField("region"):
        r = req.region
        if r.width < 1 or r.height < 1 or r.x + r.width > bound_w or r.y + r.height > bound_h:
            raise CoreError("INVALID_ARGUMENT", f"region x={r.x} y={r.y} {r.width}x{r.height} is not inside the "
                                                f"{bound_w}x{bound_h} {'atlas' if req.atlas else 'frame'}")
        region = (int(r.x), int(r.y), int(r.width), int(r.height))
    check_mask_side(req.roi_mask_side)
    return RenderParams(frame, fmt, quality, scale, region)


def check_mask_side(side: int) -> None:
    """roi_mask_side of a render or playback request: 0 (no mask) up to MAX_MASK_SIDE cells."""
    if side > MAX_MASK_SIDE:
        raise CoreError("INVALID_ARGUMENT", f"roi_mask_side {side} is too large (at most {MAX_MASK_SIDE})")


@dataclass
class RenderJob:
    session: Any  # server.session.session.Session (applied_seq)
    params: RenderParams
    request_id: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    engine: Any = None  # the session's engine when submitted (an unloaded session keeps it for this job)
    owner: Any = None  # whose GPU share this counts against (the connection)
    interactive: bool = True  # a single render (playback frames are not)


Encoder = Callable[[Any, str, int], list[bytes]]


class RenderWorker:
    """One thread rendering for every client; a slot of one waiting request per client key."""

    def __init__(self, encoder: Encoder, batch: int = 16) -> None:
        self._encode = encoder
        self.batch = max(1, int(batch))
        self._served: dict[Any, float] = {}  # frames rendered per owner lately (halved after every batch)
        self._pending: dict[Any, RenderJob] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="vatlas-render", daemon=True)
        self.rendered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in flight, fail what is still waiting, end the thread."""
        with self._cond:
            self._stopping = True
            waiting = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            _resolve(job, error=CoreError("UNAVAILABLE", "the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, key: Any, job: RenderJob) -> None:
        """Put a job in the client's slot, replacing (and aborting) the one waiting there."""
        with self._cond:
            if self._stopping:
                raise CoreError("UNAVAILABLE", "the server is shutting down")
            old = self._pending.pop(key, None)
            self._pending[key] = job
            self._cond.notify()
        if old is not None:
            _resolve(old, error=CoreError("ABORTED", f"render request {old.request_id} superseded by "
                                                     f"request {job.request_id}"))

    def cancel(self, key: Any) -> None:
        """Drop a client's waiting request (the client went away)."""
        with self._cond:
            job = self._pending.pop(key, None)
        if job is not None:
            _resolve(job, error=CoreError("CANCELLED", "the client went away"))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._pending:
                    return
                jobs = self._take_batch()
            try:
                self._render_batch(jobs)
            except Exception:  # noqa: BLE001 - a render failure must never kill the worker
                log.exception("render batch failed")
                for job in jobs:
                    _resolve(job, error=CoreError("INTERNAL", f"render failed: {INTERNAL_MESSAGE}"))

    def _take_batch(self) -> list[RenderJob]:
        """Up to `batch` waiting jobs, fairly (see the module docstring). Caller holds the condition."""
        if len(self._pending) <= self.batch:
            chosen = list(self._pending)
        else:
            served = self._served
            chosen = sorted(self._pending, key=lambda k: (not self._pending[k].interactive,
                                                          served.get(self._pending[k].owner, 0.0),
                                                          self._pending[k].submitted))[:self.batch]
        jobs = [self._pending.pop(k) for k in chosen]
        for owner in list(self._served):
            self._served[owner] *= 0.5
            if self._served[owner] < 0.01:
                del self._served[owner]
        for job in jobs:
            self._served[job.owner] = self._served.get(job.owner, 0.0) + 1.0
        return jobs

    def _render_batch(self, jobs: list[RenderJob]) -> None:
        """Render each (session, geometry) group once, then encode across groups in as few calls as possible."""
        groups: dict[tuple, list[RenderJob]] = {}
        for job in jobs:
            if job.future.done():  # the caller gave up (client gone, superseded on the loop side)
                continue
            p = job.params
            groups.setdefault((id(job.session), id(job.engine), p.atlas, p.scale, p.region), []).append(job)
        rendered: list[_Rendered] = []
        for group in groups.values():
            try:
                rendered.append(self._render_group(group))
            except Exception as exc:  # noqa: BLE001 - reported to the clients of this group only
                _fail_all(group, exc)
        # one encode call per (format, quality, size): nvJPEG encodes a batch faster than frame by frame
        batches: dict[tuple[str, int, int, int], list[tuple[_Rendered, int]]] = {}
        for item in rendered:
            height, width = int(item.images.shape[1]), int(item.images.shape[2])
            for key in item.wanted:
                fmt, quality = key[1], key[2]
                batches.setdefault((fmt, quality, height, width), []).append((item, key[0]))
        for (fmt, quality, _, _), members in batches.items():
            try:
                stack = _stack([item.images[item.index[frame]] for item, frame in members])
                blobs = encode_frames(self._encode, stack, fmt, quality)
            except Exception as exc:  # noqa: BLE001 - fail only the jobs waiting for this batch
                for item, frame in members:
                    _fail_all([j for j in item.jobs if (j.params.frame, j.params.fmt, j.params.quality)
                               == (frame, fmt, quality)], exc)
                continue
            for (item, frame), blob in zip(members, blobs, strict=True):
                item.encoded[(frame, fmt, quality)] = blob
        for item in rendered:
            height, width = int(item.images.shape[1]), int(item.images.shape[2])
            render_ms = (time.perf_counter() - item.start) * 1000.0
            for job in item.jobs:
                p = job.params
                data = item.encoded.get((p.frame, p.fmt, p.quality))
                if data is None:
                    continue  # its encode batch failed and was answered above
                _resolve(job, result=render_pb2.RenderedFrame(
                    frame=max(p.frame, 0), format=p.fmt, width=width, height=height, data=data, seq=item.seq,
                    request_id=job.request_id, render_ms=render_ms))
                self.rendered += 1

    def _render_group(self, group: list[RenderJob]) -> _Rendered:
        session = group[0].session
        params = group[0].params
        engine = group[0].engine if group[0].engine is not None else session.engine
        if engine is None:
            raise CoreError("UNAVAILABLE", "the session was unloaded: render again")
        seq = session.applied_seq  # read before rendering: the frame includes at least this op
        start = time.perf_counter()
        if params.atlas:
            images = render_atlas(engine, params.scale, params.region)
            index = {-1: 0}
        else:
            frames = sorted({job.params.frame for job in group})
            images = engine.render(frames, scale=params.scale, region=params.region)
            index = {f: i for i, f in enumerate(frames)}
        wanted = list(dict.fromkeys((j.params.frame, j.params.fmt, j.params.quality) for j in group))
        return _Rendered(group, images, index, wanted, seq, start)


@dataclass
class _Rendered:
    jobs: list[RenderJob]
    images: Any  # (N, H, W, 3) uint8 tensor
    index: dict[int, int]  # frame -> row of images
    wanted: list[tuple[int, str, int]]  # distinct (frame, format, quality)
    seq: int
    start: float
    encoded: dict[tuple[int, str, int], bytes] = field(default_factory=dict)


def _stack(images: list[Any]) -> Any:
    import torch

    return torch.stack(images) if len(images) > 1 else images[0][None]


def _fail_all(jobs: list[RenderJob], exc: BaseException) -> None:
    if isinstance(exc, CoreError):
        error = exc
    else:
        log.error("render failed: %s: %s", type(exc).__name__, exc)
        error = CoreError("INTERNAL", f"render failed: {INTERNAL_MESSAGE}")
    for job in jobs:
        _resolve(job, error=error)


def render_atlas(engine: Any, scale: float, region: tuple[int, int, int, int] | None) -> Any:
    """The edited atlas as a (1, h, w, 3) uint8 tensor, cropped and scaled like a frame."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual alias

    atlas = engine.render_atlas()
    if region is not None:
        x, y, w, h = region
        atlas = atlas[y:y + h, x:x + w]
    if scale != 1.0:
        h, w = atlas.shape[0], atlas.shape[1]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        img = atlas.permute(2, 0, 1)[None].float()
        atlas = F.interpolate(img, size=size, mode="area")[0].permute(1, 2, 0).round().clamp(0, 255)
        atlas = atlas.to(torch.uint8)
    return atlas[None].contiguous()


def encode_frames(encoder: Encoder, images: Any, fmt: str, quality: int) -> list[bytes]:
    """Encode (N, H, W, 3) uint8 frames; "raw" is the RGB bytes as they are."""
    if fmt == "raw":
        return [bytes(img.contiguous().cpu().numpy().tobytes()) for img in images]
    return encoder(images, fmt, quality)


def _resolve(job: RenderJob, *, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)
