"""The ``facial-search`` command line: index, search, info, clip, eval, live, serve, demo.

Errors a user can cause print one line, ``facial-search: error: <file>: <problem>``, and exit with status 1;
no traceback. Which errors those are follows from their type (:func:`user_error_message`): every
:class:`~facial_search.errors.FacialSearchError`, and the ``OSError`` kinds a user causes (a missing file,
permission denied, a folder where a file is wanted, a full or read-only file system). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from facial_search import __version__

#: ``OSError`` numbers a user causes: missing or unreadable paths, folders for files, full or read-only disks.
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT",
        "EACCES",
        "EPERM",
        "EISDIR",
        "ENOTDIR",
        "EEXIST",
        "ENOSPC",
        "EDQUOT",
        "EROFS",
        "EFBIG",
        "ENAMETOOLONG",
        "ELOOP",
        "ETXTBSY",
    )  # fmt: skip
    if hasattr(errno, name)
)


#: ``OSError`` subclasses that are always a user's doing, whatever their errno (also raised with a message only).
USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of an error a user caused, or ``None`` for any other exception (a bug).

    ``FacialSearchError``: its message (``<file>: <problem>``). An ``OSError`` of :data:`USER_OS_ERRORS` or with
    an errno of :data:`USER_ERRNOS`: ``<file>: <strerror>`` (or its message when it has no errno).
    """
    from facial_search.errors import FacialSearchError

    if isinstance(e, FacialSearchError):
        text = str(e) or type(e).__name__
    elif isinstance(e, USER_OS_ERRORS) or (isinstance(e, OSError) and e.errno in USER_ERRNOS):
        text = e.strerror or str(e)
        if e.filename is not None:
            text = f"{e.filename}: {text}"
            if e.filename2 is not None:
                text = f"{e.filename} -> {e.filename2}: {e.strerror or e}"
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a user's error, 130 when interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from facial_search.io.native_log import silence_native_stderr

    silence_native_stderr()  # this process is ours: MediaPipe's native log lines stay out of the terminal
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("facial-search: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        sys.stdout.flush()
        print(f"facial-search: error: {message}", file=sys.stderr)
        return 1


#: The commands, in the order ``--help`` lists them: one module each, with ``add_parser(sub)`` and ``run(args)``.
COMMANDS = ("index", "search", "info", "clip", "eval", "live", "serve", "demo")


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
