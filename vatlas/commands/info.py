"""`vatlas info BUNDLE`: print a bundle's summary (Bundle.info())."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print a bundle's summary")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def _lines(data: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:")
            out += _lines(value, indent + 1)
        elif isinstance(value, float):
            out.append(f"{pad}{key}: {value:.4g}")
        else:
            out.append(f"{pad}{key}: {value}")
    return out


def run(args: argparse.Namespace) -> int:
    from vatlas.models.bundle import load_bundle

    info = load_bundle(args.bundle).info()
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        print("\n".join(_lines(info)))
    return 0
