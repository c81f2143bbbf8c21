"""Viewing a session: single frames coalesced per client, paced playback, and the render rate buckets (per
connection and per identity). The core owns one `Viewing`; the doors call it for RenderFrame and Playback."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vatlas.server.edits.region import mask_preview, mask_regions, visible_boxes
from vatlas.server.errors import CoreError
from vatlas.server.session.limits import TokenBucket, take_all
from vatlas.server.session.render import (
    RenderJob,
    check_format,
    check_mask_side,
    check_render_request,
)
from vatlas_wire.v1 import render_pb2

if TYPE_CHECKING:
    from vatlas.server.session.core import ServerCore
    from vatlas.server.session.session import Session

MAX_RATE_KEYS = 4096  # rate buckets kept per table (gRPC says nothing when a connection goes away)


@dataclass(frozen=True)
class Viewer:
    """Who a render is for: its connection (rate bucket and GPU share) and its identity (the client's address
    and credential: one bucket over all of its connections). Doors build these; clients cannot pick them."""

    connection: Any
    identity: Any = None


def roi_mask(bundle: Any, frame: int, side: int) -> render_pb2.RoiMask:
    """RenderedFrame.roi_mask: the frame's soft mask on a grid of at most `side` cells a side, and its box."""
    width, height, data = mask_preview(bundle, frame, side)
    x, y, w, h = (int(v) for v in visible_boxes(bundle)[frame])
    return render_pb2.RoiMask(width=width, height=height, data=data,
                              visible=render_pb2.Region(x=x, y=y, width=w, height=h),
                              regions=mask_regions(bundle, frame, width, height, data))


class Viewing:
    """Renders and playback of the core's sessions, rate-limited per viewer."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self._connection_buckets: dict[Any, TokenBucket] = {}  # per connection
        self._identity_buckets: dict[Any, TokenBucket] = {}  # per identity

    def _buckets(self, viewer: Viewer) -> list[TokenBucket]:
        """The connection's and the identity's render buckets (made on first use; the oldest forgotten)."""
        out = []
        for table, key, rate, burst in (
                (self._connection_buckets, viewer.connection, self.core.limits.renders_per_second, self.core.limits.renders_burst),
                (self._identity_buckets, viewer.identity, self.core.limits.identity_renders_per_second,
                 self.core.limits.identity_renders_burst)):
            if key is None:
                continue
            bucket = table.get(key)
            if bucket is None:
                if len(table) >= MAX_RATE_KEYS:
                    table.pop(next(iter(table)))
                bucket = table[key] = TokenBucket(rate, burst)
            out.append(bucket)
        return out

    def _take_render_token(self, viewer: Viewer) -> None:
        if not take_all(self._buckets(viewer)):
            raise CoreError("RESOURCE_EXHAUSTED", "too many render requests: slow down")

    def forget_client(self, connection: Any) -> None:
        """A connection went away: drop its rate bucket and any waiting render."""
        self._connection_buckets.pop(connection, None)
        if self.core.worker is not None:
            self.core.worker.cancel(connection)
            self.core.worker.cancel((connection, "playback"))

    async def render(self, client_key: Any, request: render_pb2.RenderRequest,
                     authorized: frozenset[str] | set[str] = frozenset(),
                     viewer: Viewer | None = None) -> render_pb2.RenderedFrame:
        """One frame (or the atlas), coalesced per client: a newer request aborts a waiting older one.

        `viewer` names the rate buckets and the GPU share (default: the client key is the connection).
        """
        viewer = viewer or Viewer(client_key)
        session = self.core.viewable(request.session_id, request.join_token, authorized)
        self._take_render_token(viewer)
        await self.core.ensure_engine(session)
        bundle = session.bundle
        params = check_render_request(request, bundle.num_frames, bundle.width, bundle.height, bundle.atlas_size,
                                      self.core.limits.min_scale)
        frame = await self._submit_render(client_key, session, params, request.request_id, viewer)
        if request.roi_mask_side and not params.atlas:
            frame.roi_mask.CopyFrom(roi_mask(bundle, frame.frame, request.roi_mask_side))
        return frame

    async def _submit_render(self, key: Any, session: Session, params: Any, request_id: int,
                             viewer: Viewer, interactive: bool = True) -> Any:
        if self.core.worker is None or self.core.closing:
            raise CoreError("UNAVAILABLE", "the server is not rendering")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.core.worker.submit(key, RenderJob(session, params, request_id, future, loop, engine=session.engine,
                                          owner=viewer.connection, interactive=interactive))
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()

    async def playback(self, client_key: Any, request: render_pb2.PlaybackRequest,
                       authorized: frozenset[str] | set[str] = frozenset(),
                       viewer: Viewer | None = None) -> AsyncIterator[render_pb2.RenderedFrame]:
        """Frames at the requested fps, paced by the wall clock: a slow reader skips frames, nothing queues.

        One render is in flight and at most one finished frame waits for the reader; a newer frame replaces
        a waiting one. Every frame takes a render token (L2): over its rate a playback skips frames.
        """
        viewer = viewer or Viewer(client_key)
        session = self.core.viewable(request.session_id, request.join_token, authorized)
        self._take_render_token(viewer)
        await self.core.ensure_engine(session)
        bundle = session.bundle
        fmt, quality, scale = check_format(request.format, request.quality, request.scale, self.core.limits.min_scale)
        check_mask_side(request.roi_mask_side)
        fps = request.fps or bundle.fps
        if not math.isfinite(fps) or not 0 < fps <= self.core.limits.max_fps:
            raise CoreError("INVALID_ARGUMENT", f"fps {fps:g} is out of range (0, {self.core.limits.max_fps:g}]")
        end = request.end_frame or bundle.num_frames
        if not request.start_frame < end <= bundle.num_frames:
            raise CoreError("INVALID_ARGUMENT", f"frame range [{request.start_frame}, {end}) is not inside the clip "
                                                f"(0..{bundle.num_frames})")
        return self._playback_frames(client_key, session, request, fmt, quality, scale, fps, end, viewer)

    async def _playback_frames(self, client_key: Any, session: Session, request: render_pb2.PlaybackRequest,
                               fmt: str, quality: int, scale: float, fps: float, end: int,
                               viewer: Viewer) -> AsyncIterator[render_pb2.RenderedFrame]:
        from vatlas.server.session.render import RenderParams

        loop = asyncio.get_running_loop()
        count = end - request.start_frame
        key = (client_key, "playback")
        ready = asyncio.Event()
        state: dict[str, Any] = {"frame": None, "done": False, "error": None}

        buckets = self._buckets(viewer)

        async def produce() -> None:
            t0 = loop.time()
            n = 0
            first = True  # playback() already took the first frame's token
            try:
                while True:
                    if not first:
                        while not take_all(buckets):  # over the rate: wait, and the clock skips frames
                            await asyncio.sleep(max(b.wait_time() for b in buckets))
                    first = False
                    i = int((loop.time() - t0) * fps)
                    if i >= count and not request.loop:
                        break
                    session.touch()
                    params = RenderParams(request.start_frame + i % count, fmt, quality, scale, None)
                    try:
                        frame = await self._submit_render(key, session, params, n, viewer, interactive=False)
                    except CoreError as exc:
                        if exc.code != "ABORTED":
                            raise
                        continue
                    n += 1
                    if request.roi_mask_side:
                        frame.roi_mask.CopyFrom(roi_mask(session.bundle, frame.frame, request.roi_mask_side))
                    state["frame"] = frame  # replaces a frame the reader has not taken: dropped
                    ready.set()
                    await asyncio.sleep(max(0.0, t0 + (i + 1) / fps - loop.time()))
            except CoreError as exc:
                state["error"] = exc
            finally:
                state["done"] = True
                ready.set()

        producer = asyncio.create_task(produce())
        try:
            while True:
                while state["frame"] is None and not state["done"]:
                    ready.clear()
                    await ready.wait()
                frame, state["frame"] = state["frame"], None
                if frame is not None:
                    yield frame
                    continue
                if state["error"] is not None:
                    raise state["error"]
                return
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            if self.core.worker is not None:
                self.core.worker.cancel(key)
