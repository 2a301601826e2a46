"""The ``agileir`` command line: one module per sub-command, each with ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from agileir.errors import AgileIRError

# Sub-command modules inside this package. Each defines
# ``register(subparsers) -> None`` which adds its parser and sets ``func``.
COMMAND_MODULES = ("upscale", "models", "compare", "info", "evaluate", "bench", "train", "export", "prepare",
                   "degrade")


def build_parser() -> argparse.ArgumentParser:
    from agileir.version import __version__

    parser = argparse.ArgumentParser(
        prog="agileir",
        description="Image restoration with SwinIR and AgileIR (group shifted window attention).",
    )
    parser.add_argument("--version", action="version", version=f"agileir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"agileir.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not there yet
            if exc.name == f"agileir.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AgileIRError as exc:
        print(f"agileir: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agileir: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``agileir`` program: :func:`main` in a process of its own, whose freed memory is kept
    for reuse (:func:`agileir.runtime.keep_freed_memory`; in-process callers of :func:`main`
    keep their allocator as it is)."""
    from agileir.runtime import keep_freed_memory

    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
