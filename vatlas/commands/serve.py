"""`vatlas serve --models DIR`: the render server (gRPC + web client + WebSocket) over fitted bundles."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from pathlib import Path

TOKEN_ENV = "VATLAS_TOKEN"


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


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """--token / --token-file / --no-token, shared by `serve` and `demo` (see `resolve_token`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token", default=None,
                       help="server token clients must present (visible in ps: prefer --token-file or "
                            f"${TOKEN_ENV}); default: a random one, printed in the web client's URL")
    group.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="read the server token from the first line of FILE")
    group.add_argument("--no-token", action="store_true",
                       help="no server token: anyone who can reach the ports may use the server")


def resolve_token(args: argparse.Namespace) -> str | None:
    """The server token: --token, else --token-file, else $VATLAS_TOKEN, else a new random one (None: --no-token)."""
    from vatlas.errors import VatlasError

    if args.no_token:
        return None
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise VatlasError(f"--token-file {args.token_file}: cannot read a token ({type(exc).__name__})") from None
        if not token:
            raise VatlasError(f"--token-file {args.token_file}: the first line is empty")
        return token
    return os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve bundles to gRPC, WebSocket and browser clients")
    parser.add_argument("--models", type=Path, required=True, help="folder of fitted bundles (NAME.vatlas)")
    parser.add_argument("--grpc", type=host_port, default=("127.0.0.1", 50051), metavar="HOST:PORT",
                        help="gRPC address (default 127.0.0.1:50051; port 0 = any free port)")
    parser.add_argument("--http", type=host_port, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                        help="web client + WebSocket (/ws) address (default 127.0.0.1:8080)")
    add_token_arguments(parser)
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a browser origin (scheme://host:port) besides this server's own page that may use "
                             "the WebSocket; repeatable; '*' allows any")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="persist sessions here (op logs fsynced before each ack); default: memory only")
    parser.add_argument("--device", default="auto", help="torch device for rendering (auto, cpu, cuda, cuda:1)")
    parser.add_argument("--max-message-mb", type=_positive_int, default=64,
                        help="largest gRPC message / WebSocket frame in MiB (default 64)")
    parser.add_argument("--max-upload-mb", type=_positive_int, default=4096,
                        help="largest uploaded video in MiB (default 4096)")
    parser.add_argument("--limit", action="append", default=[], type=_limit, metavar="NAME=VALUE",
                        help="set one of the server's limits (docs/SECURITY.md lists them), e.g. "
                             "--limit max_loaded_sessions=16; repeatable")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(func=run)


def _limit(text: str) -> tuple[str, object]:
    from vatlas.server.session.limits import parse_limit

    try:
        return parse_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from vatlas.errors import VatlasError
    from vatlas.server.app import ServerConfig, serve_forever
    from vatlas.server.session.limits import ServerLimits

    if not args.models.is_dir():
        raise VatlasError(f"--models {args.models}: no such folder")
    if args.data is not None:
        args.data.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = ServerLimits(**{"max_message_bytes": args.max_message_mb * 1024 * 1024,
                             "max_upload_bytes": args.max_upload_mb * 1024 * 1024, **dict(args.limit)})
    token = resolve_token(args)
    if token is None and not all(_is_loopback(h) for h in (args.grpc[0], args.http[0])):
        logging.getLogger("vatlas.serve").warning("serving without a token on a non-loopback address: anyone on "
                                                  "the network can use this server")
    config = ServerConfig(models_dir=args.models, grpc_host=args.grpc[0], grpc_port=args.grpc[1],
                          http_host=args.http[0], http_port=args.http[1], token=token, data_dir=args.data,
                          device=args.device, limits=limits, allowed_origins=tuple(args.allow_origin))
    asyncio.run(serve_forever(config))
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
