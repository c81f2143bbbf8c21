"""The HTTP/WebSocket port against hostile web pages, and the server's lifecycle: real servers on loopback.

Cross-origin pages and DNS rebinding (H5), a random token printed in the URL when none is given, the token from
a file or the environment (L6), security headers (L6), and a bounded shutdown with a browser connected (M2).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import READY_TIMEOUT, TEST_TOKEN, TINY_BUNDLE, start_in_process_server
from serve_helpers import WsClient
from vatlas_wire.v1 import sessions_pb2

ALLOWED = "https://editor.example.com"


@pytest.fixture(scope="module")
def web_server(tiny_models_dir: Path):
    server = start_in_process_server(tiny_models_dir, allowed_origins=(ALLOWED,))
    yield server
    server.stop()


def handshake(http_url: str, headers: dict[str, str], path: str = "/ws") -> tuple[int, dict[str, str]]:
    """Send a raw WebSocket upgrade (or a plain GET when `path` is not /ws) with exactly these headers."""
    parts = urlsplit(http_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": parts.netloc, **headers}
        if path == "/ws":
            sent = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **sent}
        for key, value in sent.items():
            if value is not None:
                conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_cross_origin_pages_cannot_open_the_websocket(web_server) -> None:
    url = web_server.http_url
    own = urlsplit(url).netloc
    assert handshake(url, {"Origin": "https://evil.example"})[0] == 403
    assert handshake(url, {"Origin": "null"})[0] == 403  # sandboxed frames and file:// pages
    assert handshake(url, {"Origin": f"http://{own}"})[0] == 101  # the page this port served
    assert handshake(url, {"Origin": ALLOWED})[0] == 101  # on the allow-list
    assert handshake(url, {})[0] == 101  # no Origin: not a browser (the token still guards it)
    port = urlsplit(url).port
    assert handshake(url, {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})[0] == 101
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so Origin and Host agree; the name is unknown
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    assert handshake(url, rebound)[0] == 403
    assert handshake(url, {"Host": f"evil.example:{port}"}, path="/")[0] == 403


def test_pages_carry_security_headers(web_server) -> None:
    status, headers = handshake(web_server.http_url, {}, path="/")
    assert status in (200, 404)
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"


class Serve:
    """`vatlas serve` with exactly the given token options; READY info and stderr kept."""

    def __init__(self, models: Path, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "vatlas.cli", "serve", "--models", str(models), "--grpc", "127.0.0.1:0",
               "--http", "127.0.0.1:0", "--device", "cpu", "--log-level", "WARNING", *args]
        environ = {k: v for k, v in os.environ.items() if k != "VATLAS_TOKEN"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("VATLAS_READY "):
                self.ready = json.loads(line[len("VATLAS_READY "):])
                break
            assert time.monotonic() < deadline
        else:
            raise RuntimeError(self.proc.stderr.read() if self.proc.stderr else "no READY line")

    def url_token(self) -> str:
        return parse_qs(urlsplit(self.ready["url"]).query)["token"][0]

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


async def _hello(ws_url: str, token: str) -> str:
    client = await WsClient.connect(ws_url, None, hello=False)
    try:
        resp = await client.call(hello=sessions_pb2.Hello(protocol_version=1, token=token))
        return resp.error.code if resp.WhichOneof("result") == "error" else resp.WhichOneof("result")
    finally:
        await client.close()


def test_a_random_token_is_made_and_printed_in_the_url(tiny_models_dir: Path) -> None:
    server = Serve(tiny_models_dir)
    try:
        token = server.url_token()
        assert len(token) >= 24 and urlsplit(server.ready["url"]).hostname == "127.0.0.1"
        assert asyncio.run(_hello(server.ready["ws"], "")) == "UNAUTHENTICATED"
        assert asyncio.run(_hello(server.ready["ws"], token)) == "welcome"
    finally:
        err = server.close()
    assert token in err  # the printed URL: one click opens the web client
    again = Serve(tiny_models_dir)
    try:
        assert again.url_token() != token
    finally:
        again.close()


def test_token_from_a_file_or_the_environment(tiny_models_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    server = Serve(tiny_models_dir, "--token-file", str(secret))
    try:
        assert server.url_token() == "from-a-file"
        assert asyncio.run(_hello(server.ready["ws"], "from-a-file")) == "welcome"
    finally:
        server.close()
    server = Serve(tiny_models_dir, env={"VATLAS_TOKEN": "from-env"})
    try:
        assert asyncio.run(_hello(server.ready["ws"], "from-env")) == "welcome"
        assert asyncio.run(_hello(server.ready["ws"], "")) == "UNAUTHENTICATED"
    finally:
        server.close()


async def _connected_browser(server) -> WsClient:
    """A client that joined a session and keeps its socket open (what a browser tab does)."""
    client = await WsClient.connect(server.ws_url, server.token)
    info = (await client.call(create_session=sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE))).session_info
    await client.send(session=sessions_pb2.ClientMessage(join=sessions_pb2.Join(
        session_id=info.session_id, join_token=info.join_token)))
    await client.event("snapshot")
    return client


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c twice"])
def test_shutdown_is_bounded_with_a_browser_connected(server_process_factory, how: str) -> None:
    server = server_process_factory(token=TEST_TOKEN)

    async def scenario() -> tuple[float, int | None, int]:
        client = await _connected_browser(server)
        started = time.monotonic()
        if how == "sigterm":
            server.proc.send_signal(signal.SIGTERM)
        else:
            server.proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.2)
            server.proc.send_signal(signal.SIGINT)
        while server.proc.poll() is None and time.monotonic() - started < 30:
            await asyncio.sleep(0.05)
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed in one of its forms
            for _ in range(100):
                await client.recv(timeout=5)
        return time.monotonic() - started, client.ws.close_code, server.proc.wait(timeout=30)

    elapsed, close_code, code = asyncio.run(scenario())
    assert elapsed < 12.0, f"still running {elapsed:.0f} s after the signal"
    if how == "sigterm":
        assert code == 0 and close_code == 1001
    else:
        assert code in (0, 130, -signal.SIGINT)  # the second Ctrl-C may land after a graceful stop
