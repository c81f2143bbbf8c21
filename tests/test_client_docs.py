"""docs/python-client.md stays a true reference: every public name and method is described there."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import vatlas_client
from vatlas_client import AsyncClient, AsyncSession, Client, Session, ops

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-client.md"


def _doc_text() -> str:
    return DOC.read_text()


def _public_methods(cls: type) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls) if not name.startswith("_")]


def test_every_exported_name_is_documented() -> None:
    text = _doc_text()
    missing = [name for name in vatlas_client.__all__ if not re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", text)]
    assert not missing, f"names in vatlas_client.__all__ missing from {DOC.name}: {missing}"


def test_every_public_method_and_op_builder_is_documented() -> None:
    text = _doc_text()
    names = {n for cls in (Client, Session, AsyncClient, AsyncSession) for n in _public_methods(cls)}
    names |= {n for n, obj in vars(ops).items() if inspect.isfunction(obj) and obj.__module__ == ops.__name__
              and not n.startswith("_")}
    missing = sorted(n for n in names if not re.search(rf"`[^`]*\b{re.escape(n)}\b[^`]*`", text))
    assert not missing, f"public API missing from {DOC.name}: {missing}"


def test_all_lists_real_objects() -> None:
    for name in vatlas_client.__all__:
        assert getattr(vatlas_client, name) is not None
    assert len(set(vatlas_client.__all__)) == len(vatlas_client.__all__)
