"""Approximate nearest-neighbour search over the store's vectors: an HNSW graph (``--ann hnsw``,
:class:`HNSWGraph`) or an inverted file (``--ann ivf``, :class:`IVFIndex`), both re-ranked exactly.

Each walks a FAISS index whose rows carry 8-bit scalar-quantized codes of the vectors (``QT_8bit``: 64 bytes
a 64-d vector instead of 256), gathers candidates per query, and re-ranks them exactly against the caller's
float32 vectors (``faiss.knn_L2sqr_by_idx``, nothing copied). Neither holds a float copy of the vectors: the
store keeps them, the index keeps a reference. Distances are exact Euclidean (not squared); which rows come
back is approximate (recall@k below 1).

- :class:`HNSWGraph` (``faiss.IndexHNSWSQ``): level 0 of the graph filled to its ``2 * M`` links (FAISS
  ``keep_max_size_level0``; FAISS's neighbour heuristic alone keeps about 8 of 64 links a node on clustered
  embeddings), ``ef_search`` candidates re-ranked. Grows row by row at no loss.
- :class:`IVFIndex` (``faiss.IndexIVFScalarQuantizer``, an HNSW over the k-means centroids as coarse
  quantizer, residuals coded): the rows of the ``nprobe`` lists nearest the query scanned, the best
  :data:`IVF_CANDIDATES` re-ranked. Its lists are trained on the rows it is built on (:func:`ivf_nlist` of
  them): made for a store's sealed segments (built once); grown far past its build size it scans longer lists
  (the store's segments rebuild it when a merge would make twice its lists or more:
  :mod:`facial_search.index.segments`).

The defaults come from ``benchmarks/bench_ann.py --n 1000000 --sweep``: 1M 64-d rows that resemble real ones
(710 real FER+ and meme face embeddings, each spread with Gaussian noise of 0.003, 0.01 or 0.03 a dimension
into ~1,400 rows, 20% exact copies), 1,000 queries from the same generator; top-3, one query a call, one
FAISS thread (builds on both), 2-core AMD EPYC (AVX2) shared with other jobs (load average 5 to 6: times
are +-30% from run to run; the searches timed in turn query by query). recall@3 counts a returned row as
right when its exact distance is within the exact third-nearest's (copies tie); ``d3 1%``: the share of
queries whose third result is within 1% of the exact third distance.

=====================================  =======  =========  =========  ======  ========  =====
index (1M rows)                        build s  add 10k s  bytes/row  p50 ms  recall@3  d3 1%
=====================================  =======  =========  =========  ======  ========  =====
stock ``IndexHNSWFlat`` M=32, ef 256       304        4.7        528    0.48     0.893  0.917
HNSWGraph M=16, ef_search 128                -          -          -    0.30     0.894  0.911
HNSWGraph M=16, ef_search 192 (default)    399        7.2        208    0.42     0.918  0.935
HNSWGraph M=16, ef_search 256                -          -          -    0.55     0.931  0.941
HNSWGraph M=16, ef_search 512                -          -          -    1.15     0.956  0.965
IVFIndex nlist 4096, nprobe 8                -          -          -    0.17     0.969  0.972
IVFIndex nlist 4096, nprobe 16 (default)   109        0.8         74    0.27     0.981  0.991
IVFIndex nlist 4096, nprobe 32               -          -          -    0.30     0.994  0.998
=====================================  =======  =========  =========  ======  ========  =====

(bytes: besides the caller's vectors; the stock index's include its float copy, 256 a row.) The misses are
the noisiest queries: 0.24 from their face, they find ~470 rows of a tight cluster within 1.5% of one
distance, and an HNSW walk visits only part of that cluster (recall grows with ``ef_search``, 0.97 needs
1,024 for 0.968 at 1.9 ms), where the inverted file scans the cluster's lists whole. On the cached builds of M=16 and
M=32 (same machine, load ~4, ef_search 256): M=32 0.951 at 0.45 ms against M=16's 0.920 at 0.46 ms, for
336 bytes a row instead of 208 and a ~1.4x slower build. At 100k rows HNSW M=16 reaches 0.986 at
ef_search 128.
So: ``HNSWParams()`` is M=16 (memory, add time), ef_construction 80 (the issue's reference), ef_search 192
(the most recall within 0.5 ms); ``IVFParams()`` is nlist 4096 (~4 sqrt(n) at 1M; for 10M rows pass 16384, not measured) and
nprobe 16.

Memory besides the caller's vectors (``nbytes``), 64-d: HNSW about ``8 * M + 64 + 16`` bytes a vector (links,
codes, offsets and levels; 208 MB at 1M and M=16), IVF about 74 (codes, int64 ids, centroids; 74 MB at 1M):
at 10M, 2.1 GB and 0.74 GB beside the 2.56 GB of vectors.

>>> import numpy as np
>>> from facial_search.index.ann import HNSWGraph, HNSWParams
>>> x = np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32)
>>> g = HNSWGraph.build(x, HNSWParams())
>>> distances, rows = g.search(x[:2], k=3)  # (2, 3) float32 Euclidean, (2, 3) int64 rows
>>> rows[:, 0].tolist()
[0, 1]
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import faiss
import numpy as np

from facial_search.errors import OptionError

#: Bounds (inclusive) of each parameter. ``M`` above 256 only costs memory; past a few thousand candidates a
#: walk costs more than an exact search.
LIMITS = {
    "M": (2, 256),
    "ef_construction": (1, 8192),
    "ef_search": (1, 8192),
    "nlist": (1, 1 << 20),
    "nprobe": (1, 1 << 20),
}
#: Candidates an :class:`IVFIndex` search re-ranks exactly per query (at least 4 k): 64 and 256 gave the same
#: recall@3 at 1M (the 8-bit residual codes rank well; the misses are rows in lists not probed).
IVF_CANDIDATES = 64
#: Training rows per IVF list (k-means on a sample of ``50 * nlist`` rows; fewer rows give fewer lists).
IVF_TRAIN_PER_LIST = 50
#: Links a node of the IVF's coarse quantizer (an HNSW over the centroids), and its search breadth.
IVF_QUANTIZER_M, IVF_QUANTIZER_EF = 32, 128

_HEADER = struct.Struct("<8sIIQIIQI")  # magic, header version, dim, ntotal, two of the index's numbers, size, crc
_HEADER_VERSION = 1
_SQ_MARGIN = 0.1  # HNSW: each dimension's trained 8-bit range, widened by 10% of it on both sides (later rows)
_CHUNK = 20_000  # rows per FAISS add() call when a progress bar is shown


def _check_int(cls_name: str, name: str, v) -> int:
    low, high = LIMITS[name]
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or not low <= v <= high:
        raise OptionError(f"{cls_name} {name} must be an integer from {low} to {high}, not {v!r}")
    return int(v)


class _Params:
    """to_dict/from_dict and range checks of the frozen parameter dataclasses below."""

    _what = ""
    #: ``"hnsw"`` or ``"ivf"``: the ``"kind"`` key of :meth:`to_dict` (HNSW's dict has none: files written
    #: before IVF was selectable, and the readers of that release, know HNSW parameters without it).
    kind: ClassVar[str] = ""
    #: The fields a built index depends on: another value needs new graphs; the others are search settings.
    _build_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check_int(self._what, f.name, getattr(self, f.name)))

    def to_dict(self) -> dict:
        """The parameters by name, JSON-ready (IVF's with ``"kind": "ivf"`` first)."""
        return asdict(self)

    def build_key(self) -> tuple:
        """``(kind, build parameters...)``: indexes built with equal keys serve either parameters (HNSW: ``M``;
        IVF: ``nlist``); ``ef_search``, ``ef_construction`` and ``nprobe`` alone keep them."""
        return (self.kind, *(getattr(self, name) for name in self._build_fields))

    @classmethod
    def from_dict(cls, d):
        """The parameters recorded by :meth:`to_dict`.

        Raises:
            ValueError: ``d`` is no dict, lacks a key or has an unknown one (the store reports it as a damaged
                index: :class:`~facial_search.errors.IndexFormatError`).
            OptionError: a value out of range (a subclass of ``ValueError``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"{cls._what} parameters must be a mapping, not {type(d).__name__}")
        if "kind" in d:
            if d["kind"] != cls.kind:
                raise ValueError(f"{cls._what} parameters must have kind {cls.kind!r}, not {d['kind']!r}")
            d = {k: v for k, v in d.items() if k != "kind"}
        names = {f.name for f in fields(cls)}
        missing, unknown = names - d.keys(), d.keys() - names
        if missing or unknown:
            raise ValueError(
                f"{cls._what} parameters need exactly {sorted(names)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unknown {sorted(map(str, unknown))}" if unknown else "")
            )
        return cls(**d)


@dataclass(frozen=True)
class HNSWParams(_Params):
    """Parameters of an HNSW graph (the names of the HNSW paper and FAISS), recorded in the index.

    Attributes:
        M: links per node on the upper layers; level 0 holds ``2 * M``. Memory grows with it (8 bytes a
            vector per unit of ``M``), and so do recall and the cost of a search step.
        ef_construction: candidates kept while linking a new node (build and add time grow with it).
        ef_search: candidates kept while searching, and re-ranked exactly: recall and latency grow with it
            (a search uses at least ``k``).

    Raises:
        OptionError: a value that is no int, or outside :data:`LIMITS`.
    """

    _what = "HNSW"
    kind: ClassVar[str] = "hnsw"
    _build_fields: ClassVar[tuple[str, ...]] = ("M",)
    M: int = 16
    ef_construction: int = 80
    ef_search: int = 192


@dataclass(frozen=True)
class IVFParams(_Params):
    """Parameters of an inverted-file index, recorded in the index (``{"kind": "ivf", "nlist", "nprobe"}``).

    Attributes:
        nlist: the most lists (k-means centroids). A build on n rows makes :func:`ivf_nlist` of them (about
            ``4 * sqrt(n)``, at most ``n // 50``, at most this; :attr:`IVFIndex.nlist` is what was made):
            4096 at 1M rows, the default; for 10M rows pass 16384.
        nprobe: lists scanned per query: recall and latency grow with it. At most ``nlist`` (an index that
            made fewer lists scans all of them).

    Raises:
        OptionError: a value that is no int, outside :data:`LIMITS`, or ``nprobe > nlist``.
    """

    _what = "IVF"
    kind: ClassVar[str] = "ivf"
    _build_fields: ClassVar[tuple[str, ...]] = ("nlist",)
    nlist: int = 4096
    nprobe: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nprobe > self.nlist:
            raise OptionError(f"IVF nprobe ({self.nprobe}) must be at most nlist ({self.nlist}): lists scanned a query")

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


#: The parameter classes by ``kind``.
PARAMS = {"hnsw": HNSWParams, "ivf": IVFParams}


def params_from_dict(d) -> HNSWParams | IVFParams:
    """The parameters that ``to_dict`` recorded: IVF's by their ``"kind": "ivf"``, HNSW's by ``"kind": "hnsw"``
    or no ``"kind"`` (as files written before IVF was selectable hold them).

    Raises:
        ValueError: no dict, an unknown kind, a missing or unknown key; OptionError (a ``ValueError``): a value
            out of range.
    """
    kind = d.get("kind", "hnsw") if isinstance(d, dict) else "hnsw"
    if kind not in PARAMS:
        raise ValueError(f"unknown ANN kind {kind!r} (one of {sorted(PARAMS)})")
    return PARAMS[kind].from_dict(d)


def ivf_nlist(n: int, nlist: int) -> int:
    """The lists an :class:`IVFIndex` makes on ``n`` rows with parameter ``nlist``: the power of two nearest
    ``4 * sqrt(n)`` (the usual rule; 4096 at 1M rows), at most ``n // IVF_TRAIN_PER_LIST`` (k-means wants at
    least ~39 points a centroid, FAISS warns below that: we train on up to 50 a list), at most ``nlist``, at
    least 1. E.g. 1 list up to 99 rows, 327 at 16,384, 1024 at 100k, 4096 at 1M."""
    if n < 1:
        return 1
    near = 1 << max(0, round(math.log2(4 * math.sqrt(n))))
    return max(1, min(nlist, near, n // IVF_TRAIN_PER_LIST))


class _Reranked:
    """What both indexes share: the caller's arrays (by reference), the exact re-rank, checks and bytes."""

    _magic = b""
    _index: faiss.Index

    def __init__(self, index, chunks: list[np.ndarray], params):
        self._index = index
        self._chunks = chunks  # the caller's arrays, rows in order: build's (or from_bytes'), then each add's
        self.params = params
        self._configure()

    @property
    def ntotal(self) -> int:
        """Rows in the index."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """D, the vectors' dimension."""
        return int(self._index.d)

    def add(self, vectors: np.ndarray, *, progress: bool = False) -> None:
        """Add ``vectors`` ``(m, D)`` float32, C-contiguous, as rows ``ntotal .. ntotal + m - 1`` (kept by
        reference: the caller must not change them). The first non-empty rows given (build's, usually) train
        the 8-bit codes (and an IVF's lists).

        Args:
            progress: show a tqdm progress bar (rows added) on stderr.

        Raises:
            ValueError: ``vectors`` is not a 2-d C-contiguous float32 array of the index's D, or holds NaN
                or inf.
        """
        vectors = _check_vectors(vectors, self._index.d)
        m = len(vectors)
        if m == 0:
            return
        if not self._index.is_trained:
            self._train(vectors)
        if not progress:
            self._index.add(vectors)
        else:
            from tqdm import tqdm

            with tqdm(total=m, desc=type(self).__name__, unit="rows", unit_scale=True) as bar:
                for start in range(0, m, _CHUNK):
                    self._index.add(vectors[start : start + _CHUNK])
                    bar.update(min(_CHUNK, m - start))
        self._chunks.append(vectors)

    def attach(self, vectors: np.ndarray) -> None:
        """Re-rank against ``vectors`` ``(ntotal, D)`` from now on: the caller's array of all the rows, the
        same values as those given (e.g. after the caller moved its rows into one larger buffer), so that the
        arrays given before can be freed. Nothing is copied.

        Raises:
            ValueError: another shape than ``(ntotal, D)``, not C-contiguous float32, or other values than the
                index was built on (a sample of rows is checked against the index's 8-bit codes).
        """
        vectors = _check_vectors(vectors, self._index.d, rows=self.ntotal, finite=False)
        self._check_codes(vectors)
        self._chunks = [vectors] if len(vectors) else []

    def _search(self, queries, k, candidates) -> tuple[np.ndarray, np.ndarray]:
        """Validate, run ``candidates(q, k) -> (Q, k') rows`` (-1 where none), re-rank exactly."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, not {k!r}")
        k = int(k)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self._index.d:
            raise ValueError(f"queries must be (Q, {self._index.d}), not {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries hold NaN or inf")
        nq = len(q)
        distances = np.full((nq, k), np.inf, dtype=np.float32)
        rows = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or self.ntotal == 0:
            return distances, rows
        cand = np.ascontiguousarray(candidates(q, k), dtype=np.int64)
        held = sum(len(c) for c in self._chunks)
        if cand.size and cand.max() >= held:  # rows FAISS has but no array yet (an add running beside a search)
            cand[cand >= held] = -1
        sq = np.empty((nq, k), dtype=np.float32)
        if len(self._chunks) == 1:
            base, kp = self._chunks[0], cand.shape[1]
            faiss.knn_L2sqr_by_idx(
                faiss.swig_ptr(q),
                faiss.swig_ptr(base),
                faiss.swig_ptr(cand),
                q.shape[1],
                nq,
                len(base),
                kp,
                k,
                faiss.swig_ptr(sq),
                faiss.swig_ptr(rows),
                kp,
            )  # fmt: skip  (the last argument, the candidates' row stride, must be given: FAISS 1.15 misreads -1)
        else:
            self._rerank_chunks(q, cand, sq, rows)
        found = rows >= 0
        distances[found] = np.sqrt(np.maximum(sq[found], 0))
        return distances, rows

    def _rerank_chunks(self, q: np.ndarray, cand: np.ndarray, sq: np.ndarray, rows: np.ndarray) -> None:
        """The exact re-rank when the rows are in several arrays (after :meth:`add`, before :meth:`attach`)."""
        starts = np.cumsum([0] + [len(c) for c in self._chunks])
        valid = cand >= 0
        vecs = np.zeros((*cand.shape, q.shape[1]), dtype=np.float32)
        which = np.searchsorted(starts, cand, side="right") - 1
        for i, chunk in enumerate(self._chunks):
            pick = valid & (which == i)
            vecs[pick] = chunk[cand[pick] - starts[i]]
        diff = vecs - q[:, None, :]
        d = np.einsum("qkd,qkd->qk", diff, diff)
        d[~valid] = np.inf
        top = np.argsort(d, axis=1, kind="stable")[:, : sq.shape[1]]  # both indexes give >= k candidates
        sq[:] = np.take_along_axis(d, top, 1)
        rows[:] = np.where(np.isfinite(sq), np.take_along_axis(cand, top, 1), -1)

    def to_bytes(self) -> bytes:
        """The index as bytes (a header with a CRC-32, then FAISS's own serialization of the index and its
        8-bit codes; not the float vectors): read back with ``from_bytes``."""
        payload = faiss.serialize_index(self._index)
        a, b = self._header_numbers()
        head = _HEADER.pack(self._magic, _HEADER_VERSION, self.dim, self.ntotal, a, b, payload.nbytes,
                            zlib.crc32(payload))  # fmt: skip
        return b"".join((head, memoryview(payload)))

    @classmethod
    def _unpack(cls, data) -> tuple[int, int, int, int, np.ndarray]:
        """``(dim, ntotal, number a, number b, payload)`` of :meth:`to_bytes`'s bytes, size and CRC checked."""
        name = cls.__name__
        view = memoryview(data).cast("B")
        if len(view) < _HEADER.size:
            raise ValueError(f"damaged {name}: {len(view)} bytes, shorter than its header")
        magic, version, dim, ntotal, a, b, size, crc = _HEADER.unpack(view[: _HEADER.size])
        if magic != cls._magic:
            raise ValueError(f"not an {name} (bad magic bytes)")
        if version != _HEADER_VERSION:
            raise ValueError(f"{name} of header version {version}; this release reads {_HEADER_VERSION}")
        payload = np.frombuffer(view, dtype=np.uint8, offset=_HEADER.size)
        if payload.size != size:
            raise ValueError(f"damaged {name}: {payload.size} bytes after the header, expected {size}")
        if zlib.crc32(payload) != crc:
            raise ValueError(f"damaged {name}: CRC-32 mismatch")
        return dim, ntotal, a, b, payload

    @classmethod
    def _deserialize(cls, payload: np.ndarray, kind: type, dim: int, ntotal: int):
        """The FAISS index in ``payload``, if it is a ``kind`` of ``dim`` and ``ntotal`` rows."""
        try:
            index = faiss.deserialize_index(payload)
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[-1]
            raise ValueError(f"damaged {cls.__name__}: FAISS cannot read it ({detail})") from None
        if not isinstance(index, kind) or index.d != dim or index.ntotal != ntotal:
            raise ValueError(f"damaged {cls.__name__}: the FAISS index does not match its header")
        return index

    def _finish_read(self, vectors: np.ndarray):
        self._check_codes(vectors)
        return self

    def _check_codes(self, vectors: np.ndarray, sample: int = 64) -> None:
        """Refuse ``vectors`` whose rows (a spread sample) do not encode to the index's 8-bit codes."""
        n = len(vectors)
        if n == 0:
            return
        rows = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(np.int64))
        sample_v = np.ascontiguousarray(vectors[rows])
        if not np.isfinite(sample_v).all():
            raise ValueError("the vectors hold NaN or inf")
        stored, fresh = self._codes_of(rows, sample_v)
        if stored is None or (np.abs(stored.astype(np.int16) - fresh.astype(np.int16)) > 1).any():
            raise ValueError(f"the vectors are not those the {type(self).__name__} was built on (codes differ)")

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())
        return f"{type(self).__name__}(ntotal={self.ntotal}, dim={self.dim}, {p}, nbytes={self.nbytes})"


class HNSWGraph(_Reranked):
    """An HNSW graph over ``(n, D)`` float32 vectors that the caller keeps: approximate top-k, exact distances.

    Make one with :meth:`build` or :meth:`from_bytes`; grow it with :meth:`add`. Row numbers are positions in
    the vectors (0..ntotal-1, in the order given). :meth:`search` may run from several threads at once;
    :meth:`add` and :meth:`attach` must not run beside a search (the store's writer does them).
    """

    _magic = b"FSHNSW\x00\x01"
    params: HNSWParams

    @classmethod
    def build(cls, vectors: np.ndarray, params: HNSWParams, *, progress: bool = False) -> HNSWGraph:
        """A graph over ``vectors`` ``(n, D)`` float32, C-contiguous (kept by reference, not copied; n may be
        0), on every core FAISS uses (``faiss.omp_get_max_threads()``).

        Args:
            progress: show a tqdm progress bar (rows linked) on stderr.

        Raises:
            ValueError: ``vectors`` is not a 2-d C-contiguous float32 array with D >= 1, or holds NaN or inf.
        """
        vectors = _check_vectors(vectors, None)
        graph = cls(faiss.IndexHNSWSQ(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, params.M), [], params)
        graph.add(vectors, progress=progress)
        return graph

    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The approximate k nearest rows of each query.

        Args:
            queries: ``(Q, D)`` float32 (other float arrays are converted).
            k: neighbours per query, >= 1.
            ef_search: candidates per query for this call (default ``params.ef_search``; at least ``k`` is used).

        Returns:
            ``(distances, rows)``, both ``(Q, k)``, nearest first: float32 Euclidean distances (exact, not
            squared) and int64 row numbers; ``inf`` and ``-1`` where fewer than k rows were found.

        Raises:
            ValueError: ``queries`` is not ``(Q, D)`` of finite numbers, or ``k`` is not an integer >= 1.
            OptionError: ``ef_search`` outside :data:`LIMITS` (a subclass of ``ValueError``).
        """
        ef = self.params.ef_search if ef_search is None else _check_int("HNSW", "ef_search", ef_search)

        def candidates(q, k):
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef, k)
            return self._index.search(q, max(ef, k), params=params)[1]  # (Q, ef), -1 past those found

        return self._search(queries, k, candidates)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, vectors: np.ndarray, params: HNSWParams) -> HNSWGraph:
        """The graph :meth:`to_bytes` wrote, over the same ``vectors`` ``(ntotal, D)`` float32 (kept by
        reference). ``params.ef_search`` may differ from the one it was built with; ``M`` may not.

        Raises:
            ValueError: ``data`` is damaged or no graph (bad header, wrong size, CRC mismatch, links out of
                range), or does not belong to ``vectors`` or ``params`` (other D, row count, ``M``, or rows
                whose values differ from those it was built on).
        """
        dim, ntotal, m, _efc, payload = cls._unpack(data)
        if m != params.M:
            raise ValueError(f"HNSW graph built with M={m}, but the parameters say M={params.M}")
        vectors = _check_vectors(vectors, dim, rows=ntotal, finite=False)
        index = cls._deserialize(payload, faiss.IndexHNSWSQ, dim, ntotal)
        _check_links(index.hnsw, ntotal)
        return cls(index, [vectors] if len(vectors) else [], params)._finish_read(vectors)

    @property
    def nbytes(self) -> int:
        """Bytes held besides the caller's vectors: links, offsets, levels and 8-bit codes."""
        h = self._index.hnsw
        return int(h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4 + self._storage.codes.size())

    def _configure(self) -> None:
        """The settings FAISS does not serialize: set after build and after from_bytes."""
        self._storage = faiss.downcast_index(self._index.storage)  # the IndexScalarQuantizer (owned by _index)
        self._index.hnsw.efConstruction = self.params.ef_construction
        self._index.hnsw.efSearch = self.params.ef_search
        self._index.keep_max_size_level0 = True
        self._storage.sq.rangestat = faiss.ScalarQuantizer.RS_minmax
        self._storage.sq.rangestat_arg = _SQ_MARGIN

    def _train(self, vectors: np.ndarray) -> None:
        self._index.train(vectors)

    def _header_numbers(self) -> tuple[int, int]:
        return self.params.M, self.params.ef_construction

    def _codes_of(self, rows: np.ndarray, sample_v: np.ndarray):
        codes = self._storage.codes
        stored = faiss.rev_swig_ptr(codes.data(), codes.size()).reshape(self.ntotal, -1)[rows]
        return stored, self._storage.sa_encode(sample_v)


class IVFIndex(_Reranked):
    """An inverted-file index over ``(n, D)`` float32 vectors that the caller keeps: approximate top-k, exact
    distances. The same methods as :class:`HNSWGraph` (its ``search`` takes ``nprobe=`` for ``ef_search=``)."""

    _magic = b"FSIVF\x00\x00\x01"
    params: IVFParams

    @classmethod
    def build(cls, vectors: np.ndarray, params: IVFParams, *, progress: bool = False) -> IVFIndex:
        """An index over ``vectors`` ``(n, D)`` float32, C-contiguous (kept by reference; n may be 0: the lists
        are then trained on the first rows added), on every core FAISS uses.

        Raises:
            ValueError: ``vectors`` is not a 2-d C-contiguous float32 array with D >= 1, or holds NaN or inf.
        """
        vectors = _check_vectors(vectors, None)
        index = cls(_EmptyIVF(vectors.shape[1]), [], params)
        index.add(vectors, progress=progress)
        return index

    def _train(self, vectors: np.ndarray) -> None:
        d, n = vectors.shape[1], len(vectors)
        nlist = ivf_nlist(n, self.params.nlist)
        quantizer = faiss.IndexHNSWFlat(d, IVF_QUANTIZER_M)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        index.own_fields = True
        quantizer.this.disown()  # owned by the IVF index now
        index.cp.min_points_per_centroid = 1  # the sample is ours (up to 50 a list); no warning for small ones
        sample = vectors
        if n > IVF_TRAIN_PER_LIST * nlist:
            pick = np.random.default_rng(0).choice(n, IVF_TRAIN_PER_LIST * nlist, replace=False)
            sample = vectors[np.sort(pick)]
        index.train(sample)
        self._index = index
        self._configure()

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The approximate k nearest rows of each query: the rows of the ``nprobe`` nearest lists (default
        ``params.nprobe``), their best ``max(4 k, 64)`` by 8-bit code re-ranked exactly. Returns and raises as
        :meth:`HNSWGraph.search` (``OptionError`` for an ``nprobe`` outside :data:`LIMITS`)."""
        nprobe = self.params.nprobe if nprobe is None else _check_int("IVF", "nprobe", nprobe)

        def candidates(q, k):
            params = faiss.SearchParametersIVF()
            params.nprobe = min(nprobe, self.nlist)
            return self._index.search(q, max(4 * k, IVF_CANDIDATES), params=params)[1]

        return self._search(queries, k, candidates)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, vectors: np.ndarray, params: IVFParams) -> IVFIndex:
        """The index :meth:`to_bytes` wrote, over the same ``vectors`` ``(ntotal, D)`` float32 (kept by
        reference); ``params.nprobe`` may differ from the one it was built with.

        Raises:
            ValueError: ``data`` is damaged or no IVF index (bad header, wrong size, CRC mismatch, ids or
                links out of range), or does not belong to ``vectors`` (other D, row count, values).
        """
        name = cls.__name__
        dim, ntotal, nlist, _, payload = cls._unpack(data)
        vectors = _check_vectors(vectors, dim, rows=ntotal, finite=False)
        if nlist == 0:  # no rows given yet, so no lists trained: nothing but the header
            if ntotal or payload.size:
                raise ValueError(f"damaged {name}: rows but no lists")
            return cls(_EmptyIVF(dim), [], params)
        index = cls._deserialize(payload, faiss.IndexIVFScalarQuantizer, dim, ntotal)
        if index.nlist != nlist:
            raise ValueError(f"damaged {name}: the FAISS index does not match its header")
        quantizer = faiss.downcast_index(index.quantizer)
        if not isinstance(quantizer, faiss.IndexHNSWFlat) or quantizer.ntotal != nlist:
            raise ValueError(f"damaged {name}: its coarse quantizer is not an HNSW over {nlist} centroids")
        _check_links(quantizer.hnsw, nlist)
        invlists = index.invlists
        total = 0
        for i in range(nlist):
            size = invlists.list_size(i)
            total += size
            if size and not _in_range(faiss.rev_swig_ptr(invlists.get_ids(i), size), 0, index.ntotal):
                raise ValueError(f"damaged {name}: row ids out of range")
        if total != index.ntotal:
            raise ValueError(f"damaged {name}: its lists hold {total} rows, the header says {index.ntotal}")
        return cls(index, [vectors] if len(vectors) else [], params)._finish_read(vectors)

    def to_bytes(self) -> bytes:
        """As :meth:`HNSWGraph.to_bytes` (an index given no rows yet: the header alone)."""
        if isinstance(self._index, _EmptyIVF):
            return _HEADER.pack(self._magic, _HEADER_VERSION, self.dim, 0, 0, 0, 0, zlib.crc32(b""))
        return super().to_bytes()

    @property
    def nlist(self) -> int:
        """Lists made (0 before the first rows are added)."""
        return 0 if isinstance(self._index, _EmptyIVF) else int(self._index.nlist)

    @property
    def nbytes(self) -> int:
        """Bytes held besides the caller's vectors: the codes and int64 ids in the lists, the centroids and
        their HNSW links."""
        if isinstance(self._index, _EmptyIVF):
            return 0
        q = faiss.downcast_index(self._index.quantizer)
        h = q.hnsw
        centroids = q.ntotal * q.d * 4 + h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return int(self.ntotal * (self._index.code_size + 8) + centroids)

    def _configure(self) -> None:
        if isinstance(self._index, faiss.IndexIVFScalarQuantizer):
            faiss.downcast_index(self._index.quantizer).hnsw.efSearch = IVF_QUANTIZER_EF

    def _header_numbers(self) -> tuple[int, int]:
        return self.nlist, 0

    def _codes_of(self, rows: np.ndarray, sample_v: np.ndarray):
        index, invlists = self._index, self._index.invlists
        coarse = index.coarse_code_size()
        fresh = index.sa_encode(sample_v)  # (m, coarse + code): list number, then the code of the residual
        lists = faiss.downcast_index(index.quantizer).search(sample_v, 1)[1][:, 0]
        stored = np.empty((len(rows), index.code_size), dtype=np.uint8)
        for j, (row, lst) in enumerate(zip(rows, lists, strict=True)):
            size = invlists.list_size(int(lst))
            ids = faiss.rev_swig_ptr(invlists.get_ids(int(lst)), size)
            at = np.flatnonzero(ids == row)
            if not len(at):
                return None, None
            codes = faiss.rev_swig_ptr(invlists.get_codes(int(lst)), size * index.code_size).reshape(size, -1)
            stored[j] = codes[at[0]]
        return stored, fresh[:, coarse:]


class _EmptyIVF:
    """Stands for the FAISS index of an :class:`IVFIndex` given no rows yet (its lists are trained on the first)."""

    is_trained = False
    ntotal = 0

    def __init__(self, d: int):
        self.d = d


def _in_range(a: np.ndarray, low: int, high: int) -> bool:
    return bool(a.min() >= low and a.max() < high)


def _check_vectors(vectors, dim: int | None, *, rows: int | None = None, finite: bool = True) -> np.ndarray:
    """``vectors`` if it is a 2-d C-contiguous float32 array (of ``dim`` columns, ``rows`` rows), else ValueError."""
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        what = f"{vectors.dtype} {vectors.shape}" if isinstance(vectors, np.ndarray) else type(vectors).__name__
        raise ValueError(f"vectors must be a 2-d float32 array, not {what}")
    if not vectors.flags.c_contiguous:
        raise ValueError("vectors must be C-contiguous (np.ascontiguousarray)")
    if vectors.shape[1] < 1 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"vectors must have {dim or '>= 1'} columns, not {vectors.shape[1]}")
    if rows is not None and len(vectors) != rows:
        raise ValueError(f"the index holds {rows} rows, but {len(vectors)} vectors were given")
    if finite and not np.isfinite(vectors).all():
        raise ValueError("vectors hold NaN or inf")
    return vectors


def _check_links(hnsw, ntotal: int) -> None:
    """Refuse an HNSW whose links, offsets or levels point outside it (they would be read out of bounds)."""
    offsets = faiss.vector_to_array(hnsw.offsets)
    levels = faiss.vector_to_array(hnsw.levels)
    cum = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
    nb_size = hnsw.neighbors.size()
    bad = (
        len(offsets) != ntotal + 1
        or len(levels) != ntotal
        or (ntotal and (levels.min() < 1 or levels.max() >= len(cum)))
        or offsets[0] != 0
        or offsets[-1] != nb_size
        or (ntotal and not (np.diff(offsets.astype(np.int64)) == cum[levels]).all())
        or (ntotal and not 0 <= hnsw.entry_point < ntotal)
        or (ntotal and hnsw.max_level != levels.max() - 1)
    )
    if not bad and nb_size:
        bad = not _in_range(faiss.rev_swig_ptr(hnsw.neighbors.data(), nb_size), -1, ntotal)
    if bad:
        raise ValueError("damaged index: HNSW links, offsets or levels out of range")
