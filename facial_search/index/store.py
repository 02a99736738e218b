"""A persistent meme index: one entry per face, exact Euclidean top-k search with NumPy.

File format (``.fsindex``): a ZIP archive (NumPy ``.npz``) holding

- ``embeddings``: ``(N, D) float32``, one unit-norm row per face;
- ``ids``: ``(N,) int64``, stable entry ids (never reused);
- ``meta``: UTF-8 JSON, ``{"format": "facial-search-index", "version": 2, "embedder": {...}, "next_id": int,
  "entries": [{"id", "source", "face", "box", "title", "picture_hash"}], "files": {source: {"size",
  "mtime_ns", "faces", "skipped", "finder"}}}``. Version 1 (read too) had no ``picture_hash`` nor ``finder``.

Saves are atomic: the archive is written to a temporary file in the same folder, flushed to disk, then
renamed over the old one, so a crash (even SIGKILL) leaves either the previous or the new index, never a
torn one. The interface follows FAISS: :meth:`MemeIndex.add`, :meth:`MemeIndex.search` returns
``(distances, ids)``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facial_search.errors import EmbedderMismatchError, IndexFormatError
from facial_search.index.dedupe import merge_duplicates

FORMAT_NAME = "facial-search-index"
#: Version of the file format written by this release; older files are read, newer ones refused.
FORMAT_VERSION = 2


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
            k: neighbours per query.
            group_by_source: one neighbour per picture at most (its nearest face), so that a meme with
                several faces, or saved twice under two names, fills one of the k places, not several (a
                "grouping search", as Milvus's ``group_by_field``; groups: :meth:`source_groups`).

        Returns:
            ``(distances, ids)``, both ``(Q, k)``: distances float32 Euclidean (range [0, 2] for unit-norm
            embeddings), ascending per row; ids int64, ``-1`` (and distance ``inf``) where the index holds
            fewer than k faces (or k source images, when grouping).
        """
        if k < 1:
            raise ValueError("k must be >= 1")
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
    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to ``path`` (temporary file in the same folder, fsync, rename).

        The temporary file is named ``<name>.<pid>.<random>.tmp``; one left by a writer that was killed
        (SIGKILL, power loss) is removed by the next save once its process is gone. The file gets the
        permissions of the index it replaces, or those of any new file (0666 less the umask), so that
        another account (a web server) can read it as it could any file its owner makes."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "embedder": asdict(self.embedder),
            "next_id": self.next_id,
            "entries": [asdict(self._entries[int(i)]) for i in self._ids],
            "files": {s: asdict(r) for s, r in self.files.items()},
        }
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            _set_mode(fd, path)
            with os.fdopen(fd, "wb") as f:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    z.writestr("meta.json", json.dumps(meta))
                    z.writestr("embeddings.npy", _npy_bytes(self._emb))
                    z.writestr("ids.npy", _npy_bytes(self._ids))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _remove_stale_tmp(path)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: EmbedderInfo | None = None) -> MemeIndex:
        """Read an index file.

        Args:
            expect: when given, the embedder the caller will query with.

        Raises:
            FileNotFoundError: no such file.
            IndexFormatError: not an index, corrupt, or written by a newer format version.
            EmbedderMismatchError: built by another embedder than ``expect``.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such index file")
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("meta.json"))
                emb = np.load(io.BytesIO(z.read("embeddings.npy")), allow_pickle=False)
                ids = np.load(io.BytesIO(z.read("ids.npy")), allow_pickle=False)
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            raise IndexFormatError(f"{path}: not a facial-search index or corrupt ({e})") from None
        if meta.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{path}: not a facial-search index")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {meta['version']} is newer than this release reads "
                f"({FORMAT_VERSION}); upgrade facial-search"
            )
        info = EmbedderInfo(**meta["embedder"])
        if expect is not None and info != expect:
            raise EmbedderMismatchError(
                f"{path}: index was built with embedder {info}, but the current embedder is {expect}; "
                f"re-index with the current embedder: `facial-search index DIR --out NEW.fsindex` (or delete {path} first)"
            )
        index = cls(info)
        entries = [Entry.from_dict(e["id"], e) for e in meta["entries"]]
        if emb.shape != (len(entries), info.dim) or ids.shape != (len(entries),):
            raise IndexFormatError(f"{path}: corrupt index (embeddings {emb.shape}, {len(entries)} entries)")
        index._emb = emb.astype(np.float32, copy=False)
        index._ids = ids.astype(np.int64, copy=False)
        index._entries = {e.id: e for e in entries}
        index.files = {
            s: FileRecord(r["size"], r["mtime_ns"], r["faces"], r.get("skipped"), r.get("finder"))
            for s, r in meta["files"].items()
        }
        index.next_id = int(meta["next_id"])
        return index


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of every row of ``distances`` ``(Q, N)``, ascending (ties: lower column first).

    Returns:
        ``(distances, columns)``, both ``(Q, k)``: float32, and int64 column numbers; ``inf`` and ``-1``
        past the N-th when k > N.
    """
    nq, n = distances.shape
    dist = np.full((nq, k), np.inf, dtype=np.float32)
    cols = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return dist, cols
    kk = min(k, n)
    part = np.argpartition(distances, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (nq, 1))
    order = np.take_along_axis(distances, part, 1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(part, order, 1)
    dist[:, :kk] = np.take_along_axis(distances, top, 1)
    cols[:, :kk] = top
    return dist, cols


def group_layout(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`group_min` needs of ``groups`` ``(N,)`` (numbers 0..G-1, all used), computed once per
    grouping: ``order``, the rows sorted by group (stable), and ``starts``, each group's first position in it."""
    groups = np.asarray(groups, dtype=np.int64)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    return order, np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])


def group_min(distances: np.ndarray, layout: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest member of every group, for every query.

    Args:
        distances: ``(Q, N)`` from Q queries to N rows.
        layout: :func:`group_layout` of the rows' groups (e.g. :meth:`MemeIndex.group_layout`).

    Returns:
        ``(distances, rows)``, both ``(Q, G)``: the smallest distance within each group, and the row it is at
        (the first such row on a tie).
    """
    d = np.asarray(distances)
    order, starts = layout
    if d.shape[1] != len(order):
        raise ValueError(f"{d.shape[1]} distance columns but {len(order)} grouped rows")
    ds = d[:, order]
    mins = np.minimum.reduceat(ds, starts, axis=1)
    counts = np.diff(np.r_[starts, len(order)])
    pos = np.where(ds == np.repeat(mins, counts, axis=1), np.arange(len(order)), len(order))
    return mins, order[np.minimum.reduceat(pos, starts, axis=1)]


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


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
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 1 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        try:
            tmp.unlink()
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
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
