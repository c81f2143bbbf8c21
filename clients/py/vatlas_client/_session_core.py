"""Transport-independent session state: join/resume messages, matching replies to requests, events.

The sync and asyncio sessions own the stream and the waiters; this class decides what each server event means.
Replies are matched to requests by op id; undo/redo carry no id, so they are matched in the order sent.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from vatlas_wire.v1 import edits_pb2, sessions_pb2

from .errors import OpRejected, Unavailable, VatlasError, from_error_message, rejection
from .records import OpEvent, Participant, PresenceEvent, SessionInfo

W = TypeVar("W")  # a waiter: concurrent.futures.Future (sync) or asyncio.Future (async)

Event = OpEvent | PresenceEvent
# Stream errors after which reconnecting is wrong: another connection took over this participant.
FATAL_STREAM_ERRORS = frozenset({"ALREADY_EXISTS"})


@dataclass
class Outcome(Generic[W]):
    """What one server event asks the transport to do."""

    resolved: list[tuple[W, int, str]] = field(default_factory=list)  # waiter, accepted seq, op id
    failed: list[tuple[W, VatlasError]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # others' ops and presence, for the event iterator
    joined: bool = False  # a snapshot arrived: the (re)join is complete
    fatal: VatlasError | None = None  # a stream-level error: the session cannot go on
    notices: list[VatlasError] = field(default_factory=list)  # non-fatal stream errors (bad presence, rate, ...)


class SessionCore(Generic[W]):
    """State of one participant in one session, kept across reconnects."""

    def __init__(self, session_id: str, join_token: str, name: str, color: str, participant_id: str) -> None:
        self.session_id = session_id
        self.join_token = join_token
        self.name = name
        self.color = color
        self.participant_id = participant_id
        self.resume_key = ""  # from the snapshot: proves participant_id is ours when we rejoin
        self.seq = 0  # last applied sequence number seen: the resume point
        self.info: SessionInfo | None = None
        self.document: list[edits_pb2.EditOp] = []
        self.participants: dict[str, Participant] = {}
        self.pending_ops: OrderedDict[str, tuple[edits_pb2.EditOp, W]] = OrderedDict()
        self.pending_controls: deque[tuple[str, W]] = deque()
        self.joins = 0  # how many snapshots were received (1 = first join, more = resumed)
        self._answered: set[str] = set()  # op ids already answered, so a duplicate answer is ignored
        self._resuming = False
        self._in_doubt: set[str] = set()  # ops pending when a connection dropped: a replay may answer them

    def join_message(self) -> sessions_pb2.ClientMessage:
        self._resuming = self.seq > 0  # the server then replays ops after seq instead of sending the document
        join = sessions_pb2.Join(session_id=self.session_id, join_token=self.join_token, name=self.name,
                                 color=self.color, last_seq=self.seq, participant_id=self.participant_id,
                                 resume_key=self.resume_key)
        return sessions_pb2.ClientMessage(join=join)

    def resend_messages(self) -> list[sessions_pb2.ClientMessage]:
        """Ops sent but not yet answered: sent again after a resume (a replayed OpApplied answers them first)."""
        return [sessions_pb2.ClientMessage(op=op) for op, _ in self.pending_ops.values()]

    def add_op(self, op: edits_pb2.EditOp, waiter: W) -> sessions_pb2.ClientMessage:
        if not op.id:
            raise ValueError("op needs an id (build it with vatlas_client.ops)")
        if op.id in self.pending_ops:
            raise ValueError(f"op {op.id!r} is already waiting for the server")
        self.pending_ops[op.id] = (op, waiter)
        return sessions_pb2.ClientMessage(op=op)

    def add_control(self, kind: str, waiter: W) -> sessions_pb2.ClientMessage:
        self.pending_controls.append((kind, waiter))
        if kind == "undo":
            return sessions_pb2.ClientMessage(undo=sessions_pb2.Undo())
        return sessions_pb2.ClientMessage(redo=sessions_pb2.Redo())

    def drop_waiter(self, waiter: W) -> None:
        """Forget a waiter whose caller gave up (timeout)."""
        for op_id, (_, w) in list(self.pending_ops.items()):
            if w is waiter:
                del self.pending_ops[op_id]
        self.pending_controls = deque((k, w) for k, w in self.pending_controls if w is not waiter)

    def on_disconnect(self) -> list[tuple[W, VatlasError]]:
        """Undo/redo cannot be safely repeated, so their waiters fail; ops wait to be re-sent."""
        self._in_doubt.update(self.pending_ops)
        failed = [(w, Unavailable(f"connection lost before the server answered {kind}"))
                  for kind, w in self.pending_controls]
        self.pending_controls.clear()
        return failed

    def fail_all(self, error: VatlasError) -> list[tuple[W, VatlasError]]:
        failed = [(w, error) for _, w in self.pending_ops.values()]
        failed += [(w, error) for _, w in self.pending_controls]
        self.pending_ops.clear()
        self.pending_controls.clear()
        return failed

    def _answer(self, op_id: str, out: Outcome[W], seq: int | None, error: VatlasError | None) -> None:
        if op_id in self.pending_ops:
            _, waiter = self.pending_ops.pop(op_id)
            self._in_doubt.discard(op_id)
        elif self.pending_controls and (not op_id or op_id not in self._answered):
            _, waiter = self.pending_controls.popleft()
        else:
            return  # a late duplicate (e.g. the answer to a re-sent op already answered by a replay)
        if op_id:
            self._answered.add(op_id)
        if error is None:
            out.resolved.append((waiter, int(seq or 0), op_id))
        else:
            out.failed.append((waiter, error))

    def handle(self, event: sessions_pb2.ServerEvent) -> Outcome[W]:
        out: Outcome[W] = Outcome()
        kind = event.WhichOneof("kind")
        if kind == "snapshot":
            snap = event.snapshot
            self.joins += 1
            out.joined = True
            if snap.participant_id:
                self.participant_id = snap.participant_id
                self.resume_key = snap.resume_key
            if snap.HasField("session"):
                self.info = SessionInfo.from_proto(snap.session)
            if not self._resuming or snap.HasField("document"):
                # a first join, or a resume point the server no longer has (its log was compacted): the
                # document replaces ours, and an op in doubt that it holds was applied
                self.seq = snap.session.seq
                self.document = list(snap.document.ops)
                if self._resuming:
                    present = {op.id for op in snap.document.ops}
                    for op_id in [i for i in self._in_doubt if i in present and i in self.pending_ops]:
                        self._answer(op_id, out, snap.session.seq, None)
            self.participants = {p.participant_id: Participant.from_proto(p) for p in snap.participants}
        elif kind == "accepted":
            # Every op sequenced before this one was already delivered (one ordered queue per participant),
            # so the resume point may move here, before the matching `applied` arrives.
            self.seq = max(self.seq, event.accepted.seq)
            self._answer(event.accepted.op_id, out, event.accepted.seq, None)
        elif kind == "rejected":
            rej = event.rejected
            self._answer(rej.op_id, out, None, rejection(rej.error, rej.op_id))
        elif kind == "applied":
            applied = event.applied
            mine = applied.participant_id == self.participant_id
            if mine and applied.op.id in self.pending_ops and applied.op.id in self._in_doubt:
                # A replay after resume: the op was logged before the connection dropped.
                self._answer(applied.op.id, out, applied.seq, None)
            if applied.seq > self.seq:
                self.seq = applied.seq
                if not mine:
                    out.events.append(OpEvent(applied.seq, applied.participant_id, applied.op))
        elif kind == "presence":
            pres = event.presence
            participant = Participant.from_proto(pres.participant)
            if pres.left:
                self.participants.pop(participant.participant_id, None)
            else:
                self.participants[participant.participant_id] = participant
            if participant.participant_id != self.participant_id:
                out.events.append(PresenceEvent(participant, pres.left))
        elif kind == "error":
            wire = event.error
            err = from_error_message(wire)
            control = self.pending_controls[0][0] if self.pending_controls else ""
            if wire.op_id and wire.op_id in self.pending_ops:
                self._answer(wire.op_id, out, None, OpRejected(err.message, code=err.code, op_id=wire.op_id))
            elif control and control in wire.message:
                # older servers refused undo/redo with a stream error naming it rather than `rejected`
                _, waiter = self.pending_controls.popleft()
                out.failed.append((waiter, OpRejected(err.message, code=err.code)))
            elif wire.code in FATAL_STREAM_ERRORS:
                out.fatal = err
            else:
                out.notices.append(err)
        return out
