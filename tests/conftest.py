"""Shared fixtures: a real vatlas server on loopback over a tiny bundle (reuse these in any test file).

Bundle
    ``tiny_models_dir`` (session scope): a folder holding ``tiny.vatlas``, the ground-truth bundle of
    ``vatlas.synth.make_scene(frames=TINY_FRAMES, size=TINY_SIZE, seed=1)`` (atlas 64x64). Bundle name:
    ``TINY_BUNDLE`` ("tiny"). ``tiny_bundle`` is the loaded `Bundle`.

In-process server
    ``running_server`` (module scope): the real server (session core + gRPC door + HTTP/WebSocket door)
    started on ports 0 in a background thread with its own event loop, so sync gRPC stubs, ``grpc.aio`` and
    ``websockets`` clients all work from tests. It has a server token. Attributes::

        running_server.grpc_target     "127.0.0.1:PORT"
        running_server.ws_url          "ws://127.0.0.1:PORT/ws"
        running_server.http_url        "http://127.0.0.1:PORT"
        running_server.token           "test-token"
        running_server.grpc_metadata   (("authorization", "Bearer test-token"),)
        running_server.core            the ServerCore (white-box checks; call it only via running_server.call)
        running_server.call(coro)      run a coroutine on the server's loop and return its result

    ``start_in_process_server(**kwargs)`` (a function, not a fixture) builds more of them (e.g. another
    token, a data dir); stop them with ``.stop()``.

Subprocess server
    ``server_process`` (function scope): ``vatlas serve --models <tiny dir> --grpc 127.0.0.1:0 --http
    127.0.0.1:0 --token test-token --data <tmp>`` started as a real process; the bound addresses come from its
    ``VATLAS_READY {...}`` stdout line. Same attributes as above (no ``core``), plus ``.proc``, ``.data_dir``,
    ``.kill()`` (SIGKILL), ``.terminate()`` (SIGTERM, waits, returns the exit code) and ``.restart()`` (a new
    process on the same data dir and new ports). ``server_process_factory(**kwargs)`` starts more (kwargs:
    token, data_dir, extra_args).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# The real clips live in ../shared/data beside the checkout (VATLAS_SHARED_DATA overrides).
SHARED_DATA = Path(os.environ.get("VATLAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

TINY_BUNDLE = "tiny"
TINY_FRAMES = 8
TINY_SIZE = (64, 48)
TEST_TOKEN = "test-token"
READY_TIMEOUT = 90.0


def make_tiny_models_dir(directory: Path) -> Path:
    """Write the tiny synthetic bundle into `directory` (created) and return it."""
    from vatlas.models.bundle import save_bundle

    from vatlas.synth import make_scene

    directory.mkdir(parents=True, exist_ok=True)
    scene = make_scene(frames=TINY_FRAMES, size=TINY_SIZE, seed=1)
    save_bundle(scene.ground_truth_bundle(atlas_size=64), directory / f"{TINY_BUNDLE}.vatlas")
    return directory


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models_dir: Path) -> Any:
    from vatlas.models.bundle import load_bundle

    return load_bundle(tiny_models_dir / f"{TINY_BUNDLE}.vatlas")


# ---------------------------------------------------------------- in-process server


class InProcessServer:
    """The real server on a background event loop thread (see the module docstring)."""

    def __init__(self, models_dir: Path, *, token: str | None = TEST_TOKEN, data_dir: Path | None = None,
                 limits: Any = None, **config: Any) -> None:
        from vatlas.server.app import ServerConfig
        from vatlas.server.session.limits import ServerLimits

        self.token = token
        self.config = ServerConfig(models_dir=models_dir, grpc_port=0, http_port=0, token=token, data_dir=data_dir,
                                   device="cpu", limits=limits or ServerLimits(), grace=1.0, **config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vatlas-test-server", daemon=True)
        self._thread.start()
        from vatlas.server.app import start_server

        self.server = self.call(start_server(self.config), timeout=READY_TIMEOUT)
        self.core = self.server.core
        self.grpc_target = self.server.grpc_target
        self.ws_url = self.server.ws_url
        self.http_url = self.server.http_url

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self.call(self.server.stop(grace=1.0), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()


def start_in_process_server(models_dir: Path, **kwargs: Any) -> InProcessServer:
    return InProcessServer(models_dir, **kwargs)


@pytest.fixture(scope="module")
def running_server(tiny_models_dir: Path) -> Iterator[InProcessServer]:
    server = InProcessServer(tiny_models_dir)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- subprocess server


class ServerProcess:
    """`vatlas serve` as a child process (see the module docstring)."""

    def __init__(self, models_dir: Path, data_dir: Path | None, *, token: str | None = TEST_TOKEN,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.models_dir = models_dir
        self.data_dir = data_dir
        self.token = token
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.grpc_target = self.ws_url = self.http_url = ""
        self.stderr_lines: list[str] = []
        self._start()

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "vatlas.cli", "serve", "--models", str(self.models_dir),
               "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--device", "cpu", "--log-level", "WARNING",
               *self.extra_args]
        cmd += ["--token", self.token] if self.token else ["--no-token"]  # else it would pick a random one
        if self.data_dir is not None:
            cmd += ["--data", str(self.data_dir)]
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ready: Future = Future()

        def read_stdout() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("VATLAS_READY ") and not ready.done():
                    ready.set_result(json.loads(line[len("VATLAS_READY "):]))
            if not ready.done():
                ready.set_exception(RuntimeError("vatlas serve exited before it was ready:\n"
                                                 + "".join(self.stderr_lines[-30:])))

        def read_stderr() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line)

        threading.Thread(target=read_stderr, daemon=True).start()
        threading.Thread(target=read_stdout, daemon=True).start()
        try:
            info = ready.result(READY_TIMEOUT)
        except BaseException:
            self.kill()
            raise
        self.grpc_target = info["grpc"]
        self.http_url = info["http"]
        self.ws_url = info["ws"]
        self.ready = info

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (crash simulation)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.kill()
        self._start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server_process_factory(tiny_models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*, token: str | None = TEST_TOKEN, data_dir: Path | None = None,
              extra_args: tuple[str, ...] = ()) -> ServerProcess:
        proc = ServerProcess(tiny_models_dir, data_dir if data_dir is not None else tmp_path / f"data{len(started)}",
                             token=token, extra_args=extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def server_process(server_process_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_process_factory()
