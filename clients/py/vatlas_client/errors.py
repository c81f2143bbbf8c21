"""gRPC statuses and in-band per-op errors mapped to a small exception hierarchy."""

from __future__ import annotations

import grpc
from vatlas_wire.v1 import common_pb2


class VatlasError(Exception):
    """Base class of every error the client raises; carries the status name and the server's message."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None, op_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.op_id = op_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class InvalidArgument(VatlasError):
    """The request was malformed (bad field value, bad ROI, unknown op type, ...)."""

    code = "INVALID_ARGUMENT"


class NotFound(VatlasError):
    """A named bundle, session, upload or op does not exist."""

    code = "NOT_FOUND"


class Unauthenticated(VatlasError):
    """The token is missing or wrong."""

    code = "UNAUTHENTICATED"


class PermissionDenied(VatlasError):
    """The token or join token does not grant this action."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(VatlasError):
    """A server limit was hit (message size, op rate, sessions, participants, ...)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(VatlasError):
    """The server could not be reached, even after the configured retries."""

    code = "UNAVAILABLE"


class DeadlineExceeded(VatlasError):
    """The call ran past its deadline."""

    code = "DEADLINE_EXCEEDED"


class OpRejected(VatlasError):
    """The server refused one edit op (or an undo/redo); `code` is the reason, `op_id` the op."""

    def __init__(self, message: str, *, code: str = "INVALID_ARGUMENT", op_id: str = "") -> None:
        super().__init__(message, code=code, op_id=op_id)

    def __str__(self) -> str:
        about = f" (op {self.op_id!r})" if self.op_id else ""
        return f"op rejected{about}: {self.code}: {self.message}"


_BY_CODE: dict[str, type[VatlasError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable,
                DeadlineExceeded)
}


def error_for_code(code: str, message: str, *, op_id: str = "") -> VatlasError:
    """The exception for a gRPC status name (unknown names give a plain VatlasError carrying the name)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return VatlasError(message, code=code or "UNKNOWN", op_id=op_id)
    return cls(message, op_id=op_id)


def from_rpc_error(error: grpc.RpcError) -> VatlasError:
    """Map a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`) to a VatlasError."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    status = code_fn() if callable(code_fn) else None
    message = (details_fn() if callable(details_fn) else None) or str(error)
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    return error_for_code(name, message)


def from_error_message(error: common_pb2.Error) -> VatlasError:
    """Map an in-band `vatlas.v1.Error` (a stream-level error event) to a VatlasError."""
    return error_for_code(error.code, error.message, op_id=error.op_id)


def rejection(error: common_pb2.Error, op_id: str) -> OpRejected:
    """An OpRejected carrying the server's code and message."""
    return OpRejected(error.message, code=error.code or "INVALID_ARGUMENT", op_id=op_id or error.op_id)
