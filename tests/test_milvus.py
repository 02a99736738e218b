"""The Milvus backend (facial_search.index.milvus) on a real Milvus Lite database in tmp_path, filled with the real
embeddings and entries of the session's meme index, checked against the file backend (MemeIndex)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from facial_search.errors import (
    EmbedderMismatchError,
    IndexBackendError,
    IndexFormatError,
    InputNotFoundError,
    OptionError,
)
from facial_search.index.base import Store
from facial_search.index.milvus import MilvusStore, escape_text, parse_uri, unescape_text
from facial_search.index.store import MAX_K, EmbedderInfo, FileRecord, MemeIndex


def _as_dict(e) -> dict:
    return {"source": e.source, "face": e.face, "box": e.box, "title": e.title, "picture_hash": e.picture_hash}


@pytest.fixture(scope="module")
def real(meme_index):
    """``(info, embeddings, entries, queries)``: the faces of the session index whose source is a picture of its
    own (the file backend folds a template saved under two names into one group, which this backend leaves for
    later), less every 5th source, whose faces are the query vectors (real embeddings, none in the store)."""
    index = MemeIndex.load(meme_index)
    groups = index.source_groups()
    rows = index.entries()
    sources_of_group: dict[int, set] = {}
    for g, e in zip(groups, rows, strict=True):
        sources_of_group.setdefault(int(g), set()).add(e.source)
    single = [len(sources_of_group[int(g)]) == 1 for g in groups]
    sources = sorted({e.source for e in rows})
    held = set(sources[::5])
    keep = [ok and e.source not in held for ok, e in zip(single, rows, strict=True)]
    query = [e.source in held for e in rows]
    emb = np.asarray(index.embeddings)
    assert sum(keep) >= 15 and sum(query) >= 4
    assert sum(single) < len(rows), "the sample holds a picture saved under two names"
    return index.embedder, emb[keep], [_as_dict(e) for e, k in zip(rows, keep, strict=True) if k], emb[query]


@pytest.fixture
def store(tmp_path, real):
    info = real[0]
    with MilvusStore.open(f"milvus-lite://{tmp_path}/memes.db", embedder=info, create=True) as s:
        yield s


@pytest.fixture(scope="module")
def filled(tmp_path_factory, real):
    """A store holding the real faces, and the file backend holding the same (same ids, 0..n-1)."""
    info, emb, entries, _ = real
    ref = MemeIndex(info)
    ref.add(emb, entries)
    path = tmp_path_factory.mktemp("milvus") / "memes.db"
    with MilvusStore.open(f"milvus-lite://{path}", embedder=info, create=True) as s:
        ids = s.add(emb, entries)
        assert ids.tolist() == ref.ids.tolist()
        yield s, ref


def _same_results(got, want):
    (gd, gi), (wd, wi) = got, want
    assert gd.shape == wd.shape and gi.shape == wi.shape
    assert gd.dtype == np.float32 and gi.dtype == np.int64
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gd, wd, atol=1e-4, rtol=0)


def test_protocol_and_describe(store, real):
    info = real[0]
    assert isinstance(store, Store)
    assert store.ntotal == 0 and dict(store.files) == {}
    d, i = store.search(real[3][:2], k=3)
    assert d.shape == (2, 3) and np.isinf(d).all() and (i == -1).all()
    store.add(real[1][:3], real[2][:3])
    store.record_file("/memes/a.jpg", FileRecord(10, 20, 0, "no face", "whole+tiles"))
    doc = store.describe()
    assert doc["backend"] == "milvus-lite" and doc["uri"] == store.uri
    assert (doc["faces"], doc["images"], doc["skipped"]) == (3, 1, 1)
    assert (doc["embedder"], doc["dim"], doc["index_type"], doc["metric"]) == (info.name, info.dim, "FLAT", "L2")


def test_search_equals_the_file_backend(filled, real):
    s, ref = filled
    queries = real[3]
    assert s.ntotal == ref.ntotal
    for k in (1, 3, 10, ref.ntotal + 4):  # the last pads with inf / -1
        _same_results(s.search(queries, k=k), ref.search(queries, k=k))
    d, _ = s.search(queries[0], k=ref.ntotal + 4)  # (D,) is one query
    assert d.shape == (1, ref.ntotal + 4) and np.isinf(d[0, -4:]).all()
    finite = d[np.isfinite(d)]
    assert ((finite >= 0) & (finite <= 2)).all()


def test_grouped_search_equals_the_file_backend(filled, real):
    s, ref = filled
    queries = real[3]
    n_sources = len({e.source for e in ref.entries()})
    assert n_sources < ref.ntotal, "some sample meme has several faces"
    for k in (1, 3, 8, n_sources + 2):
        got = s.search(queries, k=k, group_by_source=True)
        _same_results(got, ref.search(queries, k=k, group_by_source=True))
        for row in got[1]:  # one face per source at most
            sources = [s.entry(int(i)).source for i in row if i >= 0]
            assert len(sources) == len(set(sources))
    assert (s.search(queries, k=n_sources + 2, group_by_source=True)[1][:, -2:] == -1).all()


def test_entries_and_embeddings_round_trip(filled):
    s, ref = filled
    assert s.entries() == ref.entries()
    e = ref.entries()[5]
    assert s.entry(e.id) == e
    np.testing.assert_array_equal(s.embeddings(ref.ids[:4]), ref.embeddings[:4])
    with pytest.raises(KeyError):
        s.entry(10**9)


def test_remove_ids_remove_source_and_files(store, real):
    _, emb, entries, queries = real
    ids = store.add(emb, entries)
    assert store.remove_ids([ids[0], ids[1], 10**9, ids[1]]) == 2  # unknown and repeated ids are ignored
    assert store.ntotal == len(ids) - 2
    assert not np.isin(store.search(queries, k=len(ids))[1], ids[:2]).any()
    with pytest.raises(KeyError):
        store.entry(int(ids[0]))
    source = entries[5]["source"]
    faces = sum(e["source"] == source for e in entries[2:])
    store.record_file(source, FileRecord(100, 200, faces, None, "whole"))
    store.record_file("/memes/none.jpg", FileRecord(1, 2, 0, "no face", "whole+tiles"))
    assert store.files[source] == FileRecord(100, 200, faces, None, "whole")
    assert store.remove_source(source) == faces >= 1
    assert source not in store.files and "/memes/none.jpg" in store.files
    assert all(e.source != source for e in store.entries())
    assert store.remove_source(source) == 0
    assert store.ntotal == len(ids) - 2 - faces


def test_reopen_keeps_everything_and_never_reuses_ids(tmp_path, real):
    info, emb, entries, _ = real
    uri = f"milvus-lite://{tmp_path}/memes.db"
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        ids = s.add(emb, entries)
        s.remove_ids(ids[-3:])  # the highest ids: a store that reused ids would give them out again
        s.record_file(entries[0]["source"], FileRecord(1, 2, 3, None, "whole"))
        s.commit()
        before, files, queries = s.entries(), dict(s.files), emb[:3]
        results = s.search(queries, k=5, group_by_source=True)
    with MilvusStore.open(uri, embedder=info) as s:
        assert s.entries() == before and dict(s.files) == files and s.next_id == len(ids)
        _same_results(s.search(queries, k=5, group_by_source=True), results)
        new = s.add(emb[:2], entries[:2])
        assert new.tolist() == [len(ids), len(ids) + 1]
    with MilvusStore.open(uri) as s:  # without an embedder: the stored one
        assert s.embedder == info and s.next_id == len(ids) + 2 and s.ntotal == len(ids) - 3 + 2


def test_embedder_mismatch_and_missing_stores(tmp_path, real):
    info = real[0]
    uri = f"milvus-lite://{tmp_path}/memes.db"
    with pytest.raises(InputNotFoundError, match="memes.db"):
        MilvusStore.open(uri, embedder=info)
    MilvusStore.open(uri, embedder=info, create=True).close()
    for other in (EmbedderInfo(info.name, info.version + "x", info.dim), EmbedderInfo("blendshapes", "1", 52)):
        with pytest.raises(EmbedderMismatchError, match="re-index"):
            MilvusStore.open(uri, embedder=other)
        with pytest.raises(EmbedderMismatchError):
            MilvusStore.open(uri, embedder=other, create=True)  # create never replaces a store
    with pytest.raises(InputNotFoundError, match="other"):
        MilvusStore.open(uri + "?collection=other", embedder=info)
    with MilvusStore.open(uri + "?collection=other", embedder=info, create=True) as s:
        assert s.collection == "other" and s.ntotal == 0
    (tmp_path / "plain.db").write_text("not a database")
    with pytest.raises(IndexFormatError):
        MilvusStore.open(f"milvus-lite://{tmp_path}/plain.db", embedder=info)


def test_bad_uris_and_unreachable_server(real):
    info = real[0]
    for uri in ("milvus-lite://memes.fsindex", "milvus://nohost", "milvus://h:notaport/c", "milvus://h:1/9bad",
                "memes.fsindex"):  # fmt: skip
        with pytest.raises(OptionError):
            parse_uri(uri)
    assert parse_uri("milvus://db.example:19530/memes") == ("milvus", "http://db.example:19530", "memes")
    assert parse_uri("milvus-lite://rel/m.db") == ("milvus-lite", "rel/m.db", "facial_search")
    with pytest.raises(IndexBackendError, match="127.0.0.1:1"):  # nothing listens on port 1: refused at once
        MilvusStore.open("milvus://127.0.0.1:1/memes", embedder=info, create=True)
    with pytest.raises(ValueError):
        MilvusStore.open("milvus://127.0.0.1:1/memes", create=True)


def test_k_bounds_and_query_dimension(filled, real):
    s, ref = filled
    q = real[3][:1]
    for k in (0, -1, MAX_K + 1, True, 2.0, "3"):
        with pytest.raises(OptionError):
            s.search(q, k=k)
    d, i = s.search(q, k=MAX_K)
    assert d.shape == (1, MAX_K) and (i[0, : ref.ntotal] >= 0).all() and (i[0, ref.ntotal :] == -1).all()
    with pytest.raises(ValueError):
        s.search(np.zeros((1, ref.embedder.dim + 1), np.float32))
    with pytest.raises(ValueError):
        s.add(
            np.zeros((2, ref.embedder.dim), np.float32), [{"source": "a", "face": 0, "box": (0, 0, 1, 1), "title": "a"}]
        )


@pytest.mark.parametrize(
    "text", ["plain.jpg", "café.jpg", "100%.jpg", "%41", "a\"b'c\\d.jpg", "tab\there\n", "\udcff\ud800", "日本.png"]
)
def test_escape_round_trips(text):
    escaped = escape_text(text)
    escaped.encode("utf-8")  # valid UTF-8
    assert not set("\"'\\") & set(escaped)
    assert unescape_text(escaped) == text


def test_non_utf8_source_round_trips(tmp_path, real):
    info, emb, _, _ = real
    weird = os.fsdecode(b'/memes/caf\xe9 "100%".jpg')  # not UTF-8: a surrogate escape in the str
    plain = '/memes/caf%E9 "100%".jpg'  # what a naive percent-escaping would mix up with it
    uri = f"milvus-lite://{tmp_path}/memes.db"
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        ids = s.add(emb[:3], [{"source": src, "face": 0, "box": (1, 2, 3, 4), "title": os.path.basename(src)}
                              for src in (weird, plain, weird)])  # fmt: skip
        s.record_file(weird, FileRecord(5, 6, 2, None, "whole"))
        s.commit()
    with MilvusStore.open(uri, embedder=info) as s:
        assert s.entry(int(ids[0])).source == weird and s.entry(int(ids[0])).title == os.path.basename(weird)
        assert s.entry(int(ids[1])).source == plain
        assert list(s.files) == [weird]
        d, i = s.search(emb[:1], k=3, group_by_source=True)
        assert i[0].tolist() == [ids[0], ids[1], -1]  # the two faces of `weird` are one group
        assert s.remove_source(weird) == 2 and [e.source for e in s.entries()] == [plain]


def test_the_cli_indexes_and_searches_milvus_lite_across_processes(sample_memes, tmp_path):
    """Each command is a new process: a store written by one is opened (released, on disk) by the next."""
    import subprocess
    import sys

    from helpers import FACES

    cli = [sys.executable, "-m", "facial_search.cli"]
    uri = f"milvus-lite://{tmp_path / 'memes.db'}"
    memes = [str(p) for p in sample_memes[:4]]

    def run(*args):
        r = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "RPC error" not in r.stderr, r.stderr[-2000:]
        return r

    run("index", *memes, "--out", uri, "--workers", "1", "--no-progress")
    info = json.loads(run("info", uri, "--json").stdout)
    assert info["backend"] == "milvus-lite" and info["images"] == 4 and info["faces"] >= 3
    doc = json.loads(run("search", str(FACES / "single_face.jpg"), "--index", uri, "--json", "-k", "2").stdout)
    matches = doc["faces"][0]["matches"]
    assert len(matches) == 2 and {m["source"] for m in matches} <= set(memes)
    assert matches[0]["distance"] <= matches[1]["distance"]
    again = run("index", *memes, "--out", uri, "--workers", "1", "--no-progress")
    assert "4 unchanged" in again.stdout, again.stdout
