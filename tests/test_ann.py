"""The ANN indexes (:mod:`facial_search.index.ann`: the HNSW graph and the inverted file) on real FER+
embeddings spread into many rows: recall against exact FAISS search, exact distances, the bytes round trip,
adding rows, and the errors."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest
from helpers import FERPLUS

from facial_search.errors import OptionError
from facial_search.index.ann import HNSWGraph, HNSWParams, IVFIndex, IVFParams, ivf_nlist, params_from_dict

KINDS = {"hnsw": (HNSWGraph, HNSWParams(), "ef_search"), "ivf": (IVFIndex, IVFParams(), "nprobe")}


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """FAISS on one thread here: its OpenMP threads spin-wait, which on a busy machine (parallel test runs)
    costs more than the second core gives; restored after the module."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def real_faces(shared) -> np.ndarray:
    """``(160, 64)`` float32: the default embedder's embeddings of 160 real FER+ test crops."""
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    files = sorted((FERPLUS / "FER2013Test").glob("*.png"))[:160]
    with Pipeline() as p:
        embs = [p.embed(rgb, p.faces(rgb, cropped=True)[:1])[0] for rgb in map(load_image, files)]
    return np.stack(embs).astype(np.float32)


def spread(faces: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``(n, 64)`` unit rows clustered like real data (as ``benchmarks/bench_scale.py``): a real embedding each,
    plus noise of one of three sizes (0.003 to 0.03 per dimension), and one row in five an exact copy of an
    earlier one (a picture saved twice)."""
    rng = np.random.default_rng(seed)
    x = faces[rng.integers(0, len(faces), n)]
    x = x + rng.normal(size=x.shape).astype(np.float32) * rng.choice([0.003, 0.01, 0.03], (n, 1))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    copies = np.flatnonzero(rng.random(n) < 0.2)[1:]
    x[copies] = x[rng.integers(0, copies)]
    return x


@pytest.fixture(scope="module")
def vectors(real_faces) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (20000, 64), queries (400, 64))``."""
    return spread(real_faces, 20_000, seed=0), spread(real_faces, 400, seed=1)


@pytest.fixture(scope="module", params=sorted(KINDS))
def data(request, vectors):
    """``(vectors, queries, an index of each kind over the vectors at its default parameters)``."""
    cls, params, _ = KINDS[request.param]
    return *vectors, cls.build(vectors[0], params)


def exact_kth(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``(Q, 1)`` the exact k-th nearest distance of each query: FAISS flat's top ids, their distances
    recomputed in float64 (FAISS's ``|x|^2 + |q|^2 - 2 x.q`` in float32 is off by ~1e-7)."""
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    ids = flat.search(queries, k + 20)[1]
    return np.sort(true_distances(x, queries, ids), axis=1)[:, k - 1 : k]


def true_distances(x: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(Q, k)`` float64 Euclidean distances of the queries to the given rows of ``x``."""
    return np.linalg.norm(x[rows].astype(np.float64) - queries[:, None, :], axis=-1)


def kind_of(index) -> tuple[type, HNSWParams | IVFParams, str]:
    """``(class, default parameters, name of the search breadth)`` of an index."""
    return KINDS["hnsw" if isinstance(index, HNSWGraph) else "ivf"]


def knob(index) -> str:
    return kind_of(index)[2]


def test_recall_at_3_on_real_embeddings(data):
    x, queries, index = data
    distances, rows = index.search(queries, 3)
    assert distances.shape == rows.shape == (len(queries), 3)
    assert distances.dtype == np.float32 and rows.dtype == np.int64
    assert (rows >= 0).all() and (rows < len(x)).all()
    # exact Euclidean distances (re-ranked on the float vectors, not the 8-bit codes), nearest first
    np.testing.assert_allclose(distances, true_distances(x, queries, rows), rtol=1e-4, atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()
    third = exact_kth(x, queries, 3) * (1 + 1e-6)
    hits = true_distances(x, queries, rows) <= third  # within the exact third-nearest (copies tie)
    assert hits.mean() >= 0.95
    # a narrow search (fewest candidates, or one list) finds fewer of them
    narrow = true_distances(x, queries, index.search(queries, 3, **{knob(index): 1})[1]) <= third
    assert narrow.mean() < hits.mean()


def test_bytes_round_trip_gives_identical_results(data):
    x, queries, index = data
    cls, params, name = kind_of(index)
    blob = index.to_bytes()
    again = cls.from_bytes(memoryview(blob), x, params)
    assert again.ntotal == index.ntotal == len(x) and again.nbytes == index.nbytes
    assert again.to_bytes() == blob
    for value in (None, 8):
        a, b = index.search(queries, 5, **{name: value}), again.search(queries, 5, **{name: value})
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # ef_search / nprobe is a search setting: an index read with another one searches with it
    wider = cls.from_bytes(blob, x, dataclasses.replace(params, **{name: 64}))
    assert getattr(wider.params, name) == 64
    np.testing.assert_array_equal(wider.search(queries, 5)[1], index.search(queries, 5, **{name: 64})[1])


def test_nbytes_holds_no_float_copy(data):
    x, _, index = data
    per_row = index.nbytes / len(x)
    if isinstance(index, HNSWGraph):  # level-0 links (2 * M int32) and 8-bit codes
        assert 2 * index.params.M * 4 + x.shape[1] < per_row < 0.9 * x.nbytes / len(x)
    else:  # 8-bit codes and int64 ids, and the centroids
        assert x.shape[1] + 8 <= per_row < x.shape[1] + 8 + 0.25 * x.nbytes / len(x)
        assert index.nlist == 20_000 // 50  # at most 50 training rows a list


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_add_then_search_finds_the_new_rows(real_faces, kind):
    cls, params, _ = KINDS[kind]
    x = spread(real_faces, 4000, seed=2)
    new = spread(real_faces, 1000, seed=3)
    index = cls.build(x, params)
    index.add(new)
    assert index.ntotal == 5000
    both = np.concatenate([x, new])
    distances, rows = index.search(new, 1)
    # each new row finds itself (or an identical row) at distance 0; row numbers continue after the first 4000
    zero = distances[:, 0] == 0
    assert zero.mean() >= 0.99
    assert (both[rows[zero, 0]] == new[zero]).all()
    assert (rows[:, 0] >= 4000).mean() > 0.5
    queries = spread(real_faces, 200, seed=4)
    d_chunks, r_chunks = index.search(queries, 4)  # re-ranked over the two arrays given
    np.testing.assert_allclose(d_chunks, true_distances(both, queries, r_chunks), rtol=1e-4, atol=1e-5)
    index.attach(both)  # one array of all rows, as the store keeps them: the same answers
    d_one, r_one = index.search(queries, 4)
    np.testing.assert_array_equal(r_one, r_chunks)
    np.testing.assert_allclose(d_one, d_chunks, rtol=1e-6)
    again = cls.from_bytes(index.to_bytes(), both, params)
    np.testing.assert_array_equal(again.search(queries, 4)[1], r_one)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_empty_and_small_indexes(real_faces, kind):
    cls, params, _ = KINDS[kind]
    none = np.empty((0, 64), np.float32)
    empty = cls.build(none, params)
    d, r = empty.search(real_faces[:2], 3)
    assert (r == -1).all() and np.isinf(d).all() and empty.nbytes >= 0
    assert cls.from_bytes(empty.to_bytes(), none, params).ntotal == 0
    empty.add(real_faces[:5])  # the codes (and lists) are trained on the first rows given
    d, r = empty.search(real_faces[:2], 8)  # k past ntotal: -1 and inf after the 5 rows
    assert (r[:, :5] >= 0).all() and (r[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    assert r[0, 0] == 0 and r[1, 0] == 1 and d[0, 0] == 0
    np.testing.assert_array_equal(
        cls.from_bytes(empty.to_bytes(), real_faces[:5], params).search(real_faces[:2], 8)[1], r
    )


@pytest.mark.parametrize("cls", [HNSWParams, IVFParams])
def test_params_validate(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    values = [11, 9, 7][: len(names)]
    p = cls(*values)
    kind = {} if cls is HNSWParams else {"kind": "ivf"}  # HNSW's dict as files before IVF hold it: no kind
    assert p.to_dict() == kind | dict(zip(names, values, strict=True))
    assert cls.from_dict(p.to_dict()) == p == params_from_dict(p.to_dict())
    assert cls.from_dict({k: np.int64(v) if k != "kind" else v for k, v in p.to_dict().items()}) == p
    assert params_from_dict({"kind": cls.kind, **dict(zip(names, values, strict=True))}) == p
    what = "HNSW" if cls is HNSWParams else "IVF"
    for name in names:
        for bad in (0, -5, 10**7, "16", 16.0, True, None):
            with pytest.raises(OptionError, match=f"{what} {name}"):
                cls(**{name: bad})
    stored = p.to_dict()
    first = names[0]
    other = "ivf" if cls is HNSWParams else "hnsw"
    for bad in ([1, 2, 3], None, {first: 16}, {**stored, "efSearch": 10}, {**stored, first: "x"},
                {**stored, "kind": other}):  # fmt: skip
        with pytest.raises(ValueError, match=what):
            cls.from_dict(bad)
    with pytest.raises(ValueError, match="unknown ANN kind 'pq'"):
        params_from_dict({**stored, "kind": "pq"})
    with pytest.raises(OptionError, match="M must be"):
        HNSWParams(M=1)  # one link a node is no graph


def test_ivf_params_and_the_lists_a_build_makes():
    with pytest.raises(OptionError, match=r"nprobe \(17\) must be at most nlist \(16\)"):
        IVFParams(nlist=16, nprobe=17)
    assert IVFParams(nlist=16, nprobe=16).nprobe == 16
    # about 4 sqrt(n) (the power of two nearest), at most n // 50 (k-means' points a list), at most nlist
    assert [ivf_nlist(n, 4096) for n in (0, 49, 99, 1000, 16_384, 100_000, 1_000_000, 10**7)] == [
        1, 1, 1, 20, 327, 1024, 4096, 4096]  # fmt: skip
    assert ivf_nlist(10**7, 16_384) == 16_384 and ivf_nlist(100_000, 256) == 256
    assert HNSWParams(ef_search=10).build_key() == HNSWParams().build_key() != HNSWParams(M=8).build_key()
    assert IVFParams(nprobe=64).build_key() == IVFParams().build_key() != IVFParams(nlist=1024).build_key()


def test_bad_input_gets_clear_errors(data):
    x, queries, index = data
    cls, params, _ = kind_of(index)
    before = index.search(queries[:5], 3)
    with pytest.raises(ValueError, match="float32"):
        cls.build(x.astype(np.float64), params)
    with pytest.raises(ValueError, match="C-contiguous"):
        cls.build(np.asfortranarray(x[:100]), params)
    nan = x[:100].copy()
    nan[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls.build(nan, params)
    with pytest.raises(ValueError, match="64 columns"):
        index.add(np.zeros((3, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(Q, 64\)"):
        index.search(queries[:, :10], 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 64), np.nan, np.float32), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search(queries, k)
    with pytest.raises(OptionError, match=knob(index)):
        index.search(queries, 3, **{knob(index): 0})
    with pytest.raises(ValueError, match="rows"):
        index.attach(x[:-1])
    assert index.ntotal == len(x)  # nothing changed by the refused calls
    for a, b in zip(index.search(queries[:5], 3), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_damaged_bytes_raise_value_error(data, real_faces):
    x, _, index = data
    cls, params, _ = kind_of(index)
    blob = index.to_bytes()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    cases = {
        "shorter than its header": blob[:20],
        "bad magic": b"XXXXXXXX" + blob[8:],
        "expected": blob[:-1000],  # truncated
        "CRC-32": bytes(flipped),
    }
    other = (IVFIndex, IVFParams()) if cls is HNSWGraph else (HNSWGraph, HNSWParams())
    for message, damaged in cases.items():
        with pytest.raises(ValueError, match=message):
            cls.from_bytes(damaged, x, params)
    with pytest.raises(ValueError, match="bad magic"):  # the other kind's bytes
        other[0].from_bytes(blob, x, other[1])
    with pytest.raises(ValueError, match="rows"):
        cls.from_bytes(blob, x[:-1], params)
    with pytest.raises(ValueError, match="not those"):  # another segment's vectors of the same shape
        cls.from_bytes(blob, spread(real_faces, len(x), seed=9), params)
    if cls is HNSWGraph:
        with pytest.raises(ValueError, match="M=16"):
            cls.from_bytes(blob, x, HNSWParams(M=32))


def test_links_and_ids_out_of_range_are_refused(real_faces):
    """Bytes that pass the CRC but point past the rows (a faulty writer) are refused, not searched out of
    bounds."""
    x = spread(real_faces, 1000, seed=5)
    graph = HNSWGraph.build(x, HNSWParams())
    links = graph._index.hnsw.neighbors
    faiss.rev_swig_ptr(links.data(), links.size())[7] = len(x) + 10
    with pytest.raises(ValueError, match="out of range"):
        HNSWGraph.from_bytes(graph.to_bytes(), x, HNSWParams())
    ivf = IVFIndex.build(x, IVFParams())
    invlists = ivf._index.invlists
    faiss.rev_swig_ptr(invlists.get_ids(0), invlists.list_size(0))[0] = len(x) + 3
    with pytest.raises(ValueError, match="out of range"):
        IVFIndex.from_bytes(ivf.to_bytes(), x, IVFParams())


def test_an_ivf_store_against_exact_on_real_embeddings(vectors, tmp_path, monkeypatch):
    """The file store with ``--ann ivf`` (sealed IVF segments, merged and rebuilt as they grow, beside an exact
    tail) on the spread real embeddings: recall@3 against the exact store, and the same after a round trip."""
    from facial_search.index import segments
    from facial_search.index.store import EmbedderInfo, MemeIndex

    monkeypatch.setattr(segments, "SEAL_ROWS", 4000)  # 16,384 by default: several segments and a tail here
    x, queries = vectors
    rng = np.random.default_rng(5)
    faces = [{"source": f"/r/{i}.jpg", "face": 0, "box": (0, 0, 9, 9), "title": "t",
              "picture_hash": f"{int(rng.integers(2**63)):016x}"} for i in range(len(x))]  # fmt: skip
    info = EmbedderInfo("test", "1", x.shape[1])
    path = tmp_path / "ivf.fsindex"
    store = MemeIndex(info, path=path, ann=IVFParams())
    for start in range(0, len(x), 2500):  # segments [0, 12500) (merged twice) and [12500, 17500), then a tail
        store.add(x[start : start + 2500], faces[start : start + 2500])
        store.commit()
    d = store.describe()
    assert d["backend"] == "file (ivf)" and d["faces"] == len(x)
    assert [(s.start, s.end) for s in store._segments.sealed] == [(0, 12_500), (12_500, 17_500)]
    # [0, 2500) made 50 lists; merged to 7,500 rows (150 lists at that size: 2x or more) it was built again; merged
    # to 12,500 (250: under 2x) it took the rows into its 150 lists
    assert d["ivf_lists"] == [150, 100]
    third = exact_kth(x, queries, 3) * (1 + 1e-6)
    for index in (store, MemeIndex.load(path)):
        distances, ids = index.search(queries, k=3)
        rows = np.searchsorted(index.ids, ids)  # the store's ids -> rows of x
        assert (ids >= 0).all() and (index.ids[rows] == ids).all()
        np.testing.assert_allclose(distances, true_distances(x, queries, rows), rtol=1e-4, atol=1e-5)
        recall = (true_distances(x, queries, rows) <= third).mean()
        assert recall >= 0.95, recall
