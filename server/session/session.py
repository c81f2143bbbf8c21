"""One editing session: its bundle and engine, document, durable op log and records, participants and each one's
undo history, and the commit of an op (the log first, then the engine, then the document) with the snapshots
that keep the log short. The core (core.py) holds the sessions and speaks the protocol around them."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vatlas.server.edits.ops import OpLimits
from vatlas.server.errors import CoreError
from vatlas.server.session.document import Document
from vatlas.server.session.oplog import OpLog, SessionStore
from vatlas.server.session.presence import Participant
from vatlas_wire.v1 import sessions_pb2

if TYPE_CHECKING:  # the engine imports torch: only for the annotations
    from vatlas.models.bundle import Bundle
    from vatlas.server.edits.engine import EditEngine

log = logging.getLogger(__name__)


@dataclass
class History:
    undo: list[dict[str, Any]] = field(default_factory=list)
    redo: list[dict[str, Any]] = field(default_factory=list)


class Session:
    """One editing session on one bundle: its document, op log and records, participants and their undo
    history, and the commit of an op under its lock (log first, then engine, then document)."""

    def __init__(self, session_id: str, bundle_name: str, join_token: str, created: float,
                 persisted: bool = False, *, store: SessionStore | None = None, compact_every: int = 0) -> None:
        self.session_id = session_id
        self.bundle_name = bundle_name
        self.join_token = join_token
        self.created = created
        self.persisted = persisted  # its op log is on disk: unloading may drop everything but the metadata
        self.store = store  # where its snapshots go (persisted sessions)
        self.compact_every = compact_every  # ops between snapshots (ServerLimits.compact_every)
        self.bundle: Bundle | None = None
        self.engine: EditEngine | None = None
        self.op_limits = OpLimits()
        self.doc: Document | None = Document()  # None: unloaded (state on disk only)
        self.seq = 0
        self.applied_seq = 0  # read by the render thread
        self.records: list[dict[str, Any]] = []  # every record after `records_from`, in seq order
        self.records_from = 0  # a participant may resume from any last_seq >= this
        self.base_seq = 0  # seq of the document state last snapshotted (0: none yet)
        self.snap_seq: int | None = None  # seq of the snapshot file (None: there is none)
        self.prev_seq = 0  # seq of the fallback snapshot (0: none; the log then starts at seq 1)
        self.next_compact = 0  # compaction is tried again from this seq after a failure
        self.compacting = False
        self.participants: dict[str, Participant] = {}
        self.history: dict[str, History] = {}
        self.lock = asyncio.Lock()
        self.oplog: OpLog | None = None
        self.colors_used = 0
        self.last_used = time.monotonic()

    @property
    def holds_memory(self) -> bool:
        """Counts against max_loaded_sessions: an engine, or (with --data) a document and an open log."""
        return self.engine is not None or (self.persisted and self.doc is not None)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def info(self, *, with_token: bool) -> sessions_pb2.SessionInfo:
        return sessions_pb2.SessionInfo(session_id=self.session_id, bundle=self.bundle_name,
                                        join_token=self.join_token if with_token else "", seq=self.seq,
                                        participants=len(self.participants))

    def broadcast(self, event: sessions_pb2.ServerEvent, *, skip: Participant | None = None) -> None:
        for participant in list(self.participants.values()):
            if participant is not skip:
                participant.send(event)

    async def commit(self, pid: str, op: dict[str, Any], kind: str, *,
                     spawn: Callable[[Coroutine[Any, Any, None]], None]) -> int:
        """Persist (write + fsync), apply, sequence one checked op. Caller holds the lock; a compaction that is
        due is handed to `spawn`.

        The log comes first: an op the disk refused must never reach the engine (it would show in renders and
        block its own retry with ALREADY_EXISTS). An op the engine then refuses is cut from the log again.
        """
        seq = self.seq + 1
        op_id = op.get("id", "")
        sender = self.participants.get(pid)
        author = {"participant_id": pid, **({"name": sender.name, "color": sender.color} if sender else {})}
        record = {"seq": seq, "participant_id": pid, "kind": kind, "op": op, "time": time.time(), "author": author}
        offset = None
        if self.oplog is not None:
            try:
                offset = await asyncio.to_thread(self.oplog.append, record)
            except (OSError, RuntimeError) as exc:
                log.error("session %s: cannot persist op %d: %s", self.session_id, seq, exc)
                raise CoreError("UNAVAILABLE", f"the op could not be stored ({storage_reason(exc)}); nothing was "
                                               "applied, try again later", op_id) from None
        if self.engine is not None:
            try:
                await asyncio.to_thread(self.engine.apply, op)
            except Exception as exc:
                await self._unlog(offset)
                if isinstance(exc, CoreError):
                    raise
                log.exception("session %s: engine refused op", self.session_id)
                raise CoreError("INTERNAL", "the engine failed on this op (see the server log)", op_id) from None
        self.seq = seq
        self.records.append(record)
        assert self.doc is not None
        self.doc.apply(op, seq, author)
        self.applied_seq = seq
        self.touch()
        if (seq - self.base_seq >= self.compact_every and seq >= self.next_compact
                and not self.compacting):
            self.compacting = True
            spawn(self.compact())
        return seq

    async def compact(self) -> None:
        """Snapshot the document and cut the log back to the records after the fallback snapshot (L7).

        The snapshot is taken under the session's lock and written outside it (ops go on meanwhile); the log
        is rewritten under the lock. A failure (full disk) leaves files that still hold everything; it is
        tried again after another quarter of compact_every ops.
        """
        try:
            async with self.lock:
                if self.doc is None or (self.persisted and self.oplog is None):
                    return  # unloaded meanwhile: the next load compacts when it is due
                self.doc.compact(restorable(self))
                fallback = self.snap_seq if self.snap_seq is not None else self.prev_seq
                state = {"seq": self.seq, "fallback_seq": fallback, "time": time.time(), **self.doc.state()}
            if self.persisted:
                assert self.store is not None
                await asyncio.to_thread(self.store.write_snapshot, self.session_id, state)
            async with self.lock:
                # the files now hold this snapshot, whatever the log rewrite below does
                self.base_seq, self.snap_seq, self.prev_seq = int(state["seq"]), int(state["seq"]), fallback
                kept = [r for r in self.records if r["seq"] > fallback]
                if self.persisted:
                    if self.oplog is None:
                        return
                    await asyncio.to_thread(self.oplog.compact, kept)
                self.records = kept
                self.records_from = max(self.records_from, fallback)
                log.info("session %s: snapshot at seq %d, %d records kept", self.session_id, state["seq"],
                         len(kept))
        except (OSError, RuntimeError) as exc:
            self.next_compact = self.seq + max(1, self.compact_every // 4)
            log.error("session %s: cannot snapshot the op log (%s); it keeps growing until this works",
                      self.session_id, storage_reason(exc))
        finally:
            self.compacting = False

    async def _unlog(self, offset: int | None) -> None:
        """Cut a logged record the engine refused; if even that fails, the record replays (and is refused)."""
        if offset is None or self.oplog is None:
            return
        try:
            await asyncio.to_thread(self.oplog.rollback, offset)
        except OSError as exc:
            log.error("session %s: cannot cut a refused op from the log: %s", self.session_id, exc)


def restorable(session: Session) -> set[str]:
    """Objects an undo or redo step may restore (only a "restore" step brings a deleted object back)."""
    return {step.get("target", "") for h in session.history.values() for step in (*h.undo, *h.redo)
            if step.get("type") == "restore"}


def storage_reason(exc: BaseException) -> str:
    """A client-safe name for a storage failure: the errno's name, never a path or the OS message."""
    number = getattr(exc, "errno", None)
    if number == errno.ENOSPC:
        return "the server's disk is full"
    return errno.errorcode.get(number, "storage error") if isinstance(number, int) else "storage error"
