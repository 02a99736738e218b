"""The ``facial-search`` command line: index, search, info, eval, live, serve, demo.

Errors a user can cause (a bad image, no face, a missing model, a mismatched index) print one line,
``facial-search: error: ...``, and exit with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from facial_search import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from facial_search.io.native_log import silence_native_stderr

    silence_native_stderr()
    from facial_search.errors import FacialSearchError

    try:
        return int(args.func(args) or 0)
    except (FacialSearchError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"facial-search: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facial-search: interrupted", file=sys.stderr)
        return 130


#: The commands, in the order ``--help`` lists them: one module each, with ``add_parser(sub)`` and ``run(args)``.
COMMANDS = ("index", "search", "info", "eval", "live", "serve", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The ``facial-search`` parser with every command of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="facial-search", description="Find the memes whose facial expression matches yours."
    )
    p.add_argument("--version", action="version", version=f"facial-search {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"facial_search.cli.{name}").add_parser(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
