"""Plain HTTP on the web port: the built web client (package `vatlas.webapp`) and a health probe.

Served through the WebSocket server's `process_request` hook, so one port carries both the static files
and the WebSocket endpoint at /ws. Only GET exists on this port (that is all the hook sees).
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

WS_PATH = "/ws"
MAX_STATIC_BYTES = 64 * 1024 * 1024


def webapp_root() -> Path | None:
    """The folder of the installed web client, or None when the package is missing."""
    try:
        root = Path(str(resources.files("vatlas.webapp")))
    except ModuleNotFoundError:
        return None
    return root if root.is_dir() else None


def _response(status: int, reason: str, body: bytes, content_type: str, *, cache: bool = False) -> Response:
    headers = Headers([
        ("Content-Type", content_type), ("Content-Length", str(len(body))),
        ("Cache-Control", "public, max-age=3600" if cache else "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    ])
    return Response(status, reason, headers, body)


def text_response(status: int, reason: str, text: str) -> Response:
    return _response(status, reason, text.encode(), "text/plain; charset=utf-8")


class StaticFiles:
    """Resolve request paths to files under the web client's folder (never outside it)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None

    def respond(self, request: Request) -> Response | None:
        """The HTTP answer for a request, or None to go on with a WebSocket handshake (path /ws)."""
        path = unquote(urlsplit(request.path).path)
        if path == WS_PATH:
            return None
        if path == "/healthz":
            return text_response(200, "OK", "ok\n")
        if self.root is None:
            return text_response(404, "Not Found", "the web client is not installed (build clients/web)\n")
        relative = path.lstrip("/") or "index.html"
        target = (self.root / relative).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(self.root) or not target.is_file():
            if "." not in Path(relative).name and (self.root / "index.html").is_file():
                target = self.root / "index.html"  # client-side routes fall back to the app
            else:
                return text_response(404, "Not Found", f"no such file: {path}\n")
        if target.stat().st_size > MAX_STATIC_BYTES:
            return text_response(413, "Payload Too Large", "file too large\n")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
            content_type += "; charset=utf-8"
        hashed_asset = "assets" in target.relative_to(self.root).parts
        return _response(200, "OK", target.read_bytes(), content_type, cache=hashed_asset)
