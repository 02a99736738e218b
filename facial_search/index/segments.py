"""ANN search of the file store (``ann=HNSWParams`` or ``ann=IVFParams``): sealed segments with an ANN index
each (an HNSW graph or an inverted file, by the parameters' kind), and a growing tail searched exactly, as
Milvus does it.

Rows are added at the end of the store. The rows since the last sealed segment (the *tail*) are searched
exactly (FAISS ``knn``, the kernel of ``IndexFlatL2``); when the tail passes :data:`SEAL_ROWS` rows at a commit,
it is *sealed*: an :class:`~facial_search.index.ann.HNSWGraph` or :class:`~facial_search.index.ann.IVFIndex`
(its *graph* here, whichever it is) is built over it and written once into the file. A segment at least half
the size of the one before it is merged into that one, so segments grow geometrically and there are at most
about ``log2(N / SEAL_ROWS)`` of them (6 at 1M rows). An HNSW graph takes the newer rows in
(:meth:`HNSWGraph.add`, at no loss); an inverted file does too while :func:`~facial_search.index.ann.ivf_nlist`
of the merged rows is under twice the lists it has, and is otherwise built again over the merged rows (k-means
anew: its lists stay within 2x of ``4 * sqrt(rows)`` rows long, and a segment is rebuilt each time it grows ~4x,
until ``nlist`` caps it; below ~40k rows, where ``rows // 50`` sets the lists, each time it doubles). A search
asks every segment and the tail for its k nearest (more where the segment holds removed rows, which are
skipped), and keeps the k nearest of all, so it costs about the sum of the segments' searches
(``benchmarks/bench_ann.py --store 16384``: commits of 16,384 rows; 2-core Intel Xeon, one FAISS thread
searching, one run each). At 1M rows (segments of 901,120, 81,920 and 16,384 rows, a tail of 576) IVF took
0.58 ms p50, 1.03 ms p99, at recall@3 0.986 (one ``IVFIndex`` over all rows: 0.28 ms at 0.981), the 62
commits' seals and merges 442 s (one build: 93 s). At 200k (131,072, 49,152 and 16,384, a tail of 3,392) IVF
0.52 ms at 1.000 (one index 0.19 ms at 0.989), HNSW 0.89 ms at 0.983 (one graph 0.31 ms at 0.976), the
seals 46 s and 51 s.

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
    graph: object  # facial_search.index.ann.HNSWGraph or IVFIndex
    saved: bool = False
    dead: int = 0


class Segments:
    """The sealed segments of an ANN store (see the module docstring) and its search.

    Args:
        params: the :class:`~facial_search.index.ann.HNSWParams` or :class:`~facial_search.index.ann.IVFParams`
            (which kind of index each segment gets).
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
            ValueError: an index that is damaged, of the other kind, or not of these rows (from
                :meth:`HNSWGraph.from_bytes` / :meth:`IVFIndex.from_bytes`).
        """
        cls = self._index_class()
        self.sealed = []
        for s in stored:
            graph = cls.from_bytes(s.data, vectors[s.start : s.end], self.params)
            self.sealed.append(Sealed(s.start, s.end, graph, saved=True))
        if self.sealed and [s.start for s in self.sealed] != [0] + [s.end for s in self.sealed[:-1]]:
            raise ValueError("the ANN segments do not cover the rows from the first one on, back to back")

    def _index_class(self):
        """:class:`HNSWGraph` or :class:`IVFIndex`, by the parameters' kind."""
        from facial_search.index.ann import HNSWGraph, IVFIndex

        return IVFIndex if self.params.kind == "ivf" else HNSWGraph

    def attach(self, vectors: np.ndarray) -> None:
        """The store's row buffer moved (it grew): let every graph re-rank against the new one."""
        for s in self.sealed:
            s.graph.attach(vectors[s.start : s.end])

    def mark_dead(self, rows: np.ndarray) -> None:
        """Count removed rows per segment (their searches fetch that many more, to skip them)."""
        for s in self.sealed:
            s.dead += int(((rows >= s.start) & (rows < s.end)).sum())

    def seal(self, vectors: np.ndarray, n: int, *, force: bool = False, live: np.ndarray | None = None) -> bool:
        """Seal the tail ``[tail_start, n)`` when it has :data:`SEAL_ROWS` rows (any, with ``force``), then merge
        segments as the module docstring says; returns whether anything changed (graphs to write).

        ``live``: the store's ``(>= n,) bool`` live flags, to count the new segment's removed rows (its searches
        fetch that many more); without it they count as live (fewer than k may come back where many are
        removed)."""
        start = self.tail_start
        if n - start < (1 if force else SEAL_ROWS):
            return False
        dead = 0 if live is None else int(n - start - np.count_nonzero(live[start:n]))
        tail = Sealed(start, n, None, dead=dead)
        if self.sealed and n - start >= (self.sealed[-1].end - self.sealed[-1].start) / 2:
            self._merge_into(self.sealed[-1], tail, vectors)
        else:
            tail.graph = self._index_class().build(vectors[start:n], self.params)
            self.sealed.append(tail)
        while len(self.sealed) >= 2:
            prev, last = self.sealed[-2], self.sealed[-1]
            if last.end - last.start < (prev.end - prev.start) / 2:
                break
            self._merge_into(prev, last, vectors)
            self.sealed.pop()
        return True

    def _merge_into(self, prev: Sealed, nxt: Sealed, vectors: np.ndarray) -> None:
        """``prev`` takes in the rows of ``nxt`` (the rows after it): its graph grows, or (an inverted file that
        would have twice its lists or more at the merged size) is built again over both."""
        from facial_search.index.ann import IVFIndex, ivf_nlist

        both = vectors[prev.start : nxt.end]
        if isinstance(prev.graph, IVFIndex) and ivf_nlist(len(both), self.params.nlist) >= 2 * prev.graph.nlist:
            prev.graph = IVFIndex.build(both, self.params)  # k-means again: its lists would be 2x too long
        else:
            prev.graph.add(vectors[nxt.start : nxt.end])
            prev.graph.attach(both)
        prev.end, prev.saved, prev.dead = nxt.end, False, prev.dead + nxt.dead

    def search(self, q: np.ndarray, k: int, vectors: np.ndarray, live: np.ndarray, n: int, ef_search=None, nprobe=None):
        """The k nearest live rows of each query ``(Q, D)``: ``(distances (Q, k) float32 Euclidean, rows (Q, k)
        int64)``, ``inf`` / ``-1`` past what was found; the segments are approximate, the tail exact.

        ``vectors``: the row buffer (rows ``[0, n)``); ``live``: ``(n,) bool``. ``ef_search`` (HNSW) or
        ``nprobe`` (IVF): this call's search breadth instead of the parameters' (``None``: theirs).

        Raises:
            OptionError: the knob of the other kind (``nprobe`` on HNSW segments, ``ef_search`` on IVF ones),
                or a value outside :data:`facial_search.index.ann.LIMITS`.
        """
        import faiss

        from facial_search.errors import OptionError

        ivf = self.params.kind == "ivf"
        if (ef_search if ivf else nprobe) is not None:
            given, kind = ("ef_search", "an IVF") if ivf else ("nprobe", "an HNSW")
            raise OptionError(f"{given}: {kind} store takes {'nprobe' if ivf else 'ef_search'} instead")
        knob = {"nprobe": nprobe} if ivf else {"ef_search": ef_search}
        parts_d, parts_r = [], []
        for s in self.sealed:
            kk = k + min(s.dead, max(16, 4 * k))
            d, r = s.graph.search(q, kk, **knob)
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
