"""Per-client rate limits (token buckets) and the server's size limits."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Bounds applied at the doors and in the core (all configurable: `vatlas serve --limit NAME=VALUE`)."""

    max_message_bytes: int = 64 * MIB  # one gRPC message / WebSocket frame (ops carry images)
    max_upload_bytes: int = 4 * 1024 * MIB  # one uploaded video
    ops_per_second: float = 200.0
    ops_burst: float = 400.0
    # renders and playback frames: per connection, and per identity (client address + credential) over all
    # of its connections, so neither random client ids nor more connections buy more GPU time
    renders_per_second: float = 400.0
    renders_burst: float = 400.0
    identity_renders_per_second: float = 1600.0
    identity_renders_burst: float = 1600.0
    render_batch: int = 16  # frames rendered together at most: a waiting client waits for one batch
    presence_per_second: float = 120.0
    presence_burst: float = 240.0
    max_participants: int = 64
    max_concurrent_rpcs: int = 4096  # beyond this gRPC answers RESOURCE_EXHAUSTED
    max_grpc_connections: int = 256  # open gRPC connections in all (grpc.aio cannot cap them per address)
    max_grpc_calls_per_address: int = 512  # gRPC calls in flight from one client address
    grpc_idle_seconds: float = 600.0  # a gRPC connection without calls for this long is closed
    max_sessions: int = 1024
    # sessions whose state (edit engine, document, open log) is in memory; beyond it the least recently used
    # one without participants is unloaded (with --data its state stays on disk and comes back on demand)
    max_loaded_sessions: int = 64
    session_idle_seconds: float = 300.0  # a session without participants or renders this long is unloaded
    compact_every: int = 256  # ops after the last snapshot before the op log is snapshotted and compacted
    # images a session's document keeps as uploaded (the engine keeps them cropped, under its own budget)
    max_document_image_bytes: int = 512 * MIB
    max_event_backlog: int = 10_000  # queued events for one participant before it is cut off as too slow
    min_scale: float = 1.0 / 16.0
    max_fps: float = 240.0
    # WebSocket connections (each holds a file descriptor; gRPC and logs need some too)
    max_ws_connections: int = 512
    max_ws_connections_per_ip: int = 64  # a reverse proxy makes every client one IP: raise it there
    hello_timeout: float = 10.0  # seconds a new WebSocket may stay silent before `hello`
    ws_inbound_queue: int = 2  # frames the WebSocket library reads ahead of the connection's reader
    ws_inbound_bytes: int = 96 * MIB  # bytes of a connection's frames read but not yet handled (backpressure)
    # uploads and fits
    upload_idle_seconds: float = 60.0  # a WebSocket upload whose next chunk does not come this soon is dropped
    max_upload_store_bytes: int = 16 * 1024 * MIB  # every upload kept on disk together (oldest unused go first)
    max_fit_pixels: int = 2048 * 2048  # working frame size of a fit
    max_fit_iterations: int = 100_000
    max_fit_video_bytes: int = 8 * 1024 * MIB  # decoded RGB frames a fit holds (source and working size)
    max_concurrent_fits: int = 1  # a fit takes the GPU for minutes
    max_concurrent_exports: int = 2  # exports share the GPU with live rendering


def parse_limit(text: str) -> tuple[str, Any]:
    """'NAME=VALUE' for one ServerLimits field, VALUE converted to the field's type."""
    name, sep, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(ServerLimits)}
    if not sep or name not in fields:
        raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}; got {text!r}")
    kind = type(getattr(ServerLimits(), name))
    try:
        number = kind(float(value)) if kind is int and "e" in value.lower() else kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return name, number


class TokenBucket:
    """Classic token bucket: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, n: float = 1.0) -> bool:
        """Spend n tokens if available; False means the caller is over its rate."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until n tokens are there (0 when they are now)."""
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate) if self.rate > 0 else float("inf")


def take_all(buckets: list[TokenBucket], n: float = 1.0) -> bool:
    """Spend n tokens from every bucket, or from none when one of them is short."""
    if all(b.wait_time(n) == 0.0 for b in buckets):
        for b in buckets:
            b.take(n)
        return True
    return False
