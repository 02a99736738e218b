"""ANN search of the file store (``ann=HNSWParams``): sealed segments with an HNSW graph each, and a growing
tail searched exactly, as Milvus does it.

Rows are added at the end of the store. The rows since the last sealed segment (the *tail*) are searched
exactly (FAISS ``knn``, the kernel of ``IndexFlatL2``); when the tail passes :data:`SEAL_ROWS` rows at a commit,
it is *sealed*: an :class:`~facial_search.index.ann.HNSWGraph` is built over it and written once into the
file. A segment at least half the size of the one before it is merged into that one (the older graph takes the
newer rows in: :meth:`HNSWGraph.add`), so segments grow geometrically and there are at most about
``log2(N / SEAL_ROWS)`` of them (6 at 1M rows). A search asks every graph and the tail for its k nearest (more
where the segment holds removed rows, which are skipped), and keeps the k nearest of all.

The graphs hold no copy of the vectors: they re-rank against the store's own array (an ANN store never changes
a row's vector, not even a removed one's: it stays in its graph, skipped, until the store is compacted, which
rebuilds the graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tail rows that make a new sealed segment at the next commit (an exact search of 16k 64-d rows: ~0.3 ms).
SEAL_ROWS = 16_384


@dataclass
class Sealed:
    """One sealed segment: rows [start, end) and their graph; ``saved``: its graph is in the file."""

    start: int
    end: int
    graph: object  # facial_search.index.ann.HNSWGraph
    saved: bool = False
    dead: int = 0


class Segments:
    """The sealed segments of an ANN store (see the module docstring) and its search.

    Args:
        params: the :class:`~facial_search.index.ann.HNSWParams`.
    """

    def __init__(self, params):
        self.params = params
        self.sealed: list[Sealed] = []

    @property
    def tail_start(self) -> int:
        """The first row not in a sealed segment."""
        return self.sealed[-1].end if self.sealed else 0

    def load(self, stored, vectors: np.ndarray) -> None:
        """The segments a file holds (:class:`~facial_search.index.fileformat.Segment`), their graphs over
        ``vectors`` (the store's row buffer, rows in place).

        Raises:
            ValueError: a graph that is damaged or not of these rows (from :meth:`HNSWGraph.from_bytes`).
        """
        from facial_search.index.ann import HNSWGraph

        self.sealed = []
        for s in stored:
            graph = HNSWGraph.from_bytes(s.data, vectors[s.start : s.end], self.params)
            self.sealed.append(Sealed(s.start, s.end, graph, saved=True))
        if self.sealed and [s.start for s in self.sealed] != [0] + [s.end for s in self.sealed[:-1]]:
            raise ValueError("the HNSW segments do not cover the rows from the first one on, back to back")

    def attach(self, vectors: np.ndarray) -> None:
        """The store's row buffer moved (it grew): let every graph re-rank against the new one."""
        for s in self.sealed:
            s.graph.attach(vectors[s.start : s.end])

    def mark_dead(self, rows: np.ndarray) -> None:
        """Count removed rows per segment (their searches fetch that many more, to skip them)."""
        for s in self.sealed:
            s.dead += int(((rows >= s.start) & (rows < s.end)).sum())

    def seal(self, vectors: np.ndarray, n: int, *, force: bool = False) -> bool:
        """Seal the tail ``[tail_start, n)`` when it has :data:`SEAL_ROWS` rows (any, with ``force``), then merge
        segments as the module docstring says; returns whether anything changed (graphs to write)."""
        from facial_search.index.ann import HNSWGraph

        start = self.tail_start
        if n - start < (1 if force else SEAL_ROWS):
            return False
        tail = Sealed(start, n, None)
        if self.sealed and n - start >= (self.sealed[-1].end - self.sealed[-1].start) / 2:
            self._merge_into(self.sealed[-1], tail, vectors)
        else:
            tail.graph = HNSWGraph.build(vectors[start:n], self.params)
            self.sealed.append(tail)
        while len(self.sealed) >= 2:
            prev, last = self.sealed[-2], self.sealed[-1]
            if last.end - last.start < (prev.end - prev.start) / 2:
                break
            self._merge_into(prev, last, vectors)
            self.sealed.pop()
        return True

    @staticmethod
    def _merge_into(prev: Sealed, nxt: Sealed, vectors: np.ndarray) -> None:
        """``prev``'s graph takes in the rows of ``nxt`` (the rows after it)."""
        prev.graph.add(vectors[nxt.start : nxt.end])
        prev.graph.attach(vectors[prev.start : nxt.end])
        prev.end, prev.saved, prev.dead = nxt.end, False, prev.dead + nxt.dead

    def search(self, q: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray, n: int, ef_search=None):
        """The k nearest live rows of each query ``(Q, D)``: ``(distances (Q, k) float32 Euclidean, rows (Q, k)
        int64)``, ``inf`` / ``-1`` past what was found; the graphs are approximate, the tail exact.

        ``vectors``: the row buffer (rows ``[0, n)``); ``live``: ``(n,) bool``.
        """
        import faiss

        parts_d, parts_r = [], []
        for s in self.sealed:
            kk = k + min(s.dead, max(16, 4 * k))
            d, r = s.graph.search(q, kk, ef_search=ef_search)
            r = np.where(r >= 0, r + s.start, -1)
            parts_d.append(d)
            parts_r.append(r)
        start = self.tail_start
        if n > start:
            kk = min(k + int(n - start - live[start:n].sum()), n - start)  # removed rows are skipped below
            d2, r = faiss.knn(q, vectors[start:n], kk)
            parts_d.append(np.sqrt(np.maximum(d2, 0)))
            parts_r.append(np.where(r >= 0, r + start, -1))
        if not parts_r:
            return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        d, r = np.concatenate(parts_d, 1), np.concatenate(parts_r, 1)
        ok = r >= 0
        ok[ok] = live[r[ok]]
        d = np.where(ok, d, np.inf)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        d, r = np.take_along_axis(d, order, 1), np.take_along_axis(np.where(ok, r, -1), order, 1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
            r = np.pad(r, ((0, 0), (0, pad)), constant_values=-1)
        return d.astype(np.float32), np.where(np.isfinite(d), r, -1)


__all__ = ["SEAL_ROWS", "Sealed", "Segments"]
