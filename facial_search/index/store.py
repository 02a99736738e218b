"""The default store (a plain path, ``memes.fsindex``): one entry per face, stable ids, Euclidean top-k search
(exact through FAISS, or through HNSW graphs or inverted files: ``ann``), and :func:`open_store` (``facial_search.index.open``),
which opens any backend by its URI.

The interface follows FAISS: :meth:`MemeIndex.add`, :meth:`MemeIndex.search` returns ``(distances, ids)``;
:class:`MemeIndex` implements :class:`facial_search.index.base.Store`. Its parts: the columns in memory
(:mod:`facial_search.index.table`), the file format, its checks, appends and atomic rewrites
(:mod:`facial_search.index.fileformat`), picture groups (:mod:`facial_search.index.dedupe`), the search
kernels (:mod:`facial_search.index.kernels`), the ANN segments (:mod:`facial_search.index.segments`), the
writer lock (:mod:`facial_search.index.lock`). ``top_k``, ``group_layout``, ``group_min``, ``FORMAT_NAME`` and
``FORMAT_VERSION`` are importable from here too.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facial_search.errors import (
    EmbedderMismatchError,
    IndexFormatError,
    IndexURIError,
    MissingDependencyError,
    OptionError,
)
from facial_search.index.dedupe import PictureGroups
from facial_search.index.fileformat import (
    FILE_RECORD_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    NORM_TOLERANCE,
    FileState,
    StaleFileError,
    append_commit,
    read_index,
    row_bytes,
    write_new,
)
from facial_search.index.kernels import group_layout, group_min, grouped_top_k, top_k
from facial_search.index.lock import IndexWriter, held_writer
from facial_search.index.segments import Segments
from facial_search.index.table import (
    BLENDSHAPES,
    FILE_COLUMNS,
    HAS_BLENDSHAPES,
    HAS_HASH,
    OPTIONAL_ROW_COLUMNS,
    ROW_COLUMNS,
    Grow,
    Strings,
    TextIds,
    blendshape_scores,
    encode,
    quantise_blendshapes,
)

if TYPE_CHECKING:
    from facial_search.index.base import Store

#: Most neighbours one search returns per query (the answer is ``(Q, k)``: a k of billions would not fit in
#: memory; FAISS's GPU indexes stop at 2,048).
MAX_K = 10_000
#: A removed row's first coordinate in memory in an exact store (the others 0): its squared distance to any unit
#: query is ~1e12, so an exact search ranks it after every live row, with nothing to filter (the file keeps its
#: real vector until compaction). An ANN store keeps removed rows' vectors as they are (its graphs re-rank
#: against them, and check them against their codes when read): its searches fetch more and skip them.
POISON = 1e6
#: ``open_store(..., ann=EXACT)``: search exactly (drop an ANN store's graphs).
EXACT = "exact"
#: Commits in one file before the next commit rewrites it whole (reading a record costs ~20 us).
MAX_RECORDS = 4096
_HEX16 = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class EmbedderInfo:
    """Which embedder made an index's vectors."""

    name: str
    version: str
    dim: int

    @classmethod
    def of(cls, embedder) -> EmbedderInfo:
        return cls(embedder.name, str(embedder.version), int(embedder.dim))

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.dim}-d)"


#: The optional keys of an entry (:class:`Entry` fields, :meth:`MemeIndex.add` dict keys), ``None``: none.
OPTIONAL_FIELDS = tuple(OPTIONAL_ROW_COLUMNS)
#: How far a blendshape score may lie outside [0, 1] and still be taken (clipped): float rounding only.
BLENDSHAPE_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class Entry:
    """One indexed face.

    Attributes:
        id: stable id, unique within the index, never reused after removal.
        source: absolute path of the image file.
        face: face number within the image (0-based, left to right).
        box: bounding box ``(x, y, w, h)`` in pixels of the source image.
        title: human-readable title (sidecar CSV or file name).
        picture_hash: 64-bit difference hash of the face's pixels, 16 hex digits
            (:func:`facial_search.index.dedupe.face_dhash`); ``None`` in indexes written before it existed.
        blendshapes: ``(52,) float32`` (read-only) scores in [0, 1] of the face's blendshapes, ordered as
            :data:`facial_search.vision.faces.BLENDSHAPE_NAMES`, as stored: quantised to steps of 1/255
            (error <= 0.002); ``None`` when the index has none for it (indexes written before them).
        t_start, t_end: seconds in the source video of the *moment* this face stands for (float32 precision:
            ~0.25 ms an hour); ``None`` for a picture.
        t_frame: seconds of the moment's most typical sample (the frame ``box`` is from); ``None``: none.
        track: the face track within the video (an integer >= 0); ``None``: none.

    Equal when every field is (blendshapes compared by value).
    """

    id: int
    source: str
    face: int
    box: tuple[int, int, int, int]
    title: str
    picture_hash: str | None = None
    blendshapes: np.ndarray | None = None
    t_start: float | None = None
    t_end: float | None = None
    t_frame: float | None = None
    track: int | None = None

    def _key(self) -> tuple:
        bs = None if self.blendshapes is None else np.asarray(self.blendshapes, np.float32).tobytes()
        return (self.id, self.source, self.face, tuple(self.box), self.title, self.picture_hash, bs, self.t_start,
                self.t_end, self.t_frame, self.track)  # fmt: skip

    def __eq__(self, other) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_dict(cls, id: int, e: dict) -> Entry:
        """From ``{"source", "face", "box", "title"[, "picture_hash", "blendshapes", "t_start", "t_end",
        "t_frame", "track"]}`` (an :meth:`MemeIndex.add` entry or a saved one; values taken as given: the
        blendshapes as ``(52,) float32``, unquantised)."""
        bs = e.get("blendshapes")
        if bs is not None:
            bs = np.array(bs, dtype=np.float32).reshape(BLENDSHAPES)
            bs.flags.writeable = False
        times = [None if e.get(k) is None else float(e[k]) for k in ("t_start", "t_end", "t_frame")]
        track = None if e.get("track") is None else int(e["track"])
        return cls(int(id), str(e["source"]), int(e["face"]), tuple(map(int, e["box"])), str(e["title"]),
                   e.get("picture_hash"), bs, *times, track)  # fmt: skip


@dataclass(frozen=True)
class FileRecord:
    """What the index knows of one source file: its size and mtime when indexed, face count, skip reason,
    and how faces were looked for (``finder``: ``"whole"`` or ``"whole+tiles"``, see
    :class:`facial_search.pipeline.Pipeline`; ``None`` when written by format version 1)."""

    size: int
    mtime_ns: int
    faces: int
    skipped: str | None = None
    finder: str | None = None


def check_embedder(store, expect: EmbedderInfo | None) -> None:
    """Refuse a store whose vectors another embedder made than ``expect`` (nothing when ``expect`` is None): the
    one check every backend goes through (:func:`open_store`, :meth:`MemeIndex.load`).

    Raises:
        EmbedderMismatchError: ``store.embedder != expect``; the message says how to re-index.
    """
    if expect is not None and store.embedder != expect:
        uri = store.uri or "index"
        raise EmbedderMismatchError(
            f"{uri}: index was built with embedder {store.embedder}, but the current embedder is {expect}; "
            f"re-index with the current embedder: `facial-search index DIR --out NEW.fsindex` (or delete {uri} first)"
        )


class MemeIndex:
    """Embeddings and metadata of indexed faces, searchable by exact Euclidean distance (or through HNSW graphs
    or inverted files, ``ann``): the file backend of :class:`facial_search.index.base.Store`
    (``describe()["backend"]`` is ``"file (exact)"``, ``"file (hnsw)"`` or ``"file (ivf)"``).

    Made in memory (``MemeIndex(info)``) it has no path (``uri`` is ``""``; write it with :meth:`save`); opened
    from a path (:meth:`load`, :func:`open_store`) it keeps the path, and :meth:`commit` appends what changed to
    it (format 3: :mod:`facial_search.index.fileformat`). Opened for writing (``open_store(path, writer=True)``)
    it holds the path's writer lock (:class:`~facial_search.index.lock.IndexWriter`) until :meth:`close`. A
    context manager. Searches may run from several threads at once; changes come from one.

    Memory: the rows live in NumPy columns (:mod:`facial_search.index.table`); :class:`Entry` objects are made
    when asked for (:meth:`entry`, :meth:`entries`).

    Args:
        embedder: the :class:`EmbedderInfo` of the vectors it holds (recorded in the file).
        path: the index file :meth:`commit` writes (``None``: none yet).
        ann: search through HNSW graphs (:class:`~facial_search.index.ann.HNSWParams`) or inverted files
            (:class:`~facial_search.index.ann.IVFParams`) with these parameters (``None``: exact search; see
            :mod:`facial_search.index.segments`).
    """

    def __init__(self, embedder: EmbedderInfo, *, path: str | os.PathLike | None = None, ann=None):
        self.embedder = embedder
        self._path: Path | None = None if path is None else Path(path)
        self.uri = "" if path is None else os.fspath(path)
        self._writer: IndexWriter | None = None
        self._lock = threading.RLock()  # changes, and the caches searches build
        dim = embedder.dim
        self._rows = {name: Grow(d, (dim,) if name == "embeddings" else s) for name, (d, s) in ROW_COLUMNS.items()}
        self._live = Grow(bool)
        self._sources, self._texts = Strings(), Strings()
        self._files = {"has": Grow(bool)} | {k: Grow(d) for k, d in FILE_COLUMNS.items()}
        self._per_source = {"live": Grow(np.int64), "label": Grow(np.int64), "in_file": Grow(bool)}
        self.next_id = 0
        self._dead = 0  # rows removed but still in place
        self._groups = PictureGroups()
        self._grouped = 0  # rows [0, _grouped) have their picture label
        self._ann = ann
        self._segments = Segments(ann) if ann is not None else None
        self._state: FileState | None = None  # the file at _path as last read or written; None: rewrite it whole
        self._reset_pending()
        self._cache: dict = {}
        self._text_ids = TextIds(self._texts)

    def _reset_pending(self) -> None:
        """Everything is in the file now (after a read or a write)."""
        self._done = (len(self._live), len(self._sources), len(self._texts))  # rows, sources, texts written
        self._removed: list[np.ndarray] = []
        self._files_changed: set[int] = set()
        self._merges: list[np.ndarray] = []
        self._meta_changed = False

    # -- size and access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live.n - self._dead

    @property
    def ntotal(self) -> int:
        """Number of faces (entries), as in FAISS."""
        return self._live.n - self._dead

    def _live_rows(self) -> np.ndarray | None:
        """The rows in place that are live, ``None`` when all are (cached)."""
        if not self._dead:
            return None
        with self._lock:
            rows = self._cache.get("live_rows")
            if rows is None:
                rows = self._cache["live_rows"] = np.flatnonzero(self._live.view)
            return rows

    def _column(self, name: str) -> np.ndarray:
        """A row column over the live rows (a view when none is removed, else a cached copy), read-only."""
        with self._lock:
            key = ("column", name)
            v = self._cache.get(key)
            if v is None:
                rows = self._live_rows()
                v = self._rows[name].view if rows is None else self._rows[name].view[rows]
                v = v.view()
                v.flags.writeable = False
                self._cache[key] = v
            return v

    @property
    def embeddings(self) -> np.ndarray:
        """``(N, D) float32`` (read-only), rows in the order of :attr:`ids`."""
        return self._column("embeddings")

    @property
    def ids(self) -> np.ndarray:
        """``(N,) int64`` entry ids, in row order (ascending)."""
        return self._column("ids")

    def _row_of(self, id: int) -> int | None:
        ids = self._rows["ids"].view
        i = int(np.searchsorted(ids, id))
        return i if i < len(ids) and ids[i] == id and self._live.a[i] else None

    def entry(self, id: int) -> Entry:
        """The entry with this id; ``KeyError`` if there is none."""
        row = self._row_of(int(id))
        if row is None:
            raise KeyError(id)
        r = self._rows
        flags = int(r["flags"].a[row])
        extra = {k: v[0] for k, v in self._optional_values(np.array([row]), flags=r["flags"].a[[row]]).items()}
        return Entry(
            int(r["ids"].a[row]),
            self._sources.get(int(r["source"].a[row])),
            int(r["face"].a[row]),
            tuple(int(v) for v in r["box"].a[row]),
            self._texts.get(int(r["title"].a[row])),
            f"{int(r['picture_hash'].a[row]):016x}" if flags & HAS_HASH else None,
            **extra,
        )

    def _optional_columns(self) -> list[str]:
        """The optional columns this store has (:data:`OPTIONAL_FIELDS` order)."""
        return [name for name in OPTIONAL_FIELDS if name in self._rows]

    def _optional_values(self, rows: np.ndarray | None, flags: np.ndarray) -> dict[str, list]:
        """The optional fields of ``rows`` (``None``: the live rows, in order) as :class:`Entry` values: one list
        per column the store has (``None`` where a row has none)."""
        out = {}
        for name in OPTIONAL_FIELDS:
            if name not in self._rows:
                continue
            v = self._column(name) if rows is None else self._rows[name].a[rows]
            if name == "blendshapes":
                scores = blendshape_scores(v)
                scores.flags.writeable = False
                has = ((flags & HAS_BLENDSHAPES) != 0).tolist()
                out[name] = [scores[i] if h else None for i, h in enumerate(has)]
            elif name == "track":
                out[name] = [None if t < 0 else t for t in v.tolist()]
            else:
                out[name] = [None if t != t else t for t in v.tolist()]  # NaN: none
        return out

    def entries(self) -> list[Entry]:
        """All entries in row order (made now: ~1 s a million)."""
        ids, face, box = self._column("ids").tolist(), self._column("face").tolist(), self._column("box").tolist()
        hashes, flags = self._column("picture_hash").tolist(), self._column("flags").tolist()
        sources, titles = self._column("source").tolist(), self._column("title").tolist()
        extra = self._optional_values(None, self._column("flags"))
        names: dict[int, str] = {}
        texts: dict[int, str] = {}
        out = []
        for j, (i, s, f, b, t, h, fl) in enumerate(zip(ids, sources, face, box, titles, hashes, flags, strict=True)):
            src = names.get(s)
            if src is None:
                src = names[s] = self._sources.get(s)
            title = texts.get(t)
            if title is None:
                title = texts[t] = self._texts.get(t)
            more = {k: v[j] for k, v in extra.items()} if extra else {}
            out.append(Entry(i, src, f, tuple(b), title, f"{h:016x}" if fl & HAS_HASH else None, **more))
        return out

    def source_groups(self) -> np.ndarray:
        """``(N,) int64`` group number of every row, in row order, numbers from 0 to (groups - 1): one group
        per picture. The faces of one source image share a group, and so do the faces of source images that
        hold the same picture (the same template saved under two names: a face in each with a near-identical
        embedding and picture hash, :data:`~facial_search.index.dedupe.DUPLICATE_RULES`). Each face gets its
        group when added (found among the stored faces by picture hash: :class:`~facial_search.index.dedupe.
        PictureGroups`, at the next commit or search), and the file keeps it: nothing is recomputed at open."""
        with self._lock:
            groups = self._cache.get("source_groups")
            if groups is None:
                roots = self._row_roots()
                rows = self._live_rows()
                live_roots = roots if rows is None else roots[rows]
                groups = self._cache["source_groups"] = np.unique(live_roots, return_inverse=True)[1].astype(np.int64)
            return groups

    def group_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`group_layout` of :meth:`source_groups`, cached with them (for :func:`group_min`)."""
        with self._lock:
            layout = self._cache.get("group_layout")
            if layout is None:
                layout = self._cache["group_layout"] = group_layout(self.source_groups())
            return layout

    def _row_roots(self) -> np.ndarray:
        """``(n,) int64`` the picture (root label) of every row in place, dead ones too (cached)."""
        with self._lock:
            roots = self._cache.get("roots")
            if roots is None:
                self._assign_groups()
                roots = self._cache["roots"] = self._groups.roots(self._rows["group"].view)
            return roots

    @property
    def files(self) -> Mapping[str, FileRecord]:
        """``{source: FileRecord}`` of every file processed (a read-only view; :meth:`record_file` changes it)."""
        return _Files(self)

    @property
    def skipped(self) -> dict[str, str]:
        """``{source: reason}`` for files recorded as skipped (no face, unreadable, ...)."""
        has, skipped = self._files["has"].view, self._files["skipped"].view
        return {
            self._sources.get(int(s)): self._texts.get(int(skipped[s])) for s in np.flatnonzero(has & (skipped >= 0))
        }

    # -- mutation ----------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, entries: list[dict]) -> np.ndarray:
        """Add faces; returns their new ids ``(n,) int64``. Amortised O(n) (the columns grow by doubling).

        Args:
            embeddings: ``(n, D) float32``, D = the embedder's dimension; each row unit-norm (L2, within
                1e-3) or all zero.
            entries: n dicts with ``source``, ``face`` (>= 0), ``box`` (x, y, w, h), ``title``, optionally
                ``picture_hash`` (16 hex digits, :func:`~facial_search.index.dedupe.face_dhash`, or ``None``),
                and the optional :class:`Entry` fields (absent or ``None``: none): ``blendshapes`` (52 scores
                in [0, 1], a sequence or an array, e.g. ``Face.blendshapes``; stored as uint8, 1/255 steps),
                ``t_start`` and ``t_end`` (seconds >= 0, both or neither, ``t_start <= t_end``), ``t_frame``
                (seconds >= 0, within [t_start, t_end] when they are given), ``track`` (an integer >= 0). A
                store holds (and its file writes) an optional column only once some entry has a value for it.

        Raises:
            ValueError: as many embeddings as entries not given, rows of another dimension, NaN, infinite or
                not unit-norm; a face number below 0, a box that is not four integers, a picture hash that is
                not 16 hex digits; blendshapes that are not 52 finite scores in [0, 1], times that are not
                finite seconds >= 0 or not in order, one end of a moment without the other, a track that is
                not an integer >= 0. Nothing is added then.
        """
        emb = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.embedder.dim)
        if len(entries) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(entries)} entries")
        n = len(entries)
        if not np.isfinite(emb).all():
            raise ValueError("embeddings hold NaN or infinite values")
        norms = np.sqrt(np.einsum("ij,ij->i", emb, emb, dtype=np.float64))
        bad = (np.abs(norms - 1.0) > NORM_TOLERANCE) & (norms != 0.0)
        if bad.any():
            raise ValueError(f"embedding {int(np.flatnonzero(bad)[0])} has norm {norms[bad][0]:.6g}, not 1 (or 0)")
        faces, boxes, hashes, flags = _parse_entries(entries)
        optional = parse_optional(entries)
        if "blendshapes" in optional:
            flags |= np.where(optional.pop("has_blendshapes"), np.uint8(HAS_BLENDSHAPES), np.uint8(0))
        with self._lock:
            ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
            sources = self._sources.ids_of([encode(str(e["source"])) for e in entries])
            titles = self._text_ids.ids_of([str(e["title"]) for e in entries])
            self._grow_per_source()
            buffer = self._rows["embeddings"].a
            cols = {"ids": ids, "embeddings": emb, "face": faces, "box": boxes, "picture_hash": hashes,
                    "flags": flags, "source": sources, "title": titles, "group": np.full(n, -1)}  # fmt: skip
            for name, values in cols.items():
                self._rows[name].extend(values)
            for name, (d, shape, fill) in OPTIONAL_ROW_COLUMNS.items():
                if name in optional and name not in self._rows:  # the first values of this column
                    self._rows[name] = Grow(d, shape, len(self._rows["ids"].a))
                    self._rows[name].fill(self._live.n, fill)
                if name in optional:
                    self._rows[name].extend(optional[name])
                elif name in self._rows:
                    self._rows[name].fill(n, fill)
            self._live.extend(np.ones(n, dtype=bool))
            np.add.at(self._per_source["live"].a, sources, 1)
            self.next_id += n
            if self._segments is not None and self._rows["embeddings"].a is not buffer:
                self._segments.attach(self._rows["embeddings"].a)  # the graphs re-rank on the new buffer
            self._cache.clear()  # what searches cached
        return ids

    def _grow_per_source(self) -> None:
        n = len(self._sources)
        for k, g in (self._files | self._per_source).items():
            if g.n < n:
                g.extend(np.full(n - g.n, False if g.a.dtype == bool else (0 if k == "live" else -1)))

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored). O(k log N)."""
        ids = np.unique(np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64))
        with self._lock:
            all_ids = self._rows["ids"].view
            at = np.searchsorted(all_ids, ids)
            ok = at < len(all_ids)
            ok[ok] = (all_ids[at[ok]] == ids[ok]) & self._live.a[at[ok]]
            rows = at[ok]
            if not len(rows):
                return 0
            self._live.a[rows] = False
            self._dead += len(rows)
            sources = self._rows["source"].a[rows]
            np.subtract.at(self._per_source["live"].a, sources, 1)
            gone = sources[self._per_source["live"].a[sources] == 0]
            self._per_source["label"].a[gone] = -1  # a source added again starts a new picture
            if self._segments is None:
                self._poison(rows)
            if self._segments is not None:
                self._segments.mark_dead(rows)
            self._removed.append(all_ids[rows])
            self._cache.clear()
            return len(rows)

    def _poison(self, rows: np.ndarray) -> None:
        """Removed rows of an exact store: :data:`POISON` (an exact search never ranks them before a live row)."""
        self._rows["embeddings"].a[rows] = 0.0
        self._rows["embeddings"].a[rows, 0] = POISON

    def remove_source(self, source: str) -> int:
        """Remove every face of one source file and forget the file; returns the faces removed."""
        with self._lock:
            sid = self._sources.find(encode(source))
            if sid is None:
                return 0
            if self._files["has"].a[sid]:
                self._files["has"].a[sid] = False
                self._files_changed.add(sid)
            if not self._per_source["live"].a[sid]:
                return 0
            rows = np.flatnonzero((self._rows["source"].view == sid) & self._live.view)
            return self.remove_ids(self._rows["ids"].a[rows])

    def record_file(self, source: str, record: FileRecord) -> None:
        """Remember that ``source`` was processed (so an unchanged file is not processed again).

        Raises:
            ValueError: a record whose faces is below 0 or whose numbers are not integers.
        """
        values = [record.size, record.mtime_ns, record.faces]
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values) or record.faces < 0:
            raise ValueError(f"not a file record: {record!r}")
        with self._lock:
            sid = int(self._sources.ids_of([encode(source)])[0])
            self._grow_per_source()
            f = self._files
            f["has"].a[sid] = True
            f["size"].a[sid], f["mtime_ns"].a[sid], f["faces"].a[sid] = record.size, record.mtime_ns, record.faces
            f["skipped"].a[sid] = self._text_ids.id_of(record.skipped)
            f["finder"].a[sid] = self._text_ids.id_of(record.finder)
            self._files_changed.add(sid)

    # -- picture groups ----------------------------------------------------------------------------------
    def _assign_groups(self) -> None:
        """Give the rows added since the last time their picture label (their source's; a new one for a new
        source), then join the labels of those that are the same picture as a live row
        (:meth:`PictureGroups.join_duplicates`). Called at commits and before a grouping search."""
        with self._lock:
            n, start = self._live.n, self._grouped
            if start >= n:
                return
            sources = self._rows["source"].a[start:n]
            label = self._per_source["label"].a
            fresh = np.unique(sources[label[sources] < 0])
            if len(fresh):
                order = np.sort(np.unique(sources, return_index=True)[1])  # sources in order of first row
                fresh = sources[order][np.isin(sources[order], fresh)]
                label[fresh] = self._groups.new_labels(len(fresh))
            self._rows["group"].a[start:n] = label[sources]
            if "t_start" in self._rows:  # a video's moments: each one result of its own (issue 18), not one per video
                moment = np.flatnonzero(~np.isnan(self._rows["t_start"].a[start:n]))
                if len(moment):
                    self._rows["group"].a[start + moment] = self._groups.new_labels(len(moment))
            r = self._rows
            joined = self._groups.join_duplicates(
                r["embeddings"].view, r["picture_hash"].view, (r["flags"].view & HAS_HASH) != 0, self._live.view,
                r["group"].view, np.arange(start, n),
            )  # fmt: skip
            if len(joined):
                self._merges.append(joined)
            self._grouped = n
            self._cache.pop("roots", None)
            self._cache.pop("source_groups", None)
            self._cache.pop("group_layout", None)

    # -- search -----------------------------------------------------------------------------------------
    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Euclidean distances from every query to every indexed face.

        Args:
            queries: ``(Q, D) float32`` (or ``(D,)`` for one query).

        Returns:
            ``(Q, N) float32``, columns in row order (:attr:`ids`); range [0, 2] for unit-norm embeddings.
        """
        q = self._queries(queries)
        emb = self.embeddings
        d2 = (q * q).sum(1)[:, None] + (emb * emb).sum(1)[None, :] - 2.0 * (q @ emb.T)
        return np.sqrt(np.maximum(d2, 0.0))

    def search(
        self, queries: np.ndarray, k: int = 3, *, group_by_source: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-nearest neighbours by Euclidean distance: exact (FAISS ``knn``, the kernel of ``IndexFlatL2``, over
        the store's own array), or approximate through the HNSW graphs or inverted files of an ``ann`` store.

        Args:
            queries: ``(Q, D) float32`` (or ``(D,)`` for one query).
            k: neighbours per query, 1 to :data:`MAX_K` (else :class:`~facial_search.errors.OptionError`).
            group_by_source: one neighbour per picture at most (its nearest face), so that a meme with
                several faces, or saved twice under two names, fills one of the k places, not several (a
                "grouping search", as Milvus's ``group_by_field``; groups: :meth:`source_groups`).

        Returns:
            ``(distances, ids)``, both ``(Q, k)``: distances float32 Euclidean (range [0, 2] for unit-norm
            embeddings), ascending per row; ids int64, ``-1`` (and distance ``inf``) where the index holds
            fewer than k faces (or k pictures, when grouping).

        Raises:
            OptionError: k outside 1..MAX_K. ValueError: queries of another dimension.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise OptionError(f"k: must be a whole number from 1 to {MAX_K:,} (got {k!r})")
        k = int(k)
        q = self._queries(queries)
        snap = self._snapshot()
        if not group_by_source:
            rows = self._plain(q, k, snap)[1]
        elif snap[0] == 0 or not len(q):
            rows = np.full((len(q), k), -1, dtype=np.int64)
        else:
            roots = self._row_roots()[: snap[0]]
            _, rows = grouped_top_k(lambda qi, kk: self._plain(q[qi], kk, snap), len(q), roots, k)
        return self._finish(q, snap[1], snap[2], rows)

    def _snapshot(self):
        """``(n, embeddings (n, D), ids (n,), live (n,), segments)``: one consistent state to search."""
        with self._lock:
            n = self._live.n
            seg = None if self._segments is None else (self._segments, list(self._segments.sealed))
            return n, self._rows["embeddings"].a[:n], self._rows["ids"].a[:n], self._live.a[:n], seg

    def _plain(self, q: np.ndarray, k: int, snap) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest live rows ``(distances, rows)`` ``(len(q), k)``, ``inf`` / ``-1`` past them."""
        n, emb, _ids, live, seg = snap
        dist = np.full((len(q), k), np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if not n or not len(q):
            return dist, rows
        if seg is not None and seg[1]:
            return seg[0].search(q, k, emb, live, n)
        import faiss

        extra = 0 if seg is None else int(n - live.sum())  # an ANN store's removed rows are not poisoned
        kk = min(k + extra, n)
        d2, found = faiss.knn(q, emb, kk)  # removed rows hold POISON: last, and only when k > live rows
        if kk > k:  # the first k live ones
            keep = live[np.maximum(found, 0)] & (found >= 0)
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            d2, found = np.take_along_axis(d2, order, 1), np.take_along_axis(np.where(keep, found, -1), order, 1)
            kk = k
        ok = found >= 0
        ok[ok] = live[found[ok]]
        rows[:, :kk] = np.where(ok, found, -1)
        dist[:, :kk] = np.where(ok, np.sqrt(np.maximum(d2, 0)), np.inf)
        return dist, rows

    @staticmethod
    def _finish(q: np.ndarray, emb: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` of the chosen ``rows`` ``(Q, k)`` (``-1``: none): each distance computed again
        as the norm of the difference (exact near 0, where the square root of FAISS's or :meth:`distances`'
        ``|q|^2 + |x|^2 - 2 q.x`` is off by up to ~5e-4), the same way for a plain and a grouping search, then
        sorted by distance, lower row first on a tie (FAISS's heap promises no order among ties; which of
        several rows tied at the k-th place is returned is FAISS's choice)."""
        found = rows >= 0
        if not len(emb):
            return np.full(rows.shape, np.inf, dtype=np.float32), np.full(rows.shape, -1, dtype=np.int64)
        r = np.maximum(rows, 0)
        diff = q[:, None, :] - emb[r]
        dist = np.where(found, np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)), np.inf).astype(np.float32)
        order = np.lexsort((np.where(found, rows, np.iinfo(np.int64).max), dist))  # per query row
        dist, r, found = (np.take_along_axis(a, order, 1) for a in (dist, r, found))
        return dist, np.where(found, ids[r], -1)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        """``(Q, D) float32`` C-contiguous, from ``(Q, D)`` or ``(D,)``; ``ValueError`` for another dimension."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.embedder.dim:
            raise ValueError(f"queries have dimension {q.shape[-1]}, index has {self.embedder.dim}")
        return np.ascontiguousarray(q)

    # -- ANN -----------------------------------------------------------------------------------------------
    @property
    def ann(self):
        """The :class:`~facial_search.index.ann.HNSWParams` or :class:`~facial_search.index.ann.IVFParams` of an
        ANN store, ``None`` for exact search."""
        return self._ann

    def set_ann(self, params) -> None:
        """Search through HNSW graphs or inverted files with ``params`` from now on (``None``: exactly). They are
        built at the next :meth:`commit` (the whole store at once: a million rows on 2 cores ~4 minutes for
        HNSW, ~2 for IVF); a change of ``ef_search``, ``ef_construction`` or ``nprobe`` alone keeps them
        (:meth:`~facial_search.index.ann.HNSWParams.build_key`)."""
        with self._lock:
            if params == self._ann:
                return
            old = self._ann
            self._ann = params
            self._meta_changed = True
            if params is None:
                self._segments = None
                self._poison(np.flatnonzero(~self._live.view))
            elif old is None or old.build_key() != params.build_key():
                self._segments = Segments(params)
                if old is None and self._dead:
                    self._state = None  # poisoned rows must not reach a graph: compacted away at the next commit
            else:
                self._segments.params = params
                for s in self._segments.sealed:
                    s.graph.params = params
            self._cache.clear()

    # -- persistence ------------------------------------------------------------------------------------
    @staticmethod
    def writer(path: str | os.PathLike) -> IndexWriter:
        """The writer lock of the index file ``path`` (:class:`~facial_search.index.lock.IndexWriter`, not yet
        taken): ``with MemeIndex.writer(path) as lock:`` load, change, ``save(path, lock=lock)``, and no other
        process can save to ``path`` meanwhile (it gets :class:`~facial_search.errors.IndexLockedError`)."""
        return IndexWriter(path)

    def save(self, path: str | os.PathLike, *, lock: IndexWriter | None = None) -> None:
        """Write to ``path`` (format 3, :mod:`facial_search.index.fileformat`). To the index's own file, a
        save is a commit: what changed since the last one is appended and fsynced (the file is rewritten only
        to convert an older version or to compact it: when more than half of it is dead). Elsewhere the whole
        index is written atomically (a temporary file in the same folder, fsync, rename; permissions those of
        the file it replaces or of any new file).

        Args:
            lock: the held :meth:`writer` of ``path``. Without it, the save takes the writer lock for its own
                duration, unless this process holds it already; so it never overwrites an index another
                process is writing.

        Raises:
            IndexLockedError: another process is writing ``path`` (an ``index`` run).
            ValueError: ``lock`` is not held, or is the lock of another file.
            OutputError: the folder or the lock file cannot be created.
            OSError: the index cannot be written (full or read-only file system): nothing is lost, the next
                save writes it again.
        """
        if lock is not None and not lock.covers(path):
            raise ValueError(f"{lock!r} is not a held writer lock of {path}")
        if lock is not None or held_writer(path) is not None:
            self._write(Path(path))
        else:
            with IndexWriter(path):
                self._write(Path(path))

    def _own(self, path: Path) -> bool:
        if self._path is None:
            return False
        return os.path.abspath(path) == os.path.abspath(self._path)

    def _write(self, path: Path) -> None:
        with self._lock:
            self._assign_groups()
            own = self._own(path)
            if own and self._state is not None and not self._compaction_due():
                if self._segments is not None:
                    self._segments.seal(self._rows["embeddings"].a, self._live.n, live=self._live.a)
                head, sections, dead = self._commit_record(full=False)
                try:
                    self._state = append_commit(path, self._state, head, sections, dead)
                except StaleFileError:
                    pass  # replaced or cut by someone else: write it whole below
                else:
                    self._after_write()
                    return
            if self._dead:
                self._compact()
            if self._segments is not None:  # a whole file: every row in a graph
                self._segments.seal(self._rows["embeddings"].a, self._live.n, force=True, live=self._live.a)
            self._relabel_to_roots()
            head, sections, _ = self._commit_record(full=True)
            seq = self._state.seq + 1 if own and self._state is not None else 1
            state = write_new(path, head, sections, seq=seq)
            if own:
                self._state = state
                self._after_write()

    def _relabel_to_roots(self) -> None:
        """Every row's and source's label becomes its root (the same groups; a whole write records no merges)."""
        g = self._rows["group"]
        g.a[: g.n] = self._groups.roots(g.view)
        lab = self._per_source["label"]
        known = lab.view >= 0
        lab.a[: lab.n][known] = self._groups.roots(lab.view[known])

    def _compaction_due(self) -> bool:
        """Whether the next commit rewrites the file whole: more than half of it dead (removed rows, superseded
        records and graphs), or more than :data:`MAX_RECORDS` commits in it."""
        s = self._state
        removed = sum(len(r) for r in self._removed)
        dead = s.dead_bytes + removed * row_bytes(self.embedder.dim, self._optional_columns())
        return dead * 2 > s.end or s.records >= MAX_RECORDS

    def _after_write(self) -> None:
        self._reset_pending()
        f = self._per_source["in_file"]
        f.a[: f.n] = self._files["has"].a[: f.n]
        if self._segments is not None:
            for s in self._segments.sealed:
                s.saved = True

    def _commit_record(self, *, full: bool) -> tuple[dict, list, int]:
        """``(head, sections, dead bytes)`` of a commit: everything (``full``: a base record, after
        :meth:`_compact`) or what changed since the last write."""
        r0, s0, t0 = (0, 0, 0) if full else self._done
        n, ns, nt = self._live.n, len(self._sources), len(self._texts)
        rows = {name: g.a[r0:n] for name, g in self._rows.items()}
        dead_new = ~self._live.a[r0:n]
        if dead_new.any() and self._ann is None:  # removed before ever written: zeros (POISON is no unit vector)
            rows["embeddings"] = rows["embeddings"].copy()
            rows["embeddings"][dead_new] = 0.0
        columns = [name for name in OPTIONAL_ROW_COLUMNS if name in rows]
        sections = [(name, rows[name]) for name in (*ROW_COLUMNS, *columns)]
        blob_bytes = []
        for table, a, what in ((self._sources, s0, "source"), (self._texts, t0, "text")):
            first = int(table.ends.a[a - 1]) if a else 0
            lengths = np.diff(np.r_[first, table.ends.a[a : len(table)]]).astype("<u4")
            sections += [(f"{what}_lengths", lengths), (f"{what}_bytes", table.blob.a[first : table.blob.n])]
            blob_bytes.append(table.blob.n - first)
        removed = np.zeros(0, np.int64) if full or not self._removed else np.concatenate(self._removed)
        has, in_file = self._files["has"].a[:ns], self._per_source["in_file"].a[:ns]
        if full:
            changed, dropped = np.flatnonzero(has), np.zeros(0, np.int64)
        else:
            touched = np.array(sorted(self._files_changed), dtype=np.int64)
            changed = touched[has[touched]]
            dropped = touched[~has[touched] & (touched < len(in_file)) & in_file[touched]]
        sections.append(("removed", removed.astype("<i8")))
        sections.append(("file_source", changed.astype("<i4")))
        sections += [(f"file_{k}", self._files[k].a[changed].astype(d)) for k, d in FILE_COLUMNS.items()]
        sections.append(("files_removed", dropped.astype("<i4")))
        merges = np.zeros((0, 2), np.int64) if full or not self._merges else np.concatenate(self._merges)
        sections.append(("merges", merges))
        segs = []
        if self._segments is not None:
            for s in self._segments.sealed:
                if full or not s.saved:
                    data = np.frombuffer(s.graph.to_bytes(), dtype=np.uint8)
                    segs.append([s.start, s.end, len(data)])
                    sections.append(("graph", data))
        head = {
            "next_id": self.next_id,
            "next_group": len(self._groups.parent),
            "rows": [r0, n - r0],
            "sources": [s0, ns - s0, blob_bytes[0]],
            "texts": [t0, nt - t0, blob_bytes[1]],
            "removed": len(removed),
            "files": len(changed),
            "files_removed": len(dropped),
            "merges": len(merges),
            "segments": segs,
        }
        if columns:  # absent otherwise: a store without optional columns writes what earlier releases read
            head["columns"] = columns
        if full or self._meta_changed or self._state is None:
            head["meta"] = {"format": FORMAT_NAME, "embedder": asdict(self.embedder),
                            "ann": None if self._ann is None else self._ann.to_dict()}  # fmt: skip
        dead = len(removed) * (row_bytes(self.embedder.dim, self._optional_columns()) + 8)
        dead += int((has[changed] & in_file[changed]).sum()) * FILE_RECORD_BYTES if len(changed) else 0
        return head, sections, dead

    def _compact(self) -> None:
        """Drop the removed rows from memory (before a whole write): rows, strings no longer used and file
        records are renumbered; the ANN segments are dropped (rebuilt by the next seal)."""
        keep = np.flatnonzero(self._live.view)
        dim = self.embedder.dim
        rows = {}
        for name, old in self._rows.items():  # the optional columns too, where the store has them
            g = Grow(old.a.dtype, (dim,) if name == "embeddings" else old.a.shape[1:], max(16, 2 * len(keep)))
            g.extend(old.view[keep])
            rows[name] = g
        has = self._files["has"].view
        used_src = np.union1d(rows["source"].view, np.flatnonzero(has))
        recs = np.flatnonzero(has)
        used_txt = np.union1d(
            rows["title"].view, np.r_[self._files["skipped"].view[recs], self._files["finder"].view[recs]]
        )
        used_txt = used_txt[used_txt >= 0]
        src_map = np.full(len(self._sources), -1, np.int64)
        src_map[used_src] = np.arange(len(used_src))
        txt_map = np.full(len(self._texts) + 1, -1, np.int64)  # [-1] stays -1
        txt_map[used_txt] = np.arange(len(used_txt))
        rows["source"].a[: len(keep)] = src_map[rows["source"].view]
        rows["title"].a[: len(keep)] = txt_map[rows["title"].view]
        files = {}
        for k, g in self._files.items():
            files[k] = Grow(g.a.dtype, (), max(16, 2 * len(used_src)))
            v = g.view[used_src]
            files[k].extend(txt_map[v] if k in ("skipped", "finder") else v)
        per = {}
        for k, g in self._per_source.items():
            per[k] = Grow(g.a.dtype, (), max(16, 2 * len(used_src)))
            per[k].extend(g.view[used_src])
        self._rows, self._files, self._per_source = rows, files, per
        self._sources, self._texts = self._sources.gather(used_src), self._texts.gather(used_txt)
        self._text_ids = TextIds(self._texts)
        self._live = Grow(bool, (), max(16, 2 * len(keep)))
        self._live.extend(np.ones(len(keep), bool))
        self._dead = 0
        self._grouped = len(keep)
        self._groups.reset_index()
        if self._segments is not None:
            self._segments = Segments(self._ann)
        self._state = None  # the file's rows are no longer ours: rewrite it whole
        self._reset_pending()
        self._per_source["in_file"].a[:] = False
        self._cache.clear()

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: EmbedderInfo | None = None) -> MemeIndex:
        """Read an index file, checked throughout (:func:`~facial_search.index.fileformat.read_index`: format 3,
        or 1 and 2, which the first commit rewrites as 3). At 1M faces: ~1 s, and the memory of its columns.

        Args:
            expect: when given, the embedder the caller will query with.

        Raises:
            InputNotFoundError: no such file (a ``FileNotFoundError``).
            IndexFormatError: not an index, or damaged inside (the message says what is wrong).
            IndexVersionError: written by a newer format version (a subclass of ``IndexFormatError``).
            EmbedderMismatchError: built by another embedder than ``expect``.
        """
        got = read_index(path)
        ann = None
        if got.meta["ann"] is not None:
            from facial_search.index.ann import params_from_dict

            ann = params_from_dict(got.meta["ann"])
        index = cls(EmbedderInfo(**got.meta["embedder"]), path=path, ann=ann)
        check_embedder(index, expect)
        index._rows, index._live, index._sources, index._texts = got.rows, got.live, got.sources, got.texts
        index._text_ids = TextIds(index._texts)
        index._files = got.files
        index.next_id = got.next_id
        index._dead = int((~got.live.view).sum())
        n_src = len(got.sources)
        per_live = np.bincount(got.rows["source"].view[got.live.view], minlength=n_src).astype(np.int64)
        index._per_source = {"live": Grow.adopt(per_live, n_src), "in_file": Grow(bool), "label": Grow(np.int64)}
        index._per_source["in_file"].extend(got.files["has"].view if got.state is not None else np.zeros(n_src, bool))
        labels = np.full(n_src, -1, np.int64)
        live_rows = np.flatnonzero(got.live.view)
        labels[got.rows["source"].view[live_rows]] = got.rows["group"].view[live_rows]
        index._per_source["label"].extend(labels)
        index._groups.set_labels(got.next_group, got.merges)
        grouped = got.rows["group"].view >= 0
        index._grouped = len(grouped) if grouped.all() else int(np.argmin(grouped))
        dead = ~got.live.view
        if index._segments is not None:
            try:
                index._segments.load(got.segments, got.rows["embeddings"].a)
            except ValueError as e:
                raise IndexFormatError(f"{path}: damaged index: {e}") from None
            for s in index._segments.sealed:
                s.dead = int(dead[s.start : s.end].sum())
        else:
            index._poison(np.flatnonzero(dead))
        index._state = got.state
        index._reset_pending()
        if got.state is None:  # an older version: rewritten whole at the first commit
            index._done = (0, 0, 0)
        return index

    # -- the rest of the Store protocol ------------------------------------------------------------------------
    def commit(self) -> None:
        """Make everything added or removed so far durable in the index's file (:meth:`save` to its path: an
        append of what changed, fsynced; with its writer lock where it holds it). A process killed after this
        returns loses none of it; one killed during it leaves the file as of the commit before.

        Raises:
            ValueError: an index made in memory, without a path (use :meth:`save`).
            IndexLockedError, OutputError, OSError: as :meth:`save`.
        """
        if self._path is None:
            raise ValueError("this index was made in memory and has no path: save(path) writes it")
        writer = self._writer if self._writer is not None and self._writer.held else None
        self.save(self._path, lock=writer)

    def describe(self) -> dict:
        """What ``facial-search info`` shows: ``{"backend": "file (exact)", "file (hnsw)" or "file (ivf)", "uri",
        "faces", "pictures" (groups of :meth:`source_groups`), "images" (files processed), "skipped", "embedder"
        (name), "embedder_version", "dim", "format_version" (the version :meth:`save` writes), "ann" (``None``,
        ``{"M", "ef_construction", "ef_search"}`` or ``{"kind": "ivf", "nlist", "nprobe"}``), "segments" (ANN
        indexes: sealed segments, 0 when exact)}``, and for IVF "ivf_lists": the lists each segment made
        (:func:`~facial_search.index.ann.ivf_nlist`, at most ``nlist``)."""
        ivf = {}
        if self._ann is not None and self._ann.kind == "ivf":
            ivf["ivf_lists"] = [s.graph.nlist for s in self._segments.sealed]
        return {"backend": "file (exact)" if self._ann is None else f"file ({self._ann.kind})", "uri": self.uri,
                "faces": self.ntotal, "pictures": int(self.source_groups().max(initial=-1)) + 1,
                "images": len(self.files), "skipped": len(self.skipped), "embedder": self.embedder.name,
                "embedder_version": self.embedder.version, "dim": self.embedder.dim,
                "format_version": FORMAT_VERSION, "ann": None if self._ann is None else self._ann.to_dict(),
                "segments": 0 if self._segments is None else len(self._segments.sealed)} | ivf  # fmt: skip

    def hold_writer(self) -> MemeIndex:
        """Take the writer lock of the index's path and hold it until :meth:`close`; returns ``self``.

        Raises:
            ValueError: no path. IndexLockedError: another process (or writer) holds it. OutputError: as
            :meth:`IndexWriter.acquire <facial_search.index.lock.IndexWriter.acquire>`.
        """
        if self._path is None:
            raise ValueError("this index was made in memory and has no path to lock")
        if self._writer is None or not self._writer.held:
            self._writer = IndexWriter(self._path).acquire()
        return self

    def close(self) -> None:
        """Release the writer lock if this index holds it (idempotent); the index stays usable in memory."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()

    def __enter__(self) -> MemeIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemeIndex({self.uri!r}, embedder={self.embedder}, faces={self.ntotal})"


class _Files(Mapping):
    """``MemeIndex.files``: ``{source: FileRecord}``, read from the columns when asked."""

    def __init__(self, index: MemeIndex):
        self._index = index

    def _sid(self, source) -> int | None:
        if not isinstance(source, str):
            return None
        sid = self._index._sources.find(encode(source))
        has = self._index._files["has"]
        return sid if sid is not None and sid < has.n and has.a[sid] else None

    def __getitem__(self, source: str) -> FileRecord:
        sid = self._sid(source)
        if sid is None:
            raise KeyError(source)
        f, texts = self._index._files, self._index._texts
        skipped, finder = int(f["skipped"].a[sid]), int(f["finder"].a[sid])
        return FileRecord(int(f["size"].a[sid]), int(f["mtime_ns"].a[sid]), int(f["faces"].a[sid]),
                          texts.get(skipped) if skipped >= 0 else None, texts.get(finder) if finder >= 0 else None)  # fmt: skip

    def __contains__(self, source) -> bool:
        return self._sid(source) is not None

    def __iter__(self):
        sources = self._index._sources
        return (sources.get(int(s)) for s in np.flatnonzero(self._index._files["has"].view))

    def __len__(self) -> int:
        return int(self._index._files["has"].view.sum())


def _parse_entries(entries: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(face, box (n, 4), picture_hash, flags)`` columns of :meth:`MemeIndex.add` entries; ValueError for a bad
    one (the message names it)."""
    n = len(entries)
    faces = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.int64)
    hashes = np.zeros(n, np.uint64)
    flags = np.zeros(n, np.uint8)
    for i, e in enumerate(entries):
        face, box, h = e["face"], e["box"], e.get("picture_hash")
        if isinstance(face, bool) or not isinstance(face, int | np.integer) or face < 0:
            raise ValueError(f"entries[{i}]: face must be an integer >= 0 (got {face!r})")
        try:
            b = [int(v) for v in box]
        except (TypeError, ValueError):
            b = []
        if len(b) != 4 or any(not -(2**31) <= v < 2**31 for v in b):
            raise ValueError(f"entries[{i}]: box must be 4 integers (x, y, w, h), got {box!r}")
        faces[i], boxes[i] = face, b
        if h is not None:
            if not isinstance(h, str) or not _HEX16.fullmatch(h):
                raise ValueError(f"entries[{i}]: picture_hash must be 16 hex digits or None (got {h!r})")
            hashes[i], flags[i] = int(h, 16), HAS_HASH
    return faces, boxes, hashes, flags


def _number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def parse_optional(entries: list[dict]) -> dict[str, np.ndarray]:
    """The optional columns of :meth:`MemeIndex.add` entries (:data:`OPTIONAL_FIELDS`) that some entry has a
    value for, in their stored dtypes (:data:`~facial_search.index.table.OPTIONAL_ROW_COLUMNS`; a row without
    a value gets the column's fill), plus ``"has_blendshapes"`` ``(n,) bool`` beside ``"blendshapes"``
    ``(n, 52) uint8``. ValueError for a bad value (the message names the entry; see :meth:`MemeIndex.add`)."""
    n = len(entries)
    out: dict[str, np.ndarray] = {}
    if not any(e.get(k) is not None for e in entries for k in OPTIONAL_FIELDS):
        return out
    bs = [e.get("blendshapes") for e in entries]
    has = np.array([b is not None for b in bs], dtype=bool)
    if has.any():
        given = [b for b in bs if b is not None]
        try:
            v = np.asarray(given, dtype=np.float64)  # all at once: (m, 52) when every one is 52 numbers
        except (TypeError, ValueError):
            v = np.zeros(0)
        if v.shape != (len(given), BLENDSHAPES):
            for i in np.flatnonzero(has).tolist():  # the first bad one, named
                try:
                    shape = np.asarray(bs[i], dtype=np.float64).shape
                except (TypeError, ValueError):
                    shape = "not numbers"
                if shape != (BLENDSHAPES,):
                    raise ValueError(f"entries[{i}]: blendshapes must be {BLENDSHAPES} scores (got shape {shape})")
            raise ValueError(f"entries: blendshapes must be {BLENDSHAPES} scores each")
        rows = np.flatnonzero(has)
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise ValueError(f"entries[{int(rows[np.argmax(bad)])}]: blendshapes hold NaN or infinite values")
        bad = (v.min(axis=1) < -BLENDSHAPE_TOLERANCE) | (v.max(axis=1) > 1 + BLENDSHAPE_TOLERANCE)
        if bad.any():
            j = int(np.argmax(bad))
            got = f"{v[j].min():.4g}..{v[j].max():.4g}"
            raise ValueError(f"entries[{int(rows[j])}]: blendshape scores must lie in [0, 1] (got {got})")
        scores = np.zeros((n, BLENDSHAPES), np.uint8)
        scores[rows] = quantise_blendshapes(v)
        out["blendshapes"], out["has_blendshapes"] = scores, has
    times = {}
    for k in ("t_start", "t_end", "t_frame"):
        vals = [e.get(k) for e in entries]
        if all(v is None for v in vals):
            continue
        col = np.full(n, np.nan, np.float32)
        for i, v in enumerate(vals):
            if v is None:
                continue
            if not _number(v) or not np.isfinite(v) or v < 0:
                raise ValueError(f"entries[{i}]: {k} must be a finite number of seconds >= 0 or None (got {v!r})")
            col[i] = v
        times[k] = col
    if times:
        none = np.full(n, np.nan, np.float32)
        a, b, f = (times.get(k, none) for k in ("t_start", "t_end", "t_frame"))
        for i in np.flatnonzero((np.isnan(a) != np.isnan(b)) | (a > b)).tolist():
            raise ValueError(f"entries[{i}]: a moment needs t_start <= t_end, both or neither (got {a[i]}, {b[i]})")
        for i in np.flatnonzero(~np.isnan(f) & ~np.isnan(a) & ((f < a) | (f > b))).tolist():
            raise ValueError(f"entries[{i}]: t_frame {f[i]} lies outside its moment [{a[i]}, {b[i]}]")
        out |= times
    tracks = [e.get("track") for e in entries]
    if any(t is not None for t in tracks):
        col = np.full(n, -1, np.int32)
        for i, t in enumerate(tracks):
            if t is None:
                continue
            if isinstance(t, bool) or not isinstance(t, int | np.integer) or not 0 <= t < 2**31:
                raise ValueError(f"entries[{i}]: track must be an integer >= 0 or None (got {t!r})")
            col[i] = t
        out["track"] = col
    return out


#: URI schemes :func:`open_store` knows, besides a plain path.
FILE_SCHEME, MILVUS_SCHEMES = "file://", ("milvus-lite://", "milvus://")


def file_path(uri: str | os.PathLike) -> Path | None:
    """The index file a URI names (a plain path, or ``file://PATH`` / ``file:///abs/path``), ``None`` for
    another backend's URI (``milvus-lite://``, ``milvus://``, an unknown scheme)."""
    text = os.fspath(uri)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith(FILE_SCHEME):
        from urllib.parse import unquote

        return Path(unquote(text[len(FILE_SCHEME) :]))
    if "://" in text:
        return None
    return Path(text)


def open_store(
    uri: str | os.PathLike,
    *,
    embedder: EmbedderInfo | None = None,
    create: bool = False,
    writer: bool = False,
    ann=None,
) -> Store:
    """Open the store at ``uri`` (``facial_search.index.open``): the backend comes from the URI.

    - a plain path or ``file://PATH`` (``file:///abs/memes.fsindex``, percent-escapes decoded): a
      :class:`MemeIndex` loaded from the file;
    - ``milvus-lite://PATH.db`` or ``milvus://HOST:PORT/COLLECTION``:
      :meth:`facial_search.index.milvus.MilvusStore.open` (pymilvus, imported only here).

    Args:
        uri: where the store is.
        embedder: the embedder the caller adds and searches with; the store must have been made by it
            (checked here, the same for every backend). Needed with ``create``.
        create: where there is no store yet, make an empty one (a file store is written at its first
            :meth:`~MemeIndex.commit`).
        writer: file stores: hold the writer lock of the file from before it is read until ``close()``, so that
            no other process writes it meanwhile (a second writer is refused at once). A Milvus store assumes
            one writer (see its module) and takes no lock.
        ann: file stores: how to search, recorded in the file: an :class:`~facial_search.index.ann.HNSWParams`
            (HNSW graphs) or :class:`~facial_search.index.ann.IVFParams` (inverted files; both:
            :mod:`facial_search.index.segments`), ``"exact"``, or ``None`` to keep the store's own setting
            (exact for a new one). A change takes effect at the next commit, which builds (or drops) the
            graphs.

    Returns:
        a :class:`~facial_search.index.base.Store`; close it (or use it as a context manager).

    Raises:
        IndexURIError: an unknown URI scheme (``s3://...``).
        MissingDependencyError: a Milvus URI without pymilvus / Milvus Lite installed.
        InputNotFoundError: no store there (and not ``create``).
        IndexFormatError, IndexVersionError: not a store, damaged, or from a newer release.
        EmbedderMismatchError: made by another embedder than ``embedder``.
        IndexLockedError: ``writer`` and another process is writing the file.
        OutputError: ``writer`` or ``create``, and nothing can be written at the path.
        IndexBackendError: a Milvus server that cannot be reached.
        ValueError: ``create`` without ``embedder``.
        OptionError: ``ann`` neither ``None``, ``"exact"`` nor HNSW or IVF parameters, or given for a Milvus store
            (whose index its URI names: ``?index=HNSW``, :mod:`facial_search.index.milvus`).
    """
    if ann is not None and ann != EXACT:
        from facial_search.index.ann import HNSWParams, IVFParams

        if not isinstance(ann, HNSWParams | IVFParams):
            raise OptionError(f"ann: must be None, {EXACT!r} or HNSWParams / IVFParams (got {ann!r})")
    if create and embedder is None:
        raise ValueError("create=True needs the embedder (the store records it)")
    text = os.fsdecode(os.fspath(uri))
    path = file_path(text)
    if path is None:
        if not text.startswith(MILVUS_SCHEMES):
            scheme = text.split("://", 1)[0]
            known = ", ".join(f"{s}..." for s in (FILE_SCHEME, *MILVUS_SCHEMES))
            raise IndexURIError(f"{text}: unknown index URI scheme {scheme!r} (a path, or one of {known})")
        if ann is not None:
            raise OptionError(
                f"{text}: ann (--ann) applies to file stores only; a Milvus store's index is named in the URI that "
                "creates it (?index=HNSW or ?index=IVF_FLAT)"
            )
        store = _open_milvus(text, embedder, create)
    else:
        store = _open_file(text, path, embedder, create, writer)
        if ann is not None:
            store.set_ann(None if ann == EXACT else ann)
    try:
        check_embedder(store, embedder)
    except BaseException:
        store.close()
        raise
    return store


def _open_file(uri: str, path: Path, embedder: EmbedderInfo | None, create: bool, writer: bool) -> MemeIndex:
    if writer or create:
        from facial_search.io.outputs import check_output_file

        path = check_output_file(path)
    lock = IndexWriter(path).acquire() if writer else None  # before the read: no one saves in between
    try:
        if create and not path.exists():
            index = MemeIndex(embedder, path=path)
        else:  # a missing file: read_index's InputNotFoundError
            index = MemeIndex.load(path, expect=embedder)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    index.uri, index._writer = uri, lock
    return index


def _open_milvus(uri: str, embedder: EmbedderInfo | None, create: bool) -> Store:
    try:
        from facial_search.index.milvus import MilvusStore
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(("facial_search", "pymilvus", "milvus")):
            raise MissingDependencyError(
                f"{uri}: the Milvus backend is not available ({e.name} is missing): pip install 'facial-search[milvus]'"
            ) from None
        raise
    return MilvusStore.open(uri, embedder=embedder, create=create)


__all__ = ["EXACT", "EmbedderInfo", "Entry", "FileRecord", "MemeIndex", "FORMAT_NAME", "FORMAT_VERSION", "OPTIONAL_FIELDS",
           "check_embedder", "file_path", "group_layout", "group_min", "open_store", "parse_optional", "top_k"]  # fmt: skip
