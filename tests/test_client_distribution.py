"""The client ships alone: `clients/py` builds the `vatlas-client` wheel, which installs into a fresh venv (no
system site-packages) with only its declared dependencies, imports without torch, OpenCV or PyAV, and edits a
session on a real `vatlas serve` (tests/conftest.py's `server_process`, run from this environment) on loopback.

No index is used: the dependency wheels are repacked from this environment's installed copies (the same files,
so the test is offline and deterministic), and pip installs with --no-index from that folder alone, so a
dependency the client needs but does not declare fails the install or the import.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import TEST_TOKEN, TINY_BUNDLE, TINY_SIZE
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("torch", "cv2", "av", "vatlas")  # vatlas: the server's package must not come along

pytestmark = pytest.mark.timeout(180)


def _copy_client_tree(dest: Path) -> Path:
    """clients/py and the wire package it takes from protos/, in the same relative layout (the build writes
    build/ and egg-info beside its pyproject.toml: this keeps them out of the checkout)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        (dest / "clients" / "py").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "clients" / "py" / name, dest / "clients" / "py" / name)
    shutil.copytree(ROOT / "clients" / "py" / "vatlas_client", dest / "clients" / "py" / "vatlas_client", ignore=skip)
    shutil.copytree(ROOT / "protos" / "vatlas_wire", dest / "protos" / "vatlas_wire", ignore=skip)
    return dest / "clients" / "py"


def _requirements(dist: metadata.Distribution) -> list[str]:
    """The distribution names `dist` requires here (no extras; markers evaluated for this interpreter)."""
    env = {**default_environment(), "extra": ""}
    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            names.append(req.name)
    return names


def _repack(dist: metadata.Distribution, wheelhouse: Path) -> Path:
    """A wheel of an installed distribution, from its recorded files (scripts outside site-packages and
    bytecode left out; a new RECORD)."""
    info = next(p for p in dist.files if p.parts[0].endswith(".dist-info"))
    info_dir = info.parts[0]
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines()
            if line.startswith("Tag:")]
    py, abi, plat = (".".join(sorted({t.split("-")[i] for t in tags})) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = wheelhouse / f"{name}-{dist.version}-{py}-{abi}-{plat}.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as whl:
        for file in dist.files:
            rel = file.as_posix()
            if (rel.startswith("..") or "__pycache__" in file.parts or rel.endswith(".pyc")
                    or rel in {f"{info_dir}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}):
                continue
            data = Path(file.locate()).read_bytes()
            whl.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([rel, f"sha256={digest}", len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        whl.writestr(f"{info_dir}/RECORD", record.getvalue())
    return path


def _wheelhouse(client_wheel: Path, wheelhouse: Path) -> list[str]:
    """Repack the client wheel's dependency closure from this environment; returns the distribution names."""
    with zipfile.ZipFile(client_wheel) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        declared = [Requirement(line.split(":", 1)[1].strip()).name
                    for line in whl.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    todo, seen = list(declared), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        _repack(dist, wheelhouse)
        todo += _requirements(dist)
    return sorted(seen)


CLIENT_SCRIPT = r"""
import importlib.util, json, sys
from importlib import metadata
address, token, bundle, server_only = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
found = {name: importlib.util.find_spec(name) is not None for name in server_only}
import vatlas_client
from vatlas_client import Client
from vatlas_wire.v1 import edits_pb2
with Client(address, token=token, timeout=20) as client:
    with client.open_session(bundle, name="fresh-venv") as session:
        ack = session.stroke([(28, 10), (48, 30)], frame=0, width=4, color=(1, 0, 0, 1))
        frame = session.render(0)
print(json.dumps({
    "server_only_importable": found,
    "client_file": vatlas_client.__file__,
    "op_full_name": edits_pb2.EditOp.DESCRIPTOR.full_name,
    "seq": int(ack), "op_id": ack.op_id, "frame_shape": list(frame.shape),
    "dists": sorted(d.metadata["Name"].lower() for d in metadata.distributions()),
}))
"""


def test_client_installs_alone_and_edits_on_a_real_server(tmp_path: Path, server_process) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no configured index, find-links or constraints: only what is passed
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [sys.executable, "-m", "pip"]

    # the client's own pyproject.toml builds its wheel (with this environment's setuptools, no index)
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    project = _copy_client_tree(tmp_path / "src")
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheelhouse),
                    str(project)], check=True, env=env, timeout=120)
    client_wheel = next(wheelhouse.glob("vatlas_client-*.whl"))
    with zipfile.ZipFile(client_wheel) as whl:
        tops = {n.split("/")[0] for n in whl.namelist() if not n.split("/")[0].endswith(".dist-info")}
        assert tops == {"vatlas_client", "vatlas_wire"}, tops
        assert "vatlas_wire/v1/edits.proto" in whl.namelist()
    deps = _wheelhouse(client_wheel, wheelhouse)
    assert not {"torch", "opencv-python-headless", "av", "vatlas"} & set(deps), deps

    # a fresh venv (no system site-packages, no pip of its own): this pip installs into it from the wheelhouse only
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-index", "--find-links", str(wheelhouse),
                    "vatlas-client"], check=True, env=env, timeout=120)

    # -I: isolated (no PYTHONPATH, no user site, not the current folder); run outside the checkout
    width, height = TINY_SIZE
    out = subprocess.run([str(python), "-I", "-c", CLIENT_SCRIPT, server_process.grpc_target, TEST_TOKEN,
                          TINY_BUNDLE, ",".join(SERVER_ONLY)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["server_only_importable"] == dict.fromkeys(SERVER_ONLY, False), result
    assert Path(result["client_file"]).is_relative_to(venv), result["client_file"]
    assert result["op_full_name"] == "vatlas.v1.EditOp"  # the proto names are unchanged by the wire package's move
    assert result["seq"] >= 1 and result["op_id"].startswith("stroke-"), result
    assert result["frame_shape"] == [height, width, 3], result
    assert {canonicalize_name(d) for d in result["dists"]} == {"vatlas-client", *deps}, result["dists"]


def test_the_client_packages_never_import_the_server() -> None:
    """Also lazy imports inside functions, which the fresh-venv run would only meet on that path."""
    import ast

    offenders = []
    for folder in (ROOT / "clients" / "py" / "vatlas_client", ROOT / "protos" / "vatlas_wire"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n.split(".")[0] in {"vatlas", "torch", "cv2", "av"}]
    assert not offenders, offenders
