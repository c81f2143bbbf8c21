"""The server token and the protocol version, checked the same way by both doors."""

from __future__ import annotations

import hmac

from vatlas.server.errors import CoreError
from vatlas_wire.v1 import common_pb2

PROTOCOL_VERSION = common_pb2.PROTOCOL_VERSION_CURRENT


def check_token(expected: str | None, offered: str) -> None:
    """Raise UNAUTHENTICATED unless the server has no token or `offered` matches it."""
    if not expected:
        return
    if not offered or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise CoreError("UNAUTHENTICATED", "missing or wrong server token")


def bearer(value: str) -> str:
    """The token of an `authorization: Bearer T` header value ("" when malformed)."""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def check_protocol(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise CoreError("FAILED_PRECONDITION", f"protocol version {version} is not supported (this server speaks "
                                               f"{PROTOCOL_VERSION})")
