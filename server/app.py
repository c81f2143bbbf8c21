"""Assemble the server: one session core behind the gRPC door and the HTTP/WebSocket door.

`start_server(config)` starts everything on the running loop and returns a `RunningServer` with the bound
ports (port 0 picks free ones). `RunningServer.stop()` shuts down gracefully: health goes NOT_SERVING, both
doors stop accepting, in-flight calls get `grace` seconds, every op being committed finishes, participants
are told, logs are fsynced and closed. `serve_forever(config)` does the same until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from vatlas.server.doors.grpc_door import start_grpc
from vatlas.server.doors.http import OriginPolicy
from vatlas.server.doors.ws_door import start_ws
from vatlas.server.session.core import CoreConfig, ServerCore
from vatlas.server.session.limits import ServerLimits

log = logging.getLogger(__name__)

READY_PREFIX = "VATLAS_READY "
SHUTDOWN_TIMEOUT = 10.0  # seconds from SIGTERM/Ctrl-C to exit, whatever clients do
CLOSE_GOING_AWAY = 1001
EXIT_FORCED = 130  # a second Ctrl-C: exit at once, like a shell's SIGINT exit status


@dataclass
class ServerConfig:
    models_dir: Path
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    token: str | None = None
    data_dir: Path | None = None
    device: str = "auto"
    limits: ServerLimits = field(default_factory=ServerLimits)
    grace: float = 5.0
    allowed_origins: tuple[str, ...] = ()  # browser origins besides the served one that may use /ws ("*": any)


@dataclass
class RunningServer:
    core: ServerCore
    grpc_server: Any
    ws_server: Any
    health: Any
    grpc_port: int
    http_port: int
    config: ServerConfig

    @property
    def grpc_target(self) -> str:
        return f"{self.config.grpc_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.http_host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.http_host}:{self.http_port}/ws"

    def browser_url(self, **query: str) -> str:
        """The web client's address with the server token (so one click opens it) and any other parameters."""
        host = self.config.http_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # bound to every interface: loopback reaches it
        elif ":" in host:
            host = f"[{host}]"
        params = {**query, **({"token": self.config.token} if self.config.token else {})}
        return f"http://{host}:{self.http_port}/" + (f"?{urlencode(params)}" if params else "")

    async def stop(self, grace: float | None = None, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Stop accepting, let in-flight calls finish (up to `grace` s), flush the op logs, close sockets (1001).

        Takes at most `timeout` seconds; False when something had to be cut short (every acknowledged op is
        already fsynced, so nothing is lost by exiting then).
        """
        grace = self.config.grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        clean = True
        await self.health.enter_graceful_shutdown()
        # stop accepting; websockets' own close() acts only once, so it comes last, with the close code
        self.ws_server.server.close()
        try:  # finishes ops being committed, ends participants' streams, fsyncs logs
            await asyncio.wait_for(self.core.close(), max(0.1, deadline - loop.time() - 1.0))
        except TimeoutError:
            log.error("shutdown: the session core did not finish within %.0f s; closing anyway", timeout)
            clean = False
        await self.grpc_server.stop(max(0.0, min(grace, deadline - loop.time() - 0.5)))
        self.ws_server.close(close_connections=True, code=CLOSE_GOING_AWAY, reason="server shutting down")
        try:
            await asyncio.wait_for(self.ws_server.wait_closed(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            log.error("shutdown: WebSocket connections still open after %.0f s", timeout)
            clean = False
        return clean


async def start_server(config: ServerConfig) -> RunningServer:
    """Start core, gRPC and HTTP/WebSocket on the running loop."""
    core = ServerCore(CoreConfig(models_dir=Path(config.models_dir), data_dir=config.data_dir, device=config.device,
                                 limits=config.limits))
    await core.start()
    grpc_server, grpc_port, health = await start_grpc(core, config.grpc_host, config.grpc_port, config.token)
    try:
        policy = OriginPolicy(config.allowed_origins, server_names=(config.http_host,))
        ws_server, http_port = await start_ws(core, config.http_host, config.http_port, config.token, policy)
    except OSError:
        await grpc_server.stop(0)
        await core.close()
        raise
    return RunningServer(core, grpc_server, ws_server, health, grpc_port, http_port, config)


async def serve_forever(config: ServerConfig, open_query: dict[str, str] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully (at most SHUTDOWN_TIMEOUT s; a second signal exits at once).

    Prints one READY line with the bound addresses and the web client's URL (with the token and `open_query`).
    """
    server = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            print("vatlas serve: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_FORCED)  # every acknowledged op is already fsynced
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    url = server.browser_url(**(open_query or {}))
    ready = {"grpc": server.grpc_target, "http": server.http_url, "ws": server.ws_url, "url": url,
             "sessions": len(server.core.sessions), "damaged_logs": len(server.core.damaged_logs)}
    print(READY_PREFIX + json.dumps(ready), flush=True)
    print(f"vatlas serve: gRPC on {server.grpc_target}, WebSocket at {server.ws_url}", file=sys.stderr, flush=True)
    for session_id, damage in server.core.damaged_logs:
        print(f"vatlas serve: WARNING: the op log of session {session_id} was damaged and repaired: "
              f"{damage.describe()}; the damaged file is kept at {damage.quarantined}", file=sys.stderr, flush=True)
    print(f"vatlas serve: open the web client at {url}", file=sys.stderr, flush=True)
    await stop.wait()
    print("vatlas serve: shutting down (Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
    clean = await server.stop()
    print("vatlas serve: stopped" + ("" if clean else " (cut short)"), file=sys.stderr, flush=True)
    if not clean:
        sys.stdout.flush()
        os._exit(1)  # threads still busy (a slow op) would hold up the interpreter's exit
