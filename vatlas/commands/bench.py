"""`vatlas bench TARGET`: benchmarks that print a table and JSON (GPU targets live in docs/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

# target -> (module with add_arguments(parser) and run(args) -> {"rows": [...], "meta": {...}}, help)
BENCH_MODULES = {
    "hash": ("vatlas.bench.encoding", "hash-grid training step throughput (M samples/s)"),
    "fit": ("vatlas.bench.fit", "fit time and quality on synthetic scenes and real clips"),
    "render": ("vatlas.bench.render", "compositor, JPEG and stroke-apply speed"),
    "serve": ("vatlas.bench.serve", "edit-to-pixels latency and playback fps with real clients"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print a table and JSON",
                                   description="Targets: " + "; ".join(f"{k}: {h}" for k, (_, h) in
                                                                        BENCH_MODULES.items()))
    parser.add_argument("target", choices=sorted(BENCH_MODULES), help="what to measure")
    # The target's own options are parsed by its module, imported only when it runs (torch is slow to import).
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the target (see bench TARGET -h)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module_name, help_text = BENCH_MODULES[args.target]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"vatlas bench {args.target}", description=help_text)
    sub.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    module.add_arguments(sub)
    options = sub.parse_args(args.options)
    result = module.run(options)
    print_table(result.get("rows", []))
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if options.json:
        options.json.write_text(text)
    return 0


def print_table(rows: list[dict[str, Any]], out: Any = None) -> None:
    """Print rows (dicts with the same keys) as an aligned text table."""
    if not rows:
        return
    out = out or sys.stdout
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
