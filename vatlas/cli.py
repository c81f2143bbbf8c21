"""The `vatlas` command line: one subcommand per module in vatlas.commands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines register(subparsers) -> None and sets `func` on its parser.
COMMAND_MODULES = ("synth", "fit", "info", "render", "export", "serve", "bench", "demo")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vatlas", description="Neural-atlas video editing: fit, render, serve.")
    from vatlas import __version__

    parser.add_argument("--version", action="version", version=f"vatlas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vatlas.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not in this checkout
            if exc.name != f"vatlas.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("vatlas: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every known error class maps to one line below
        from vatlas.errors import VatlasError
        from vatlas.models.bundle import BundleError

        if isinstance(exc, (CliError, VatlasError, BundleError, OSError)):
            print(f"vatlas {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
