"""The command line answers --help, --version and usage errors at once: no torch, clean help text."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys

import pytest

import streamgen
from streamgen.cli import build_parser
from streamgen.commands.help_text import rest_to_text

# Imports that cost seconds; none may happen before a command actually runs.
HEAVY = ("torch", "diffusers", "transformers", "aiortc", "av", "numpy")

PROBE = """
import sys
from streamgen.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = [name for name in {heavy!r} if name in sys.modules]
print("HEAVY:", ",".join(heavy))
"""


def _heavy_imports_after(*argv: str) -> tuple[list[str], str]:
    code = PROBE.format(argv=list(argv), heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = [line for line in result.stdout.splitlines() if line.startswith("HEAVY:")]
    assert last, result.stderr
    names = last[-1].removeprefix("HEAVY:").strip()
    return [n for n in names.split(",") if n], result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["serve", "--help"],
        ["run", "--help"],
        ["doctor", "--help"],
        ["build-engines", "--help"],
        ["run", "--cfg-type", "sometimes"],  # a usage error
        ["serve", "--port", "eighty"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "no-arguments",
)
def test_help_and_usage_errors_do_not_import_torch(argv):
    heavy, output = _heavy_imports_after(*argv)
    assert heavy == [], f"streamgen {' '.join(argv)} imported {heavy}:\n{output}"


def test_python_dash_m_streamgen_help_runs_without_torch():
    code = "import runpy, sys; sys.argv = ['streamgen', 'serve', '--help']\ntry:\n    runpy.run_module('streamgen', run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr
    assert "usage: streamgen serve" in result.stdout


def test_import_streamgen_is_lazy_and_the_api_still_loads():
    code = (
        "import sys, streamgen; before = 'torch' in sys.modules; "
        "cls = streamgen.ImageStream; print(before, 'torch' in sys.modules, cls.__module__, streamgen.VideoStream.__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.stdout.split() == ["False", "True", "streamgen.stream", "VideoStream"], result.stderr


def test_public_names_resolve():
    for name in streamgen.__all__:
        assert getattr(streamgen, name) is not None
    assert set(streamgen.__all__) <= set(dir(streamgen))
    with pytest.raises(AttributeError):
        streamgen.NoSuchThing  # noqa: B018


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"streamgen {streamgen.__version__}"
    try:
        installed = importlib.metadata.version("streamgen")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return
    assert installed == streamgen.__version__, "pyproject.toml's version and streamgen.__version__ disagree"


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("``streamgen serve``: the server", "streamgen serve: the server"),
        ("Flags map onto :class:`streamgen.server.config.ServerConfig`.", "Flags map onto streamgen.server.config.ServerConfig."),
        ("raises :class:`~streamgen.errors.InputError` when", "raises InputError when"),
        ("see :mod:`streamgen.commands` and :func:`run`", "see streamgen.commands and run"),
        (":py:meth:`ImageStream.update`", "ImageStream.update"),
        (":doc:`the guide <guide/start>`", "the guide"),
        ("Public API::\n\n    x = 1\n", "Public API:\n\n    x = 1\n"),
        ("Example:\n\n::\n\n    x = 1\n", "Example:\n\n\n    x = 1\n"),
        ("a plain sentence: no markup", "a plain sentence: no markup"),
        (None, None),
    ],
)
def test_rest_to_text(text, plain):
    assert rest_to_text(text) == plain


def test_help_pages_show_no_rest_markup():
    parser = build_parser()
    pages = [parser.format_help()]
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
        for command in getattr(action, "choices", None) or {}:
            pages.append(action.choices[command].format_help())
    assert len(pages) >= 5
    for page in pages:
        assert "``" not in page and ":class:" not in page and ":mod:" not in page and ":func:" not in page, page


def test_serve_on_a_port_in_use_is_one_line_before_anything_loads(cli, monkeypatch):
    import streamgen.commands.serve as serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(serve, "build_config", lambda args: pytest.fail("the port must be checked first"))
        code, _, err = cli("serve", "--model", "tiny", "--port", str(port))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("streamgen: error:") and err.count("\n") == 1
    assert f"127.0.0.1:{port}" in err and "already in use" in err and "--port" in err


def test_serve_with_an_unresolvable_host_is_one_line(cli):
    code, _, err = cli("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert code == 2 and err.count("\n") == 1 and "--host" in err


def test_listening_sockets_are_handed_over_bound_and_listening():
    from streamgen.commands.serve import open_listening_sockets

    sockets = open_listening_sockets("127.0.0.1", 0)
    try:
        assert len(sockets) == 1
        port = sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the backlog accepts before the server runs: nothing can take the port in between
    finally:
        for sock in sockets:
            sock.close()


def test_dir_of_the_package_shows_only_the_public_api():
    import streamgen

    names = dir(streamgen)
    assert names == sorted(streamgen.__all__)
    assert "ImageStream" in names and "threads" not in names and "importlib" not in names and "prefer_passive_waiting" not in names
