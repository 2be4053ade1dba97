"""Fixtures for CLI tests: the CLI is called in-process through ``streamgen.cli.main``."""

from __future__ import annotations

import pytest

from streamgen.cli import main

# Small frames keep the tiny model fast; 64 is the schema's smallest size.
SMALL = ["--width", "64", "--height", "64", "--quiet"]


@pytest.fixture()
def cli(capsys):
    """Run ``streamgen ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke
