"""The index file (``.fsindex``): format version 3, an append-only log of commits in one file; its checks,
its appends and its atomic rewrites. Versions 1 and 2 (a ZIP archive, :mod:`facial_search.index.zipformat`)
are still read; the first commit into such a file rewrites it as version 3.

Layout (integers little-endian)::

    header    16 bytes: b"FSINDEX\\0", u32 format version (3), u32 CRC-32 of the 12 bytes before it
    record*   one per commit, back to back:
                4 bytes   kind: b"CMIT"
                u32       flags: 0
                u64       L: the payload's length in bytes
                u32       CRC-32 of the 16 bytes before it
                L bytes   the payload
                u32       CRC-32 of the payload

A commit's payload is ``u32 H``, a JSON head of H bytes (ASCII), then its sections' bytes back to back, in the
order the head lists them (raw little-endian arrays, C order, no padding). The head::

    {"seq": int >= 1,                 # commit number: the first record's, then +1 each record
     "base": bool,                    # true for the first record only: it starts from nothing
     "meta": {                        # required in the base record; a later one may replace it (its "ann")
         "format": "facial-search-index",
         "embedder": {"name": str, "version": str, "dim": int >= 1},   # never changes
         "ann": null | {"M": int, "ef_construction": int, "ef_search": int}    # HNSW (index.ann)
                | {"kind": "ivf", "nlist": int, "nprobe": int}},                # IVF
     "next_id": int,                  # the id the next face gets (never decreases; every id is below it)
     "next_group": int,               # the next picture-group label (never decreases)
     "rows": [start, n],              # n new rows; start = the rows before them (dead ones included)
     "sources": [start, s, bytes],    # s new source strings (bytes: their UTF-8 length in all)
     "texts": [start, t, bytes],      # t new texts (titles, skip reasons, finders)
     "removed": r, "files": f, "files_removed": fr, "merges": m,
     "segments": [[start, end, bytes], ...],   # new HNSW graphs over rows [start, end)
     "columns": [name, ...],          # optional (absent: []): the optional row columns this commit's rows have
     "sections": [[name, dtype, shape], ...]}  # exactly the list below, for the counts above

Sections (dtype as NumPy writes it):

- rows: ``ids`` <i8 (n,) ascending, above every earlier id; ``embeddings`` <f4 (n, D), each row unit-norm
  (L2 within :data:`NORM_TOLERANCE`) or all zero (a degenerate face, or a row removed before it was first
  committed); ``face`` <i4 (n,) >= 0; ``box`` <i4 (n, 4) x, y, w, h in pixels; ``picture_hash`` <u8 (n,)
  the face's 64-bit dHash; ``flags`` |u1 (n,) bit 0: it has a hash (else ``picture_hash`` is 0);
  ``source`` <i4 (n,) and ``title`` <i4 (n,), numbers of a source string and a text (of this commit or
  before); ``group`` <i8 (n,) the row's picture-group label, below ``next_group``.
- optional rows, those the head's ``"columns"`` lists, in this order
  (:data:`~facial_search.index.table.OPTIONAL_ROW_COLUMNS`): ``blendshapes`` |u1 (n, 52) the face's
  blendshape scores times 255, rounded (all 0 where ``flags`` bit 1 says it has none); ``t_start``,
  ``t_end``, ``t_frame`` <f4 (n,) seconds in the source video, finite and >= 0, or NaN: none (both ends or
  neither; ``t_start <= t_frame <= t_end`` where all are there); ``track`` <i4 (n,) >= -1 (-1: none). A row
  of a commit that does not list a column has none of it (blendshapes: its flags bit 1 must be clear). This
  is additive to format 3 (no version bump): files without ``"columns"`` are today's and read as before;
  a release before it refuses a file with columns as damaged (an unexpected section), and this one refuses a
  column name it does not know (a newer release's).
- strings: ``source_lengths`` <u4 (s,) and ``source_bytes`` |u1 (bytes,), ``text_lengths`` <u4 (t,) and
  ``text_bytes`` |u1: each string's UTF-8 length, then the strings back to back (lone surrogates, a file name
  that is not UTF-8 as ``os.fsdecode`` holds it, encoded as themselves: Python's ``surrogatepass``). String
  numbers count from 0 in the file, in order. Sources are written once each; texts may repeat.
- ``removed`` <i8 (r,): ids of rows removed (each a live row of an earlier record or of this one).
- file records (one per source string, the last one written wins): ``file_source`` <i4 (f,), ``file_size``
  <i8 (f,) >= -1 (-1: unknown), ``file_mtime_ns`` <i8 (f,), ``file_faces`` <i4 (f,) >= 0, ``file_skipped``
  <i4 (f,) and ``file_finder`` <i4 (f,) (text numbers, -1: none); ``files_removed`` <i4 (fr,): sources whose
  record is dropped (each has one).
- ``merges`` <i8 (m, 2): pairs of group labels that hold one picture from now on (union-find: a row's
  picture is the root of its label).
- ``graph`` |u1 (bytes,), once per new segment, in the order of ``segments``:
  :meth:`facial_search.index.ann.HNSWGraph.to_bytes` (or ``IVFIndex.to_bytes``, by ``meta.ann``'s kind) of
  the rows [start, end) (no float vectors: those are the rows' embeddings). Segments lie back to back from
  row 0. A new segment replaces the segments within its range; a ``meta.ann`` of another kind, ``M`` or
  ``nlist``, or ``null``, drops them all (another ``ef_search`` or ``nprobe`` keeps them).

Reading (:func:`read_index`) replays the records in order and checks every one: the CRCs, the head's keys
and types, the sections against the counts (names, dtypes, shapes), ids, string numbers, labels, vectors
(finite, unit-norm), the strings' UTF-8. Anything wrong raises :class:`~facial_search.errors.IndexFormatError`
``<file>: damaged index: <what is wrong>`` naming the first problem (a newer format version:
:class:`~facial_search.errors.IndexVersionError`). Only a record cut short by the end of the file (a commit
being written when its writer was killed, or the power went) is not an error: the file reads as of its last
whole commit, and the next writer cuts the torn bytes off before it appends.

Writing: :func:`append_commit` appends one record and fsyncs it (a commit is durable when it returns; it
costs what changed, never a rewrite); :func:`write_new` writes a whole file (one base record) to a temporary
file in the same folder, fsyncs it and renames it over the old one, so a crash leaves the old or the new file.
The store rewrites whole only to create, to convert an older version, and to compact (when dead space, rows
removed or records superseded, passes half the file), so saves cost O(change), amortised.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facial_search.errors import IndexFormatError, IndexVersionError, InputNotFoundError
from facial_search.index.table import (
    FILE_COLUMNS,
    HAS_BLENDSHAPES,
    HAS_HASH,
    KNOWN_FLAGS,
    OPTIONAL_ROW_COLUMNS,
    ROW_COLUMNS,
    Grow,
    Strings,
    TextIds,
    encode,
)
from facial_search.index.zipformat import FORMAT_NAME, NORM_TOLERANCE, read_zip_index

#: Version of the file format written by this release; older ones (from 1) are read, newer ones refused.
FORMAT_VERSION = 3
MAGIC = b"FSINDEX\x00"
_HEADER = struct.Struct("<8sII")  # magic, version, CRC-32 of the first 12 bytes
_FRAME = struct.Struct("<4sIQI")  # kind, flags, payload length, CRC-32 of the first 16 bytes
_U32 = struct.Struct("<I")
KIND = b"CMIT"
#: Largest JSON head a reader accepts (a head lists counts only: a few hundred bytes).
MAX_HEAD = 1 << 20
_CHUNK = 1 << 16  # rows checked at once (vectors: 16 MB of float32 at 64-d)


def dt(s: str) -> str:
    """The dtype string NumPy writes for ``s`` (``"u1"`` -> ``"|u1"``)."""
    return np.dtype(s).str


@dataclass
class FileState:
    """What a writer knows of the file it appends to: which file (device, inode), where its last whole commit
    ends, the last commit's number, how many records it holds and its dead bytes (what compaction drops)."""

    dev: int
    ino: int
    end: int
    seq: int
    records: int
    dead_bytes: int = 0


@dataclass
class Segment:
    """An HNSW graph over rows [start, end), as stored: its bytes (made into a graph by the store)."""

    start: int
    end: int
    data: np.ndarray


@dataclass
class Loaded:
    """A whole index as read (any version), in the store's columns (:mod:`facial_search.index.table`).

    Attributes:
        version: the file's format version.
        meta: ``{"embedder": {...}, "ann": dict | None}``.
        next_id, next_group: see the module docstring.
        rows: the row columns (``ROW_COLUMNS``; ``group`` -1 where no label is known: versions 1 and 2), and
            the ``OPTIONAL_ROW_COLUMNS`` some commit has (filled with none for the rows of those without).
        live: ``(n,) bool``, False for removed rows.
        sources, texts: the string tables.
        files: ``has`` (bool) and ``FILE_COLUMNS``, one slot per source string.
        merges: ``(m, 2) int64`` label pairs, in order.
        segments: HNSW graphs, by start.
        state: the :class:`FileState` to append to (``None``: an older version, rewritten at the next commit).
    """

    version: int
    meta: dict
    next_id: int
    next_group: int
    rows: dict[str, Grow]
    live: Grow
    sources: Strings
    texts: Strings
    files: dict[str, Grow]
    merges: np.ndarray
    segments: list[Segment] = field(default_factory=list)
    state: FileState | None = None


class _Damaged(Exception):
    """What is wrong (the message :func:`read_index` puts after ``<file>: damaged index:``)."""


def row_bytes(dim: int, columns=()) -> int:
    """Bytes one row takes in the file (all row columns, and the optional ``columns`` named)."""
    return (
        4 * dim
        + sum(np.dtype(d).itemsize * int(np.prod(s)) for n, (d, s) in ROW_COLUMNS.items() if n != "embeddings")
        + sum(np.dtype(OPTIONAL_ROW_COLUMNS[c][0]).itemsize * int(np.prod(OPTIONAL_ROW_COLUMNS[c][1])) for c in columns)
    )


#: Bytes of one file record (the ``file_*`` sections).
FILE_RECORD_BYTES = 4 + sum(np.dtype(d).itemsize for d in FILE_COLUMNS.values())


def expected_sections(head: dict, dim: int) -> list[list]:
    """The sections a head's counts call for: ``[[name, dtype, shape], ...]`` in file order."""
    n, s, t = head["rows"][1], head["sources"][1], head["texts"][1]
    out = []
    for name, (dtype, shape) in ROW_COLUMNS.items():
        out.append([name, dt(dtype), [n, dim] if name == "embeddings" else [n, *shape]])
    for name in head.get("columns", []):
        dtype, shape, _fill = OPTIONAL_ROW_COLUMNS[name]
        out.append([name, dt(dtype), [n, *shape]])
    out += [["source_lengths", dt("<u4"), [s]], ["source_bytes", dt("u1"), [head["sources"][2]]]]
    out += [["text_lengths", dt("<u4"), [t]], ["text_bytes", dt("u1"), [head["texts"][2]]]]
    out.append(["removed", dt("<i8"), [head["removed"]]])
    out.append(["file_source", dt("<i4"), [head["files"]]])
    out += [[f"file_{k}", dt(d), [head["files"]]] for k, d in FILE_COLUMNS.items()]
    out.append(["files_removed", dt("<i4"), [head["files_removed"]]])
    out.append(["merges", dt("<i8"), [head["merges"], 2]])
    out += [["graph", dt("u1"), [nbytes]] for _s, _e, nbytes in head["segments"]]
    return out


def _nbytes(section: list) -> int:
    return np.dtype(section[1]).itemsize * int(np.prod(section[2], dtype=np.int64))


# -- reading ---------------------------------------------------------------------------------------------
def read_index(path: str | os.PathLike) -> Loaded:
    """Read and check an index file of any version (see the module docstring).

    Raises:
        InputNotFoundError: no such file (a ``FileNotFoundError``).
        IndexFormatError: not an index, or damaged: a bad CRC in a whole record, a head that is not JSON or
            lacks a key, sections that do not match the counts, ids not ascending or not below ``next_id``,
            NaN or infinite values, vectors that are not unit-norm, string numbers, labels or removed ids
            that point nowhere, strings that are not UTF-8, no whole commit at all. The message names the
            file, the commit and the first problem found.
        IndexVersionError: written by a newer release (format version above :data:`FORMAT_VERSION`).
    """
    path = Path(path)
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such index file") from None
    except OSError as e:
        raise IndexFormatError(f"{path}: cannot read the index file ({e.strerror or e})") from None
    with f:
        try:
            first = f.read(_HEADER.size)
            if first[:2] == b"PK":  # versions 1 and 2: a ZIP archive
                return _from_zip(path)
            if len(first) < _HEADER.size or first[:8] != MAGIC:
                raise IndexFormatError(f"{path}: not a facial-search index (no {MAGIC[:7].decode()} header)")
            magic, version, crc = _HEADER.unpack(first)
            if zlib.crc32(first[:12]) != crc:
                raise IndexFormatError(f"{path}: damaged index: the file header's CRC does not match")
            if version > FORMAT_VERSION:
                raise IndexVersionError(
                    f"{path}: index format version {version} is newer than this release reads ({FORMAT_VERSION}); "
                    "upgrade facial-search"
                )
            if version != FORMAT_VERSION:
                raise IndexFormatError(f"{path}: damaged index: a log file header with format version {version}")
            return _LogReader(f, path).read()
        except _Damaged as e:
            raise IndexFormatError(f"{path}: damaged index: {e}") from None
        except OSError as e:
            raise IndexFormatError(f"{path}: cannot read the index file ({e.strerror or e})") from None


class _LogReader:
    """One pass over the records' frames and heads (sizes), then one that reads the sections into place."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        st = os.fstat(f.fileno())
        self.size, self.dev, self.ino = st.st_size, st.st_dev, st.st_ino

    def read(self) -> Loaded:
        frames = self._frames()
        if not frames:
            raise _Damaged("no whole commit in the file (it was cut short, or is not an index)")
        meta = frames[0][2]["meta"]
        dim = meta["embedder"]["dim"]
        n = sum(h["rows"][1] for _, _, h, _ in frames)
        n_src = sum(h["sources"][1] for _, _, h, _ in frames)
        n_txt = sum(h["texts"][1] for _, _, h, _ in frames)
        src_bytes = sum(h["sources"][2] for _, _, h, _ in frames)
        txt_bytes = sum(h["texts"][2] for _, _, h, _ in frames)
        cap = max(16, 2 * n)  # room to grow: np.empty pages cost nothing until written
        rows = {name: Grow(d, (dim,) if name == "embeddings" else s, cap) for name, (d, s) in ROW_COLUMNS.items()}
        present = [c for c in OPTIONAL_ROW_COLUMNS if any(c in h.get("columns", []) for _, _, h, _ in frames)]
        for name, (d, s, _fill) in OPTIONAL_ROW_COLUMNS.items():
            if name in present:  # only once some commit has it: a store without it pays nothing
                rows[name] = Grow(d, s, cap)
        self.rows = rows
        self.sources = Strings(Grow(np.uint8, (), max(16, 2 * src_bytes)), Grow(np.int64, (), max(16, 2 * n_src)))
        self.texts = Strings(Grow(np.uint8, (), max(16, 2 * txt_bytes)), Grow(np.int64, (), max(16, 2 * n_txt)))
        self.live = Grow(bool, (), cap)
        self.files = {"has": Grow(bool, (), max(16, 2 * n_src))} | {
            k: Grow(d, (), max(16, 2 * n_src)) for k, d in FILE_COLUMNS.items()
        }
        self.merges: list[np.ndarray] = []
        self.segments: dict[int, Segment] = {}
        self.dead_bytes = 0
        self.file_bytes_of = np.zeros(0, np.int64)  # per source: bytes of its current record (superseded: dead)
        row_commit = np.empty(n, dtype=np.int64)  # which frame every row came in (for messages)
        for i, (pos, length, head, head_raw) in enumerate(frames):
            self.where = f"commit {head['seq']} (byte {pos})"
            start = head["rows"][0]
            row_commit[start : start + head["rows"][1]] = i
            self._read_sections(pos, length, head, head_raw, dim)
            meta = head.get("meta", meta)
        self._check_rows(frames, row_commit, dim)
        self._check_strings(self.sources, "source")
        self._check_strings(self.texts, "text")
        last = frames[-1]
        state = FileState(self.dev, self.ino, last[0] + _FRAME.size + last[1] + 4, last[2]["seq"], len(frames))
        state.dead_bytes = self.dead_bytes + int((~self.live.view).sum()) * row_bytes(dim, present)
        return Loaded(
            version=FORMAT_VERSION,
            meta={"embedder": dict(meta["embedder"]), "ann": meta["ann"]},
            next_id=last[2]["next_id"],
            next_group=last[2]["next_group"],
            rows=rows,
            live=self.live,
            sources=self.sources,
            texts=self.texts,
            files=self.files,
            merges=np.concatenate(self.merges) if self.merges else np.zeros((0, 2), np.int64),
            segments=[self.segments[s] for s in sorted(self.segments)],
            state=state,
        )

    # -- pass 1: frames and heads --------------------------------------------------------------------------
    def _frames(self) -> list[tuple[int, int, dict, bytes]]:
        """``(offset, payload length, head, head bytes)`` of every whole record (heads checked), stopping at a
        record cut short by the end of the file."""
        frames, pos = [], _HEADER.size
        prev = None
        while pos + _FRAME.size <= self.size:
            self.f.seek(pos)
            raw = self._exact(_FRAME.size)
            kind, flags, length, crc = _FRAME.unpack(raw)
            where = f"the record at byte {pos}"
            if zlib.crc32(raw[:16]) != crc:
                raise _Damaged(f"{where}: its frame's CRC does not match")
            if kind != KIND or flags != 0:
                raise _Damaged(f"{where}: not a commit record (kind {kind!r}, flags {flags})")
            if pos + _FRAME.size + length + 4 > self.size:
                break  # a commit cut short (its writer was killed): ignored
            if length < 4:
                raise _Damaged(f"{where}: a payload of {length} bytes, shorter than its head's length")
            hlen = _U32.unpack(self._exact(4))[0]
            if hlen > min(MAX_HEAD, length - 4):
                raise _Damaged(f"{where}: a head of {hlen} bytes in a payload of {length}")
            head_raw = self._exact(hlen)
            head = self._head(head_raw, where, prev, length - 4 - hlen)
            frames.append((pos, length, head, head_raw))
            prev = head
            pos += _FRAME.size + length + 4
        return frames

    def _head(self, raw: bytes, where: str, prev: dict | None, body: int) -> dict:
        """The head, checked against the one before (continuity) and the payload's size."""
        try:
            head = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _Damaged(f"{where}: its head is not JSON ({e})") from None
        if not isinstance(head, dict):
            raise _Damaged(f"{where}: its head is not a JSON object")
        seq = _int(head, "seq", where, 1)
        where = f"commit {seq} (byte {where.rsplit(' ', 1)[-1]})"
        base = head.get("base")
        if not isinstance(base, bool) or base != (prev is None):
            raise _Damaged(f"{where}: 'base' is {base!r}, expected {prev is None} (only the first commit is a base)")
        if prev is not None and seq != prev["seq"] + 1:
            raise _Damaged(f"{where}: follows commit {prev['seq']}")
        if "meta" in head or prev is None:
            head["meta"] = _meta(head, where, prev)
        else:
            head["meta"], head["_ann_changed"] = prev["meta"], False
        for key in ("next_id", "next_group"):
            _int(head, key, where, prev[key] if prev else 0)
        for key, width in (("rows", 2), ("sources", 3), ("texts", 3)):
            v = head.get(key)
            if not isinstance(v, list) or len(v) != width or not all(_is_int(x) and x >= 0 for x in v):
                raise _Damaged(f"{where}: {key!r} is not {width} integers >= 0 ({_short(v)})")
            before = prev[key][0] + prev[key][1] if prev else 0
            if v[0] != before:
                raise _Damaged(f"{where}: {key!r} start at {v[0]}, but {before} came before")
        for key in ("removed", "files", "files_removed", "merges"):
            _int(head, key, where, 0)
        cols = head.get("columns", [])
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise _Damaged(f"{where}: 'columns' is not a list of names ({_short(cols)})")
        unknown = [c for c in cols if c not in OPTIONAL_ROW_COLUMNS]
        if unknown:
            raise _Damaged(f"{where}: unknown row column {_short(unknown[0])} (written by a newer release?)")
        if cols != [c for c in OPTIONAL_ROW_COLUMNS if c in cols]:
            raise _Damaged(f"{where}: 'columns' {_short(cols)} not in the order {list(OPTIONAL_ROW_COLUMNS)}, or twice")
        segs = head.get("segments")
        total_rows = head["rows"][0] + head["rows"][1]
        if not isinstance(segs, list) or not all(
            isinstance(s, list) and len(s) == 3 and all(_is_int(x) for x in s) and 0 <= s[0] < s[1] <= total_rows
            and s[2] >= 0 for s in segs
        ):  # fmt: skip
            raise _Damaged(f"{where}: 'segments' is not a list of [start, end, bytes] within the rows ({_short(segs)})")
        if segs and head["meta"]["ann"] is None:
            raise _Damaged(f"{where}: HNSW segments in an index without an ANN setting")
        want = expected_sections(head, head["meta"]["embedder"]["dim"])
        got = head.get("sections")
        if got != want:
            if not isinstance(got, list) or len(got) != len(want):
                raise _Damaged(f"{where}: its sections are {_short(got)}, expected {len(want)} of them")
            bad = next(i for i in range(len(want)) if got[i] != want[i])
            raise _Damaged(f"{where}: section {_short(got[bad])}, expected {want[bad]}")
        if sum(map(_nbytes, want)) != body:
            raise _Damaged(f"{where}: its sections take {sum(map(_nbytes, want))} bytes, the payload holds {body}")
        head["_where"] = where
        return head

    # -- pass 2: sections ------------------------------------------------------------------------------------
    def _read_sections(self, pos: int, length: int, head: dict, head_raw: bytes, dim: int) -> None:
        where = head["_where"]
        self.f.seek(pos + _FRAME.size + 4 + len(head_raw))
        crc = zlib.crc32(head_raw, zlib.crc32(_U32.pack(len(head_raw))))
        r0, n = head["rows"]
        s0, ns, sb = head["sources"]
        t0, nt, tb = head["texts"]
        temp: dict[str, np.ndarray] = {}
        graphs = []
        for name, dtype, shape in head["sections"]:
            if name in self.rows:
                g = self.rows[name]
                dest = g.a[r0 : r0 + n]
            elif name == "source_bytes":
                dest = self.sources.blob.a[self.sources.blob.n : self.sources.blob.n + sb]
            elif name == "text_bytes":
                dest = self.texts.blob.a[self.texts.blob.n : self.texts.blob.n + tb]
            else:
                dest = np.empty(shape, dtype=dtype)
                if name == "graph":
                    graphs.append(dest)
                else:
                    temp[name] = dest
            crc = self._read_into(dest, crc)
        trailer = self._exact(4)
        if _U32.unpack(trailer)[0] != crc:
            raise _Damaged(f"{where}: the payload's CRC does not match (a damaged or edited file)")
        cols = head.get("columns", [])
        for name, g in self.rows.items():
            if name in OPTIONAL_ROW_COLUMNS and name not in cols:
                g.a[r0 : r0 + n] = OPTIONAL_ROW_COLUMNS[name][2]  # this commit's rows have none
            g.n = r0 + n
        self.live.extend(np.ones(n, dtype=bool))
        self._strings(self.sources, s0, temp["source_lengths"], sb, where, "source")
        self._strings(self.texts, t0, temp["text_lengths"], tb, where, "text")
        self._grow_files(s0 + ns)
        self._removed(temp["removed"], where)
        self._file_records(temp, s0 + ns, t0 + nt, where)
        merges = temp["merges"]
        if len(merges) and (merges.min() < 0 or merges.max() >= head["next_group"]):
            raise _Damaged(f"{where}: a merge of group labels outside [0, next_group = {head['next_group']})")
        if len(merges):
            self.merges.append(merges)
        self._segments(head, graphs)

    def _read_into(self, dest: np.ndarray, crc: int) -> int:
        if not dest.size:
            return crc
        view = memoryview(dest).cast("B")
        got = 0
        while got < len(view):
            k = self.f.readinto(view[got:])
            if not k:
                raise _Damaged("the file ended inside a section")
            got += k
        return zlib.crc32(view, crc)

    def _exact(self, k: int) -> bytes:
        b = self.f.read(k)
        if len(b) != k:
            raise _Damaged("the file ended inside a record")
        return b

    def _strings(self, table: Strings, start: int, lengths: np.ndarray, nbytes: int, where: str, what: str) -> None:
        if int(lengths.sum(dtype=np.int64)) != nbytes:
            raise _Damaged(f"{where}: {what} lengths add up to {int(lengths.sum())} bytes, not {nbytes}")
        base = table.blob.n
        table.ends.a[start : start + len(lengths)] = base + np.cumsum(lengths, dtype=np.int64)
        table.ends.n = start + len(lengths)
        table.blob.n = base + nbytes

    def _grow_files(self, n_sources: int) -> None:
        for k, g in self.files.items():
            old = g.n
            g.reserve(n_sources)
            g.n = n_sources
            g.a[old:n_sources] = False if k == "has" else -1
        grown = np.zeros(n_sources, np.int64)
        grown[: len(self.file_bytes_of)] = self.file_bytes_of
        self.file_bytes_of = grown

    def _removed(self, ids: np.ndarray, where: str) -> None:
        self.dead_bytes += 8 * len(ids)
        if not len(ids):
            return
        all_ids = self.rows["ids"].view
        at = np.searchsorted(all_ids, ids)
        ok = at < len(all_ids)
        ok[ok] = all_ids[at[ok]] == ids[ok]
        if not ok.all():
            raise _Damaged(f"{where}: removes id {int(ids[~ok][0])}, which is no row")
        live = self.live.view
        if len(np.unique(at)) != len(at):
            raise _Damaged(f"{where}: removes one id twice")
        if not live[at].all():
            raise _Damaged(f"{where}: removes id {int(ids[~live[at]][0])}, which was removed before")
        live[at] = False

    def _file_records(self, temp: dict, n_sources: int, n_texts: int, where: str) -> None:
        src = temp["file_source"]
        if len(src):
            if src.min() < 0 or src.max() >= n_sources:
                raise _Damaged(f"{where}: a file record of source {int(src.max())}, which is no source string")
            if len(np.unique(src)) != len(src):
                raise _Damaged(f"{where}: two file records of one source")
            for k, low in (("size", -1), ("faces", 0)):
                v = temp[f"file_{k}"]
                if v.min() < low:
                    raise _Damaged(f"{where}: a file record with {k} {int(v.min())}")
            for k in ("skipped", "finder"):
                v = temp[f"file_{k}"]
                if v.min() < -1 or v.max() >= n_texts:
                    raise _Damaged(f"{where}: a file record's {k} is text {int(v.max())}, which is no text")
            has = self.files["has"].a
            self.dead_bytes += int(self.file_bytes_of[src].sum())
            self.file_bytes_of[src] = FILE_RECORD_BYTES
            has[src] = True
            for k in FILE_COLUMNS:
                self.files[k].a[src] = temp[f"file_{k}"]
        gone = temp["files_removed"]
        if len(gone):
            has = self.files["has"].a
            if gone.min() < 0 or gone.max() >= n_sources or not has[gone].all():
                raise _Damaged(f"{where}: drops the file record of a source that has none")
            has[gone] = False
            self.dead_bytes += int(self.file_bytes_of[gone].sum()) + 4 * len(gone)
            self.file_bytes_of[gone] = 0

    def _segments(self, head: dict, graphs: list[np.ndarray]) -> None:
        if head.get("_ann_changed"):
            self.dead_bytes += sum(s.data.nbytes for s in self.segments.values())
            self.segments.clear()
        for (start, end, _nb), data in zip(head["segments"], graphs, strict=True):
            inside = [s for s in self.segments.values() if s.start < end and start < s.end]
            if any(s.start < start or s.end > end for s in inside):
                raise _Damaged(f"{head['_where']}: HNSW segment [{start}, {end}) overlaps one it does not cover")
            for s in inside:
                self.dead_bytes += s.data.nbytes
                del self.segments[s.start]
            self.segments[start] = Segment(start, end, data)

    # -- checks over all rows ---------------------------------------------------------------------------
    def _check_rows(self, frames: list, row_commit: np.ndarray, dim: int) -> None:
        r = {k: g.view for k, g in self.rows.items()}
        n = len(r["ids"])

        def fail(row: int, what: str) -> None:
            where = frames[int(row_commit[row])][2]["_where"]
            raise _Damaged(f"{where}: row {row} (id {int(r['ids'][row])}) {what}")

        if n == 0:
            return
        ids = r["ids"]
        if ids[0] < 0:
            fail(0, "has a negative id")
        step = np.diff(ids)
        if (step <= 0).any():
            fail(int(np.flatnonzero(step <= 0)[0]) + 1, "has an id not above the one before it")
        next_ids = np.array([h["next_id"] for _, _, h, _ in frames])[row_commit]
        if (ids >= next_ids).any():
            fail(int(np.flatnonzero(ids >= next_ids)[0]), "has an id not below its commit's next_id")
        for name, low in (("face", 0), ("group", 0)):
            bad = r[name] < low
            if bad.any():
                fail(int(np.flatnonzero(bad)[0]), f"has {name} {int(r[name][np.flatnonzero(bad)[0]])}")
        next_groups = np.array([h["next_group"] for _, _, h, _ in frames])[row_commit]
        if (r["group"] >= next_groups).any():
            fail(int(np.flatnonzero(r["group"] >= next_groups)[0]), "has a group label not below next_group")
        flags = r["flags"]
        bad = (flags & ~np.uint8(KNOWN_FLAGS)) != 0
        bad |= ((flags & HAS_HASH) == 0) & (r["picture_hash"] != 0)
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "has unknown flags, or a picture hash its flags say it has not")
        in_commit = np.array(["blendshapes" in h.get("columns", []) for _, _, h, _ in frames])[row_commit]
        bad = ((flags & HAS_BLENDSHAPES) != 0) & ~in_commit
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "has blendshapes by its flags, in a commit without blendshapes")
        self._check_optional(r, flags, fail)
        for name, key in (("source", "sources"), ("title", "texts")):
            ends = np.array([h[key][0] + h[key][1] for _, _, h, _ in frames])[row_commit]
            bad = (r[name] < 0) | (r[name] >= ends)
            if bad.any():
                fail(int(np.flatnonzero(bad)[0]), f"has {name} {int(r[name][np.flatnonzero(bad)[0]])}, no such string")
        emb = r["embeddings"]
        for start in range(0, n, _CHUNK):
            chunk = emb[start : start + _CHUNK]
            finite = np.isfinite(chunk).all(axis=1)
            if not finite.all():
                fail(start + int(np.flatnonzero(~finite)[0]), "holds NaN or infinite values")
            norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
            bad = (np.abs(norms - 1.0) > NORM_TOLERANCE) & (norms != 0.0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                fail(start + row, f"has norm {norms[row]:.6g}, not 1")

    @staticmethod
    def _check_optional(r: dict, flags: np.ndarray, fail) -> None:
        """The optional columns' values (module docstring): blendshapes only where flagged, times and tracks
        in range."""
        if "blendshapes" in r:
            bad = ((flags & HAS_BLENDSHAPES) == 0) & r["blendshapes"].any(axis=1)
            if bad.any():
                fail(int(np.flatnonzero(bad)[0]), "has blendshape scores its flags say it has not")
        times = {k: r[k] for k in ("t_start", "t_end", "t_frame") if k in r}
        for k, v in times.items():
            bad = np.isinf(v) | (v < 0)
            if bad.any():
                fail(int(np.flatnonzero(bad)[0]), f"has {k} {float(v[np.flatnonzero(bad)[0]])}, not a time >= 0")
        if times:
            none = np.full(len(flags), np.nan, np.float32)
            a, b, f = (times.get(k, none) for k in ("t_start", "t_end", "t_frame"))
            bad = (np.isnan(a) != np.isnan(b)) | (a > b) | (~np.isnan(f) & ~np.isnan(a) & ((f < a) | (f > b)))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                fail(row, f"has t_start {a[row]}, t_end {b[row]}, t_frame {f[row]}: not a moment (both ends, in order)")
        if "track" in r and (r["track"] < -1).any():
            row = int(np.flatnonzero(r["track"] < -1)[0])
            fail(row, f"has track {int(r['track'][row])}")

    def _check_strings(self, table: Strings, what: str) -> None:
        """Every string valid UTF-8 on its own (decoded in pieces of whole strings, ~8 MB each)."""
        blob, ends = table.blob.view, table.ends.view
        if not len(ends):
            return
        starts = np.r_[0, ends[:-1]]
        inner = (starts < ends) & ((blob[np.minimum(starts, len(blob) - 1)] & 0xC0) == 0x80) if len(blob) else []
        if np.any(inner):
            raise _Damaged(f"{what} string {int(np.flatnonzero(inner)[0])} starts inside a UTF-8 character")
        cut = 0
        while cut < len(ends):
            stop = int(np.searchsorted(ends, (int(starts[cut]) + (8 << 20)), side="right"))
            stop = max(stop, cut + 1)
            try:
                blob[int(starts[cut]) : int(ends[stop - 1])].tobytes().decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                for i in range(cut, stop):
                    try:
                        table.get(i)
                    except UnicodeDecodeError:
                        raise _Damaged(f"{what} string {i} is not UTF-8") from None
            cut = stop


def _meta(head: dict, where: str, prev: dict | None) -> dict:
    meta = head.get("meta")
    if not isinstance(meta, dict):
        raise _Damaged(f"{where}: 'meta' is not an object ({_short(meta)})")
    if meta.get("format") != FORMAT_NAME:
        raise _Damaged(f"{where}: meta 'format' is {_short(meta.get('format'))}, not {FORMAT_NAME!r}")
    emb = meta.get("embedder")
    if not isinstance(emb, dict) or set(emb) != {"name", "version", "dim"}:
        raise _Damaged(f"{where}: meta 'embedder' is not {{name, version, dim}} ({_short(emb)})")
    if not isinstance(emb["name"], str) or not isinstance(emb["version"], str):
        raise _Damaged(f"{where}: the embedder's name or version is not a string ({_short(emb)})")
    _int(emb, "dim", f"{where}: meta embedder", 1)
    if prev is not None and emb != prev["meta"]["embedder"]:
        raise _Damaged(f"{where}: the embedder changed from {prev['meta']['embedder']} to {emb}")
    ann = meta.get("ann", "missing")
    if ann is not None:
        from facial_search.index.ann import params_from_dict

        try:
            params = params_from_dict(ann)
        except (ValueError, TypeError) as e:
            raise _Damaged(f"{where}: meta 'ann' is not HNSW or IVF parameters ({e})") from None
        ann = params.to_dict()
    old = prev["meta"]["ann"] if prev is not None else None
    head["_ann_changed"] = prev is not None and (
        ann is None or old is None or params.build_key() != params_from_dict(old).build_key()
    )
    return {"format": FORMAT_NAME, "embedder": emb, "ann": ann}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d: dict, key: str, where: str, low: int | None = None) -> int:
    v = d.get(key)
    if not _is_int(v) or (low is not None and v < low):
        bound = f" >= {low}" if low is not None else ""
        raise _Damaged(f"{where}: {key!r} is not an integer{bound} ({_short(v)})")
    return v


def _short(v, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_zip(path: Path) -> Loaded:
    """A version 1 or 2 file in the store's columns (group labels unknown: the store finds them)."""
    c = read_zip_index(path, FORMAT_VERSION)
    order = np.argsort(c.ids, kind="stable")  # rows in id order (a file this project wrote has them so)
    n, dim = len(c.ids), c.embedder["dim"]
    entries = [c.entries[i] for i in order.tolist()]
    sources = Strings()
    src_ids = sources.ids_of([encode(e["source"]) for e in entries] + [encode(s) for s in c.files])
    texts = Strings()
    text_ids = TextIds(texts)
    cols = {
        "ids": c.ids[order],
        "embeddings": c.embeddings[order],
        "face": [e["face"] for e in entries],
        "box": np.array([e["box"] for e in entries], dtype=np.int64).reshape(n, 4),
        "picture_hash": np.array([int(e["picture_hash"], 16) if e["picture_hash"] else 0 for e in entries], np.uint64),
        "flags": [HAS_HASH if e["picture_hash"] else 0 for e in entries],
        "source": src_ids[:n],
        "title": text_ids.ids_of([e["title"] for e in entries]),
        "group": np.full(n, -1),
    }
    rows = {}
    for name, (d, s) in ROW_COLUMNS.items():
        rows[name] = Grow(d, (dim,) if name == "embeddings" else s, max(16, 2 * n))
        rows[name].extend(np.asarray(cols[name], dtype=d).reshape(n, *((dim,) if name == "embeddings" else s)))
    n_src = len(sources)
    files = {"has": Grow(bool, (), n_src)} | {k: Grow(d, (), n_src) for k, d in FILE_COLUMNS.items()}
    for k, g in files.items():
        g.extend(np.full(n_src, False if k == "has" else -1))
    for sid, r in zip(src_ids[n:].tolist(), c.files.values(), strict=True):
        files["has"].a[sid] = True
        files["size"].a[sid], files["mtime_ns"].a[sid], files["faces"].a[sid] = r["size"], r["mtime_ns"], r["faces"]
        files["skipped"].a[sid] = text_ids.id_of(r["skipped"])
        files["finder"].a[sid] = text_ids.id_of(r["finder"])
    live = Grow(bool, (), max(16, 2 * n))
    live.extend(np.ones(n, bool))
    return Loaded(
        version=c.version,
        meta={"embedder": c.embedder, "ann": None},
        next_id=c.next_id,
        next_group=0,
        rows=rows,
        live=live,
        sources=sources,
        texts=texts,
        files=files,
        merges=np.zeros((0, 2), np.int64),
        state=None,
    )


# -- writing ---------------------------------------------------------------------------------------------
class StaleFileError(Exception):
    """The file is not the one a writer last read or wrote (replaced, or shorter): it must be rewritten whole."""


def _payload(head: dict, sections: list[tuple[str, np.ndarray]]) -> list:
    """The payload of a commit as buffers (``u32 H``, the head, the sections), without copying the arrays."""
    arrays = [(name, np.ascontiguousarray(a)) for name, a in sections]
    head = dict(head, sections=[[name, a.dtype.str, list(a.shape)] for name, a in arrays])
    raw = json.dumps(head, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
    return [_U32.pack(len(raw)) + raw] + [memoryview(a).cast("B") for _, a in arrays if a.size]


def _record(head: dict, sections: list[tuple[str, np.ndarray]]) -> list:
    parts = _payload(head, sections)
    length = sum(len(p) for p in parts)
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    frame = struct.pack("<4sIQ", KIND, 0, length)
    return [frame + _U32.pack(zlib.crc32(frame)), *parts, _U32.pack(crc)]


def _write_all(fd: int, parts: list) -> int:
    total = 0
    for p in parts:
        view = memoryview(p).cast("B")
        while len(view):
            k = os.write(fd, view[: 1 << 30])
            view = view[k:]
            total += k
    return total


def append_commit(path: str | os.PathLike, state: FileState, head: dict, sections: list, dead_bytes: int) -> FileState:
    """Append one commit record to ``path`` and fsync it; returns the new :class:`FileState`.

    A torn record a killed writer left after ``state.end`` is cut off first. ``dead_bytes``: what this commit
    makes dead in the file (for the compaction rule).

    Raises:
        StaleFileError: ``path`` is another file than ``state`` says, or shorter (nothing was written).
        OSError: the write failed (the file is cut back to where it was: the commit did not happen).
    """
    head = dict(head, seq=state.seq + 1, base=False)
    parts = _record(head, sections)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise StaleFileError(f"{path}: gone") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (state.dev, state.ino) or st.st_size < state.end:
            raise StaleFileError(f"{path}: not the file this index read or last wrote")
        if st.st_size != state.end:
            os.ftruncate(fd, state.end)
        os.lseek(fd, state.end, os.SEEK_SET)
        try:
            written = _write_all(fd, parts)
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, state.end)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    return FileState(state.dev, state.ino, state.end + written, head["seq"], state.records + 1,
                     state.dead_bytes + dead_bytes)  # fmt: skip


def write_new(path: str | os.PathLike, head: dict, sections: list, seq: int = 1) -> FileState:
    """Write a whole file holding one base commit, atomically: ``<name>.<pid>.<random>.tmp`` in the same folder,
    fsynced, renamed over ``path`` (a crash leaves the old file or the new one; one left by a killed writer is
    removed by the next write once its process is gone). The file gets the permissions of the one it
    replaces, or those of any new file (0666 less the umask), so that another account (a web server) can read
    it as it could any file its owner makes. It does not lock: the store holds the writer lock around it.

    Raises:
        OSError: the folder cannot be created or written (read-only, full, no permission).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = dict(head, seq=seq, base=True)
    header = struct.pack("<8sI", MAGIC, FORMAT_VERSION)
    parts = [header + _U32.pack(zlib.crc32(header)), *_record(head, sections)]
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        _set_mode(fd, path)
        try:
            size = _write_all(fd, parts)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remove_stale_tmp(path)
    _fsync_dir(path.parent)
    return FileState(st.st_dev, st.st_ino, size, seq, 1, 0)


def _set_mode(fd: int, path: Path) -> None:
    """Give the temporary file (``mkstemp`` makes it 0600) the mode the saved index should have."""
    if not hasattr(os, "fchmod"):  # Windows: no POSIX modes
        return
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def _remove_stale_tmp(path: Path) -> None:
    """Delete ``<name>.<pid>.*.tmp`` files beside ``path`` whose writing process no longer exists."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue
        try:
            tmp.unlink()
        except OSError:
            pass


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (``True`` when it cannot be known: another account's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (PermissionError), or not knowable here
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAGIC", "NORM_TOLERANCE", "FileState", "Loaded", "Segment",
           "StaleFileError", "append_commit", "expected_sections", "read_index", "row_bytes", "write_new"]  # fmt: skip
