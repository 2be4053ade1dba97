"""The ``streamgen`` command line: one sub-command per module in :mod:`streamgen.commands`.

Each command module defines ``register(subparsers)`` which adds its parser
and sets ``func`` to a callable taking the parsed namespace and returning an
exit code. Command modules keep their heavy imports (torch, diffusers, aiortc,
PyAV) inside the functions that run the command, and ``import streamgen`` is
lazy, so ``--help``, ``--version`` and argument errors answer at once, without
loading torch (tests/cli/test_cli_startup.py checks it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .commands.early_checks import SuggestingParser
from .commands.help_text import rest_to_text
from .errors import StreamgenError

COMMANDS = ("serve", "run", "camera", "build_engines", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(prog="streamgen", description="Real-time streaming diffusion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"streamgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"streamgen.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"streamgen.commands.{name}":
                raise
            continue
        module.register(subparsers)
    for command in subparsers.choices.values():  # descriptions are reST module docstrings
        command.description = rest_to_text(command.description)
        command.epilog = rest_to_text(command.epilog)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StreamgenError as error:
        print(f"streamgen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
