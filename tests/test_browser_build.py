"""The web client's build: generated message types are current, dist/ matches the sources, strict types pass."""

from __future__ import annotations

import filecmp
import importlib.resources
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "clients" / "web"
NODE_MODULES = WEB / "node_modules"
needs_node = pytest.mark.skipif(
    not (NODE_MODULES / "esbuild").is_dir() or shutil.which("node") is None,
    reason="clients/web/node_modules is absent (run `npm ci` in clients/web)",
)


def _load_generator():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_ts_types
    finally:
        sys.path.pop(0)
    return gen_ts_types


def test_generated_message_types_are_current() -> None:
    generator = _load_generator()
    on_disk = (WEB / "src" / "generated" / "messages.ts").read_text(encoding="utf-8")
    assert on_disk == generator.generate(), "run: python scripts/gen_ts_types.py"


def test_generated_types_cover_every_ws_call_and_result() -> None:
    from vatlas_wire.v1 import sessions_pb2

    text = (WEB / "src" / "generated" / "messages.ts").read_text(encoding="utf-8")
    for message in ("WsRequest", "WsResponse", "ClientMessage", "ServerEvent"):
        descriptor = sessions_pb2.DESCRIPTOR.message_types_by_name[message]
        block = re.search(rf"export interface {message} \{{(.*?)\n\}}", text, re.S)
        assert block, message
        for field in descriptor.fields:
            assert re.search(rf"\n  {field.name}\?: ", block.group(1)), f"{message}.{field.name} missing"
    assert "export type Vec2 = [number, number];" in text


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    generator = _load_generator()
    stale = tmp_path / "messages.ts"
    stale.write_text("// old\n", encoding="utf-8")
    assert generator.main(["--check", "--out", str(stale)]) == 1
    assert generator.main(["--out", str(stale)]) == 0
    assert generator.main(["--check", "--out", str(stale)]) == 0


def test_dist_is_packaged_as_vatlas_webapp() -> None:
    files = importlib.resources.files("vatlas.webapp")
    html = files.joinpath("index.html").read_text(encoding="utf-8")
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert files.joinpath(asset).is_file(), f"index.html references missing {asset}"
    script = files.joinpath("app.js").read_text(encoding="utf-8")
    assert "protocol_version" in script and "list_bundles" in script, "app.js does not look like the built client"


def test_lockfile_pins_every_dependency() -> None:
    import json

    package = json.loads((WEB / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((WEB / "package-lock.json").read_text(encoding="utf-8"))
    wanted = {**package.get("dependencies", {}), **package.get("devDependencies", {})}
    for name in wanted:
        entry = lock["packages"].get(f"node_modules/{name}")
        assert entry and entry.get("integrity"), f"{name} is not pinned in package-lock.json"


@needs_node
def test_dist_matches_a_fresh_build(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(["node", "build.mjs", str(out)], cwd=WEB, check=True, timeout=120)
    comparison = filecmp.dircmp(out, WEB / "dist")
    assert not comparison.left_only and not comparison.right_only, (comparison.left_only, comparison.right_only)
    for name in comparison.common_files:
        assert (out / name).read_bytes() == (WEB / "dist" / name).read_bytes(), (
            f"dist/{name} is stale: run `npm run build` in clients/web"
        )


@needs_node
def test_typescript_strict_typecheck_passes() -> None:
    tsc = NODE_MODULES / "typescript" / "bin" / "tsc"
    result = subprocess.run(["node", str(tsc), "--noEmit", "-p", "."], cwd=WEB, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_node
def test_the_dom_free_modules_pass_their_unit_tests_in_node() -> None:
    """clients/web/test/*.test.ts (the session protocol, session.ts) under node's test runner: `npm test`."""
    run = subprocess.run(["node", "run-tests.mjs"], cwd=WEB, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^# pass [1-9]", run.stdout, re.M) and re.search(r"^# fail 0$", run.stdout, re.M), run.stdout
