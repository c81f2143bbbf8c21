"""The one error type of the server (edit engine, session core, jobs); doors map its `code`, a `Status`, onto
their transport: the gRPC status of that name, or a WebSocket error frame carrying the name."""

from __future__ import annotations

import enum
from pathlib import Path


class Status(enum.StrEnum):
    """The gRPC status names the server answers with (a StrEnum: each compares equal to its name)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


CODES = frozenset(Status)

# the client's whole answer to a server bug: exception text and paths stay in the server log
INTERNAL_MESSAGE = "internal error (the server log has the details)"


class CoreError(Exception):
    """A request the server refuses (a bad op, a missing session, a full quota): a `Status`, one line for people,
    and `op_id` when it is about one op."""

    def __init__(self, code: Status | str, message: str, op_id: str = "") -> None:
        super().__init__(message)
        self.code = Status(code) if code in CODES else Status.INTERNAL
        self.message = message
        self.op_id = op_id

    def to_dict(self) -> dict[str, str]:
        """The `vatlas.v1.Error` mirror."""
        return {"code": str(self.code), "message": self.message, "op_id": self.op_id}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def scrub_paths(text: str, *roots: Path) -> str:
    """`text` without the server's absolute folders (error messages go to remote clients)."""
    for root in roots:
        for form in {str(root), str(Path(root).resolve())}:
            text = text.replace(form + "/", "").replace(form, "")
    return text
