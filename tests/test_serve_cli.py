"""`vatlas serve` as a process: ready line, web client over HTTP, graceful SIGTERM, clear errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_BUNDLE
from serve_helpers import GrpcStubs, stroke_proto
from vatlas.server.session.oplog import read_records
from vatlas_wire.v1 import bundles_pb2, sessions_pb2

from vatlas.commands.serve import host_port


def test_serve_process_end_to_end_and_graceful_stop(server_process) -> None:
    stubs = GrpcStubs(server_process.grpc_target, server_process.token)
    try:
        names = [b.name for b in stubs.bundles.ListBundles(bundles_pb2.ListBundlesRequest(),
                                                           metadata=stubs.metadata).bundles]
        assert names == [TINY_BUNDLE]
        info = stubs.sessions.CreateSession(sessions_pb2.CreateSessionRequest(bundle=TINY_BUNDLE),
                                            metadata=stubs.metadata)
        events = stubs.sessions.Connect(iter([
            sessions_pb2.ClientMessage(join=sessions_pb2.Join(session_id=info.session_id,
                                                              join_token=info.join_token)),
            sessions_pb2.ClientMessage(op=stroke_proto("s1")),
            sessions_pb2.ClientMessage(leave=sessions_pb2.Leave()),
        ]), metadata=stubs.metadata)
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds[0] == "snapshot" and "accepted" in kinds and "applied" in kinds
    finally:
        stubs.close()
    with urllib.request.urlopen(server_process.http_url + "/healthz", timeout=10) as resp:
        assert resp.read() == b"ok\n"
    assert server_process.terminate() == 0
    assert any("stopped" in line for line in server_process.stderr_lines)
    log = next(server_process.data_dir.glob("sessions/*/ops.log"))
    records, valid = read_records(log)
    assert [r["op"]["id"] for r in records] == ["s1"] and valid == log.stat().st_size


def test_missing_models_dir_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vatlas.cli", "serve", "--models", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 2 and "no such folder" in proc.stderr


def test_host_port_parsing() -> None:
    assert host_port("0.0.0.0:80") == ("0.0.0.0", 80)
    assert host_port(":0") == ("127.0.0.1", 0)
    assert host_port("[::1]:9000") == ("::1", 9000)
    for bad in ("x:y", "1:70000", "host:"):
        with pytest.raises(argparse.ArgumentTypeError):
            host_port(bad)
