"""`vatlas bench TARGET`: benchmarks that print a table and JSON (GPU targets live in docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

# target -> module with add_arguments(parser) and run(args) -> dict with "rows" (list of dicts) and "meta".
BENCH_MODULES = {
    "hash": "vatlas.models.bench_hash",
    "fit": "vatlas.models.bench_fit",
    "render": "vatlas.server.bench_render",
    "serve": "vatlas.server.bench_serve",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print a table and JSON")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for target, module_name in BENCH_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        sub = targets.add_parser(target, help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
        module.add_arguments(sub)
        sub.set_defaults(func=_runner(module))


def _runner(module: Any):
    def run(args: argparse.Namespace) -> int:
        result = module.run(args)
        print_table(result.get("rows", []))
        text = json.dumps(result, indent=1, default=str)
        print(text)
        if args.json:
            args.json.write_text(text)
        return 0

    return run


def print_table(rows: list[dict[str, Any]], out=sys.stdout) -> None:
    """Print rows (dicts with the same keys) as an aligned text table."""
    if not rows:
        return
    keys = list(rows[0].keys())
    cells = [[_fmt(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)), file=out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)
