"""Format versions 1 and 2 of the index file (read only; :mod:`facial_search.index.fileformat` writes
version 3 and sends older files here).

A ZIP archive (deflated, as NumPy's ``.npz``) with three members.

``meta.json``: a JSON object, ASCII (``json.dumps`` escapes everything else as ``\\uXXXX``; so a file name
that is not valid UTF-8, which Python holds with lone surrogates from ``os.fsdecode``, round-trips exactly)::

    {"format": "facial-search-index", "version": 2,
     "embedder": {"name": str, "version": str, "dim": int >= 1},
     "next_id": int >= 0,                  # the id the next face gets: every id is below it (ids are never reused)
     "entries": [                          # N objects, one per face, in row order
         {"id": int, "source": str, "face": int >= 0, "box": [x, y, w, h] (4 ints, pixels),
          "title": str, "picture_hash": str of 16 hex digits | null}, ...],
     "files": {source: {"size": int >= 0, "mtime_ns": int, "faces": int >= 0,
                        "skipped": str | null, "finder": str | null}, ...}}

Version 1 entries have no ``picture_hash`` and its file records no ``finder`` (read as ``None``).

``embeddings.npy``: ``(N, D) float32`` (NumPy ``.npy``, no pickled objects), D = ``embedder.dim``; every row
unit-norm (L2, within :data:`NORM_TOLERANCE`) or all zero (what an embedder gives a degenerate face).

``ids.npy``: ``(N,) int64``, unique, each in ``[0, next_id)``; the same ids as the entries.

:func:`read_zip_index` checks all of the above, so a damaged file fails at once with
:class:`~facial_search.errors.IndexFormatError` (``<file>: damaged index: <what is wrong>``).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facial_search.errors import IndexFormatError, IndexVersionError

FORMAT_NAME = "facial-search-index"
#: The newest version stored as a ZIP archive.
ZIP_VERSION = 2
#: The archive's members.
MEMBERS = ("meta.json", "embeddings.npy", "ids.npy")
#: How far from 1 the L2 norm of a stored embedding may be (float32 rounding is ~1e-7).
NORM_TOLERANCE = 1e-3


@dataclass
class IndexContents:
    """What a version 1 or 2 file holds, checked.

    Attributes:
        version: the file's format version (1 or 2).
        embedder: ``{"name": str, "version": str, "dim": int}``.
        next_id: the id the next added face gets.
        entries: N dicts in row order (keys as in the module docstring; ``picture_hash`` ``None`` in version 1).
        files: ``{source: {"size", "mtime_ns", "faces", "skipped", "finder"}}``.
        embeddings: ``(N, D) float32``.
        ids: ``(N,) int64``.
    """

    version: int
    embedder: dict
    next_id: int
    entries: list[dict]
    files: dict[str, dict]
    embeddings: np.ndarray
    ids: np.ndarray


class _Damaged(Exception):
    """What is wrong inside a file (the message :func:`read_zip_index` puts after ``<file>: damaged index:``)."""


_HEX16 = re.compile(r"[0-9a-f]{16}")


# -- reading ---------------------------------------------------------------------------------------------
def read_zip_index(path: str | os.PathLike, version_read: int) -> IndexContents:
    """Read and check an index file of format version 1 or 2 (a ZIP archive).

    Raises:
        IndexFormatError: not a ZIP archive, not an index, or damaged inside: a member missing or not of its
            type (``meta.json`` not a JSON object, ``embeddings.npy`` not a 2-D float array or holding pickled
            objects, ``ids.npy`` not a 1-D integer array), shapes that do not agree (rows, entries, ids, the
            embedder's dimension), a key missing or of the wrong type in ``meta.json``, ids that do not match the
            entries (duplicates, one missing on either side, negative or not below ``next_id``), NaN or infinite
            values, or vectors that are not unit-norm. The message names the file and the first problem found.
        IndexVersionError: meta.json claims a format version above ``version_read`` (a newer release's).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [m for m in MEMBERS if m not in names]
            if "meta.json" in missing:
                raise IndexFormatError(f"{path}: not a facial-search index (no meta.json in the archive)")
            raw = {m: z.read(m) for m in MEMBERS if m in names}
    except zipfile.BadZipFile as e:
        raise IndexFormatError(f"{path}: not a facial-search index or damaged ({e})") from None
    except (zlib.error, EOFError, NotImplementedError, ValueError, RuntimeError) as e:  # a damaged member
        raise IndexFormatError(f"{path}: damaged index: cannot decompress ({e})") from None
    except OSError as e:
        raise IndexFormatError(f"{path}: cannot read the index file ({e.strerror or e})") from None
    try:
        meta = _parse_meta(raw["meta.json"])
    except _Damaged as e:
        raise IndexFormatError(f"{path}: damaged index: {e}") from None
    if meta.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a facial-search index (meta.json has no format {FORMAT_NAME!r})")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        raise IndexFormatError(f"{path}: damaged index: meta.json 'version' is not a positive integer ({version!r})")
    if version > ZIP_VERSION:
        if version > version_read:
            raise IndexVersionError(
                f"{path}: index format version {version} is newer than this release reads ({version_read}); "
                "upgrade facial-search"
            )
        raise IndexFormatError(f"{path}: damaged index: a ZIP archive that claims format version {version}")
    try:
        if missing:
            raise _Damaged(f"the archive has no {missing[0]}")
        return _check(
            meta, version, _parse_npy(raw["embeddings.npy"], "embeddings.npy"), _parse_npy(raw["ids.npy"], "ids.npy")
        )
    except _Damaged as e:
        raise IndexFormatError(f"{path}: damaged index: {e}") from None


def _parse_meta(raw: bytes) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Damaged("meta.json is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise _Damaged(f"meta.json is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _Damaged(f"meta.json is not a JSON object (a {type(meta).__name__})")
    return meta


def _parse_npy(raw: bytes, name: str) -> np.ndarray:
    if not raw.startswith(b"\x93NUMPY"):  # np.load would try it as a pickle
        raise _Damaged(f"{name} is not a NumPy array file (no .npy header)")
    try:
        a = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _Damaged(f"{name} holds Python objects (pickled), not numbers") from None
        raise _Damaged(f"{name} is not a NumPy array file ({e})") from None
    except (OSError, EOFError) as e:
        raise _Damaged(f"{name} is not a NumPy array file ({e})") from None
    return a


def _check(meta: dict, version: int, emb: np.ndarray, ids: np.ndarray) -> IndexContents:
    """Every check after the version one; raises :class:`_Damaged` with the first problem."""
    embedder = _get(meta, "embedder", dict, "meta.json")
    name = _get(embedder, "name", str, "meta.json embedder")
    emb_version = _get(embedder, "version", str, "meta.json embedder")
    dim = _get_int(embedder, "dim", "meta.json embedder", low=1)
    next_id = _get_int(meta, "next_id", "meta.json", low=0)
    entries = _get(meta, "entries", list, "meta.json")
    files = _get(meta, "files", dict, "meta.json")

    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise _Damaged(f"embeddings.npy is not a 2-D float array ({emb.ndim}-D {emb.dtype})")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise _Damaged(f"ids.npy is not a 1-D integer array ({ids.ndim}-D {ids.dtype})")
    n = len(entries)
    if emb.shape != (n, dim):
        raise _Damaged(f"embeddings.npy has shape {emb.shape}, expected ({n}, {dim}) ({n} entries, embedder dim {dim})")
    if ids.shape != (n,):
        raise _Damaged(f"ids.npy has {len(ids)} ids for {n} entries")

    checked = [_check_entry(e, i, version) for i, e in enumerate(entries)]
    entry_ids = np.asarray([e["id"] for e in checked], dtype=object)
    if n:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= next_id:
            raise _Damaged(f"ids.npy holds id {lo if lo < 0 else hi}, outside [0, next_id = {next_id})")
        if len(np.unique(ids)) != n:
            ordered = np.sort(ids)
            dup = int(ordered[np.flatnonzero(np.diff(ordered) == 0)[0]])
            raise _Damaged(f"ids.npy holds id {dup} twice")
        seen: set[int] = set()
        for i, eid in enumerate(entry_ids):
            if eid in seen:
                raise _Damaged(f"entries[{i}] has id {eid}, as an earlier entry")
            seen.add(eid)
        in_ids = {int(i) for i in ids}
        if seen - in_ids:
            raise _Damaged(f"id {min(seen - in_ids)} is in entries but not in ids.npy")
        if in_ids - seen:
            raise _Damaged(f"id {min(in_ids - seen)} is in ids.npy but in no entry")
        emb64 = emb.astype(np.float64)
        finite = np.isfinite(emb64).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise _Damaged(f"embeddings.npy row {row} (id {int(ids[row])}) holds NaN or infinite values")
        norms = np.linalg.norm(emb64, axis=1)
        bad = (np.abs(norms - 1.0) > NORM_TOLERANCE) & (norms != 0.0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _Damaged(f"embeddings.npy row {row} (id {int(ids[row])}) has norm {norms[row]:.6g}, not 1")

    records = {}
    for source, r in files.items():
        where = f"meta.json files[{_short(source)}]"
        if not isinstance(r, dict):
            raise _Damaged(f"{where} is not an object")
        records[source] = {
            "size": _get_int(r, "size", where, low=0),
            "mtime_ns": _get_int(r, "mtime_ns", where),
            "faces": _get_int(r, "faces", where, low=0),
            "skipped": _get_optional_str(r, "skipped", where),
            "finder": _get_optional_str(r, "finder", where, required=version >= 2),
        }
    return IndexContents(
        version=version,
        embedder={"name": name, "version": emb_version, "dim": dim},
        next_id=next_id,
        entries=checked,
        files=records,
        embeddings=emb.astype(np.float32, copy=False),
        ids=ids.astype(np.int64, copy=False),
    )


def _check_entry(e, i: int, version: int) -> dict:
    where = f"meta.json entries[{i}]"
    if not isinstance(e, dict):
        raise _Damaged(f"{where} is not an object")
    box = e.get("box")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_int(v) for v in box):
        raise _Damaged(f"{where} 'box' is not 4 integers ({_short(box)})" if "box" in e else f"{where} has no 'box'")
    picture_hash = _get_optional_str(e, "picture_hash", where, required=version >= 2)
    if picture_hash is not None and not _HEX16.fullmatch(picture_hash):
        raise _Damaged(f"{where} 'picture_hash' is not 16 hex digits ({_short(picture_hash)})")
    return {
        "id": _get_int(e, "id", where),
        "source": _get(e, "source", str, where),
        "face": _get_int(e, "face", where, low=0),
        "box": tuple(box),
        "title": _get(e, "title", str, where),
        "picture_hash": picture_hash,
    }


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string"}


def _get(d: dict, key: str, kind: type, where: str):
    if key not in d:
        raise _Damaged(f"{where} has no {key!r}")
    v = d[key]
    if not isinstance(v, kind):
        raise _Damaged(f"{where} {key!r} is not {_TYPE_NAMES[kind]} ({_short(v)})")
    return v


def _get_int(d: dict, key: str, where: str, *, low: int | None = None) -> int:
    if key not in d:
        raise _Damaged(f"{where} has no {key!r}")
    v = d[key]
    if not _is_int(v) or (low is not None and v < low):
        raise _Damaged(f"{where} {key!r} is not an integer{f' >= {low}' if low is not None else ''} ({_short(v)})")
    return v


def _get_optional_str(d: dict, key: str, where: str, *, required: bool = False) -> str | None:
    if key not in d:
        if required:
            raise _Damaged(f"{where} has no {key!r}")
        return None
    v = d[key]
    if v is not None and not isinstance(v, str):
        raise _Damaged(f"{where} {key!r} is neither a string nor null ({_short(v)})")
    return v


def _short(v, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["FORMAT_NAME", "MEMBERS", "NORM_TOLERANCE", "ZIP_VERSION", "IndexContents", "read_zip_index"]
