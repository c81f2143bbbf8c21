"""The session core: bundles, sessions, the authoritative op log, participants, presence, undo, rendering.

No transport code lives here: the gRPC and WebSocket doors call these coroutines (all on the event loop) and
forward what comes out. Requests and events are `vatlas.v1` proto messages; ops are dicts in the mirror form
the edit engine takes.

Op path (per session, under the session's lock, so sequence order = log order = broadcast order)::

    rate limit -> validate_op -> Document.check -> EditEngine.apply (thread) -> seq += 1
    -> OpLog.append (write + fsync, thread) -> OpAccepted to the sender -> OpApplied to every participant

Memory (H3, L7): every `compact_every` ops the document is snapshotted and the log compacted (see
`oplog`), so replay and the records kept in memory are bounded. At most `max_loaded_sessions` sessions hold
their state (edit engine, document, open log) in memory: the least recently used one without participants
is unloaded to make room, and idle ones are unloaded after `session_idle_seconds`. With `--data` an unloaded
session is only on disk and is loaded again by the next join, op or render; without it only its engine is
dropped (and rebuilt from the document when needed).

Undo/redo are per participant (history kept in memory across reconnects of one participant id, not across
server restarts): the inverse of each accepted op is computed against the state it replaced and submitted as
a new op when the participant undoes, so everyone sees undo as an ordinary op in the log. Every undo/redo
gets exactly one answer: OpAccepted (op_id "undo:..."/"redo:...") or OpRejected with op_id "" (nothing to
undo, or someone else's edit made the step impossible: that step is dropped).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vatlas.server.edits.ops import ID_PATTERN, OBJECT_TYPES, OpLimits, validate_op
from vatlas.server.edits.region import check_on_region
from vatlas.server.errors import CoreError
from vatlas.server.session.bundles import BundleRegistry, check_bundle_name
from vatlas.server.session.document import Document
from vatlas.server.session.jobs import Jobs
from vatlas.server.session.limits import ServerLimits
from vatlas.server.session.oplog import Damage, SessionStore
from vatlas.server.session.presence import (
    MAX_TOOL,
    PALETTE,
    Participant,
    check_color,
    check_name,
    check_participant_id,
)
from vatlas.server.session.render import (
    RenderWorker,
)
from vatlas.server.session.session import History, Session, restorable
from vatlas.server.session.viewing import Viewing
from vatlas_wire.v1 import bundles_pb2, common_pb2, edits_pb2, mirror, sessions_pb2

if TYPE_CHECKING:  # the engine imports torch: only for the annotations
    from vatlas.server.edits.engine import EditEngine

log = logging.getLogger(__name__)

MAX_HISTORY = 1000


@dataclass
class CoreConfig:
    models_dir: Path
    data_dir: Path | None = None
    device: str = "auto"
    limits: ServerLimits = field(default_factory=ServerLimits)
    fsync: bool = True


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
            raise CoreError("INVALID_ARGUMENT", f"{key} must be 1..64 characters of [A-Za-z0-9_.:-]", op_id)


def op_to_proto(op: dict[str, Any]) -> edits_pb2.EditOp:
    return mirror.from_mirror(op, edits_pb2.EditOp)  # type: ignore[return-value]


class ServerCore:
    """Everything stateful about a running server; doors hold one of these."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.bundles = BundleRegistry(config.models_dir)
        self.store = SessionStore(config.data_dir) if config.data_dir is not None else None
        self.sessions: dict[str, Session] = {}
        self.worker: RenderWorker | None = None
        self.started = time.time()
        self._closing = False
        self.jobs = Jobs(self, config.data_dir)
        self._resume_secret = secrets.token_bytes(32)  # undo history lives in memory too: per process is enough
        self.damaged_logs: list[tuple[str, Damage]] = []  # repaired at start: reported by the server's banner
        self._tasks: set[asyncio.Task] = set()  # compactions and the idle sweeper
        self.viewing = Viewing(self)  # renders and playback for the doors

    @property
    def closing(self) -> bool:
        return self._closing

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Replay stored sessions (repairing their logs) and start the render worker and the idle sweeper.

        Every stored session is read once (so damage is reported at start and `seq` is known); the most
        recently created `max_loaded_sessions` stay loaded, the others are loaded again when used.
        """
        await asyncio.to_thread(self.jobs.clean_orphans)
        if self.store is not None:
            stored = self.store.stored_sessions()
            keep = {sid for sid, _ in stored[-self.limits.max_loaded_sessions:]}
            for session_id, meta in stored:
                session = Session(session_id, str(meta.get("bundle", "")), str(meta.get("join_token", "")),
                                  float(meta.get("created", 0.0)), persisted=True, store=self.store,
                                  compact_every=self.limits.compact_every)
                await asyncio.to_thread(self._load_state, session, True)
                if session_id not in keep:
                    await asyncio.to_thread(self._drop_state, session)
                self.sessions[session_id] = session
        from vatlas.server.encoders import encode

        self.worker = RenderWorker(encode, self.limits.render_batch)
        self.worker.start()
        self._spawn(self._sweep_idle())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load_state(self, session: Session, at_start: bool = False) -> None:
        """Read a persisted session's snapshot and log into memory (a worker thread; caller holds the lock or
        the session is not registered yet)."""
        assert self.store is not None
        session_id = session.session_id
        oplog, replay = self.store.open_log(session_id)
        snap = self.store.read_snapshot(session_id)
        state = snap.state
        doc = Document.from_state(state) if state is not None else Document()
        base_seq = int(state["seq"]) if state is not None else 0
        if state is None:
            snap_seq, prev_seq = None, 0
        elif snap.name == "current":
            snap_seq, prev_seq = base_seq, int(state.get("fallback_seq", 0))
        else:  # the newest snapshot was unreadable: the fallback and the log behind it rebuild the session
            snap_seq, prev_seq = None, base_seq
        seq, lost = base_seq, []
        for record in replay.records:
            rseq = record.get("seq")
            if not isinstance(rseq, int) or rseq <= base_seq:
                continue
            lost.extend(range(seq + 1, rseq))
            op = record.get("op")
            try:
                doc.check(op)  # type: ignore[arg-type]
                author = record.get("author") or {"participant_id": str(record.get("participant_id", ""))}
                doc.apply(op, rseq, author)  # type: ignore[arg-type]
            except (CoreError, KeyError, TypeError) as exc:
                log.warning("session %s: record %s does not apply (%s); kept in the log", session_id, rseq, exc)
            seq = rseq
        records = [r for r in replay.records if isinstance(r.get("seq"), int) and r["seq"] > prev_seq]
        records_from = seq
        for record in reversed(records):  # resumable from where the records are complete
            if record["seq"] != records_from:
                break
            records_from -= 1
        session.records = [r for r in records if r["seq"] > records_from]
        session.records_from = records_from
        # deleted objects no undo step can restore are not kept (after a restart: none can)
        doc.compact(restorable(session))
        session.oplog, session.doc, session.base_seq = oplog, doc, base_seq
        session.snap_seq, session.prev_seq, session.next_compact = snap_seq, prev_seq, 0
        session.seq = session.applied_seq = seq
        damage = replay.damage
        if snap.damaged or lost:
            if lost:
                log.error("session %s: ops %s are lost (damaged snapshot or log)", session_id, lost[:20])
            damage = Damage(damage.ranges if damage else [], sorted(set(lost) | set(damage.missing_seqs
                                                                                    if damage else ())),
                            damage.quarantined if damage and damage.quarantined else
                            (snap.damaged[0] if snap.damaged else None))
        if damage is not None and at_start:
            self.damaged_logs.append((session_id, damage))
        log.info("loaded session %s: seq %d, snapshot at %d, %d records (%d torn bytes cut)", session_id, seq,
                 base_seq, len(replay.records), replay.truncated_bytes)

    @staticmethod
    def _drop_state(session: Session) -> None:
        """Unload: free the engine, and with --data the document, records and open log too (a thread)."""
        session.engine = None
        if session.persisted:
            if session.oplog is not None:
                session.oplog.close()
            session.oplog, session.doc, session.records = None, None, []

    async def _ensure_loaded(self, session: Session) -> Document:
        """The session's document, loading a persisted session that was unloaded. Caller holds the lock."""
        if session.doc is None:
            await self._make_room(session)
            await asyncio.to_thread(self._load_state, session)
        assert session.doc is not None
        return session.doc

    async def _make_room(self, session: Session) -> None:
        """Unload the least recently used idle session when loading `session` would pass max_loaded_sessions."""
        cap = self.limits.max_loaded_sessions
        loaded = [s for s in self.sessions.values() if s.holds_memory and s is not session]
        if len(loaded) < cap:
            return
        idle = sorted((s for s in loaded if not s.participants and not s.lock.locked()), key=lambda s: s.last_used)
        for victim in idle[:len(loaded) - cap + 1]:
            async with victim.lock:
                if not victim.participants:
                    await asyncio.to_thread(self._drop_state, victim)
        if sum(s.holds_memory for s in self.sessions.values() if s is not session) >= cap:
            raise CoreError("RESOURCE_EXHAUSTED", f"the server already holds {cap} sessions in memory, all in use: "
                                                  "try again when one is left")

    async def _sweep_idle(self) -> None:
        """Unload sessions nobody has used for session_idle_seconds."""
        idle = self.limits.session_idle_seconds
        while not self._closing:
            await asyncio.sleep(min(30.0, max(0.05, idle / 4)))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if (session.holds_memory and not session.participants and not session.lock.locked()
                        and now - session.last_used >= idle):
                    async with session.lock:
                        if not session.participants and not self._closing:
                            await asyncio.to_thread(self._drop_state, session)
                            log.info("session %s unloaded after %.0f s idle", session.session_id, idle)

    async def close(self) -> None:
        """Finish in-flight ops, end every participant's stream, stop rendering, flush and close the logs."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions.values()):
            async with session.lock:  # an op being committed finishes first
                for participant in list(session.participants.values()):
                    participant.close(_error("UNAVAILABLE", "the server is shutting down"))
                if session.oplog is not None:
                    await asyncio.to_thread(session.oplog.close)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        await self.jobs.close()

    # ---------------------------------------------------------------- bundles

    def list_bundles(self) -> list[bundles_pb2.BundleInfo]:
        return self.bundles.list()

    def bundle_info(self, name: str) -> bundles_pb2.BundleInfo:
        return self.bundles.info(check_bundle_name(name))

    async def load_bundle(self, name: str) -> bundles_pb2.BundleInfo:
        await self.bundles.load(check_bundle_name(name))
        return self.bundles.info(name)

    # ---------------------------------------------------------------- sessions

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise CoreError("NOT_FOUND", f"no session {session_id!r}")
        return session

    async def ensure_engine(self, session: Session) -> EditEngine:
        """Load the session if it was unloaded, then build its engine from the snapshot and the records after
        it (once, lazily)."""
        session.touch()
        if session.engine is not None:
            return session.engine
        async with session.lock:
            return await self._ensure_engine_locked(session)

    async def _ensure_engine_locked(self, session: Session) -> EditEngine:
        if session.engine is not None:
            return session.engine
        await self._ensure_loaded(session)
        if session.engine is None and not session.persisted:
            await self._make_room(session)  # a persisted session made room when it was loaded
        bundle = await self.bundles.load(session.bundle_name)
        from vatlas.server.edits.engine import EditEngine

        assert session.doc is not None
        ops = session.doc.engine_ops()  # the document's objects as they are now: no history replayed

        def build() -> Any:
            engine = EditEngine(bundle, device=self.config.device)
            for op in ops:
                try:
                    engine.apply(op)
                except CoreError as exc:
                    log.warning("session %s: replayed op %s refused by the engine: %s", session.session_id,
                                op.get("id") or op.get("target"), exc)
            return engine

        engine = await asyncio.to_thread(build)
        session.bundle = bundle
        session.op_limits = OpLimits.for_bundle(bundle)
        session.engine = engine
        session.touch()
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
            raw = mirror.to_mirror(op_msg)
            hidden = raw.pop("visible", None) is False and raw.get("type") in OBJECT_TYPES
            try:
                check_op_ids(raw, raw.get("id", "") if isinstance(raw.get("id"), str) else "")
                op = validate_op(raw, op_limits)
                scratch.check(op)
                if op["type"] in OBJECT_TYPES:
                    check_on_region(bundle, op)
            except CoreError as exc:
                raise CoreError(exc.code, f"document op {i}: {exc.message}", exc.op_id) from None
            scratch.apply(op)
            ops.append(op)
            if hidden:
                ops.append({"type": "set_visible", "target": op["id"], "visible": False})
                scratch.apply(ops[-1])
        if scratch.image_bytes > self.limits.max_document_image_bytes:
            raise CoreError("RESOURCE_EXHAUSTED", f"the document's images take {scratch.image_bytes} bytes (limit "
                                                  f"{self.limits.max_document_image_bytes})")
        session_id = "s" + secrets.token_hex(8)
        session = Session(session_id, name, secrets.token_urlsafe(18), time.time(), persisted=self.store is not None,
                          store=self.store, compact_every=self.limits.compact_every)
        await self._make_room(session)
        if self.store is not None:
            meta = {"session_id": session_id, "bundle": name, "join_token": session.join_token,
                    "created": session.created}
            await asyncio.to_thread(self.store.save_meta, session_id, meta)
            session.oplog, _ = await asyncio.to_thread(self.store.open_log, session_id)
        self.sessions[session_id] = session

        async def sequence() -> None:
            async with session.lock:
                for op in ops:
                    await session.commit("", op, "document", spawn=self._spawn)

        await _uncancellable(sequence())
        await self.ensure_engine(session)
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
        await self.ensure_engine(session)
        async with session.lock:
            await self._ensure_engine_locked(session)  # unloaded again while this join waited for the lock
            assert session.doc is not None
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
            resume = request.last_seq > 0 and request.last_seq >= session.records_from
            if not resume:  # a first join, or a resume point compacted away: the whole document instead
                snapshot.document.CopyFrom(edits_pb2.EditDocument(
                    version=1, ops=[op_to_proto(op) for op in session.doc.live_ops()]))
                snapshot.authors.extend(sessions_pb2.LayerAuthor(op_id=op_id, **author)
                                        for op_id, author in session.doc.authors())
            participant.send(_event(snapshot=snapshot))
            session.touch()
            if resume:
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

    async def handle(self, participant: Participant, message: sessions_pb2.ClientMessage) -> bool:
        """One ClientMessage after join, whichever door it came through; False when the participant leaves."""
        kind = message.WhichOneof("kind")
        handler = self._SESSION_HANDLERS.get(kind or "")
        if handler is None:
            text = "already joined" if kind == "join" else "empty session message"
            participant.send(_event(error=_error("FAILED_PRECONDITION" if kind == "join" else "INVALID_ARGUMENT",
                                                 text)))
            return True
        return await handler(self, participant, getattr(message, kind)) is not False

    async def _on_op(self, participant: Participant, op: edits_pb2.EditOp) -> None:
        await self.submit(participant, mirror.to_mirror(op))

    async def _on_undo(self, participant: Participant, _: Any) -> None:
        await self.undo(participant)

    async def _on_redo(self, participant: Participant, _: Any) -> None:
        await self.redo(participant)

    async def _on_presence(self, participant: Participant, update: sessions_pb2.PresenceUpdate) -> None:
        self.presence(participant, update)

    async def _on_leave(self, participant: Participant, _: Any) -> bool:
        return False

    # ClientMessage kinds after join -> their handlers (join itself is the doors' first message, see join()).
    _SESSION_HANDLERS: dict[str, Callable[[ServerCore, Participant, Any], Awaitable[bool | None]]] = {
        "op": _on_op, "undo": _on_undo, "redo": _on_redo, "presence": _on_presence, "leave": _on_leave}

    def leave(self, participant: Participant) -> None:
        """Remove a participant (idempotent) and tell the others."""
        session: Session = participant.session
        if session.participants.get(participant.participant_id) is participant:
            del session.participants[participant.participant_id]
            session.touch()
            session.broadcast(_event(presence=sessions_pb2.PresenceEvent(participant=participant.to_proto(),
                                                                         left=True)))
        participant.close()

    # ---------------------------------------------------------------- ops

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
            await self.ensure_engine(session)
        except CoreError as exc:
            self._reject(participant, exc.code, exc.message, exc.op_id or op_id)
            return

        async def sequence() -> None:
            nonlocal op
            async with session.lock:
                try:
                    await self._ensure_engine_locked(session)
                    assert session.doc is not None
                    session.doc.check(op)
                    self._check_images(session, op)
                    if op["type"] in OBJECT_TYPES and "z" not in op:  # a new object goes on top of the stack
                        op = {**op, "z": session.doc.next_z()}
                    inverse = session.doc.inverse(op)
                    seq = await session.commit(participant.participant_id, op, "op", spawn=self._spawn)
                except CoreError as exc:
                    self._reject(participant, exc.code, exc.message, exc.op_id or op_id)
                    return
                history = session.history.setdefault(participant.participant_id, History())
                if inverse is not None:
                    history.undo.append(inverse)
                    del history.undo[:-MAX_HISTORY]
                history.redo.clear()
                self._announce(session, participant, op, seq)

        await _uncancellable(sequence())

    def _check_images(self, session: Session, op: dict[str, Any]) -> None:
        """Refuse an op that would make the session's document keep more image bytes than its budget (H3)."""
        assert session.doc is not None
        limit = self.limits.max_document_image_bytes
        total = session.doc.image_bytes + session.doc.image_growth(op)
        if total > limit and session.doc.image_growth(op) > 0:
            raise CoreError("RESOURCE_EXHAUSTED", f"this session's images would take {total} bytes (limit {limit}): "
                                                  "delete some (a deleted image is freed once no undo can bring it "
                                                  "back)", op.get("id", ""))

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
        await self.ensure_engine(session)

        async def sequence() -> None:
            async with session.lock:
                try:
                    await self._ensure_engine_locked(session)
                except CoreError as exc:
                    self._reject(participant, exc.code, f"cannot {word}: {exc.message}", "")
                    return
                assert session.doc is not None
                history = session.history.setdefault(participant.participant_id, History())
                source, sink = (history.redo, history.undo) if redo else (history.undo, history.redo)
                if not source:
                    self._reject(participant, "FAILED_PRECONDITION", f"nothing to {word}", "")
                    return
                op = {**source.pop(), "id": f"{word}:{secrets.token_hex(10)}"}
                try:
                    op = validate_op(op, session.op_limits)
                    session.doc.check(op)
                    self._check_images(session, op)
                    inverse = session.doc.inverse(op)
                    seq = await session.commit(participant.participant_id, op, word, spawn=self._spawn)
                except CoreError as exc:
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

    def viewable(self, session_id: str, join_token: str, authorized: frozenset[str] | set[str]) -> Session:
        """The session, for a caller that joined it on this connection (`authorized`) or holds its join token;
        PERMISSION_DENIED otherwise."""
        session = self._session(session_id)
        session.touch()
        if session_id in authorized:
            return session
        if not join_token or not hmac.compare_digest(join_token.encode(), session.join_token.encode()):
            raise CoreError("PERMISSION_DENIED", "a valid join_token is needed to view this session")
        return session
