"""Participants of a session: identity, presence (cursor, frame, tool) and their outgoing event queue."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from vatlas.server.errors import CoreError
from vatlas.server.session.limits import ServerLimits, TokenBucket
from vatlas_wire.v1 import common_pb2, edits_pb2, sessions_pb2

# matched with fullmatch: "$" alone would also accept a trailing newline
PARTICIPANT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,40}")
COLOR = re.compile(r"#[0-9a-fA-F]{6}")
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")
MAX_NAME = 64
MAX_TOOL = 32


def check_participant_id(value: str) -> str:
    if not value:
        return "p-" + secrets.token_hex(6)
    if not PARTICIPANT_ID.fullmatch(value):
        raise CoreError("INVALID_ARGUMENT", f"participant_id {value!r} must be 1..40 characters of [A-Za-z0-9_.:-]")
    return value


def check_name(value: str, fallback: str) -> str:
    if len(value) > MAX_NAME or any(ord(c) < 32 for c in value):
        raise CoreError("INVALID_ARGUMENT", f"name must be at most {MAX_NAME} printable characters")
    return value or fallback


def check_color(value: str, fallback: str) -> str:
    if value and not COLOR.fullmatch(value):
        raise CoreError("INVALID_ARGUMENT", f"color {value!r} must look like #rrggbb")
    return value.lower() if value else fallback


class Participant:
    """One connected participant. Events go out through `events` (None = the stream is over)."""

    def __init__(self, session: Any, participant_id: str, name: str, color: str, limits: ServerLimits) -> None:
        self.session = session
        self.participant_id = participant_id
        self.name = name
        self.color = color
        self.cursor: tuple[float, float] | None = None
        self.frame = 0
        self.tool = ""
        self.events: asyncio.Queue[sessions_pb2.ServerEvent | None] = asyncio.Queue()
        self.closed = False
        self._backlog = limits.max_event_backlog
        self.ops_bucket = TokenBucket(limits.ops_per_second, limits.ops_burst)
        self.presence_bucket = TokenBucket(limits.presence_per_second, limits.presence_burst)

    def to_proto(self) -> sessions_pb2.Participant:
        msg = sessions_pb2.Participant(participant_id=self.participant_id, name=self.name, color=self.color,
                                       frame=self.frame, tool=self.tool)
        if self.cursor is not None:
            msg.cursor.CopyFrom(edits_pb2.Vec2(x=self.cursor[0], y=self.cursor[1]))
        return msg

    def send(self, event: sessions_pb2.ServerEvent) -> None:
        """Queue an event; a participant that lets events pile up is cut off (it may resume with last_seq)."""
        if self.closed:
            return
        if self.events.qsize() >= self._backlog:
            self.close(common_pb2.Error(code="RESOURCE_EXHAUSTED",
                                        message="too slow to read events; reconnect with last_seq to resume"),
                       drop_pending=True)
            return
        self.events.put_nowait(event)

    def close(self, error: common_pb2.Error | None = None, *, drop_pending: bool = False) -> None:
        """End the participant's event stream (after an optional final error)."""
        if self.closed:
            return
        self.closed = True
        while drop_pending and not self.events.empty():
            self.events.get_nowait()
        if error is not None:
            self.events.put_nowait(sessions_pb2.ServerEvent(error=error))
        self.events.put_nowait(None)
