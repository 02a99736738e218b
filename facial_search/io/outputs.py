"""Checks on an output path made before any work starts, so a run that cannot write its result fails in a
moment instead of after the work (``index --out``, ``search --out``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from facial_search.errors import OutputError


def check_output_file(path: str | os.PathLike, *, suffixes: Iterable[str] | None = None) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known that a file can be created there.

    Creates and removes an empty temporary file beside ``path`` (the real test of a read-only file system or a
    folder without write permission, also for root). Nothing else is left on disk.

    Args:
        path: the file to be written (created, or replaced atomically by a rename in its folder).
        suffixes: if given, the extensions a writer knows (lower case, with the dot: ``".png"``).

    Raises:
        OutputError: ``path`` is a folder, has an extension not in ``suffixes``, its folder does not exist or
            is a file, or no file can be created in its folder (read-only, permission denied, full).
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: is a folder, not a file")
    if suffixes is not None:
        known = sorted({s.lower() for s in suffixes})
        if p.suffix.lower() not in known:
            what = f"unknown extension {p.suffix!r}" if p.suffix else "no extension"
            raise OutputError(f"{p}: {what}; one of {', '.join(known)}")
    folder = p.absolute().parent
    if not folder.exists():
        raise OutputError(f"{p}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{p}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise OutputError(f"{p}: cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    return p
