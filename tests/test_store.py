"""One store interface opened by URI (:func:`facial_search.index.open`), the file store's Store protocol, and its
exact search through FAISS checked against the NumPy kernel."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FACES, needs_shared

import facial_search.index as fsi
from facial_search.errors import (
    EmbedderMismatchError,
    IndexLockedError,
    IndexURIError,
    InputNotFoundError,
    MissingDependencyError,
)
from facial_search.index import EmbedderInfo, FileRecord, MemeIndex, Store, top_k

CLI = [sys.executable, "-m", "facial_search.cli"]
INFO = EmbedderInfo("test", "1", 8)


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _entries(n: int, source: str = "m.jpg") -> list[dict]:
    return [{"source": source, "face": i, "box": (0, 0, 1, 1), "title": "m"} for i in range(n)]


def _numpy_search(index: MemeIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy kernel the FAISS search replaced: top_k over the full distance matrix."""
    dist, cols = top_k(index.distances(q), k)
    return dist, np.where(cols >= 0, index.ids[np.maximum(cols, 0)], -1)


def _assert_same(got, want, atol=1e-5):
    (gd, gi), (wd, wi) = got, want
    assert gd.shape == wd.shape and gi.dtype == np.int64 and gd.dtype == np.float32
    # squared distances: NumPy's |q|^2 + |x|^2 - 2 q.x loses ~1e-7 near 0, which the square root makes ~3e-4
    g2, w2 = gd.astype(np.float64) ** 2, wd.astype(np.float64) ** 2
    assert np.allclose(g2, w2, atol=atol) and np.array_equal(np.isinf(gd), np.isinf(wd))
    # same ids except where two distances tie within float error (then either order is right)
    differ = gi != wi
    assert np.all(np.abs(g2[differ] - w2[differ]) < atol), (gi[differ], wi[differ])


# -- opening by URI ----------------------------------------------------------------------------------------
def test_open_a_path_and_a_file_uri(tmp_path):
    p = tmp_path / "x y.fsindex"
    idx = MemeIndex(INFO)
    idx.add(_unit(3), _entries(3))
    idx.save(p)
    for uri in (str(p), p, f"file://{p}", f"file://{str(p).replace(' ', '%20')}"):
        with fsi.open(uri) as store:
            assert isinstance(store, MemeIndex) and store.ntotal == 3
            assert store.uri == str(uri)
    with pytest.raises(InputNotFoundError):
        fsi.open(tmp_path / "missing.fsindex")
    with pytest.raises(EmbedderMismatchError, match="re-index"):
        fsi.open(f"file://{p}", embedder=EmbedderInfo("other", "1", 8))


def test_open_create_makes_an_empty_store_written_at_commit(tmp_path):
    p = tmp_path / "new.fsindex"
    with pytest.raises(ValueError, match="embedder"):
        fsi.open(p, create=True)
    with fsi.open(p, create=True, embedder=INFO) as store:
        assert store.ntotal == 0 and not p.exists()  # nothing written before a commit
        store.add(_unit(2), _entries(2))
        store.commit()
    assert len(MemeIndex.load(p, expect=INFO)) == 2


def test_a_writer_holds_the_lock_until_close(tmp_path):
    p = tmp_path / "w.fsindex"
    store = fsi.open(p, create=True, embedder=INFO, writer=True)
    try:
        with pytest.raises(IndexLockedError, match="this process"):
            fsi.open(p, create=True, embedder=INFO, writer=True)
        store.add(_unit(2), _entries(2))
        store.commit()  # with its own lock
    finally:
        store.close()
    store.close()  # idempotent
    with fsi.open(p, embedder=INFO, writer=True) as again:  # free again
        assert again.ntotal == 2


def test_an_unknown_scheme_is_a_typed_error(tmp_path):
    with pytest.raises(IndexURIError, match="unknown index URI scheme 's3'"):
        fsi.open("s3://bucket/memes.fsindex")


def test_milvus_lite_uri_opens_a_milvus_store(tmp_path):
    uri = f"milvus-lite://{tmp_path / 'memes.db'}"
    if importlib.util.find_spec("facial_search.index.milvus") is None:  # the backend not written yet
        with pytest.raises(MissingDependencyError, match="Milvus"):
            fsi.open(uri, create=True, embedder=INFO)
        pytest.skip("facial_search/index/milvus.py does not exist yet")
    from facial_search.index.milvus import MilvusStore

    with fsi.open(uri, create=True, embedder=INFO) as store:
        assert isinstance(store, MilvusStore) and isinstance(store, Store)
        assert store.uri == uri and store.describe()["backend"] == "milvus-lite"
    with pytest.raises(EmbedderMismatchError):
        fsi.open(uri, embedder=EmbedderInfo("other", "1", 8))


# -- the Store protocol on MemeIndex --------------------------------------------------------------------------
def test_meme_index_conforms_to_the_store_protocol(tmp_path):
    p = tmp_path / "s.fsindex"
    store = fsi.open(p, create=True, embedder=INFO, writer=True)
    assert isinstance(store, Store)
    ids = store.add(_unit(4), _entries(3, "a.jpg") + _entries(1, "b.jpg"))
    assert ids.tolist() == [0, 1, 2, 3] and store.ntotal == 4
    store.record_file("a.jpg", FileRecord(10, 1, 3))
    store.record_file("b.jpg", FileRecord(10, 1, 1))
    store.record_file("c.jpg", FileRecord(10, 1, 0, "no face"))
    assert set(store.files) == {"a.jpg", "b.jpg", "c.jpg"}
    dist, got = store.search(_unit(4)[:1], k=2)
    assert got[0, 0] == 0 and dist[0, 0] < 1e-3
    dist, got = store.search(_unit(4)[:1], k=3, group_by_source=True)
    assert got[0, 2] == -1 and np.isinf(dist[0, 2])  # two pictures only
    assert store.entry(3).source == "b.jpg" and [e.id for e in store.entries()] == [0, 1, 2, 3]
    assert store.remove_ids([1, 99]) == 1 and store.remove_source("b.jpg") == 1
    assert store.ntotal == 2 and "b.jpg" not in store.files
    store.commit()
    d = store.describe()
    assert d == {"backend": "file (exact)", "uri": str(p), "faces": 2, "pictures": 1, "images": 2, "skipped": 1,
                 "embedder": "test", "embedder_version": "1", "dim": 8, "format_version": 3, "ann": None,
                 "segments": 0}  # fmt: skip
    with store as same:
        assert same is store
    with pytest.raises(KeyError):
        store.entry(1)
    again = MemeIndex.load(p)
    assert again.ids.tolist() == [0, 2] and again.uri == str(p)
    with pytest.raises(ValueError, match="in memory"):
        MemeIndex(INFO).commit()


# -- exact search through FAISS -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 2000])
def test_faiss_search_equals_the_numpy_kernel_on_random_unit_vectors(n):
    idx = MemeIndex(EmbedderInfo("test", "1", 64))
    idx.add(_unit(n, 64), _entries(n))
    q = _unit(7, 64, seed=1)
    for k in (1, 3, 10):
        _assert_same(idx.search(q, k), _numpy_search(idx, q, k))
    # kept up to date: adds extend the FAISS index, removals rebuild it
    idx.add(_unit(3, 64, seed=2), _entries(3, "new.jpg"))
    idx.remove_ids([0])
    _assert_same(idx.search(q, 5), _numpy_search(idx, q, 5))
    q1 = _unit(3, 64, seed=2)[1]  # an added vector is its own nearest
    assert idx.search(q1, 1)[1][0, 0] == n + 1


def test_ties_come_lower_row_first():
    idx = MemeIndex(INFO)
    v = _unit(1)
    idx.add(np.repeat(v, 4, axis=0), _entries(4))
    dist, ids = idx.search(v, 6)
    assert ids[0].tolist() == [0, 1, 2, 3, -1, -1] and np.isinf(dist[0, 4:]).all()


def test_empty_store_and_bad_queries():
    idx = MemeIndex(INFO)
    dist, ids = idx.search(_unit(2), 3)
    assert ids.tolist() == [[-1] * 3] * 2 and np.isinf(dist).all()
    with pytest.raises(ValueError, match="dimension"):
        idx.search(np.zeros((1, 5), np.float32), 1)


@needs_shared
def test_faiss_search_equals_the_numpy_kernel_on_the_real_index(meme_index):
    idx = MemeIndex.load(meme_index)
    q = idx.embeddings[::3]
    for k in (1, 3, 20):
        _assert_same(idx.search(q, k), _numpy_search(idx, q, k))
    assert np.array_equal(idx.search(q, 1)[1][:, 0], idx.ids[::3])  # every face is its own nearest


# -- the command line end to end on a file:// URI ---------------------------------------------------------------
@needs_shared
def test_cli_index_search_info_with_a_file_uri(sample_memes, tmp_path):
    uri = f"file://{tmp_path / 'memes.fsindex'}"
    r = subprocess.run([*CLI, "index", *map(str, sample_memes[:6]), "--out", uri, "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "memes.fsindex").is_file() and "faces" in r.stdout
    r = subprocess.run([*CLI, "info", uri, "--json"], capture_output=True, text=True, timeout=120)
    doc = json.loads(r.stdout)
    assert doc["backend"] == "file (exact)" and doc["uri"] == uri and doc["faces"] > 0
    assert {"embedder", "dim", "images", "faces", "skipped", "pictures"} <= set(doc)
    r = subprocess.run([*CLI, "search", str(FACES / "single_face.jpg"), "--index", uri, "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    matches = json.loads(r.stdout)["faces"][0]["matches"]
    assert len(matches) == min(3, doc["pictures"]) and matches[0]["distance"] <= matches[-1]["distance"]
    r = subprocess.run([*CLI, "info", "s3://x/y", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "unknown index URI scheme" in r.stderr


def test_the_ann_setting_is_checked(tmp_path):
    from facial_search.errors import OptionError
    from facial_search.index.ann import HNSWParams

    with pytest.raises(OptionError, match="ann: must be None, 'exact' or HNSWParams"):
        fsi.open(tmp_path / "x.fsindex", create=True, embedder=INFO, ann="fast")
    with pytest.raises(OptionError, match="file stores only"):
        fsi.open(f"milvus-lite://{tmp_path / 'm.db'}", create=True, embedder=INFO, ann=HNSWParams())
    with fsi.open(tmp_path / "x.fsindex", create=True, embedder=INFO, ann=HNSWParams(M=4)) as store:
        assert store.describe()["backend"] == "file (hnsw)" and store.describe()["ann"]["M"] == 4
