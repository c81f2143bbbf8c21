"""The WebSocket front door: the same vatlas.v1 messages as gRPC, multiplexed on one connection.

Endpoint and framing
    Connect to ``ws://HOST:PORT/ws`` (the HTTP port; the same port serves the web client at ``/``).
    Every WebSocket message is a *binary* frame holding msgpack of one ``vatlas.v1.WsRequest`` (client ->
    server) or ``vatlas.v1.WsResponse`` (server -> client) in the mirror form of ``server/doors/mirror.py``:
    maps keyed by proto field names, ``Vec2`` as ``[x, y]``, bytes as bin, a oneof as the single key of the
    member that is set, unset fields left out, enums as integers. Text frames are refused with an error.
    Frames larger than the server's max message size (64 MiB by default) close the connection (code 1009).
    A connection's frames that were read but not yet handled may hold at most ``ws_inbound_bytes`` (96 MiB):
    beyond that the server stops reading the socket until they are handled (backpressure, H3), so a client
    sending faster than its ops are committed is slowed down by TCP, not queued in server memory.

Hello
    The first request must be ``{"request_id": n, "hello": {"protocol_version": 1, "token": T}}``
    (``token`` is the server's token, empty when it has none, or one session's join token: such a connection
    may only join, render, play back and export that session and read its bundle's info; anything else is
    PERMISSION_DENIED. Share links carry only the join token.) The answer is
    ``{"request_id": n, "welcome": {"protocol_version": 1, "server_version": "..."}}``. A wrong protocol version
    is answered with ``error`` code FAILED_PRECONDITION, a wrong token with UNAUTHENTICATED, anything other
    than hello first with FAILED_PRECONDITION; then the server closes the connection (code 1008).

Request ids
    ``request_id`` is chosen by the client and echoed on every response that belongs to the request:
    ``list_bundles`` -> ``bundles``; ``load_bundle`` / ``bundle_info`` -> ``bundle_info``;
    ``create_session`` -> ``session_info`` (with the join token); ``list_sessions`` -> ``sessions``;
    ``render`` -> one ``frame``; ``playback`` -> a stream of ``frame`` until it ends, is replaced by a newer
    ``playback`` or stopped by ``stop_playback`` (one playback per connection); ``export`` -> ``export``
    events, the file in chunks, the last with ``done``.

Uploads and fits
    ``upload`` carries an ``UploadChunk``; the chunks of one file share one request_id (the first names the
    file and may announce ``total_bytes``, the last has ``last``). Each chunk is answered with
    ``upload_progress`` (bytes written so far) once written, the last with ``upload`` (the UploadResult). The
    limits and quotas are the gRPC upload's (one core function); a refusal is one ``error`` and the upload's
    later chunks are dropped without answers; a chunk that does not come within ``upload_idle_seconds``
    ends it with DEADLINE_EXCEEDED. At most MAX_UPLOADS uploads stream at once on a connection.
    ``upload_frame`` -> ``upload_frame`` (a JPEG of one decoded frame, the video's size and frame count).
    ``start_fit`` -> ``fit`` events (FitProgress: fit_id, stage, stage_number/stage_count, overall fraction,
    eta_seconds, readout, a ``preview`` JPEG every few seconds), the last with ``done`` and the bundle, or an
    ``error``. Without ``detach`` the fit stops when the connection closes. ``list_fits`` -> ``fits``;
    ``attach_fit`` -> ``fit`` events of a running or recently ended fit (its latest state first);
    ``cancel_fit`` -> ``fit_info`` (the fit stopped, its partial bundle removed; its followers get CANCELLED).
    ``session`` carries a ``ClientMessage``: first ``join`` (one session per connection), then ``op``,
    ``undo``, ``redo``, ``presence``, ``leave``. All session events (snapshot, accepted, rejected, applied,
    presence, error) come back as ``event`` with the request_id of the ``join``. Every op gets exactly one
    ``accepted`` (with its sequence number) or ``rejected`` (with an Error), keyed by op id; every undo/redo
    one ``accepted`` (op id ``undo:...``/``redo:...``) or ``rejected`` with op id "". Every accepted op also
    reaches every participant as ``applied`` in sequence order. Rejoin with ``last_seq`` to resume after a
    disconnect: a ``snapshot`` without ``document``, then ``applied`` for each later op.

Rendering and access
    ``render``/``playback``/``export`` need the session's ``join_token`` unless this connection created or
    joined the session. Renders are coalesced per connection: a render still waiting when a newer one
    arrives is answered with ``error`` code ABORTED (latest request wins). Playback paces frames by the wall
    clock and skips frames a slow reader cannot take; it never queues them.

Errors
    ``{"request_id": n, "error": {"code": "INVALID_ARGUMENT", "message": "...", "op_id": ""}}`` where
    ``code`` is a gRPC status name (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED,
    RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, ...). A frame that cannot be decoded is answered with
    ``request_id`` 0 (or the id, when it could be read) and the connection stays open; op problems come as
    ``rejected`` events instead. Rate limits answer RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from vatlas.server.doors.auth import PROTOCOL_VERSION, check_protocol, check_token
from vatlas.server.doors.http import OriginPolicy, StaticFiles, text_response, webapp_root
from vatlas.server.errors import INTERNAL_MESSAGE, CoreError
from vatlas.server.session.core import ServerCore
from vatlas.server.session.presence import Participant
from vatlas.server.session.viewing import Viewer
from vatlas_wire.v1 import bundles_pb2, common_pb2, mirror, render_pb2, sessions_pb2
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

import vatlas

log = logging.getLogger(__name__)

MAX_TASKS = 64  # concurrent requests of one connection (renders, exports, ...)
MAX_UPLOADS = 2  # uploads streaming in at once on one connection
CLOSE_POLICY = 1008
FRAME_OVERHEAD = 1024  # bytes charged per frame besides its length (the decoded message, bookkeeping)
LIVE: weakref.WeakSet[WsConnection] = weakref.WeakSet()  # open connections (stats and tests)


class ConnectionCaps:
    """Open WebSocket connections per client IP and in all, counted from the handshake to the close."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.by_ip: dict[str, int] = {}
        self.open = 0
        self._tasks: set[asyncio.Future] = set()  # keeps release tasks referenced until they run

    def admit(self, connection: ServerConnection) -> Response | None:
        """Count a handshaking connection, or a 503 answer when a cap is reached."""
        ip = str(connection.remote_address[0]) if connection.remote_address else "?"
        if self.open >= self.total:
            return text_response(503, "Service Unavailable", f"the server holds its maximum of {self.total} "
                                                             "WebSocket connections\n")
        if self.by_ip.get(ip, 0) >= self.per_ip:
            return text_response(503, "Service Unavailable", f"more than {self.per_ip} WebSocket connections "
                                                             "from one address\n")
        self.open += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1

        async def release() -> None:
            try:
                await connection.wait_closed()
            finally:
                self.open -= 1
                self.by_ip[ip] -= 1
                if not self.by_ip[ip]:
                    del self.by_ip[ip]

        task = asyncio.ensure_future(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None


class WsConnection:
    """One WebSocket client: hello, then requests dispatched to the core."""

    def __init__(self, ws: ServerConnection, core: ServerCore, token: str | None) -> None:
        self.ws = ws
        self.core = core
        self.token = token
        self.key = f"ws:{id(self)}"
        self.authorized: set[str] = set()
        self.participant: Participant | None = None
        self.session_request_id = 0
        self.tasks: set[asyncio.Task] = set()
        self.playback: asyncio.Task | None = None
        # session messages in order, each with the bytes it holds of the inbound budget
        self.session_inbox: asyncio.Queue[tuple[sessions_pb2.ClientMessage, int]] = asyncio.Queue()
        self.session_task: asyncio.Task | None = None
        self.pump_task: asyncio.Task | None = None
        self.scope: str | None = None  # set when hello carried a join token: the one session it may use
        self.uploads: dict[int, asyncio.Queue] = {}  # request id -> its chunks (and their bytes) not yet written
        self.failed_uploads: dict[int, None] = {}  # request ids of uploads that ended early (newest last)
        address = ws.remote_address[0] if ws.remote_address else "?"
        self.address = str(address)
        self.inbound = 0  # bytes of frames read and not yet handled
        self.peak_inbound = 0
        self._drained = asyncio.Event()
        LIVE.add(self)

    @property
    def viewer(self) -> Viewer:
        """Rate limits and GPU share (L2): this connection, and its address with the credential it showed."""
        return Viewer(self.key, ("ws", self.address, self.scope or "token"))

    async def _charge(self, size: int) -> None:
        """Wait until `size` more bytes fit the inbound budget (a lone frame always fits); not reading the
        socket meanwhile is the backpressure."""
        budget = self.core.limits.ws_inbound_bytes
        while self.inbound and self.inbound + size > budget:
            self._drained.clear()
            await self._drained.wait()
        self.inbound += size
        self.peak_inbound = max(self.peak_inbound, self.inbound)

    def _release(self, size: int) -> None:
        self.inbound -= size
        self._drained.set()

    async def send(self, request_id: int, **result: Any) -> None:
        await self.ws.send(mirror.pack(sessions_pb2.WsResponse(request_id=request_id, **result)))

    async def send_error(self, request_id: int, code: str, message: str, op_id: str = "") -> None:
        await self.send(request_id, error=common_pb2.Error(code=code, message=message, op_id=op_id))

    async def run(self) -> None:
        try:
            if not await self._hello():
                return
            async for frame in self.ws:
                size = len(frame) + FRAME_OVERHEAD
                await self._charge(size)
                if not await self._handle_frame(frame, size):
                    self._release(size)
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup()

    async def _hello(self) -> bool:
        timeout = self.core.limits.hello_timeout
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            await self.send_error(0, "DEADLINE_EXCEEDED", f"no hello within {timeout:g} s")
            await self.ws.close(CLOSE_POLICY, "no hello")
            return False
        request_id = _peek_request_id(frame)
        try:
            if isinstance(frame, str):
                raise CoreError("INVALID_ARGUMENT", "frames must be binary msgpack")
            request = mirror.unpack(frame, sessions_pb2.WsRequest)
            if request.WhichOneof("call") != "hello":
                raise CoreError("FAILED_PRECONDITION", "the first request must be hello")
            check_protocol(request.hello.protocol_version)
            shared = self.core.session_for_join_token(request.hello.token) if self.token else None
            if shared is not None:
                self.scope = shared.session_id  # a share link: this session only
            else:
                check_token(self.token, request.hello.token)
        except (CoreError, mirror.WireError) as exc:
            code = exc.code if isinstance(exc, CoreError) else "INVALID_ARGUMENT"
            await self.send_error(request_id, code, getattr(exc, "message", str(exc)))
            await self.ws.close(CLOSE_POLICY, code)
            return False
        await self.send(request.request_id, welcome=sessions_pb2.Welcome(protocol_version=PROTOCOL_VERSION,
                                                                          server_version=vatlas.__version__))
        return True

    async def _handle_frame(self, frame: Any, size: int) -> bool:
        """Handle or dispatch one frame; True when its bytes are held until a task or the session handles it."""
        request_id = _peek_request_id(frame)
        if isinstance(frame, str):
            await self.send_error(request_id, "INVALID_ARGUMENT", "frames must be binary msgpack, not text")
            return False
        try:
            request = mirror.unpack(frame, sessions_pb2.WsRequest)
        except mirror.WireError as exc:
            await self.send_error(request_id, "INVALID_ARGUMENT", str(exc))
            return False
        del frame  # the decoded request holds what counts now
        call = request.WhichOneof("call")
        rid = request.request_id
        if call is None:
            await self.send_error(rid, "INVALID_ARGUMENT", "empty request: set one of the calls")
        elif call == "hello":
            await self.send_error(rid, "FAILED_PRECONDITION", "hello was already done")
        elif self.scope is not None and not self._in_scope(call, getattr(request, call)):
            await self.send_error(rid, "PERMISSION_DENIED", "this connection was opened with a session's join "
                                                            "token: it may only use that session")
        elif call == "session":
            return await self._session_message(rid, request.session, size)
        elif call == "upload":
            return await self._upload_chunk(rid, request.upload, size)
        elif call == "stop_playback":
            self._stop_playback()
        else:
            if len(self.tasks) >= MAX_TASKS:
                await self.send_error(rid, "RESOURCE_EXHAUSTED", f"more than {MAX_TASKS} requests in flight")
                return False
            task = asyncio.create_task(self._guard(rid, call, getattr(request, call)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _: self._release(size))
            if call == "playback":
                self._stop_playback()
                self.playback = task
            return True
        return False

    async def _upload_chunk(self, rid: int, chunk: bundles_pb2.UploadChunk, size: int) -> bool:
        """Queue a chunk for the upload of this request id (its first chunk starts it); True when the queue
        holds its bytes. Chunks of an upload that already failed are dropped (its error was sent)."""
        if rid in self.failed_uploads:
            return False
        queue = self.uploads.get(rid)
        if queue is None:
            if len(self.uploads) >= MAX_UPLOADS or len(self.tasks) >= MAX_TASKS:
                await self.send_error(rid, "RESOURCE_EXHAUSTED", f"more than {MAX_UPLOADS} uploads in flight on "
                                                                 "this connection")
                return False
            queue = self.uploads[rid] = asyncio.Queue()
            task = asyncio.create_task(self._guard(rid, "upload", queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda done: self._upload_ended(rid, done))
        queue.put_nowait((chunk, size))
        return True

    def _upload_ended(self, rid: int, task: asyncio.Task) -> None:
        queue = self.uploads.pop(rid)
        while not queue.empty():
            self._release(queue.get_nowait()[1])
        if task.cancelled() or not task.result():
            self.failed_uploads[rid] = None
            while len(self.failed_uploads) > MAX_UPLOADS * 8:
                del self.failed_uploads[next(iter(self.failed_uploads))]

    def _in_scope(self, call: str, request: Any) -> bool:
        """Whether a connection limited to one session (see `scope`) may make this call."""
        if call == "stop_playback":
            return True
        if call == "session":
            return request.WhichOneof("kind") != "join" or request.join.session_id == self.scope
        if call in ("render", "playback", "export"):
            return request.session_id == self.scope
        if call == "bundle_info":
            session = self.core.sessions.get(self.scope or "")
            return session is not None and request.name == session.bundle_name
        return False

    async def _guard(self, request_id: int, call: str, request: Any) -> bool:
        """Run one request; core errors become error frames, a closed socket ends it quietly. True when it
        succeeded."""
        try:
            await getattr(self, f"_call_{call}")(request_id, request)
            return True
        except CoreError as exc:
            with contextlib.suppress(ConnectionClosed):
                await self.send_error(request_id, exc.code, exc.message, exc.op_id)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one failing request must not end the connection
            log.exception("WebSocket request %s failed", request_id)
            with contextlib.suppress(ConnectionClosed):
                await self.send_error(request_id, "INTERNAL", INTERNAL_MESSAGE)
        return False

    def _stop_playback(self) -> None:
        if self.playback is not None:
            self.playback.cancel()
            self.playback = None

    # ---------------------------------------------------------------- calls

    async def _call_list_bundles(self, rid: int, _: Any) -> None:
        await self.send(rid, bundles=bundles_pb2.ListBundlesResponse(bundles=self.core.list_bundles()))

    async def _call_load_bundle(self, rid: int, request: bundles_pb2.LoadBundleRequest) -> None:
        await self.send(rid, bundle_info=await self.core.load_bundle(request.name))

    async def _call_bundle_info(self, rid: int, request: bundles_pb2.GetBundleInfoRequest) -> None:
        await self.send(rid, bundle_info=self.core.bundle_info(request.name))

    async def _call_create_session(self, rid: int, request: sessions_pb2.CreateSessionRequest) -> None:
        info = await self.core.create_session(request)
        self.authorized.add(info.session_id)
        await self.send(rid, session_info=info)

    async def _call_list_sessions(self, rid: int, _: Any) -> None:
        await self.send(rid, sessions=sessions_pb2.ListSessionsResponse(sessions=self.core.list_sessions()))

    async def _call_render(self, rid: int, request: render_pb2.RenderRequest) -> None:
        request.request_id = request.request_id or rid
        frame = await self.core.viewing.render(self.key, request, self.authorized, viewer=self.viewer)
        await self.send(rid, frame=frame)

    async def _call_playback(self, rid: int, request: render_pb2.PlaybackRequest) -> None:
        frames = await self.core.viewing.playback(self.key, request, self.authorized, viewer=self.viewer)
        async with contextlib.aclosing(frames):  # stop_playback ends the producer at once
            async for frame in frames:
                frame.request_id = rid
                await self.send(rid, frame=frame)

    async def _call_export(self, rid: int, request: render_pb2.ExportRequest) -> None:
        events = await self.core.jobs.export(request, self.authorized)
        async with contextlib.aclosing(events):
            async for event in events:
                await self.send(rid, export=event)

    async def _call_upload(self, rid: int, queue: asyncio.Queue) -> None:
        """The chunks queued for this request id, into the core's upload (its limits and quotas): each chunk
        is acknowledged with upload_progress once written, the last with the UploadResult."""
        idle = self.core.limits.upload_idle_seconds
        written = 0

        async def chunks() -> AsyncIterator[bundles_pb2.UploadChunk]:
            nonlocal written
            while True:
                try:
                    chunk, size = await asyncio.wait_for(queue.get(), idle)
                except TimeoutError:
                    raise CoreError("DEADLINE_EXCEEDED", f"no upload chunk for {idle:g} s: the upload was "
                                                         "dropped") from None
                try:
                    yield chunk  # the core writes it before it asks for the next one
                finally:
                    self._release(size)
                written += len(chunk.data)
                if chunk.last:
                    return
                await self.send(rid, upload_progress=bundles_pb2.UploadProgress(bytes=written))

        stream = chunks()
        async with contextlib.aclosing(stream):
            result = await self.core.jobs.upload(stream)
        await self.send(rid, upload=result)

    async def _call_upload_frame(self, rid: int, request: bundles_pb2.UploadFrameRequest) -> None:
        await self.send(rid, upload_frame=await self.core.jobs.upload_frame(request))

    async def _call_start_fit(self, rid: int, request: bundles_pb2.StartFitRequest) -> None:
        await self._follow_fit(rid, await self.core.jobs.start_fit(request))

    async def _call_attach_fit(self, rid: int, request: bundles_pb2.AttachFitRequest) -> None:
        await self._follow_fit(rid, await self.core.jobs.attach(request))

    async def _follow_fit(self, rid: int, events: AsyncIterator[bundles_pb2.FitProgress]) -> None:
        async with contextlib.aclosing(events):  # a closed socket ends the stream (and an undetached fit)
            async for event in events:
                await self.send(rid, fit=event)

    async def _call_cancel_fit(self, rid: int, request: bundles_pb2.CancelFitRequest) -> None:
        await self.send(rid, fit_info=await self.core.jobs.cancel(request))

    async def _call_list_fits(self, rid: int, _: Any) -> None:
        await self.send(rid, fits=self.core.jobs.list_fits())

    # ---------------------------------------------------------------- the session stream

    async def _session_message(self, rid: int, message: sessions_pb2.ClientMessage, size: int) -> bool:
        """Join, or queue a session message for `_run_session`; True when the queue now holds its bytes."""
        kind = message.WhichOneof("kind")
        if self.participant is None:
            if kind != "join":
                await self.send_error(rid, "FAILED_PRECONDITION", "join a session first")
                return False
            try:
                participant = await self.core.join(message.join)
            except CoreError as exc:
                await self.send_error(rid, exc.code, exc.message)
                return False
            self.participant = participant
            self.session_request_id = rid
            self.authorized.add(message.join.session_id)
            self.pump_task = asyncio.create_task(self._pump_events(participant, rid))
            self.session_task = asyncio.create_task(self._run_session(participant))
            return False
        if self.participant.closed:
            await self.send_error(rid, "FAILED_PRECONDITION", "the session stream has ended; join again")
            return False
        self.session_inbox.put_nowait((message, size))  # in order; bounded by the inbound bytes, not a count
        return True

    async def _run_session(self, participant: Participant) -> None:
        while True:
            message, size = await self.session_inbox.get()
            try:
                if not await self.core.handle(participant, message):
                    self.core.leave(participant)
                    return
            finally:
                self._release(size)

    async def _pump_events(self, participant: Participant, rid: int) -> None:
        """Forward the participant's events; when its stream ends, the connection may join again."""
        try:
            while True:
                event = await participant.events.get()
                if event is None:
                    break
                await self.send(rid, event=event)
        except ConnectionClosed:
            pass
        finally:
            if self.participant is participant:
                self.participant = None
                if self.session_task is not None:
                    self.session_task.cancel()
                while not self.session_inbox.empty():
                    self._release(self.session_inbox.get_nowait()[1])

    async def _cleanup(self) -> None:
        for task in (*self.tasks, self.session_task, self.pump_task):
            if task is not None:
                task.cancel()
        if self.participant is not None:
            self.core.leave(self.participant)
        self.core.viewing.forget_client(self.key)
        for task in (*self.tasks, self.session_task, self.pump_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _peek_request_id(frame: Any) -> int:
    """The request_id of a frame that may not decode as a whole (0 when it cannot be read)."""
    if not isinstance(frame, (bytes, bytearray)):
        return 0
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - any garbage: no id to echo
        return 0
    value = obj.get("request_id") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64 else 0


async def start_ws(core: ServerCore, host: str, port: int, token: str | None,
                   policy: OriginPolicy | None = None) -> tuple[Any, int]:
    """Start the HTTP + WebSocket server; returns (server, bound port)."""
    static = StaticFiles(webapp_root())
    policy = policy or OriginPolicy(server_names=(host,))
    limits = core.limits
    caps = ConnectionCaps(limits.max_ws_connections, limits.max_ws_connections_per_ip)

    async def handler(ws: ServerConnection) -> None:
        await WsConnection(ws, core, token).run()

    def process_request(connection: ServerConnection, request: Any) -> Any:
        refused = policy.check(request)
        if refused is not None:
            return refused
        answer = static.respond(request)
        return answer if answer is not None else caps.admit(connection)

    # open_timeout bounds a TCP connection that never completes its handshake
    server = await serve(handler, host, port, process_request=process_request,
                         max_size=limits.max_message_bytes, compression=None, max_queue=limits.ws_inbound_queue,
                         ping_interval=20, ping_timeout=60, close_timeout=2, open_timeout=limits.hello_timeout)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return server, int(bound)

