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
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vatlas.server.doors.grpc_door import start_grpc
from vatlas.server.doors.ws_door import start_ws
from vatlas.server.session.core import CoreConfig, ServerCore
from vatlas.server.session.limits import ServerLimits

log = logging.getLogger(__name__)

READY_PREFIX = "VATLAS_READY "


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

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish (up to `grace` s), flush the op logs."""
        grace = self.config.grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.ws_server.close(close_connections=False)  # stop accepting; open sockets are ended by the core
        await self.core.close()  # finishes ops being committed, ends participants' streams, fsyncs logs
        await self.grpc_server.stop(grace)
        self.ws_server.close(close_connections=True)
        await self.ws_server.wait_closed()


async def start_server(config: ServerConfig) -> RunningServer:
    """Start core, gRPC and HTTP/WebSocket on the running loop."""
    core = ServerCore(CoreConfig(models_dir=Path(config.models_dir), data_dir=config.data_dir, device=config.device,
                                 limits=config.limits))
    await core.start()
    grpc_server, grpc_port, health = await start_grpc(core, config.grpc_host, config.grpc_port, config.token)
    try:
        ws_server, http_port = await start_ws(core, config.http_host, config.http_port, config.token)
    except OSError:
        await grpc_server.stop(0)
        await core.close()
        raise
    return RunningServer(core, grpc_server, ws_server, health, grpc_port, http_port, config)


async def serve_forever(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully. Prints one READY line with the bound addresses."""
    server = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = {"grpc": server.grpc_target, "http": server.http_url, "ws": server.ws_url,
             "sessions": len(server.core.sessions)}
    print(READY_PREFIX + json.dumps(ready), flush=True)
    print(f"vatlas serve: gRPC on {server.grpc_target}, web client on {server.http_url}/ , WebSocket at "
          f"{server.ws_url}", file=sys.stderr, flush=True)
    await stop.wait()
    print("vatlas serve: shutting down", file=sys.stderr, flush=True)
    await server.stop()
    print("vatlas serve: stopped", file=sys.stderr, flush=True)
