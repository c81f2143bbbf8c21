"""vatlas_client: a typed Python client for the vatlas render server (gRPC).

    from vatlas_client import Client
    with Client("localhost:50051", token="secret") as client:
        with client.open_session("clip") as session:
            session.stroke([(10, 10), (80, 40)], frame=0, color="#ff0000")
            client.export(session, "edited.mp4")
"""

from __future__ import annotations

from . import ops
from .aio import AsyncClient, AsyncSession
from .client import Client, Session
from .errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OpRejected,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VatlasError,
)
from .images import encode_image
from .records import (
    Ack,
    BundleInfo,
    ExportProgress,
    FitProgress,
    Frame,
    OpEvent,
    Participant,
    PresenceEvent,
    Roi,
    SessionInfo,
)

__all__ = [
    "Ack",
    "AsyncClient",
    "AsyncSession",
    "BundleInfo",
    "Client",
    "DeadlineExceeded",
    "ExportProgress",
    "FitProgress",
    "Frame",
    "InvalidArgument",
    "NotFound",
    "OpEvent",
    "OpRejected",
    "Participant",
    "PermissionDenied",
    "PresenceEvent",
    "Roi",
    "ResourceExhausted",
    "Session",
    "SessionInfo",
    "Unauthenticated",
    "Unavailable",
    "VatlasError",
    "encode_image",
    "ops",
]
