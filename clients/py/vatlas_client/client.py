"""Synchronous client: `Client` for the unary/streaming calls, `Session` for the live edit stream."""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from os import PathLike
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from vatlas.v1 import (
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
from .records import (
    Ack,
    BundleInfo,
    ExportProgress,
    FitProgress,
    Frame,
    Participant,
    Roi,
    SessionInfo,
)

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


class Client:
    """A connection to a vatlas server over gRPC.

    ``Client("localhost:50051", token="...")``; use as a context manager or call `close()`. Unary calls get a
    deadline of `timeout` seconds; calls failing with UNAVAILABLE are retried by gRPC itself (`retries`, at
    most 4); session and playback streams reconnect for up to `reconnect_timeout` seconds.
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
        self._channel = grpc.insecure_channel(address, options=_common.channel_options(retries) + list(options))
        self._bundles = bundles_pb2_grpc.BundlesStub(self._channel)
        self._sessions = sessions_pb2_grpc.SessionsStub(self._channel)
        self._render = render_pb2_grpc.RenderStub(self._channel)
        self._request_ids = itertools.count(1)
        self._live: weakref.WeakSet[Session] = weakref.WeakSet()

    def close(self) -> None:
        """Leave every session still open on this client, then close the channel."""
        for session in list(self._live):
            session.leave(timeout=2.0)
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # ---- bundles ----

    def list_bundles(self) -> list[BundleInfo]:
        """Every bundle in the server's model folder."""
        reply = self._unary(self._bundles.ListBundles, bundles_pb2.ListBundlesRequest())
        return [BundleInfo.from_proto(b) for b in reply.bundles]

    def load_bundle(self, name: str) -> BundleInfo:
        """Load a bundle into server memory (sessions load it on demand too)."""
        return BundleInfo.from_proto(self._unary(self._bundles.LoadBundle, bundles_pb2.LoadBundleRequest(name=name)))

    def bundle_info(self, name: str) -> BundleInfo:
        """Size, frame count, fit metrics ... of one bundle."""
        reply = self._unary(self._bundles.GetBundleInfo, bundles_pb2.GetBundleInfoRequest(name=name))
        return BundleInfo.from_proto(reply)

    def upload_video(self, video: str | PathLike, *, chunk_bytes: int = _common.UPLOAD_CHUNK_BYTES) -> str:
        """Upload a local video file in chunks; returns the upload id for `fit`."""
        path = _common.video_path(video)
        try:
            reply = self._bundles.UploadVideo(_common.upload_chunks(path, chunk_bytes), metadata=self._metadata,
                                              timeout=max(self.timeout, 600.0))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return reply.upload_id

    def fit_progress(
        self, video: str | PathLike, name: str, roi: _common.RoiLike, *, preset: str = "draft",
        iterations: int = 0, width: int = 0, height: int = 0, detach: bool = False,
    ) -> Iterator[FitProgress]:
        """Upload `video` and fit bundle `name` on the server, yielding progress; the last item has `.bundle`.

        The server stops the fit when this stream ends early, unless `detach` (then the bundle appears in
        `list_bundles` when the fit is done)."""
        request = bundles_pb2.StartFitRequest(name=name, roi_json=_common.roi_json(roi), preset=preset,
                                              iterations=iterations, width=width, height=height, detach=detach)
        request.upload_id = self.upload_video(video)
        try:
            for msg in self._bundles.StartFit(request, metadata=self._metadata):
                yield FitProgress.from_proto(msg)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def fit(
        self, video: str | PathLike, name: str, roi: _common.RoiLike, *, preset: str = "draft",
        iterations: int = 0, width: int = 0, height: int = 0, detach: bool = False,
        progress: Callable[[FitProgress], None] | None = None,
    ) -> BundleInfo:
        """Upload and fit; calls `progress` on every update and returns the new bundle's info."""
        last: FitProgress | None = None
        for last in self.fit_progress(video, name, roi, preset=preset, iterations=iterations, width=width,
                                      height=height, detach=detach):
            if progress is not None:
                progress(last)
        if last is None or not last.done or last.bundle is None:
            raise VatlasError(f"fit of {name!r} ended without a bundle"
                              + (f" (last stage {last.stage!r}: {last.message})" if last else ""))
        return last.bundle

    def cancel_fit(self, fit_id: str) -> None:
        """Stop a running fit (one started with `detach` too); its partial bundle is removed."""
        self._unary(self._bundles.CancelFit, bundles_pb2.CancelFitRequest(fit_id=fit_id))

    # ---- sessions ----

    def create_session(
        self, bundle: str, document: edits_pb2.EditDocument | Iterable[edits_pb2.EditOp] | None = None
    ) -> SessionInfo:
        """A new session on `bundle`, optionally starting from an edit document."""
        request = sessions_pb2.CreateSessionRequest(bundle=bundle, document=_document(document))
        return SessionInfo.from_proto(self._unary(self._sessions.CreateSession, request))

    def list_sessions(self) -> list[SessionInfo]:
        """Open sessions on the server."""
        reply = self._unary(self._sessions.ListSessions, sessions_pb2.ListSessionsRequest())
        return [SessionInfo.from_proto(s) for s in reply.sessions]

    def join(
        self, session: SessionInfo | str, join_token: str | None = None, *, name: str = "python",
        color: str = "#3b82f6", participant_id: str = "", last_seq: int = 0, resume_key: str = "",
    ) -> Session:
        """Join a session (a SessionInfo, or its id plus `join_token`) and start receiving its events."""
        if isinstance(session, SessionInfo):
            join_token = join_token or session.join_token
        session_id = _common.session_id_of(session)
        core: SessionCore[Future[int]] = SessionCore(session_id, join_token or "", name, color, participant_id)
        core.seq = last_seq  # > 0: the server replays only the ops after it instead of sending the document
        core.resume_key = resume_key  # with participant_id: take that identity (and its undo history) back
        live = Session(self, core)
        live._start()
        self._live.add(live)
        return live

    def open_session(
        self, bundle: str, *, name: str = "python", color: str = "#3b82f6",
        document: edits_pb2.EditDocument | Iterable[edits_pb2.EditOp] | None = None,
    ) -> Session:
        """Create a session on `bundle` and join it."""
        return self.join(self.create_session(bundle, document), name=name, color=color)

    # ---- rendering ----

    def render_frame(
        self, session: Any, frame: int, *, format: str = "raw", quality: int = 0, scale: float = 1.0,
        region: Sequence[int] | None = None, atlas: bool = False, join_token: str | None = None,
    ) -> Frame:
        """Render one frame (or the edited atlas) as the server encoded it.

        `session` is a Session or SessionInfo (their join token is used) or a session id plus `join_token`.
        """
        request = _common.render_request(session, join_token, frame, format, quality, scale, region, atlas,
                                         next(self._request_ids))
        return Frame.from_proto(self._unary(self._render.RenderFrame, request))

    def render(self, session: Any, frame: int, **kwargs: Any) -> np.ndarray:
        """One rendered frame as an (H, W, 3) uint8 array (keywords as in `render_frame`)."""
        kwargs.setdefault("format", "raw")
        return self.render_frame(session, frame, **kwargs).to_numpy()

    def render_image(self, session: Any, frame: int, **kwargs: Any) -> Image.Image:
        """One rendered frame as a PIL image."""
        kwargs.setdefault("format", "png")
        return self.render_frame(session, frame, **kwargs).to_pil()

    def render_bytes(self, session: Any, frame: int, *, format: str = "jpeg", quality: int = 85,
                     **kwargs: Any) -> bytes:
        """One rendered frame encoded as JPEG / WebP / PNG bytes."""
        return self.render_frame(session, frame, format=format, quality=quality, **kwargs).data

    def playback(
        self, session: Any, *, start: int = 0, end: int = 0, fps: float = 0.0, loop: bool = False,
        format: str = "jpeg", quality: int = 0, scale: float = 1.0, join_token: str | None = None,
    ) -> Iterator[Frame]:
        """Rendered frames in order at `fps` (0 = the clip's); resumes from the next frame if the link drops."""
        next_start = start
        down_since: float | None = None
        while not (end and next_start >= end):  # after a drop right after the last frame there is nothing left
            request = _common.playback_request(session, join_token, next_start, end, fps, loop, format, quality,
                                               scale)
            stream = self._render.Playback(request, metadata=self._metadata)
            try:
                for msg in stream:
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
                time.sleep(0.2)
            finally:
                stream.cancel()

    def export_events(
        self, session: Any, *, format: str = "mp4", start: int = 0, end: int = 0, crf: int = 0,
        join_token: str | None = None,
    ) -> Iterator[render_pb2.ExportEvent]:
        """The raw Export stream (progress events, then file chunks)."""
        request = _common.export_request(session, join_token, format, start, end, crf)
        try:
            yield from self._render.Export(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def export(
        self, session: Any, path: str | PathLike, *, format: str | None = None, start: int = 0, end: int = 0,
        crf: int = 0, progress: Callable[[ExportProgress], None] | None = None, join_token: str | None = None,
    ) -> Path:
        """Render the edited clip on the server and save it to `path` (written atomically): `.mp4` for H.264,
        `.zip` for PNG frames (`format` follows the suffix; any other suffix raises ValueError first)."""
        format = _common.export_format(path, format)
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        received = 0
        try:
            with partial.open("wb") as out:
                done = False
                events = self.export_events(session, format=format, start=start, end=end, crf=crf,
                                            join_token=join_token)
                for event in events:
                    if event.chunk:
                        out.write(event.chunk)
                        received += len(event.chunk)
                    if progress is not None:
                        progress(ExportProgress(event.stage, event.fraction, received, event.total_bytes))
                    if event.done:
                        done = True
                        break
                events.close()
            if not done:
                raise Unavailable("export stream ended before the file was complete")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target


class Session:
    """One participant's live connection to a session (the Connect stream), made by `Client.join`.

    A background thread reads server events: acknowledgements resolve the op methods (which return the
    accepted sequence number as an `Ack`, or raise `OpRejected`), others' ops and presence go to `events()`.
    If the connection drops, the thread rejoins with `last_seq` and re-sends unanswered ops.
    """

    def __init__(self, client: Client, core: SessionCore[Future[int]]) -> None:
        self._client = client
        self._core = core
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[sessions_pb2.ClientMessage | None] | None = None
        self._call: Any = None
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._joined = threading.Event()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._closing = False
        self._error: VatlasError | None = None
        self._notices: collections.deque[VatlasError] = collections.deque(maxlen=MAX_NOTICES)
        self._thread = threading.Thread(target=self._run, name=f"vatlas-session-{core.session_id}", daemon=True)

    # ---- state ----

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

    def roi(self) -> Roi:
        """The editable region of this session's bundle (polygons, and where it shows on each frame)."""
        info = self._core.info
        if info is None:
            raise RuntimeError("the session has not joined yet")
        return self._client.bundle_info(info.bundle).roi

    @property
    def document(self) -> list[edits_pb2.EditOp]:
        """The edit document of the snapshot received at join (one op per live object)."""
        return list(self._core.document)

    @property
    def participants(self) -> dict[str, Participant]:
        """Everyone in the session now (yourself included), by participant id."""
        with self._lock:
            return dict(self._core.participants)

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

    # ---- lifecycle ----

    def _start(self) -> None:
        self._thread.start()
        if not self._joined.wait(self._client.timeout + self._client.reconnect_timeout):
            self._closing = True
            self._cancel_call()
            raise DeadlineExceeded(f"no snapshot from session {self.session_id!r}")
        if self._error is not None and self._core.joins == 0:
            raise self._error

    def leave(self, timeout: float = 5.0) -> None:
        """Leave the session and stop the reader thread."""
        with self._lock:
            self._closing = True
            self._wake.set()
            if self._queue is not None:
                self._queue.put(sessions_pb2.ClientMessage(leave=sessions_pb2.Leave()))
                self._queue.put(None)
        if not self._stopped.wait(timeout):
            self._cancel_call()
        self._thread.join(timeout)

    close = leave

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    def _cancel_call(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def _open(self) -> Any:
        requests: queue.SimpleQueue[sessions_pb2.ClientMessage | None] = queue.SimpleQueue()
        with self._lock:
            requests.put(self._core.join_message())
            for msg in self._core.resend_messages():
                requests.put(msg)
            self._queue = requests

        def request_stream() -> Iterator[sessions_pb2.ClientMessage]:
            while (msg := requests.get()) is not None:
                yield msg

        self._call = self._client._sessions.Connect(request_stream(), metadata=self._client._metadata)
        return self._call

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as exc:  # noqa: BLE001 - a bug here must close the session, not hang its callers
            log.exception("session %s: reader thread failed", self.session_id)
            self._finish(VatlasError(f"session reader failed: {exc!r}", code="INTERNAL"))

    def _read_loop(self) -> None:
        down_since: float | None = None
        backoff = 0.1
        reason: VatlasError | None = None
        while not self._closing:
            try:
                call = self._open()
            except ValueError as exc:  # the client's channel was closed under the session
                self._finish(Unavailable(f"the client was closed: {exc}"))
                return
            try:
                for event in call:
                    with self._lock:
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
                with self._lock:
                    if self._queue is not None:
                        self._queue.put(None)  # let gRPC's request-consuming thread finish
                    self._queue = None
                    failed = self._core.on_disconnect()
                for waiter, error in failed:
                    if not waiter.done():
                        waiter.set_exception(error)
            if self._closing:
                break
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > self._client.reconnect_timeout:
                self._finish(reason)
                return
            self._wake.wait(backoff)  # leave() sets it, so leaving never waits out a backoff
            backoff = min(backoff * 2, 2.0)
        self._finish(None)

    def _dispatch(self, outcome: Outcome[Future[int]]) -> None:
        for waiter, seq, op_id in outcome.resolved:
            if not waiter.done():
                waiter.set_result(Ack(seq, op_id))
        for waiter, error in outcome.failed:
            if not waiter.done():
                waiter.set_exception(error)
        for notice in outcome.notices:
            log.warning("session %s: server error: %s", self.session_id, notice)
            self._notices.append(notice)
        for event in outcome.events:
            self._events.put(event)
        if outcome.joined:
            self._joined.set()

    def _finish(self, error: VatlasError | None) -> None:
        with self._lock:
            self._error = error
            failed = self._core.fail_all(error or Unavailable("the session is closed"))
        for waiter, exc in failed:
            if not waiter.done():
                waiter.set_exception(exc)
        self._stopped.set()
        self._events.put(_CLOSED)
        self._joined.set()

    # ---- ops ----

    def _wait(self, waiter: Future[int], timeout: float | None, what: str) -> Ack:
        try:
            return waiter.result(timeout if timeout is not None else self._client.timeout)  # type: ignore[return-value]
        except FutureTimeout:
            with self._lock:
                self._core.drop_waiter(waiter)
            raise DeadlineExceeded(f"no answer to {what} within the deadline") from None

    def _check_open(self) -> None:
        if self._stopped.is_set() or self._closing:
            raise self._error or VatlasError("the session is closed", code="FAILED_PRECONDITION")

    def send(self, op: edits_pb2.EditOp, *, timeout: float | None = None) -> Ack:
        """Send an op built with `vatlas_client.ops`; returns its accepted seq or raises OpRejected."""
        waiter: Future[int] = Future()
        with self._lock:
            self._check_open()
            msg = self._core.add_op(op, waiter)
            if self._queue is not None:
                self._queue.put(msg)
        return self._wait(waiter, timeout, f"op {op.id!r}")

    @ops._with_signature_of(ops.stroke)
    def stroke(self, points: Iterable[ops.Point], *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """Paint (or erase) along a polyline; keywords as in `ops.stroke`."""
        return self.send(ops.stroke(points, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.texture)
    def texture(self, image: ImageSource, *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """Paste an image (path, bytes, PIL image or numpy array); keywords as in `ops.texture`."""
        return self.send(ops.texture(image, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.adjustment)
    def adjustment(self, points: Iterable[ops.Point], *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """A colour adjustment region; keywords as in `ops.adjustment`."""
        return self.send(ops.adjustment(points, **kwargs), timeout=timeout)

    @ops._with_signature_of(ops.sticker)
    def sticker(self, image: ImageSource, *, timeout: float | None = None, **kwargs: Any) -> Ack:
        """A tracked rigid sticker; keywords as in `ops.sticker`."""
        return self.send(ops.sticker(image, **kwargs), timeout=timeout)

    def update(self, target: str, *, timeout: float | None = None, **properties: Any) -> Ack:
        """Change properties of an existing object."""
        return self.send(ops.update(target, **properties), timeout=timeout)

    def delete(self, target: str, *, timeout: float | None = None) -> Ack:
        return self.send(ops.delete(target), timeout=timeout)

    def restore(self, target: str, *, timeout: float | None = None) -> Ack:
        return self.send(ops.restore(target), timeout=timeout)

    def set_visible(self, target: str, visible: bool, *, timeout: float | None = None) -> Ack:
        return self.send(ops.set_visible(target, visible), timeout=timeout)

    def _control(self, kind: str, timeout: float | None) -> Ack:
        waiter: Future[int] = Future()
        with self._lock:
            self._check_open()
            if self._queue is None:
                raise Unavailable(f"not connected: {kind} cannot be sent now")
            self._queue.put(self._core.add_control(kind, waiter))
        return self._wait(waiter, timeout, kind)

    def undo(self, *, timeout: float | None = None) -> Ack:
        """Undo your last op (per-user undo); returns the seq of the inverse op."""
        return self._control("undo", timeout)

    def redo(self, *, timeout: float | None = None) -> Ack:
        """Redo your last undone op."""
        return self._control("redo", timeout)

    def set_presence(
        self, *, cursor: ops.Point | None = None, frame: int = 0, tool: str = "", name: str = "", color: str = ""
    ) -> None:
        """Tell others where you are (not acknowledged, not logged)."""
        update = sessions_pb2.PresenceUpdate(frame=frame, tool=tool, name=name, color=color)
        if cursor is not None:
            update.cursor.CopyFrom(edits_pb2.Vec2(x=float(cursor[0]), y=float(cursor[1])))
        with self._lock:
            self._check_open()
            if self._queue is not None:
                self._queue.put(sessions_pb2.ClientMessage(presence=update))

    # ---- events ----

    def next_event(self, timeout: float | None = None) -> Event:
        """The next op or presence event from others; raises TimeoutError, or the error that closed the session."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no session event within {timeout} s") from None
        if event is _CLOSED:
            self._events.put(_CLOSED)  # keep later calls ending too
            if self._error is not None:
                raise self._error
            raise VatlasError("the session is closed", code="FAILED_PRECONDITION")
        return event

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Others' ops and presence as they arrive; ends when the session closes or after `timeout` idle seconds."""
        while True:
            try:
                yield self.next_event(timeout)
            except TimeoutError:
                return
            except VatlasError:
                if self._error is not None:
                    raise
                return

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """Consume events until one matches `predicate`; raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching session event within {timeout} s")
            event = self.next_event(left)
            if predicate(event):
                return event

    # ---- rendering shortcuts ----

    def render(self, frame: int, **kwargs: Any) -> np.ndarray:
        """This session's frame `frame` as an (H, W, 3) uint8 array."""
        return self._client.render(self, frame, **kwargs)

    def render_frame(self, frame: int, **kwargs: Any) -> Frame:
        return self._client.render_frame(self, frame, **kwargs)

    def export(self, path: str | PathLike, **kwargs: Any) -> Path:
        """Export this session's edited clip to a local file."""
        return self._client.export(self, path, **kwargs)
