"""The default store (a plain path, ``memes.fsindex``): one entry per face, stable ids, exact Euclidean top-k
search through FAISS (``IndexFlatL2``), and :func:`open_store` (``facial_search.index.open``), which opens any
backend by its URI.

The interface follows FAISS: :meth:`MemeIndex.add`, :meth:`MemeIndex.search` returns ``(distances, ids)``;
:class:`MemeIndex` implements :class:`facial_search.index.base.Store`. The search kernels are in
:mod:`facial_search.index.kernels`, the file format, its checks and the atomic write in
:mod:`facial_search.index.fileformat`, the writer lock in :mod:`facial_search.index.lock` (``top_k``,
``group_layout``, ``group_min``, ``FORMAT_NAME`` and ``FORMAT_VERSION`` are importable from here too).
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facial_search.errors import EmbedderMismatchError, IndexURIError, MissingDependencyError, OptionError
from facial_search.index.dedupe import merge_duplicates
from facial_search.index.fileformat import FORMAT_NAME, FORMAT_VERSION, IndexContents, read_index, write_index
from facial_search.index.kernels import group_layout, group_min, grouped_top_k, top_k
from facial_search.index.lock import IndexWriter, held_writer

if TYPE_CHECKING:
    from facial_search.index.base import Store

#: Most neighbours one search returns per query (the answer is ``(Q, k)``: a k of billions would not fit in
#: memory; FAISS's GPU indexes stop at 2,048).
MAX_K = 10_000


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


@dataclass(frozen=True)
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
    """

    id: int
    source: str
    face: int
    box: tuple[int, int, int, int]
    title: str
    picture_hash: str | None = None

    @classmethod
    def from_dict(cls, id: int, e: dict) -> Entry:
        """From ``{"source", "face", "box", "title"[, "picture_hash"]}`` (an :meth:`MemeIndex.add` entry or
        a saved one)."""
        return cls(
            int(id), str(e["source"]), int(e["face"]), tuple(map(int, e["box"])), str(e["title"]), e.get("picture_hash")
        )


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
    """Embeddings and metadata of indexed faces, searchable by exact Euclidean distance: the file backend of
    :class:`facial_search.index.base.Store` (``describe()["backend"]`` is ``"file (exact)"``).

    Made in memory (``MemeIndex(info)``) it has no path (``uri`` is ``""``; write it with :meth:`save`); opened
    from a path (:meth:`load`, :func:`open_store`) it keeps the path, and :meth:`commit` saves to it. Opened
    for writing (``open_store(path, writer=True)``) it holds the path's writer lock
    (:class:`~facial_search.index.lock.IndexWriter`) until :meth:`close`. A context manager.

    Args:
        embedder: the :class:`EmbedderInfo` of the vectors it holds (recorded in the file).
        path: the index file :meth:`commit` writes (``None``: none yet).
    """

    def __init__(self, embedder: EmbedderInfo, *, path: str | os.PathLike | None = None):
        self.embedder = embedder
        self._emb = np.zeros((0, embedder.dim), dtype=np.float32)
        self._ids = np.zeros((0,), dtype=np.int64)
        self._entries: dict[int, Entry] = {}
        self.files: dict[str, FileRecord] = {}
        self.next_id = 0
        self._groups: tuple | None = None  # (source_groups, their group_layout), found when first needed
        self._path: Path | None = None if path is None else Path(path)
        self.uri = "" if path is None else os.fspath(path)
        self._writer: IndexWriter | None = None
        self._flat = None  # faiss.IndexFlatL2 over the rows, built at the first search, kept up to date by add
        self._flat_lock = threading.Lock()  # searches may come from several threads (the web pool)

    # -- size and access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ntotal(self) -> int:
        """Number of faces (entries), as in FAISS."""
        return len(self._ids)

    @property
    def embeddings(self) -> np.ndarray:
        """``(N, D) float32`` (read-only view), rows in the order of :attr:`ids`."""
        v = self._emb.view()
        v.flags.writeable = False
        return v

    @property
    def ids(self) -> np.ndarray:
        """``(N,) int64`` entry ids, in row order."""
        v = self._ids.view()
        v.flags.writeable = False
        return v

    def entry(self, id: int) -> Entry:
        """The entry with this id; ``KeyError`` if there is none."""
        return self._entries[int(id)]

    def entries(self) -> list[Entry]:
        """All entries in row order."""
        return [self._entries[int(i)] for i in self._ids]

    def source_groups(self) -> np.ndarray:
        """``(N,) int64`` group number of every row, in row order, numbers from 0 to (groups - 1): one group
        per picture. The faces of one source image share a group, and so do the faces of source images that
        hold the same picture (the same template saved under two names: a face in each with a near-identical
        embedding and picture hash, :func:`facial_search.index.dedupe.merge_duplicates`). Computed when first
        needed (0.05 s for the 1,365 imgflip faces, 7.3 s for 100,000 in ``benchmarks/bench_scale.py``, on 2
        busy cores) and cached until the index changes."""
        if self._groups is None:
            entries = [self._entries[int(i)] for i in self._ids]
            sources = np.asarray([e.source for e in entries], dtype=object)
            by_source = np.unique(sources, return_inverse=True)[1].astype(np.int64)
            groups = merge_duplicates(self._emb, by_source, [e.picture_hash for e in entries])
            self._groups = (groups, group_layout(groups))
        return self._groups[0]

    def group_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`group_layout` of :meth:`source_groups`, cached with them (for :func:`group_min`)."""
        self.source_groups()
        return self._groups[1]

    @property
    def skipped(self) -> dict[str, str]:
        """``{source: reason}`` for files recorded as skipped (no face, unreadable, ...)."""
        return {s: r.skipped for s, r in self.files.items() if r.skipped}

    # -- mutation ----------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, entries: list[dict]) -> np.ndarray:
        """Add faces; returns their new ids ``(n,) int64``.

        Args:
            embeddings: ``(n, D) float32``, D = the embedder's dimension.
            entries: n dicts with ``source``, ``face``, ``box``, ``title``, optionally ``picture_hash``.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(-1, self.embedder.dim)
        if len(entries) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(entries)} entries")
        new_ids = np.arange(self.next_id, self.next_id + len(entries), dtype=np.int64)
        self.next_id += len(entries)
        for i, e in zip(new_ids, entries, strict=True):
            self._entries[int(i)] = Entry.from_dict(int(i), e)
        with self._flat_lock:
            self._emb = np.concatenate([self._emb, embeddings])
            self._ids = np.concatenate([self._ids, new_ids])
            if self._flat is not None:
                self._flat.add(np.ascontiguousarray(embeddings))
        self._groups = None
        return new_ids

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        keep = ~np.isin(self._ids, ids)
        removed = int((~keep).sum())
        if not removed:
            return 0
        for i in self._ids[~keep]:
            del self._entries[int(i)]
        with self._flat_lock:
            self._emb, self._ids = self._emb[keep], self._ids[keep]
            self._flat = None  # rebuilt at the next search
        self._groups = None
        return removed

    def remove_source(self, source: str) -> int:
        """Remove every face of one source file and forget the file; returns the faces removed."""
        self.files.pop(source, None)
        return self.remove_ids([e.id for e in self._entries.values() if e.source == source])

    def record_file(self, source: str, record: FileRecord) -> None:
        """Remember that ``source`` was processed (so an unchanged file is not processed again)."""
        self.files[source] = record

    # -- search -----------------------------------------------------------------------------------------
    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Euclidean distances from every query to every indexed face.

        Args:
            queries: ``(Q, D) float32`` (or ``(D,)`` for one query).

        Returns:
            ``(Q, N) float32``, columns in row order (:attr:`ids`); range [0, 2] for unit-norm embeddings.
        """
        q = self._queries(queries)
        d2 = (q * q).sum(1)[:, None] + (self._emb * self._emb).sum(1)[None, :] - 2.0 * (q @ self._emb.T)
        return np.sqrt(np.maximum(d2, 0.0))

    def search(
        self, queries: np.ndarray, k: int = 3, *, group_by_source: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-nearest neighbours by Euclidean distance.

        Args:
            queries: ``(Q, D) float32`` (or ``(D,)`` for one query).
            k: neighbours per query, 1 to :data:`MAX_K` (else :class:`~facial_search.errors.OptionError`).
            group_by_source: one neighbour per picture at most (its nearest face), so that a meme with
                several faces, or saved twice under two names, fills one of the k places, not several (a
                "grouping search", as Milvus's ``group_by_field``; groups: :meth:`source_groups`).

        Returns:
            ``(distances, ids)``, both ``(Q, k)``: distances float32 Euclidean (range [0, 2] for unit-norm
            embeddings), ascending per row; ids int64, ``-1`` (and distance ``inf``) where the index holds
            fewer than k faces (or k source images, when grouping).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise OptionError(f"k: must be a whole number from 1 to {MAX_K:,} (got {k!r})")
        k = int(k)
        if not group_by_source:
            return self._flat_search(queries, k)
        q = self._queries(queries)
        emb, ids, flat = self._flat_index(len(q))
        if flat is None:
            return self._finish(q, emb, ids, np.full((len(q), k), -1, dtype=np.int64))
        # the k nearest pictures from over-fetched plain searches (never a (Q, N) matrix): kernels.grouped_top_k
        _, rows = grouped_top_k(lambda qi, kk: flat.search(q[qi], kk), len(q), self.source_groups(), k)
        return self._finish(q, emb, ids, rows)

    @staticmethod
    def _finish(q: np.ndarray, emb: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` of the chosen ``rows`` ``(Q, k)`` (``-1``: none): each distance computed again
        as the norm of the difference (exact near 0, where the square root of FAISS's or :meth:`distances`'
        ``|q|^2 + |x|^2 - 2 q.x`` is off by up to ~5e-4), the same way for a plain and a grouping search, then
        sorted by distance, lower row first on a tie."""
        found = rows >= 0
        if not len(emb):
            return np.full(rows.shape, np.inf, dtype=np.float32), np.full(rows.shape, -1, dtype=np.int64)
        r = np.maximum(rows, 0)
        diff = q[:, None, :] - emb[r]
        dist = np.where(found, np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)), np.inf).astype(np.float32)
        order = np.lexsort((np.where(found, rows, np.iinfo(np.int64).max), dist))  # per query row
        dist, r, found = (np.take_along_axis(a, order, 1) for a in (dist, r, found))
        return dist, np.where(found, ids[r], -1)

    def _flat_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` without grouping: the k nearest rows from ``faiss.IndexFlatL2`` (exact), their distances
        from :meth:`_finish`.

        Within the k returned, rows of equal distance come lower row first (re-sorted in :meth:`_finish`: FAISS's
        heap does not promise an order among ties); which of several rows tied at the k-th place is returned is
        FAISS's choice, as it is NumPy's ``argpartition``'s in :func:`top_k`."""
        q = self._queries(queries)
        emb, ids, flat = self._flat_index(len(q))
        rows = np.full((len(q), k), -1, dtype=np.int64)
        if len(ids) and len(q):
            kk = min(k, len(ids))
            rows[:, :kk] = flat.search(q, kk)[1]
        return self._finish(q, emb, ids, rows)

    def _flat_index(self, n_queries: int):
        """``(embeddings, ids, faiss.IndexFlatL2 or None)`` of one consistent state (built at the first search,
        extended by :meth:`add`, dropped by a removal); ``None`` when there is nothing to search."""
        with self._flat_lock:
            emb, ids, flat = self._emb, self._ids, self._flat
            if flat is None and len(emb) and n_queries:
                import faiss

                flat = faiss.IndexFlatL2(self.embedder.dim)
                flat.add(np.ascontiguousarray(emb))
                self._flat = flat
        return emb, ids, flat

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        """``(Q, D) float32`` C-contiguous, from ``(Q, D)`` or ``(D,)``; ``ValueError`` for another dimension."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.embedder.dim:
            raise ValueError(f"queries have dimension {q.shape[-1]}, index has {self.embedder.dim}")
        return np.ascontiguousarray(q)

    # -- persistence ------------------------------------------------------------------------------------
    @staticmethod
    def writer(path: str | os.PathLike) -> IndexWriter:
        """The writer lock of the index file ``path`` (:class:`~facial_search.index.lock.IndexWriter`, not yet
        taken): ``with MemeIndex.writer(path) as lock:`` load, change, ``save(path, lock=lock)``, and no other
        process can save to ``path`` meanwhile (it gets :class:`~facial_search.errors.IndexLockedError`)."""
        return IndexWriter(path)

    def save(self, path: str | os.PathLike, *, lock: IndexWriter | None = None) -> None:
        """Write atomically to ``path`` (format: :mod:`facial_search.index.fileformat`; temporary file in the
        same folder, fsync, rename; permissions those of the index it replaces or of any new file).

        Args:
            lock: the held :meth:`writer` of ``path``. Without it, the save takes the writer lock for its own
                duration, unless this process holds it already; so it never overwrites an index another
                process is writing.

        Raises:
            IndexLockedError: another process is writing ``path`` (an ``index`` run).
            ValueError: ``lock`` is not held, or is the lock of another file.
            OutputError: the folder or the lock file cannot be created.
            OSError: the index cannot be written (full or read-only file system).
        """
        if lock is not None and not lock.covers(path):
            raise ValueError(f"{lock!r} is not a held writer lock of {path}")
        contents = IndexContents(
            version=FORMAT_VERSION,
            embedder=asdict(self.embedder),
            next_id=self.next_id,
            entries=[asdict(self._entries[int(i)]) for i in self._ids],
            files={s: asdict(r) for s, r in self.files.items()},
            embeddings=self._emb,
            ids=self._ids,
        )
        if lock is not None or held_writer(path) is not None:
            write_index(path, contents)
        else:
            with IndexWriter(path):
                write_index(path, contents)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: EmbedderInfo | None = None) -> MemeIndex:
        """Read an index file, checked throughout (:func:`~facial_search.index.fileformat.read_index`).

        Args:
            expect: when given, the embedder the caller will query with.

        Raises:
            InputNotFoundError: no such file (a ``FileNotFoundError``).
            IndexFormatError: not an index, or damaged inside (the message says what is wrong).
            IndexVersionError: written by a newer format version (a subclass of ``IndexFormatError``).
            EmbedderMismatchError: built by another embedder than ``expect``.
        """
        contents = read_index(path)
        info = EmbedderInfo(**contents.embedder)
        index = cls(info, path=path)
        check_embedder(index, expect)
        index._emb = contents.embeddings
        index._ids = contents.ids
        index._entries = {e["id"]: Entry(**e) for e in contents.entries}
        index.files = {s: FileRecord(**r) for s, r in contents.files.items()}
        index.next_id = contents.next_id
        return index

    # -- the rest of the Store protocol ------------------------------------------------------------------------
    def commit(self) -> None:
        """Save atomically to the index's path (:meth:`save`; with its writer lock where it holds it).

        Raises:
            ValueError: an index made in memory, without a path (use :meth:`save`).
            IndexLockedError, OutputError, OSError: as :meth:`save`.
        """
        if self._path is None:
            raise ValueError("this index was made in memory and has no path: save(path) writes it")
        writer = self._writer if self._writer is not None and self._writer.held else None
        self.save(self._path, lock=writer)

    def describe(self) -> dict:
        """What ``facial-search info`` shows: ``{"backend": "file (exact)", "uri", "faces", "pictures" (groups
        of :meth:`source_groups`), "images" (files processed), "skipped", "embedder" (name), "embedder_version",
        "dim", "format_version"}`` (the version :meth:`save` writes)."""
        return {"backend": "file (exact)", "uri": self.uri, "faces": self.ntotal,
                "pictures": len(np.unique(self.source_groups())), "images": len(self.files),
                "skipped": len(self.skipped), "embedder": self.embedder.name,
                "embedder_version": self.embedder.version, "dim": self.embedder.dim,
                "format_version": FORMAT_VERSION}  # fmt: skip

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
    """
    if create and embedder is None:
        raise ValueError("create=True needs the embedder (the store records it)")
    text = os.fsdecode(os.fspath(uri))
    path = file_path(text)
    if path is None:
        if not text.startswith(MILVUS_SCHEMES):
            scheme = text.split("://", 1)[0]
            known = ", ".join(f"{s}..." for s in (FILE_SCHEME, *MILVUS_SCHEMES))
            raise IndexURIError(f"{text}: unknown index URI scheme {scheme!r} (a path, or one of {known})")
        store = _open_milvus(text, embedder, create)
    else:
        store = _open_file(text, path, embedder, create, writer)
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


__all__ = ["EmbedderInfo", "Entry", "FileRecord", "MemeIndex", "FORMAT_NAME", "FORMAT_VERSION", "check_embedder",
           "file_path", "group_layout", "group_min", "open_store", "top_k"]  # fmt: skip
