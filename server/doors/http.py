"""Plain HTTP on the web port: the built web client (package `vatlas.webapp`) and a health probe.

Served through the WebSocket server's `process_request` hook, so one port carries both the static files
and the WebSocket endpoint at /ws. Only GET exists on this port (that is all the hook sees).

Browser pages on other sites can reach a server on loopback, so every request passes `OriginPolicy` first:
the Host header must name this server (an IP literal, ``localhost`` or a configured name: this stops DNS
rebinding), and a WebSocket handshake that carries an Origin (every browser sends one) must come from the
page this server serves or from an origin on the allow-list. Every answer carries headers that keep the app
out of frames and its URLs (which hold tokens) out of Referer headers.
"""

from __future__ import annotations

import ipaddress
import mimetypes
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

WS_PATH = "/ws"
MAX_STATIC_BYTES = 64 * 1024 * 1024
ANY_ORIGIN = "*"
# The web client loads only its own files, draws decoded frames into a canvas and talks to /ws on its origin.
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
)


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
        *SECURITY_HEADERS,
    ])
    return Response(status, reason, headers, body)


def text_response(status: int, reason: str, text: str) -> Response:
    return _response(status, reason, text.encode(), "text/plain; charset=utf-8")


def _origin_key(origin: str) -> str:
    """scheme://host[:port] in lower case, default ports left out (how browsers write Origin)."""
    parts = urlsplit(origin.strip().lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _host_name(host_header: str) -> str:
    parts = urlsplit("//" + host_header.strip().lower())
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return ""
    return parts.hostname or ""


class OriginPolicy:
    """Which Host headers and WebSocket Origins this port accepts (see the module docstring)."""

    def __init__(self, allowed_origins: Iterable[str] = (), server_names: Iterable[str] = ()) -> None:
        origins = [o for o in allowed_origins if o]
        self.any_origin = ANY_ORIGIN in origins
        self.origins = frozenset(_origin_key(o) for o in origins if o != ANY_ORIGIN)
        self.hosts = frozenset({"localhost", *(n.lower() for n in server_names if n),
                                *(_host_name(urlsplit(o).netloc) for o in self.origins)}) - {""}

    def host_allowed(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if not name:
            return False
        if name in self.hosts or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False  # a DNS name we were not told about: maybe a rebinding attack
        return True

    def origin_allowed(self, origin: str | None, host_header: str) -> bool:
        if origin is None:
            return True  # not a browser (browsers always send Origin on a WebSocket handshake)
        key = _origin_key(origin)
        if self.any_origin or key in self.origins:
            return True
        # the page this port served: same host and port as the request
        return key in (_origin_key(f"http://{host_header}"), _origin_key(f"https://{host_header}"))

    def check(self, request: Request) -> Response | None:
        """A 403 answer for a request this policy refuses, else None."""
        host = request.headers.get("Host", "")
        if not self.host_allowed(host):
            return text_response(403, "Forbidden", "this server is not reachable under that host name (start it "
                                                   "with --allow-origin for the page's origin)\n")
        if unquote(urlsplit(request.path).path) == WS_PATH and not self.origin_allowed(
                request.headers.get("Origin"), host):
            return text_response(403, "Forbidden", "WebSocket connections from this origin are not allowed (start "
                                                   "the server with --allow-origin ORIGIN)\n")
        return None


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
