"""Per-client rate limits (token buckets) and the server's size limits."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """Bounds applied at the doors and in the core (all configurable for tests and benchmarks)."""

    max_message_bytes: int = 64 * 1024 * 1024  # one gRPC message / WebSocket frame (ops carry images)
    max_upload_bytes: int = 4 * 1024 * 1024 * 1024  # one uploaded video
    ops_per_second: float = 200.0
    ops_burst: float = 400.0
    renders_per_second: float = 400.0
    renders_burst: float = 400.0
    presence_per_second: float = 120.0
    presence_burst: float = 240.0
    max_participants: int = 64
    max_concurrent_rpcs: int = 4096  # beyond this gRPC answers RESOURCE_EXHAUSTED
    max_sessions: int = 1024
    max_event_backlog: int = 10_000  # queued events for one participant before it is cut off as too slow
    min_scale: float = 1.0 / 16.0
    max_fps: float = 240.0
    # WebSocket connections (each holds a file descriptor; gRPC and logs need some too)
    max_ws_connections: int = 512
    max_ws_connections_per_ip: int = 64  # a reverse proxy makes every client one IP: raise it there
    hello_timeout: float = 10.0  # seconds a new WebSocket may stay silent before `hello`
    ws_inbound_queue: int = 64  # frames read ahead of the connection's handler (backpressure beyond)


class TokenBucket:
    """Classic token bucket: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        """Spend n tokens if available; False means the caller is over its rate."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False
