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
    """``(info, embeddings, entries, queries)``: the faces of the session index, less every 5th source, whose
    faces are the query vectors (real embeddings, none in the store). The stored faces include a template saved
    under two names (two sources, one picture), which both backends fold into one group."""
    index = MemeIndex.load(meme_index)
    rows = index.entries()
    sources = sorted({e.source for e in rows})
    held = set(sources[::5])
    keep = [e.source not in held for e in rows]
    query = [e.source in held for e in rows]
    emb = np.asarray(index.embeddings)
    assert sum(keep) >= 15 and sum(query) >= 4
    kept = MemeIndex(index.embedder)
    kept.add(emb[keep], [_as_dict(e) for e, k in zip(rows, keep, strict=True) if k])
    by_source = {e.source: int(g) for e, g in zip(kept.entries(), kept.source_groups(), strict=True)}
    assert len(set(by_source.values())) < len(by_source), "the kept sample holds a picture saved under two names"
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
    assert (doc["faces"], doc["images"], doc["skipped"], doc["pictures"]) == (3, 1, 1, store.pictures)
    assert 1 <= doc["pictures"] <= 3 and doc["grouping"] == "server" and doc["embedder_version"] == info.version
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


@pytest.mark.parametrize("server_grouping", [True, False], ids=["group_by_field", "grouped-here"])
def test_grouped_search_equals_the_file_backend(filled, real, server_grouping):
    """Milvus' group_by_field, and the over-fetch grouped here that a server older than 2.4 gets."""
    s, ref = filled
    queries = real[3]
    pictures = len(np.unique(ref.source_groups()))
    assert pictures < len({e.source for e in ref.entries()}) < ref.ntotal, "several faces, a picture twice"
    assert s.pictures == pictures
    s.server_grouping = server_grouping
    try:
        for k in (1, 3, 8, pictures + 2):
            got = s.search(queries, k=k, group_by_source=True)
            _same_results(got, ref.search(queries, k=k, group_by_source=True))
        assert (got[1][:, -2:] == -1).all() and (got[1][:, :-2] >= 0).all()
        groups = s.picture_groups()
        for row in got[1]:  # one face per picture
            labels = [groups[int(i)] for i in row if i >= 0]
            assert len(labels) == len(set(labels))
    finally:
        s.server_grouping = True


def test_picture_groups_are_the_file_backends(filled):
    """The groups given at add time (a range search per face) are those the file backend finds over all faces."""
    s, ref = filled
    groups = s.picture_groups()
    pairs = {(int(g), groups[int(i)]) for g, i in zip(ref.source_groups(), ref.ids, strict=True)}
    assert len(pairs) == len({g for g, _ in pairs}) == len({label for _, label in pairs})  # one to one


def _three_copies(real):
    """Faces A, B, C of one picture: A-B 0.03 apart and 8 hash bits (the first duplicate tier), B-C 0.3 apart and
    5 bits (the third), so A and C (13 bits apart) are one picture only through B."""
    e = real[1][0].astype(np.float64)
    rng = np.random.default_rng(1)
    u, w = rng.normal(size=(2, len(e)))
    u -= (u @ e) * e
    u /= np.linalg.norm(u)
    b = e + 0.03 * u
    b /= np.linalg.norm(b)
    w -= (w @ b) * b + (w @ u) * u
    w /= np.linalg.norm(w)
    c = b + 0.3 * w
    c /= np.linalg.norm(c)
    h = 0x5A5A_1234_9ABC_DEF0
    hashes = [h, h ^ 0xFF, h ^ 0xFF ^ (0x1F << 8)]
    emb = np.stack([e, b, c]).astype(np.float32)
    entries = [{"source": f"/memes/{n}.jpg", "face": 0, "box": (0, 0, 48, 48), "title": n, "picture_hash": f"{v:016x}"}
               for n, v in zip("ABC", hashes, strict=True)]  # fmt: skip
    return emb, entries


def test_a_face_that_links_two_pictures_joins_them(store, real):
    emb, entries = _three_copies(real)
    a, b, c = 0, 1, 2
    ids = [int(store.add(emb[[i]], [entries[i]])[0]) for i in (a, c)]
    assert store.pictures == 2  # A and C alone are two pictures
    ids.append(int(store.add(emb[[b]], [entries[b]])[0]))  # B is a copy of each: one picture
    groups = store.picture_groups()
    assert store.pictures == 1 and len({groups[i] for i in ids}) == 1
    d, i = store.search(emb[[a]], k=3, group_by_source=True)
    assert i[0].tolist() == [ids[0], -1, -1]
    assert len(store.search(emb[[a]], k=3)[1][0]) == 3
    other = {**entries[a], "source": "/memes/no-hash.jpg", "picture_hash": None}
    store.add(emb[[a]], [other])  # the same embedding without a picture hash joins nothing
    more = {**entries[c], "face": 1}
    store.add(-emb[[a]], [more])  # another face of C's file, far from every other: C's picture
    assert store.pictures == 2


def test_known_groups_are_stored_as_given(store, real):
    emb, entries = _three_copies(real)
    for bad in (["#1", "#1"], ["", "#1", "#1"], ['a"b', "#1", "#1"], ["50%", "#1", "#1"]):
        with pytest.raises(ValueError, match="group"):
            store.add(emb, entries, groups=bad)
    ids = store.add(emb, entries, groups=["#7", "#7", "#9"])  # no duplicate search: B and C stay apart
    assert [store.picture_groups()[int(i)] for i in ids] == ["#7", "#7", "#9"] and store.pictures == 2


def test_copies_added_in_one_call_are_one_picture(store, real):
    emb, entries = _three_copies(real)
    order = [0, 2, 1]
    ids = store.add(emb[order], [entries[i] for i in order])
    assert store.pictures == 1 and len(set(store.picture_groups().values())) == 1
    assert store.search(emb[[2]], k=2, group_by_source=True)[1][0].tolist() == [ids[1], -1]
    with pytest.raises(ValueError, match="picture_hash"):
        store.add(emb[:1], [{**entries[0], "picture_hash": "xyz"}])


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


# -- optional entry fields (blendshapes, a video moment) ---------------------------------------------------
def _with_fields(entries: list[dict]) -> list[dict]:
    """The entries with blendshapes on every 3rd face and a moment on every 2nd (some faces with both)."""
    rng = np.random.default_rng(3)
    out = []
    for i, e in enumerate(entries):
        extra = {"blendshapes": rng.uniform(size=52)} if i % 3 == 0 else {}
        if i % 2 == 0:
            extra |= {"t_start": i * 0.5, "t_end": i * 0.5 + 1.0, "t_frame": i * 0.5 + 0.3, "track": i}
        out.append({**e, **extra})
    return out


def test_optional_fields_round_trip_as_in_the_file_store(tmp_path, real):
    info, emb, entries, _ = real
    entries = _with_fields(entries)
    ref = MemeIndex(info)
    ref.add(emb, entries)
    uri = f"milvus-lite://{tmp_path}/memes.db"
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        s.add(emb, entries)
        assert s.entries() == ref.entries()  # the same quantised scores and float32 times
        assert s.entry(0).blendshapes is not None and s.entry(0).track == 0 and s.entry(1).blendshapes is None
        with pytest.raises(ValueError, match="blendshapes"):
            s.add(emb[:1], [{**entries[0], "blendshapes": [np.nan] * 52}])
        with pytest.raises(ValueError, match="t_start <= t_end"):
            s.add(emb[:1], [{**entries[0], "t_start": 2.0, "t_end": 1.0}])
        assert s.ntotal == len(emb)
    with MilvusStore.open(uri) as s:
        assert s.entries() == ref.entries()


def test_optional_fields_survive_a_relabel(store, real):
    emb, entries = _three_copies(real)
    extra = {"blendshapes": np.linspace(0, 1, 52), "t_start": 1.0, "t_end": 2.0, "t_frame": 1.5, "track": 4}
    ids = [int(store.add(emb[[i]], [{**entries[i], **extra}])[0]) for i in (0, 2)]
    before = [store.entry(i) for i in ids]
    store.add(emb[[1]], [entries[1]])  # B joins A's and C's pictures: one of them is upserted with a new label
    assert store.pictures == 1 and [store.entry(i) for i in ids] == before
    assert before[0].track == 4 and before[0].blendshapes[-1] == 1.0


def test_a_collection_made_before_the_fields_reads_them_as_none(tmp_path, real, caplog):
    """A store whose collection has no ``extra`` field (as every release before made it): its entries have
    none of the fields, and an add with them stores the rest (the fields are dropped, logged once)."""
    from pymilvus import DataType, MilvusClient

    info, emb, entries, _ = real
    path = tmp_path / "old.db"
    client = MilvusClient(str(path))
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    for name, kind, kw in [("id", DataType.INT64, {"is_primary": True}),
                           ("embedding", DataType.FLOAT_VECTOR, {"dim": info.dim}),
                           ("source", DataType.VARCHAR, {"max_length": 65_535}), ("face", DataType.INT64, {}),
                           ("box", DataType.ARRAY, {"element_type": DataType.INT64, "max_capacity": 4}),
                           ("title", DataType.VARCHAR, {"max_length": 65_535}),
                           ("picture_hash", DataType.VARCHAR, {"max_length": 64}),
                           ("group", DataType.VARCHAR, {"max_length": 65_535})]:  # fmt: skip
        s.add_field(name, kind, **kw)

    def flat(field):
        params = client.prepare_index_params()
        params.add_index(field, index_type="FLAT", metric_type="L2")
        return params

    client.create_collection("facial_search", schema=s, index_params=flat("embedding"))
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("source", DataType.VARCHAR, is_primary=True, max_length=65_535)
    for name in ("size", "mtime_ns", "faces"):
        s.add_field(name, DataType.INT64)
    s.add_field("skipped", DataType.VARCHAR, max_length=65_535)
    s.add_field("finder", DataType.VARCHAR, max_length=64)
    s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection("facial_search_files", schema=s, index_params=flat("_v"))
    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("value", DataType.VARCHAR, max_length=65_535)
    s.add_field("_v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection("facial_search_meta", schema=s, index_params=flat("_v"))
    meta = {"format": "facial-search-milvus", "version": 1, "embedder": vars(info), "next_id": 0}
    client.upsert("facial_search_meta", [{"key": "meta", "value": json.dumps(meta), "_v": [0.0, 0.0]}])
    client.close()
    with MilvusStore.open(f"milvus-lite://{path}", embedder=info) as store:
        assert store.add(emb[:3], entries[:3]).tolist() == [0, 1, 2]
    with MilvusStore.open(f"milvus-lite://{path}", embedder=info) as store:
        assert all(e.blendshapes is None and e.track is None for e in store.entries())
        store.add(emb[3:5], _with_fields(entries[3:5]))
        store.add(emb[5:6], _with_fields(entries[5:6]))
        assert sum("re-create the store to keep them" in r.getMessage() for r in caplog.records) == 1
        got = store.entries()
        assert len(got) == 6 and all(e.blendshapes is None and e.t_start is None for e in got)
        assert [e.source for e in got] == [e["source"] for e in entries[:6]]


# -- the vector index chosen in the URI (?index=HNSW|IVF_FLAT) ---------------------------------------------------
def test_index_options_in_the_uri_are_parsed_and_checked():
    from facial_search.index.milvus import parse_index_options

    assert parse_index_options("milvus://h:19530/memes") == (None, {}, {})
    assert parse_index_options("milvus://h:19530/memes?index=hnsw&M=8&ef=32") == ("HNSW", {"M": 8}, {"ef": 32})
    assert parse_index_options("milvus-lite://m.db?collection=c&nprobe=4") == ("IVF_FLAT", {}, {"nprobe": 4})
    assert parse_uri("milvus://h:19530/memes?index=FLAT") == ("milvus", "http://h:19530", "memes")
    for uri, message in (
        ("milvus://h:1/c?index=DISKANN", "unknown index 'DISKANN'"),
        ("milvus://h:1/c?collection=x", "unknown option 'collection'"),  # a server's collection is the path
        ("milvus-lite://m.db?efSearch=8", "unknown option 'efSearch'"),
        ("milvus-lite://m.db?ef=8&ef=9", "'ef' given twice"),
        ("milvus-lite://m.db?M=1", "M must be a whole number from 2 to 2048, not '1'"),
        ("milvus-lite://m.db?nlist=-4", "nlist must be a whole number"),
        ("milvus-lite://m.db?index=HNSW&nprobe=4", "nprobe: not options of HNSW"),
        ("milvus-lite://m.db?M=8&nlist=4", "not options of one index type"),
        ("milvus-lite://m.db?index=FLAT&ef=4", "not options of FLAT"),
    ):
        with pytest.raises(OptionError, match=message):
            parse_index_options(uri)


@pytest.mark.parametrize(
    ("options", "index_type", "build", "search"),
    [("?index=HNSW&M=8&ef=32", "HNSW", {"M": 8, "efConstruction": 80}, {"ef": 32}),
     ("?index=IVF_FLAT&nlist=4&nprobe=4", "IVF_FLAT", {"nlist": 4}, {"nprobe": 4})],
    ids=["hnsw", "ivf_flat"],
)  # fmt: skip
def test_an_ann_index_chosen_in_the_uri(tmp_path, real, options, index_type, build, search):
    """Milvus Lite (3.2 builds HNSW and IVF_FLAT with FAISS) with the URI's index: recorded, shown, kept when
    reopened (the search option may change), the same answers as the file backend on these few faces (every
    list scanned, an HNSW walk over a few dozen)."""
    info, emb, entries, q = real
    ref = MemeIndex(info)
    ref.add(emb, entries)
    path = tmp_path / "ann.db"
    with MilvusStore.open(f"milvus-lite://{path}{options}", embedder=info, create=True) as s:
        s.add(emb, entries)
        d = s.describe()
        assert (d["index_type"], d["index_params"], d["search_params"]) == (index_type, build, search)
        _same_results(s.search(q, k=3), ref.search(q, k=3))
        _same_results(s.search(q, k=3, group_by_source=True), ref.search(q, k=3, group_by_source=True))
        assert s._client.describe_index("facial_search", "embedding")["index_type"] == index_type
    knob = next(iter(search))
    with MilvusStore.open(f"milvus-lite://{path}?{knob}=4", embedder=info) as s:
        d = s.describe()
        assert (d["index_type"], d["index_params"], d["search_params"]) == (index_type, build, {knob: 4})
        _same_results(s.search(q, k=3), ref.search(q, k=3))
    other = "IVF_FLAT&nlist=8" if index_type == "HNSW" else "HNSW"
    for bad in (f"?index={other}", "?index=FLAT", f"?{next(iter(build))}=3"):
        with pytest.raises(OptionError, match=f"the collection's index is {index_type} .*set when it was made"):
            MilvusStore.open(f"milvus-lite://{path}{bad}", embedder=info)
    with MilvusStore.open(f"milvus-lite://{path}", embedder=info) as s:  # none given: the recorded one
        assert s.describe()["index_type"] == index_type and s.ntotal == len(emb)


def test_bad_index_options_create_nothing(tmp_path, real):
    info = real[0]
    path = tmp_path / "bad.db"
    for options, message in (("?index=IVF_FLAT&nlist=4&nprobe=8", r"nprobe \(8\) must be at most nlist \(4\)"),
                             ("?ef=0", "ef must be a whole number")):  # fmt: skip
        with pytest.raises(OptionError, match=message):
            MilvusStore.open(f"milvus-lite://{path}{options}", embedder=info, create=True)
    assert not path.exists()
