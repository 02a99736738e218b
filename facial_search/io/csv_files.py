"""CSV files a user points at (``--titles``, ``eval``'s triplets), read strictly: every way a file can be wrong
is one typed error (:class:`~facial_search.errors.CsvFileError` subclass) naming the file, and the line where
there is one. Parsing is the standard library's :mod:`csv`; this adds only the checks around it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from facial_search.errors import CsvFileError, InputNotFoundError


def read_csv_rows(
    path: str | os.PathLike, required: Sequence[str], error: type[CsvFileError], what: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with a header line, as ``(line number, {column: value})`` (blank rows left out).

    Args:
        path: the file (UTF-8, an optional byte-order mark).
        required: columns the header must have (others are allowed and kept).
        error: the class raised for a bad file (e.g. :class:`~facial_search.errors.TripletFileError`).
        what: what the file is, for messages (``"titles CSV"``).

    Raises:
        InputNotFoundError: ``path`` does not exist.
        error: ``path`` is a folder, empty, binary (NUL bytes), not UTF-8, lacks a ``required`` column, or has
            a row with another number of fields than the header or that the csv module rejects; the message is
            ``<path>: <problem>`` or ``<path>:<line>: <problem>``.
        PermissionError, OSError: the file cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise error(f"{p}: is a folder, not a {what}")
    data = p.read_bytes()
    if not data.strip():
        raise error(f"{p}: empty file, not a {what} (needs a header line with {', '.join(required)})")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise error(f"{p}:{line}: binary data (a NUL byte), not a {what}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}), not a {what}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in required if c not in header]
        if missing:
            raise error(
                f"{p}:1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(a {what} needs {', '.join(required)}; found {', '.join(header) or 'none'})"
            )
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise error(f"{p}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, row, strict=True))
    except csv.Error as e:
        raise error(f"{p}:{reader.line_num}: malformed CSV: {e}") from None
