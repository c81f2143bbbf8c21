"""The package mapping in pyproject.toml covers every package folder, and the generated wire code is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[i:])
    return ROOT / Path(*parts)


def test_every_package_folder_is_listed() -> None:
    config = _config()
    listed = set(config["packages"])
    folders = {_folder_of(p, config["package-dir"]).resolve(): p for p in listed}
    for folder in folders:
        assert folder.is_dir(), f"listed package folder missing: {folder}"
    roots = {_folder_of(p, config["package-dir"]).resolve() for p in listed}
    for root in list(roots):
        for init in root.rglob("__init__.py"):
            assert init.parent.resolve() in roots, f"package folder not listed in pyproject.toml: {init.parent}"


def test_generated_protos_are_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    protos = sorted((ROOT / "protos" / "vatlas_wire" / "v1").glob("*.proto"))
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *map(str, protos)]
    subprocess.run(cmd, check=True)
    for generated in (tmp_path / "vatlas_wire" / "v1").iterdir():
        committed = ROOT / "protos" / "vatlas_wire" / "v1" / generated.name
        assert committed.exists(), f"{generated.name} is not committed; run scripts/gen_protos.sh"
        assert committed.read_text() == generated.read_text(), f"{generated.name} is stale; run scripts/gen_protos.sh"


def test_cli_starts() -> None:
    exe = shutil.which("vatlas") or str(Path(sys.executable).with_name("vatlas"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout
