"""The session core: bundles, sessions, the authoritative op log, participants, presence, undo, rendering.

No transport code lives here: the gRPC and WebSocket doors call these coroutines (all on the event loop) and
forward what comes out. Requests and events are `vatlas.v1` proto messages; ops are dicts in the mirror form
the edit engine takes.

Op path (per session, under the session's lock, so sequence order = log order = broadcast order)::

    rate limit -> validate_op -> Document.check -> EditEngine.apply (thread) -> seq += 1
    -> OpLog.append (write + fsync, thread) -> OpAccepted to the sender -> OpApplied to every participant

Undo/redo are per participant (history kept in memory across reconnects of one participant id, not across
server restarts): the inverse of each accepted op is computed against the state it replaced and submitted as
a new op when the participant undoes, so everyone sees undo as an ordinary op in the log. Every undo/redo
gets exactly one answer: OpAccepted (op_id "undo:..."/"redo:...") or OpRejected with op_id "" (nothing to
undo, or someone else's edit made the step impossible: that step is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vatlas.server.doors import wire
from vatlas.server.edits.ops import ID_PATTERN, OpError, OpLimits, validate_op
from vatlas.server.session.bundles import BundleRegistry, check_bundle_name
from vatlas.server.session.document import Document
from vatlas.server.session.errors import CoreError
from vatlas.server.session.jobs import Jobs
from vatlas.server.session.limits import ServerLimits, TokenBucket
from vatlas.server.session.oplog import Damage, OpLog, SessionStore
from vatlas.server.session.presence import (
    MAX_TOOL,
    PALETTE,
    Participant,
    check_color,
    check_name,
    check_participant_id,
)
from vatlas.server.session.render import RenderJob, RenderWorker, check_format, check_render_request
from vatlas.v1 import common_pb2, edits_pb2, render_pb2, sessions_pb2

log = logging.getLogger(__name__)

MAX_HISTORY = 1000


def storage_reason(exc: BaseException) -> str:
    """A client-safe name for a storage failure: the errno's name, never a path or the OS message."""
    number = getattr(exc, "errno", None)
    if number == errno.ENOSPC:
        return "the server's disk is full"
    return errno.errorcode.get(number, "storage error") if isinstance(number, int) else "storage error"


@dataclass
class CoreConfig:
    models_dir: Path
    data_dir: Path | None = None
    device: str = "auto"
    limits: ServerLimits = field(default_factory=ServerLimits)
    fsync: bool = True


@dataclass
class History:
    undo: list[dict[str, Any]] = field(default_factory=list)
    redo: list[dict[str, Any]] = field(default_factory=list)


class Session:
    """One editing session on one bundle."""

    def __init__(self, session_id: str, bundle_name: str, join_token: str, created: float) -> None:
        self.session_id = session_id
        self.bundle_name = bundle_name
        self.join_token = join_token
        self.created = created
        self.bundle: Any = None
        self.engine: Any = None
        self.op_limits = OpLimits()
        self.doc = Document()
        self.seq = 0
        self.applied_seq = 0  # read by the render thread
        self.records: list[dict[str, Any]] = []
        self.participants: dict[str, Participant] = {}
        self.history: dict[str, History] = {}
        self.lock = asyncio.Lock()
        self.oplog: OpLog | None = None
        self.colors_used = 0

    def info(self, *, with_token: bool) -> sessions_pb2.SessionInfo:
        return sessions_pb2.SessionInfo(session_id=self.session_id, bundle=self.bundle_name,
                                        join_token=self.join_token if with_token else "", seq=self.seq,
                                        participants=len(self.participants))

    def broadcast(self, event: sessions_pb2.ServerEvent, *, skip: Participant | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant is not skip:
                participant.send(event)


def _event(**kwargs: Any) -> sessions_pb2.ServerEvent:
    return sessions_pb2.ServerEvent(**kwargs)


def _error(code: str, message: str, op_id: str = "") -> common_pb2.Error:
    return common_pb2.Error(code=code, message=message, op_id=op_id)


async def _uncancellable(coroutine: Any) -> None:
    """Run a commit to its end even if the caller is cancelled (its client went away mid-op).

    A commit cut between the log append and the state update would leave a record on disk the session does not
    count, and the next op would reuse its sequence number.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})  # finish first; the cancellation still reaches the caller
        raise


def check_op_ids(raw: dict[str, Any], op_id: str) -> None:
    """Op ids and targets must be exactly ID_PATTERN's characters (its "$" alone lets a trailing newline in)."""
    for key in ("id", "target"):
        value = raw.get(key)
        if isinstance(value, str) and value and not ID_PATTERN.fullmatch(value):
            raise OpError("INVALID_ARGUMENT", f"{key} must be 1..64 characters of [A-Za-z0-9_.:-]", op_id)


def op_to_proto(op: dict[str, Any]) -> edits_pb2.EditOp:
    return wire.from_mirror(op, edits_pb2.EditOp)  # type: ignore[return-value]


class ServerCore:
    """Everything stateful about a running server; doors hold one of these."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.bundles = BundleRegistry(config.models_dir)
        self.store = SessionStore(config.data_dir) if config.data_dir is not None else None
        self.sessions: dict[str, Session] = {}
        self._render_buckets: dict[Any, TokenBucket] = {}
        self.worker: RenderWorker | None = None
        self.started = time.time()
        self._closing = False
        self.jobs = Jobs(self, config.data_dir)
        self._resume_secret = secrets.token_bytes(32)  # undo history lives in memory too: per process is enough
        self.damaged_logs: list[tuple[str, Damage]] = []  # repaired at start: reported by the server's banner

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Replay stored sessions (truncating torn log tails) and start the render worker."""
        if self.store is not None:
            for session_id, meta in self.store.stored_sessions():
                await asyncio.to_thread(self._restore_session, session_id, meta)
        from vatlas.server.encoders import encode

        self.worker = RenderWorker(encode)
        self.worker.start()

    def _restore_session(self, session_id: str, meta: dict[str, Any]) -> None:
        assert self.store is not None
        session = Session(session_id, str(meta.get("bundle", "")), str(meta.get("join_token", "")),
                          float(meta.get("created", 0.0)))
        oplog, replay = self.store.open_log(session_id)
        session.oplog = oplog
        if replay.damage is not None:
            self.damaged_logs.append((session_id, replay.damage))
        for record in replay.records:
            op = record.get("op")
            try:
                session.doc.check(op)  # type: ignore[arg-type]
                session.doc.apply(op)  # type: ignore[arg-type]
            except (OpError, KeyError, TypeError) as exc:
                log.warning("session %s: record %s does not apply (%s); kept in the log", session_id,
                            record.get("seq"), exc)
            session.records.append(record)
            session.seq = int(record.get("seq", session.seq + 1))
        session.applied_seq = session.seq
        self.sessions[session_id] = session
        log.info("restored session %s: %d ops (%d torn bytes cut)", session_id, session.seq, replay.truncated_bytes)

    async def close(self) -> None:
        """Finish in-flight ops, end every participant's stream, stop rendering, flush and close the logs."""
        self._closing = True
        for session in list(self.sessions.values()):
            async with session.lock:  # an op being committed finishes first
                for participant in list(session.participants.values()):
                    participant.close(_error("UNAVAILABLE", "the server is shutting down"))
                if session.oplog is not None:
                    await asyncio.to_thread(session.oplog.close)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        self.jobs.close()

    # ---------------------------------------------------------------- bundles

    def list_bundles(self) -> list[Any]:
        return self.bundles.list()

    def bundle_info(self, name: str) -> Any:
        return self.bundles.info(check_bundle_name(name))

    async def load_bundle(self, name: str) -> Any:
        await self.bundles.load(check_bundle_name(name))
        return self.bundles.info(name)

    # ---------------------------------------------------------------- sessions

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise CoreError("NOT_FOUND", f"no session {session_id!r}")
        return session

    async def _ensure_engine(self, session: Session) -> Any:
        """Load the bundle, build the engine and replay the log into it (once, lazily)."""
        if session.engine is not None:
            return session.engine
        async with session.lock:
            if session.engine is not None:
                return session.engine
            bundle = await self.bundles.load(session.bundle_name)
            from vatlas.server.edits.engine import EditEngine

            records = list(session.records)

            def build() -> Any:
                engine = EditEngine(bundle, device=self.config.device)
                for record in records:
                    try:
                        engine.apply(record["op"])
                    except OpError as exc:
                        log.warning("session %s: replayed op %s refused by the engine: %s", session.session_id,
                                    record.get("seq"), exc)
                return engine

            engine = await asyncio.to_thread(build)
            session.bundle = bundle
            session.op_limits = OpLimits.for_bundle(bundle)
            session.engine = engine
            return engine

    async def create_session(self, request: sessions_pb2.CreateSessionRequest) -> sessions_pb2.SessionInfo:
        """A new session on a bundle, optionally seeded with a document; the answer carries the join token."""
        if self._closing:
            raise CoreError("UNAVAILABLE", "the server is shutting down")
        if len(self.sessions) >= self.limits.max_sessions:
            raise CoreError("RESOURCE_EXHAUSTED", f"the server holds its maximum of {self.limits.max_sessions} "
                                                  "sessions")
        name = check_bundle_name(request.bundle)
        bundle = await self.bundles.load(name)
        op_limits = OpLimits.for_bundle(bundle)
        ops: list[dict[str, Any]] = []
        scratch = Document()
        for i, op_msg in enumerate(request.document.ops):
            raw = wire.to_mirror(op_msg)
            hidden = raw.pop("visible", None) is False and raw.get("type") in ("stroke", "texture", "adjustment",
                                                                               "sticker")
            try:
                check_op_ids(raw, raw.get("id", "") if isinstance(raw.get("id"), str) else "")
                op = validate_op(raw, op_limits)
                scratch.check(op)
            except OpError as exc:
                raise CoreError(exc.code, f"document op {i}: {exc.message}", exc.op_id) from None
            scratch.apply(op)
            ops.append(op)
            if hidden:
                ops.append({"type": "set_visible", "target": op["id"], "visible": False})
                scratch.apply(ops[-1])
        session_id = "s" + secrets.token_hex(8)
        session = Session(session_id, name, secrets.token_urlsafe(18), time.time())
        if self.store is not None:
            meta = {"session_id": session_id, "bundle": name, "join_token": session.join_token,
                    "created": session.created}
            await asyncio.to_thread(self.store.save_meta, session_id, meta)
            session.oplog, _ = await asyncio.to_thread(self.store.open_log, session_id)
        self.sessions[session_id] = session

        async def sequence() -> None:
            async with session.lock:
                for op in ops:
                    await self._commit(session, "", op, "document")

        await _uncancellable(sequence())
        await self._ensure_engine(session)
        return session.info(with_token=True)

    def list_sessions(self) -> list[sessions_pb2.SessionInfo]:
        """Sessions without their join tokens (a token is shared by whoever created the session)."""
        return [s.info(with_token=False) for s in self.sessions.values()]

    async def join(self, request: sessions_pb2.Join) -> Participant:
        """Register a participant; its queue starts with a snapshot (or the tail after last_seq)."""
        if self._closing:
            raise CoreError("UNAVAILABLE", "the server is shutting down")
        session = self._session(request.session_id)
        if not hmac.compare_digest(request.join_token.encode(), session.join_token.encode()):
            raise CoreError("PERMISSION_DENIED", "wrong join token for this session")
        pid = check_participant_id(request.participant_id)
        name = check_name(request.name, f"guest-{pid[-4:]}")
        color = check_color(request.color, PALETTE[session.colors_used % len(PALETTE)])
        await self._ensure_engine(session)
        async with session.lock:
            if request.last_seq > session.seq:
                raise CoreError("OUT_OF_RANGE", f"last_seq {request.last_seq} is ahead of the session "
                                                f"(seq {session.seq})")
            if pid in session.history and not hmac.compare_digest(request.resume_key.encode(),
                                                                  self.resume_key(session, pid).encode()):
                # ids are visible to every participant: only the one the server gave it to may take it back
                raise CoreError("PERMISSION_DENIED", f"participant id {pid!r} is taken; send its resume_key or join "
                                                     "without an id")
            old = session.participants.get(pid)
            if old is None and len(session.participants) >= self.limits.max_participants:
                raise CoreError("RESOURCE_EXHAUSTED", "the session is full")
            if old is not None:
                old.close(_error("ALREADY_EXISTS", "replaced by a newer connection of the same participant"))
            participant = Participant(session, pid, name, color, self.limits)
            session.colors_used += 1
            session.participants[pid] = participant
            session.history.setdefault(pid, History())
            snapshot = sessions_pb2.Snapshot(
                session=session.info(with_token=True), participant_id=pid, resume_key=self.resume_key(session, pid),
                participants=[p.to_proto() for p in session.participants.values()],
            )
            if request.last_seq == 0:
                snapshot.document.CopyFrom(edits_pb2.EditDocument(
                    version=1, ops=[op_to_proto(op) for op in session.doc.live_ops()]))
            participant.send(_event(snapshot=snapshot))
            if request.last_seq:
                for record in session.records[self._index_after(session, request.last_seq):]:
                    participant.send(_event(applied=sessions_pb2.OpApplied(
                        seq=record["seq"], participant_id=record["participant_id"], op=op_to_proto(record["op"]))))
            session.broadcast(_event(presence=sessions_pb2.PresenceEvent(participant=participant.to_proto())),
                              skip=participant)
        return participant

    def resume_key(self, session: Session, pid: str) -> str:
        """The secret that lets a participant take its id (and undo history) back after a reconnect."""
        return hmac.new(self._resume_secret, f"{session.session_id}\0{pid}".encode(), "sha256").hexdigest()[:32]

    def session_for_join_token(self, token: str) -> Session | None:
        """The session whose join token this is (share links carry it instead of the server token)."""
        found = None
        for session in self.sessions.values():  # compare with every one: the time taken says nothing
            if token and hmac.compare_digest(token.encode(), session.join_token.encode()):
                found = session
        return found

    @staticmethod
    def _index_after(session: Session, last_seq: int) -> int:
        # records are in seq order with seq = index + 1, unless an old log had gaps: search to be safe
        lo, hi = 0, len(session.records)
        while lo < hi:
            mid = (lo + hi) // 2
            if session.records[mid]["seq"] <= last_seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def leave(self, participant: Participant) -> None:
        """Remove a participant (idempotent) and tell the others."""
        session: Session = participant.session
        if session.participants.get(participant.participant_id) is participant:
            del session.participants[participant.participant_id]
            session.broadcast(_event(presence=sessions_pb2.PresenceEvent(participant=participant.to_proto(),
                                                                         left=True)))
        participant.close()

    # ---------------------------------------------------------------- ops

    async def _commit(self, session: Session, pid: str, op: dict[str, Any], kind: str) -> int:
        """Persist (write + fsync), apply, sequence one checked op. Caller holds session.lock.

        The log comes first: an op the disk refused must never reach the engine (it would show in renders and
        block its own retry with ALREADY_EXISTS). An op the engine then refuses is cut from the log again.
        """
        seq = session.seq + 1
        op_id = op.get("id", "")
        record = {"seq": seq, "participant_id": pid, "kind": kind, "op": op, "time": time.time()}
        offset = None
        if session.oplog is not None:
            try:
                offset = await asyncio.to_thread(session.oplog.append, record)
            except (OSError, RuntimeError) as exc:
                log.error("session %s: cannot persist op %d: %s", session.session_id, seq, exc)
                raise CoreError("UNAVAILABLE", f"the op could not be stored ({storage_reason(exc)}); nothing was "
                                               "applied, try again later", op_id) from None
        if session.engine is not None:
            try:
                await asyncio.to_thread(session.engine.apply, op)
            except Exception as exc:
                await self._unlog(session, offset)
                if isinstance(exc, OpError):
                    raise
                log.exception("session %s: engine refused op", session.session_id)
                raise CoreError("INTERNAL", "the engine failed on this op (see the server log)", op_id) from None
        session.seq = seq
        session.records.append(record)
        session.doc.apply(op)
        session.applied_seq = seq
        return seq

    @staticmethod
    async def _unlog(session: Session, offset: int | None) -> None:
        """Cut a logged record the engine refused; if even that fails, the record replays (and is refused)."""
        if offset is None or session.oplog is None:
            return
        try:
            await asyncio.to_thread(session.oplog.rollback, offset)
        except OSError as exc:
            log.error("session %s: cannot cut a refused op from the log: %s", session.session_id, exc)

    def _announce(self, session: Session, participant: Participant, op: dict[str, Any], seq: int) -> None:
        participant.send(_event(accepted=sessions_pb2.OpAccepted(op_id=op.get("id", ""), seq=seq)))
        session.broadcast(_event(applied=sessions_pb2.OpApplied(seq=seq, participant_id=participant.participant_id,
                                                                op=op_to_proto(op))))

    def _reject(self, participant: Participant, code: str, message: str, op_id: str) -> None:
        participant.send(_event(rejected=sessions_pb2.OpRejected(op_id=op_id, error=_error(code, message, op_id))))

    async def submit(self, participant: Participant, raw_op: dict[str, Any]) -> None:
        """Validate, sequence and broadcast one op; the outcome goes to the participant's event queue."""
        op_id = raw_op.get("id", "") if isinstance(raw_op.get("id", ""), str) else ""
        session: Session = participant.session
        if participant.closed:
            return
        if not participant.ops_bucket.take():
            self._reject(participant, "RESOURCE_EXHAUSTED", "too many ops: slow down", op_id)
            return
        try:
            check_op_ids(raw_op, op_id)
            op = validate_op(raw_op, session.op_limits)
            await self._ensure_engine(session)
        except (OpError, CoreError) as exc:
            self._reject(participant, exc.code, exc.message, exc.op_id or op_id)
            return

        async def sequence() -> None:
            async with session.lock:
                try:
                    session.doc.check(op)
                    inverse = session.doc.inverse(op)
                    seq = await self._commit(session, participant.participant_id, op, "op")
                except (OpError, CoreError) as exc:
                    self._reject(participant, exc.code, exc.message, exc.op_id or op_id)
                    return
                history = session.history.setdefault(participant.participant_id, History())
                if inverse is not None:
                    history.undo.append(inverse)
                    del history.undo[:-MAX_HISTORY]
                history.redo.clear()
                self._announce(session, participant, op, seq)

        await _uncancellable(sequence())

    async def undo(self, participant: Participant) -> None:
        await self._replay_history(participant, redo=False)

    async def redo(self, participant: Participant) -> None:
        await self._replay_history(participant, redo=True)

    async def _replay_history(self, participant: Participant, *, redo: bool) -> None:
        session: Session = participant.session
        word = "redo" if redo else "undo"
        if not participant.ops_bucket.take():
            self._reject(participant, "RESOURCE_EXHAUSTED", f"too many {word}s: slow down", "")
            return
        await self._ensure_engine(session)

        async def sequence() -> None:
            async with session.lock:
                history = session.history.setdefault(participant.participant_id, History())
                source, sink = (history.redo, history.undo) if redo else (history.undo, history.redo)
                if not source:
                    self._reject(participant, "FAILED_PRECONDITION", f"nothing to {word}", "")
                    return
                op = {**source.pop(), "id": f"{word}:{secrets.token_hex(10)}"}
                try:
                    op = validate_op(op, session.op_limits)
                    session.doc.check(op)
                    inverse = session.doc.inverse(op)
                    seq = await self._commit(session, participant.participant_id, op, word)
                except (OpError, CoreError) as exc:
                    # someone else's edit made this step impossible (e.g. the object was deleted): drop it
                    self._reject(participant, exc.code, f"cannot {word}: {exc.message}", "")
                    return
                if inverse is not None:
                    sink.append(inverse)
                self._announce(session, participant, op, seq)

        await _uncancellable(sequence())

    def presence(self, participant: Participant, update: sessions_pb2.PresenceUpdate) -> None:
        """Update and broadcast a participant's presence (cursor, frame, tool, name, colour)."""
        session: Session = participant.session
        if not participant.presence_bucket.take():
            participant.send(_event(error=_error("RESOURCE_EXHAUSTED", "too many presence updates: slow down")))
            return
        try:
            num_frames = session.bundle.num_frames if session.bundle is not None else None
            if num_frames is not None and update.frame >= num_frames:
                raise CoreError("INVALID_ARGUMENT", f"presence frame {update.frame} is out of range")
            if update.HasField("cursor"):
                x, y = update.cursor.x, update.cursor.y
                if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) > 1e6:
                    raise CoreError("INVALID_ARGUMENT", "presence cursor must be finite pixel coordinates")
            if len(update.tool) > MAX_TOOL:
                raise CoreError("INVALID_ARGUMENT", f"tool must be at most {MAX_TOOL} characters")
            name = check_name(update.name, participant.name)
            color = check_color(update.color, participant.color)
        except CoreError as exc:
            participant.send(_event(error=_error(exc.code, exc.message)))
            return
        participant.cursor = (update.cursor.x, update.cursor.y) if update.HasField("cursor") else None
        participant.frame = update.frame
        participant.tool = update.tool
        participant.name, participant.color = name, color
        session.broadcast(_event(presence=sessions_pb2.PresenceEvent(participant=participant.to_proto())),
                          skip=participant)

    # ---------------------------------------------------------------- rendering

    def _viewable(self, session_id: str, join_token: str, authorized: frozenset[str] | set[str]) -> Session:
        session = self._session(session_id)
        if session_id in authorized:
            return session
        if not join_token or not hmac.compare_digest(join_token.encode(), session.join_token.encode()):
            raise CoreError("PERMISSION_DENIED", "a valid join_token is needed to view this session")
        return session

    def _take_render_token(self, client_key: Any) -> None:
        bucket = self._render_buckets.get(client_key)
        if bucket is None:
            bucket = self._render_buckets[client_key] = TokenBucket(self.limits.renders_per_second,
                                                                    self.limits.renders_burst)
        if not bucket.take():
            raise CoreError("RESOURCE_EXHAUSTED", "too many render requests: slow down")

    def forget_client(self, client_key: Any) -> None:
        """A viewer went away: drop its rate bucket and any waiting render."""
        self._render_buckets.pop(client_key, None)
        if self.worker is not None:
            self.worker.cancel(client_key)
            self.worker.cancel((client_key, "playback"))

    async def render(self, client_key: Any, request: render_pb2.RenderRequest,
                     authorized: frozenset[str] | set[str] = frozenset(),
                     rate_key: Any = None) -> render_pb2.RenderedFrame:
        """One frame (or the atlas), coalesced per client: a newer request aborts a waiting older one.

        `rate_key` names the rate bucket when it differs from the coalescing key.
        """
        session = self._viewable(request.session_id, request.join_token, authorized)
        self._take_render_token(client_key if rate_key is None else rate_key)
        await self._ensure_engine(session)
        bundle = session.bundle
        params = check_render_request(request, bundle.num_frames, bundle.width, bundle.height, bundle.atlas_size,
                                      self.limits.min_scale)
        return await self._submit_render(client_key, session, params, request.request_id)

    async def _submit_render(self, key: Any, session: Session, params: Any, request_id: int) -> Any:
        if self.worker is None or self._closing:
            raise CoreError("UNAVAILABLE", "the server is not rendering")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.worker.submit(key, RenderJob(session, params, request_id, future, loop))
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()

    async def playback(self, client_key: Any, request: render_pb2.PlaybackRequest,
                       authorized: frozenset[str] | set[str] = frozenset(),
                       rate_key: Any = None) -> AsyncIterator[render_pb2.RenderedFrame]:
        """Frames at the requested fps, paced by the wall clock: a slow reader skips frames, nothing queues.

        One render is in flight and at most one finished frame waits for the reader; a newer frame replaces
        a waiting one.
        """
        session = self._viewable(request.session_id, request.join_token, authorized)
        self._take_render_token(client_key if rate_key is None else rate_key)
        await self._ensure_engine(session)
        bundle = session.bundle
        fmt, quality, scale = check_format(request.format, request.quality, request.scale, self.limits.min_scale)
        fps = request.fps or bundle.fps
        if not math.isfinite(fps) or not 0 < fps <= self.limits.max_fps:
            raise CoreError("INVALID_ARGUMENT", f"fps {fps:g} is out of range (0, {self.limits.max_fps:g}]")
        end = request.end_frame or bundle.num_frames
        if not request.start_frame < end <= bundle.num_frames:
            raise CoreError("INVALID_ARGUMENT", f"frame range [{request.start_frame}, {end}) is not inside the clip "
                                                f"(0..{bundle.num_frames})")
        return self._playback_frames(client_key, session, request, fmt, quality, scale, fps, end)

    async def _playback_frames(self, client_key: Any, session: Session, request: render_pb2.PlaybackRequest,
                               fmt: str, quality: int, scale: float, fps: float,
                               end: int) -> AsyncIterator[render_pb2.RenderedFrame]:
        from vatlas.server.session.render import RenderParams

        loop = asyncio.get_running_loop()
        count = end - request.start_frame
        key = (client_key, "playback")
        ready = asyncio.Event()
        state: dict[str, Any] = {"frame": None, "done": False, "error": None}

        async def produce() -> None:
            t0 = loop.time()
            n = 0
            try:
                while True:
                    i = int((loop.time() - t0) * fps)
                    if i >= count and not request.loop:
                        break
                    params = RenderParams(request.start_frame + i % count, fmt, quality, scale, None)
                    try:
                        frame = await self._submit_render(key, session, params, n)
                    except CoreError as exc:
                        if exc.code != "ABORTED":
                            raise
                        continue
                    n += 1
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
            if self.worker is not None:
                self.worker.cancel(key)
