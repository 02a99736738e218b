"""The store interface every index backend implements (issue: one store interface over exact, ANN and Milvus).

A *store* holds one entry per indexed face (an embedding and its :class:`~facial_search.index.store.Entry`)
and what is known of each source file (:class:`~facial_search.index.store.FileRecord`), and answers
FAISS-style searches. Backends:

- a plain path (``memes.fsindex``): :class:`facial_search.index.store.MemeIndex`, embedded, exact;
- ``milvus-lite://PATH.db`` and ``milvus://HOST:PORT/COLLECTION``: :mod:`facial_search.index.milvus`.

:func:`facial_search.index.open` picks the backend from the URI. Code above the index (indexing, search,
live, the web app) uses only the methods below, so it runs unchanged on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from facial_search.index.store import EmbedderInfo, Entry, FileRecord


@runtime_checkable
class Store(Protocol):
    """What every backend offers.

    Attributes:
        uri: where the store lives (a path, or a ``milvus-lite://`` / ``milvus://`` URI), as given to open it.
        embedder: the :class:`~facial_search.index.store.EmbedderInfo` of its vectors (D = ``embedder.dim``).
        files: ``{source: FileRecord}`` of every file processed (read-only view; see :meth:`record_file`).
    """

    uri: str
    embedder: EmbedderInfo

    @property
    def ntotal(self) -> int:
        """Faces in the store."""
        ...

    @property
    def files(self) -> Mapping[str, FileRecord]: ...

    def add(self, embeddings: np.ndarray, entries: list[dict]) -> np.ndarray:
        """Add faces: ``(n, D) float32`` unit-norm rows and n dicts with ``source``, ``face``, ``box``,
        ``title``, optionally ``picture_hash``; returns their new ids ``(n,) int64`` (never reused)."""
        ...

    def search(
        self, queries: np.ndarray, k: int = 3, *, group_by_source: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``, both ``(Q, k)``: Euclidean distances (unit-norm embeddings: range [0, 2]),
        ascending per row, int64 ids, ``inf`` / ``-1`` where fewer than k answer. ``group_by_source``: one
        answer per picture at most (a meme's faces, and one picture saved under two names, fill one place).

        Raises:
            OptionError: k outside 1..MAX_K. ValueError: queries of another dimension.
        """
        ...

    def entry(self, id: int) -> Entry:
        """The entry with this id; ``KeyError`` if there is none."""
        ...

    def entries(self) -> list[Entry]:
        """Every entry."""
        ...

    def remove_ids(self, ids) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        ...

    def remove_source(self, source: str) -> int:
        """Remove every face of one source file and forget the file; returns the faces removed."""
        ...

    def record_file(self, source: str, record: FileRecord) -> None:
        """Remember that ``source`` was processed (an unchanged file is not processed again)."""
        ...

    def commit(self) -> None:
        """Make everything added or removed so far durable (a file store writes it, Milvus flushes); a
        process killed after this returns loses none of it."""
        ...

    def describe(self) -> dict:
        """What ``facial-search info`` shows: at least ``backend`` (str), ``uri``, ``faces``, ``images``,
        ``skipped``, ``embedder`` (str) and ``dim``; ANN parameters where the backend has them."""
        ...

    def close(self) -> None:
        """Release the store (connections, locks); idempotent. Stores are context managers."""
        ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc) -> None: ...
