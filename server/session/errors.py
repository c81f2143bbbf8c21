"""The one error type the core raises; doors map `code` (a gRPC status name) onto their transport."""

from __future__ import annotations

from pathlib import Path

CODES = frozenset({
    "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "CANCELLED",
    "DEADLINE_EXCEEDED",
})

# the client's whole answer to a server bug: exception text and paths stay in the server log
INTERNAL_MESSAGE = "internal error (the server log has the details)"


class CoreError(Exception):
    """A request the core refuses; `code` is a gRPC status name, `op_id` set when it is about one op."""

    def __init__(self, code: str, message: str, op_id: str = "") -> None:
        super().__init__(message)
        self.code = code if code in CODES else "INTERNAL"
        self.message = message
        self.op_id = op_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def scrub_paths(text: str, *roots: Path) -> str:
    """`text` without the server's absolute folders (error messages go to remote clients)."""
    for root in roots:
        for form in {str(root), str(Path(root).resolve())}:
            text = text.replace(form + "/", "").replace(form, "")
    return text
