"""`vatlas serve --models DIR`: the render server (gRPC + web client + WebSocket) over fitted bundles."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path


def host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' or ':PORT' or 'PORT' -> (host, port); port 0 picks a free one."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return host, port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve bundles to gRPC, WebSocket and browser clients")
    parser.add_argument("--models", type=Path, required=True, help="folder of fitted bundles (NAME.vatlas)")
    parser.add_argument("--grpc", type=host_port, default=("127.0.0.1", 50051), metavar="HOST:PORT",
                        help="gRPC address (default 127.0.0.1:50051; port 0 = any free port)")
    parser.add_argument("--http", type=host_port, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                        help="web client + WebSocket (/ws) address (default 127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("VATLAS_TOKEN") or None,
                        help="server token clients must present (default: $VATLAS_TOKEN, none if unset)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="persist sessions here (op logs fsynced before each ack); default: memory only")
    parser.add_argument("--device", default="auto", help="torch device for rendering (auto, cpu, cuda, cuda:1)")
    parser.add_argument("--max-message-mb", type=_positive_int, default=64,
                        help="largest gRPC message / WebSocket frame in MiB (default 64)")
    parser.add_argument("--max-upload-mb", type=_positive_int, default=4096,
                        help="largest uploaded video in MiB (default 4096)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vatlas.errors import VatlasError
    from vatlas.server.app import ServerConfig, serve_forever
    from vatlas.server.session.limits import ServerLimits

    if not args.models.is_dir():
        raise VatlasError(f"--models {args.models}: no such folder")
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = ServerLimits(max_message_bytes=args.max_message_mb * 1024 * 1024,
                          max_upload_bytes=args.max_upload_mb * 1024 * 1024)
    config = ServerConfig(models_dir=args.models, grpc_host=args.grpc[0], grpc_port=args.grpc[1],
                          http_host=args.http[0], http_port=args.http[1], token=args.token, data_dir=args.data,
                          device=args.device, limits=limits)
    asyncio.run(serve_forever(config))
    return 0
