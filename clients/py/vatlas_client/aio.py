"""The client, in asyncio: `AsyncClient` and `AsyncSession`. The one implementation: the sync `Client` and
`Session` (client.py) run these on a private event loop thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from PIL import Image
from vatlas_wire.v1 import (
    bundles_pb2,
    bundles_pb2_grpc,
    edits_pb2,
    render_pb2,
    render_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)

from . import _common, ops
from ._session_core import Event, Outcome, SessionCore
from .errors import DeadlineExceeded, Unavailable, VatlasError, from_rpc_error
from .images import ImageSource
from .records import Ack, BundleInfo, ExportProgress, FitProgress, Frame, Participant, Roi, SessionInfo

_RECONNECTABLE = ("UNAVAILABLE", "CANCELLED")
MAX_NOTICES = 32
log = logging.getLogger("vatlas_client")
_CLOSED = object()  # end-of-events marker in a session's event queue


def _document(document: edits_pb2.EditDocument | Iterable[edits_pb2.EditOp] | None) -> edits_pb2.EditDocument:
    if document is None:
        return edits_pb2.EditDocument()
    if isinstance(document, edits_pb2.EditDocument):
        return document
    return edits_pb2.EditDocument(version=1, ops=list(document))


class AsyncClient:
    """A connection to a vatlas server over gRPC: ``async with AsyncClient(address, token=...) as client: ...``.

    Unary calls get a deadline of `timeout` seconds; calls failing with UNAVAILABLE are retried by gRPC itself
    (`retries`, at most 4); session and playback streams reconnect for up to `reconnect_timeout` seconds.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        reconnect_timeout: float = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.retries = retries
        self._metadata = _common.call_metadata(token)
        self._channel = grpc.aio.insecure_channel(address, options=_common.channel_options(retries) + list(options))
        self._bundles = bundles_pb2_grpc.BundlesStub(self._channel)
        self._sessions = sessions_pb2_grpc.SessionsStub(self._channel)
        self._render = render_pb2_grpc.RenderStub(self._channel)
        self._request_ids = itertools.count(1)
        self._live: weakref.WeakSet[AsyncSession] = weakref.WeakSet()

    async def close(self) -> None:
        """Leave every session still open on this client, then close the channel."""
        for session in list(self._live):
            await session.leave(timeout=2.0)
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # ---- bundles ----

    async def list_bundles(self) -> list[BundleInfo]:
        """Every bundle in the server's model folder."""
        reply = await self._unary(self._bundles.ListBundles, bundles_pb2.ListBundlesRequest())
        return [BundleInfo.from_proto(b) for b in reply.bundles]

    async def load_bundle(self, name: str) -> BundleInfo:
        """Load a bundle into server memory (sessions load it on demand too)."""
        reply = await self._unary(self._bundles.LoadBundle, bundles_pb2.LoadBundleRequest(name=name))
        return BundleInfo.from_proto(reply)

    async def bundle_info(self, name: str) -> BundleInfo:
        """Size, frame count, fit metrics ... of one bundle."""
        reply = await self._unary(self._bundles.GetBundleInfo, bundles_pb2.GetBundleInfoRequest(name=name))
        return BundleInfo.from_proto(reply)

    async def upload_video(self, video: str | PathLike, *, chunk_bytes: int = _common.UPLOAD_CHUNK_BYTES) -> str:
        """Upload a local video file in chunks; returns the upload id for `fit`."""
        path = _common.video_path(video)
        try:
            reply = await self._bundles.UploadVideo(_common.upload_chunks(path, chunk_bytes),
                                                    metadata=self._metadata, timeout=max(self.timeout, 600.0))
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if error.code == "INTERNAL":
                # A chunk written after the server refused the call (a bad token) makes grpc.aio report INTERNAL
                # instead of the server's status (grpc/grpc#36066): a plain call says whether the token is why.
                await self.list_bundles()
            raise error from None
        return reply.upload_id

    async def fit_progress(
        self, video: str | PathLike, name: str, roi: _common.RoiLike, *, preset: str = "draft",
        iterations: int = 0, width: int = 0, height: int = 0, detach: bool = False,
    ) -> AsyncIterator[FitProgress]:
        """Upload `video` and fit bundle `name` on the server, yielding progress; the last item has `.bundle`.

        The server stops the fit when this stream ends early, unless `detach` (then the bundle appears in
        `list_bundles` when the fit is done)."""
        request = bundles_pb2.StartFitRequest(name=name, roi_json=_common.roi_json(roi), preset=preset,
                                              iterations=iterations, width=width, height=height, detach=detach)
        request.upload_id = await self.upload_video(video)
        try:
            async for msg in self._bundles.StartFit(request, metadata=self._metadata):
                yield FitProgress.from_proto(msg)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def fit(
        self, video: str | PathLike, name: str, roi: _common.RoiLike, *, preset: str = "draft",
        iterations: int = 0, width: int = 0, height: int = 0, detach: bool = False,
        progress: Callable[[FitProgress], None] | None = None,
    ) -> BundleInfo:
        """Upload and fit; calls `progress` on every update and returns the new bundle's info."""
        last: FitProgress | None = None
        async for last in self.fit_progress(video, name, roi, preset=preset, iterations=iterations, width=width,
                                            height=height, detach=detach):
            if progress is not None:
                progress(last)
        if last is None or not last.done or last.bundle is None:
            raise VatlasError(f"fit of {name!r} ended without a bundle"
                              + (f" (last stage {last.stage!r}: {last.message})" if last else ""))
        return last.bundle

    async def cancel_fit(self, fit_id: str) -> None:
        """Stop a running fit (one started with `detach` too); its partial bundle is removed."""
        await self._unary(self._bundles.CancelFit, bundles_pb2.CancelFitRequest(fit_id=fit_id))

    # ---- sessions ----

    async def create_session(
        self, bundle: str, document: edits_pb2.EditDocument | Iterable[edits_pb2.EditOp] | None = None
    ) -> SessionInfo:
        """A new session on `bundle`, optionally starting from an edit document."""
        request = sessions_pb2.CreateSessionRequest(bundle=bundle, document=_document(document))
        return SessionInfo.from_proto(await self._unary(self._sessions.CreateSession, request))

    async def list_sessions(self) -> list[SessionInfo]:
        """Open sessions on the server."""
        reply = await self._unary(self._sessions.ListSessions, sessions_pb2.ListSessionsRequest())
        return [SessionInfo.from_proto(s) for s in reply.sessions]

    async def join(
        self, session: SessionInfo | str, join_token: str | None = None, *, name: str = "python",
        color: str = "#3b82f6", participant_id: str = "", last_seq: int = 0, resume_key: str = "",
    ) -> AsyncSession:
        """Join a session (a SessionInfo, or its id plus `join_token`) and start receiving its events."""
        if isinstance(session, SessionInfo):
            join_token = join_token or session.join_token
        core: SessionCore[asyncio.Future[Ack]] = SessionCore(
            _common.session_id_of(session), join_token or "", name, color, participant_id)
        core.seq = last_seq  # > 0: the server replays only the ops after it instead of sending the document
        core.resume_key = resume_key  # with participant_id: take that identity (and its undo history) back
        live = AsyncSession(self, core)
        await live._start()
        self._live.add(live)
        return live

    async def open_session(
        self, bundle: str, *, name: str = "python", color: str = "#3b82f6",
        document: edits_pb2.EditDocument | Iterable[edits_pb2.EditOp] | None = None,
    ) -> AsyncSession:
        """Create a session on `bundle` and join it."""
        return await self.join(await self.create_session(bundle, document), name=name, color=color)

    # ---- rendering ----

    async def render_frame(
        self, session: Any, frame: int, *, format: str = "raw", quality: int = 0, scale: float = 1.0,
        region: Sequence[int] | None = None, atlas: bool = False, join_token: str | None = None,
    ) -> Frame:
        """Render one frame (or the edited atlas) as the server encoded it.

        `session` is a session or SessionInfo (their join token is used) or a session id plus `join_token`.
        """
        request = _common.render_request(session, join_token, frame, format, quality, scale, region, atlas,
                                         next(self._request_ids))
        return Frame.from_proto(await self._unary(self._render.RenderFrame, request))

    async def render(self, session: Any, frame: int, **kwargs: Any) -> np.ndarray:
        """One rendered frame as an (H, W, 3) uint8 array (keywords as in `render_frame`)."""
        kwargs.setdefault("format", "raw")
        return (await self.render_frame(session, frame, **kwargs)).to_numpy()

    async def render_image(self, session: Any, frame: int, **kwargs: Any) -> Image.Image:
        """One rendered frame as a PIL image."""
        kwargs.setdefault("format", "png")
        return (await self.render_frame(session, frame, **kwargs)).to_pil()

    async def render_bytes(self, session: Any, frame: int, *, format: str = "jpeg", quality: int = 85,
                           **kwargs: Any) -> bytes:
        """One rendered frame encoded as JPEG / WebP / PNG bytes."""
        return (await self.render_frame(session, frame, format=format, quality=quality, **kwargs)).data

    async def playback(
        self, session: Any, *, start: int = 0, end: int = 0, fps: float = 0.0, loop: bool = False,
        format: str = "jpeg", quality: int = 0, scale: float = 1.0, join_token: str | None = None,
    ) -> AsyncIterator[Frame]:
        """Rendered frames in order at `fps` (0 = the clip's); resumes from the next frame if the link drops."""
        next_start = start
        down_since: float | None = None
        while not (end and next_start >= end):  # after a drop right after the last frame there is nothing left
            request = _common.playback_request(session, join_token, next_start, end, fps, loop, format, quality,
                                               scale)
            stream = self._render.Playback(request, metadata=self._metadata)
            try:
                async for msg in stream:
                    down_since = None
                    next_start = msg.frame + 1 if not loop else msg.frame
                    yield Frame.from_proto(msg)
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                if err.code != "UNAVAILABLE":
                    raise err from None
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.reconnect_timeout:
                    raise err from None
                await asyncio.sleep(0.2)
            finally:
                stream.cancel()

    async def export_events(
        self, session: Any, *, format: str = "mp4", start: int = 0, end: int = 0, crf: int = 0,
        join_token: str | None = None,
    ) -> AsyncIterator[render_pb2.ExportEvent]:
        """The raw Export stream (progress events, then file chunks)."""
        request = _common.export_request(session, join_token, format, start, end, crf)
        try:
            async for event in self._render.Export(request, metadata=self._metadata):
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def export(
        self, session: Any, path: str | PathLike, *, format: str | None = None, start: int = 0, end: int = 0,
        crf: int = 0, progress: Callable[[ExportProgress], None] | None = None, join_token: str | None = None,
    ) -> Path:
        """Render the edited clip on the server and save it to `path` (written atomically): `.mp4` for H.264,
        `.zip` for PNG frames (`format` follows the suffix; any other suffix raises ValueError first)."""
        format = _common.export_format(path, format)
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        received = 0
        done = False
        try:
            with partial.open("wb") as out:
                events = self.export_events(session, format=format, start=start, end=end, crf=crf,
                                            join_token=join_token)
                async for event in events:
                    if event.chunk:
                        out.write(event.chunk)
                        received += len(event.chunk)
                    if progress is not None:
                        progress(ExportProgress(event.stage, event.fraction, received, event.total_bytes))
                    if event.done:
                        done = True
                        break
                await events.aclose()
            if not done:
                raise Unavailable("export stream ended before the file was complete")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target


class AsyncSession:
    """One participant's live connection to a session (the Connect stream), made by `AsyncClient.join`.

    A task reads server events: acknowledgements resolve the op methods (which return the accepted sequence
    number as an `Ack`, or raise `OpRejected`), others' ops and presence go to `events()`. If the connection
    drops, the task rejoins with `last_seq` and re-sends unanswered ops.
    """

    def __init__(self, client: AsyncClient, core: SessionCore[asyncio.Future[Ack]]) -> None:
        self._client = client
        self._core = core
        self._queue: asyncio.Queue[sessions_pb2.ClientMessage | None] | None = None
        self._call: Any = None
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._joined = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()  # leave() sets it, so leaving never waits out a reconnect backoff
        self._closing = False
        self._error: VatlasError | None = None
        self._notices: collections.deque[VatlasError] = collections.deque(maxlen=MAX_NOTICES)
        self._task: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str:
        return self._core.session_id

    @property
    def join_token(self) -> str:
        return self._core.join_token

    @property
    def participant_id(self) -> str:
        """Yours, assigned by the server at the first join and kept across reconnects."""
        return self._core.participant_id

    @property
    def resume_key(self) -> str:
        """The secret that proves `participant_id` is yours: pass both to a later `join` to keep undo history."""
        return self._core.resume_key

    @property
    def seq(self) -> int:
        """Sequence number of the last op seen: the resume point."""
        return self._core.seq

    @property
    def info(self) -> SessionInfo | None:
        return self._core.info

    @property
    def reconnects(self) -> int:
        """How many times the stream was re-established after the first join."""
        return max(0, self._core.joins - 1)

    @property
    def closed(self) -> bool:
        return self._stopped.is_set()

    @property
    def errors(self) -> list[VatlasError]:
        """Recent non-fatal errors the server sent on the stream (e.g. a refused presence update)."""
        return list(self._notices)

    async def roi(self) -> Roi:
        """The editable region of this session's bundle (polygons, and where it shows on each frame)."""
        info = self._core.info
        if info is None:
            raise RuntimeError("the session has not joined yet")
        return (await self._client.bundle_info(info.bundle)).roi

    @property
    def document(self) -> list[edits_pb2.EditOp]:
        """The edit document of the snapshot received at join (one op per live object)."""
        return list(self._core.document)

    @property
    def participants(self) -> dict[str, Participant]:
        """Everyone in the session now (yourself included), by participant id."""
        return dict(self._core.participants)

    async def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._joined.wait(), self._client.timeout + self._client.reconnect_timeout)
        except TimeoutError:
            await self._abort()
            raise DeadlineExceeded(f"no snapshot from session {self.session_id!r}") from None
        if self._error is not None and self._core.joins == 0:
            raise self._error

    async def _abort(self) -> None:
        self._closing = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def leave(self, timeout: float = 5.0) -> None:
        """Leave the session and stop the reader task."""
        self._closing = True
        self._wake.set()
        if self._queue is not None:
            self._queue.put_nowait(sessions_pb2.ClientMessage(leave=sessions_pb2.Leave()))
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            await self._abort()

    close = leave

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    def _open(self) -> Any:
        requests: asyncio.Queue[sessions_pb2.ClientMessage | None] = asyncio.Queue()
        requests.put_nowait(self._core.join_message())
        for msg in self._core.resend_messages():
            requests.put_nowait(msg)
        self._queue = requests

        async def request_stream() -> AsyncIterator[sessions_pb2.ClientMessage]:
            while (msg := await requests.get()) is not None:
                yield msg

        self._call = self._client._sessions.Connect(request_stream(), metadata=self._client._metadata)
        return self._call

    async def _run(self) -> None:
        try:
            await self._read_loop()
        except Exception as exc:  # noqa: BLE001 - a bug here must close the session, not hang its callers
            log.exception("session %s: reader task failed", self.session_id)
            self._finish(VatlasError(f"session reader failed: {exc!r}", code="INTERNAL"))

    async def _read_loop(self) -> None:
        down_since: float | None = None
        backoff = 0.1
        reason: VatlasError | None = None
        while not self._closing:
            try:
                call = self._open()
            except (ValueError, RuntimeError) as exc:  # the client's channel was closed under the session
                self._finish(Unavailable(f"the client was closed: {exc}"))
                return
            try:
                async for event in call:
                    outcome = self._core.handle(event)
                    if outcome.joined:
                        down_since, backoff = None, 0.1
                    self._dispatch(outcome)
                    if outcome.fatal is not None:
                        self._finish(outcome.fatal)
                        return
                reason = Unavailable("the server ended the session stream")
            except grpc.RpcError as exc:
                reason = from_rpc_error(exc)
                fatal = reason.code not in _RECONNECTABLE or (self._core.joins == 0 and reason.code != "UNAVAILABLE")
                if fatal and not self._closing:
                    self._finish(reason)
                    return
            finally:
                if self._queue is not None:
                    self._queue.put_nowait(None)
                self._queue = None
                for waiter, error in self._core.on_disconnect():
                    if not waiter.done():
                        waiter.set_exception(error)
            if self._closing:
                break
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > self._client.reconnect_timeout:
                self._finish(reason)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            backoff = min(backoff * 2, 2.0)
        self._finish(None)

    def _dispatch(self, outcome: Outcome[asyncio.Future[Ack]]) -> None:
        for waiter, seq, op_id in outcome.resolved:
            if not waiter.done():
                waiter.set_result(Ack(seq, op_id, self))
        for waiter, error in outcome.failed:
            if not waiter.done():
                waiter.set_exception(error)
        for notice in outcome.notices:
            log.warning("session %s: server error: %s", self.session_id, notice)
            self._notices.append(notice)
        for event in outcome.events:
            self._events.put_nowait(event)
        if outcome.joined:
            self._joined.set()

    def _finish(self, error: VatlasError | None) -> None:
        self._error = error
        for waiter, exc in self._core.fail_all(error or Unavailable("the session is closed")):
            if not waiter.done():
                waiter.set_exception(exc)
        self._stopped.set()
        self._events.put_nowait(_CLOSED)
        self._joined.set()

    def _check_open(self) -> None:
        if self._stopped.is_set() or self._closing:
            raise self._error or VatlasError("the session is closed", code="FAILED_PRECONDITION")

    async def _wait(self, waiter: asyncio.Future[Ack], timeout: float | None, what: str) -> Ack:
        try:
            return await asyncio.wait_for(asyncio.shield(waiter),
                                          timeout if timeout is not None else self._client.timeout)
        except TimeoutError:
            self._core.drop_waiter(waiter)
            raise DeadlineExceeded(f"no answer to {what} within the deadline") from None

    async def send(self, op: edits_pb2.EditOp, *, timeout: float | None = None) -> Ack:
        """Send an op built with `vatlas_client.ops`; returns its accepted seq or raises OpRejected."""
        self._check_open()
        waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        msg = self._core.add_op(op, waiter)
        if self._queue is not None:
            self._queue.put_nowait(msg)
        return await self._wait(waiter, timeout, f"op {op.id!r}")

    @ops._with_signature_of(ops.stroke)
    async def stroke(self, points: Iterable[ops.Point], *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """Paint (or erase) along a polyline; keywords as in `ops.stroke`."""
        return await self.send(ops.stroke(points, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.texture)
    async def texture(self, image: ImageSource, *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """Paste an image (path, bytes, PIL image or numpy array); keywords as in `ops.texture`."""
        return await self.send(ops.texture(image, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.adjustment)
    async def adjustment(self, points: Iterable[ops.Point], *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """A colour adjustment region; keywords as in `ops.adjustment`."""
        return await self.send(ops.adjustment(points, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.sticker)
    async def sticker(self, image: ImageSource, *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """A tracked rigid sticker; keywords as in `ops.sticker`."""
        return await self.send(ops.sticker(image, **kwargs), timeout=timeout)

    async def update(self, target: str, *, timeout: float | None = None, **properties: Any) -> Ack:
        """Change properties of an existing object."""
        return await self.send(ops.update(target, **properties), timeout=timeout)

    async def delete(self, target: str, *, timeout: float | None = None) -> Ack:
        """Remove an object (undo or `restore` brings it back)."""
        return await self.send(ops.delete(target), timeout=timeout)

    async def restore(self, target: str, *, timeout: float | None = None) -> Ack:
        """Bring back a deleted object."""
        return await self.send(ops.restore(target), timeout=timeout)

    async def set_visible(self, target: str, visible: bool, *, timeout: float | None = None) -> Ack:
        """Show or hide an object without deleting it."""
        return await self.send(ops.set_visible(target, visible), timeout=timeout)

    async def _control(self, kind: str, timeout: float | None) -> Ack:
        self._check_open()
        if self._queue is None:
            raise Unavailable(f"not connected: {kind} cannot be sent now")
        waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(self._core.add_control(kind, waiter))
        ack = await self._wait(waiter, timeout, kind)
        return Ack(int(ack), ack.op_id)  # the inverse op is the server's: no handle on an object

    async def undo(self, *, timeout: float | None = None) -> Ack:
        """Undo your last op (per-user undo); returns the seq of the inverse op."""
        return await self._control("undo", timeout)

    async def redo(self, *, timeout: float | None = None) -> Ack:
        """Redo your last undone op."""
        return await self._control("redo", timeout)

    async def set_presence(
        self, *, cursor: ops.Point | None = None, frame: int = 0, tool: str = "", name: str = "", color: str = ""
    ) -> None:
        """Tell others where you are (not acknowledged, not logged)."""
        update = sessions_pb2.PresenceUpdate(frame=frame, tool=tool, name=name, color=color)
        if cursor is not None:
            update.cursor.CopyFrom(edits_pb2.Vec2(x=float(cursor[0]), y=float(cursor[1])))
        self._check_open()
        if self._queue is not None:
            self._queue.put_nowait(sessions_pb2.ClientMessage(presence=update))

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next op or presence event from others; raises TimeoutError, or the error that closed the session."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no session event within {timeout} s") from None
        if event is _CLOSED:
            self._events.put_nowait(_CLOSED)
            if self._error is not None:
                raise self._error
            raise VatlasError("the session is closed", code="FAILED_PRECONDITION")
        return event

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Others' ops and presence as they arrive; ends when the session closes or after `timeout` idle seconds."""
        while True:
            try:
                yield await self.next_event(timeout)
            except TimeoutError:
                return
            except VatlasError:
                if self._error is not None:
                    raise
                return

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """Consume events until one matches `predicate`; raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching session event within {timeout} s")
            event = await self.next_event(left)
            if predicate(event):
                return event

    async def render(self, frame: int, **kwargs: Any) -> np.ndarray:
        """This session's frame `frame` as an (H, W, 3) uint8 array."""
        return await self._client.render(self, frame, **kwargs)

    async def render_frame(self, frame: int, **kwargs: Any) -> Frame:
        """This session's frame `frame` as the server encoded it (keywords as in `AsyncClient.render_frame`)."""
        return await self._client.render_frame(self, frame, **kwargs)

    async def export(self, path: str | PathLike, **kwargs: Any) -> Path:
        """Export this session's edited clip to a local file."""
        return await self._client.export(self, path, **kwargs)

