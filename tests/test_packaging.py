"""The package mappings cover every package folder (pyproject.toml, and clients/py/pyproject.toml for the
`vatlas-client` distribution), and the generated wire code is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


CLIENT = ROOT / "clients" / "py"


def _config(project: Path = ROOT) -> dict:
    return tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str], project: Path = ROOT) -> Path:
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return (project / package_dir[prefix] / Path(*parts[i:])).resolve()
    return (project / Path(*parts)).resolve()


def _folders(project: Path) -> dict[str, Path]:
    config = _config(project)
    return {p: _folder_of(p, config.get("package-dir", {}), project) for p in config["packages"]}


@pytest.mark.parametrize("project", [ROOT, CLIENT], ids=["vatlas", "vatlas-client"])
def test_every_package_folder_is_listed(project: Path) -> None:
    roots = set(_folders(project).values())
    for folder in roots:
        assert folder.is_dir(), f"listed package folder missing: {folder}"
    for root in list(roots):
        for init in root.rglob("__init__.py"):
            assert init.parent.resolve() in roots, (
                f"package folder not listed in {project / 'pyproject.toml'}: {init.parent}")


def test_client_distribution_is_the_client_and_the_wire_package_from_the_same_folders() -> None:
    """vatlas-client ships vatlas_client and vatlas_wire, from the folders the root distribution maps them to."""
    client, root = _folders(CLIENT), _folders(ROOT)
    assert {p.split(".")[0] for p in client} == {"vatlas_client", "vatlas_wire"}
    for package, folder in client.items():
        assert root.get(package) == folder, f"{package}: {folder} here, {root.get(package)} in the root pyproject"
    deps = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not {Requirement(d).name.lower() for d in deps} & {"torch", "opencv-python-headless", "av"}, deps


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
