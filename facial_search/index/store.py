"""The meme index in memory: one entry per face, stable ids, exact Euclidean top-k search with NumPy.

The interface follows FAISS: :meth:`MemeIndex.add`, :meth:`MemeIndex.search` returns ``(distances, ids)``.
The search kernels are in :mod:`facial_search.index.kernels`, the file format, its checks and the atomic
write in :mod:`facial_search.index.fileformat`, the writer lock in :mod:`facial_search.index.lock`
(``top_k``, ``group_layout``, ``group_min``, ``FORMAT_NAME`` and ``FORMAT_VERSION`` are importable from here
too).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from facial_search.errors import EmbedderMismatchError, OptionError
from facial_search.index.dedupe import merge_duplicates
from facial_search.index.fileformat import FORMAT_NAME, FORMAT_VERSION, IndexContents, read_index, write_index
from facial_search.index.kernels import group_layout, group_min, top_k
from facial_search.index.lock import IndexWriter, held_writer

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


class MemeIndex:
    """Embeddings and metadata of indexed faces, searchable by exact Euclidean distance.

    Args:
        embedder: the :class:`EmbedderInfo` of the vectors it holds (recorded in the file).
    """

    def __init__(self, embedder: EmbedderInfo):
        self.embedder = embedder
        self._emb = np.zeros((0, embedder.dim), dtype=np.float32)
        self._ids = np.zeros((0,), dtype=np.int64)
        self._entries: dict[int, Entry] = {}
        self.files: dict[str, FileRecord] = {}
        self.next_id = 0
        self._groups: tuple | None = None  # (source_groups, their group_layout), found when first needed

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
        needed (0.05 s for the 1,365 imgflip faces, ~6 s for 50,000, on 2 busy cores) and cached until
        the index changes."""
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
        self._emb = np.concatenate([self._emb, embeddings])
        self._ids = np.concatenate([self._ids, new_ids])
        self._groups = None
        return new_ids

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        keep = ~np.isin(self._ids, ids)
        removed = int((~keep).sum())
        for i in self._ids[~keep]:
            del self._entries[int(i)]
        self._emb, self._ids = self._emb[keep], self._ids[keep]
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
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.shape[1] != self.embedder.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, index has {self.embedder.dim}")
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
        d = self.distances(queries)
        if not d.size:
            return top_k(d, k)
        rows = None
        if group_by_source:
            d, rows = group_min(d, self.group_layout())
        dist, cols = top_k(d, k)
        found = cols >= 0
        if rows is not None:
            cols = np.take_along_axis(rows, np.maximum(cols, 0), 1)
        return dist, np.where(found, self._ids[np.maximum(cols, 0)], -1)

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
        if expect is not None and info != expect:
            raise EmbedderMismatchError(
                f"{path}: index was built with embedder {info}, but the current embedder is {expect}; "
                f"re-index with the current embedder: `facial-search index DIR --out NEW.fsindex` (or delete {path} first)"
            )
        index = cls(info)
        index._emb = contents.embeddings
        index._ids = contents.ids
        index._entries = {e["id"]: Entry(**e) for e in contents.entries}
        index.files = {s: FileRecord(**r) for s, r in contents.files.items()}
        index.next_id = contents.next_id
        return index


__all__ = ["EmbedderInfo", "Entry", "FileRecord", "MemeIndex", "FORMAT_NAME", "FORMAT_VERSION", "group_layout",
           "group_min", "top_k"]  # fmt: skip
