"""The Milvus backend on a real Milvus server: the session's ``milvus_server`` (conftest: Milvus 2.3.5 standalone
from the PyPI package ``milvus``, in its own environment), reached by our code in this environment (pymilvus
3.x) as ``milvus://127.0.0.1:PORT/COLLECTION``; checked against the file backend (MemeIndex) on the real
embeddings of the session's meme index. Also ``facial-search index`` / ``info`` / ``search`` end to end, as a
user runs them, on the server and on Milvus Lite, against the file backend's answers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FACES, MEMES

from facial_search.errors import EmbedderMismatchError, InputNotFoundError
from facial_search.index.milvus import MilvusStore, _groups_itself
from facial_search.index.store import EmbedderInfo, FileRecord, MemeIndex


def _as_dict(e) -> dict:
    return {"source": e.source, "face": e.face, "box": e.box, "title": e.title, "picture_hash": e.picture_hash}


@pytest.fixture(scope="module")
def sample(meme_index):
    """``(info, embeddings, entries, queries)``: every face of the session index, and queries near some of them
    (each a stored face moved ~0.1 away: real, and no two stored faces tie for it)."""
    index = MemeIndex.load(meme_index)
    emb = np.asarray(index.embeddings)
    rng = np.random.default_rng(0)
    q = emb[::3] + rng.normal(scale=0.1 / 8, size=emb[::3].shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return index.embedder, emb, [_as_dict(e) for e in index.entries()], q.astype(np.float32)


@pytest.fixture(scope="module")
def on_server(milvus_server, sample):
    """A store on the server holding the sample's faces, and the file backend holding the same (same ids)."""
    info, emb, entries, _ = sample
    ref = MemeIndex(info)
    ref.add(emb, entries)
    with MilvusStore.open(f"milvus://{milvus_server}/filled", embedder=info, create=True) as s:
        ids = s.add(emb, entries)
        assert ids.tolist() == ref.ids.tolist()
        yield s, ref


def _same(got, want, ref: MemeIndex):
    """The same answers; where two ids differ, both must be faces with the same embedding (a template saved under
    two names ties for every query, and a tie may be cut at the k-th place in either order)."""
    (gd, gi), (wd, wi) = got, want
    assert gd.dtype == np.float32 and gi.dtype == np.int64 and gd.shape == wd.shape
    np.testing.assert_array_equal(gi == -1, wi == -1)
    np.testing.assert_allclose(gd, wd, atol=1e-4, rtol=0)
    for a, b in zip(gi[gi != wi], wi[gi != wi], strict=True):
        np.testing.assert_array_equal(*ref.embeddings[np.searchsorted(ref.ids, [a, b])])


def test_the_server_is_2_3_and_is_grouped_here(on_server):
    s, ref = on_server
    assert s.backend == "milvus" and s.server_version.startswith("v2.3")
    assert s.server_grouping is False  # 2.3 would ignore group_by_field: the store groups itself
    doc = s.describe()
    assert (doc["backend"], doc["grouping"], doc["faces"], doc["dim"]) == ("milvus", "client", ref.ntotal, 64)
    assert doc["pictures"] == len(np.unique(ref.source_groups())) < len({e.source for e in ref.entries()})


@pytest.mark.parametrize(
    ("backend", "version", "server_groups"),
    [("milvus", "v2.3.5-lite", False), ("milvus", "v2.3.21", False), ("milvus", "v2.4.0", True),
     ("milvus", "v2.5.12", True), ("milvus", "Zilliz Cloud Vector Database(Compatible with Milvus 2.5)", True),
     ("milvus", "", False), ("milvus", "unknown", False), ("milvus-lite", "milvus_lite-3.2.2", True)],
)  # fmt: skip
def test_which_servers_group_themselves(backend, version, server_groups):
    assert _groups_itself(backend, version) is server_groups


def test_search_and_grouped_search_equal_the_file_backend(on_server, sample):
    s, ref = on_server
    q = sample[3]
    for k in (1, 3, 10, ref.ntotal + 4):
        _same(s.search(q, k=k), ref.search(q, k=k), ref)
    pictures = len(np.unique(ref.source_groups()))
    for k in (1, 3, 8, pictures + 2):  # the last: every face fetched, padded with -1
        got = s.search(q, k=k, group_by_source=True)
        _same(got, ref.search(q, k=k, group_by_source=True), ref)
    assert (got[1][:, -2:] == -1).all()
    assert s.entries() == ref.entries()
    np.testing.assert_array_equal(s.embeddings(ref.ids[:3]), ref.embeddings[:3])


def test_writes_persist_across_connections(milvus_server, sample):
    info, emb, entries, q = sample
    ref = MemeIndex(info)
    ref.add(emb, entries)
    uri = f"milvus://{milvus_server}/writes"
    with pytest.raises(InputNotFoundError):
        MilvusStore.open(uri, embedder=info)
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        ids = s.add(emb, entries)
        assert s.remove_ids([ids[0], ids[-1], 10**9]) == 2
        source = entries[3]["source"]
        faces = sum(e["source"] == source for e in entries[1:-1])
        s.record_file(source, FileRecord(1, 2, faces, None, "whole"))
        s.record_file("/memes/none.jpg", FileRecord(3, 4, 0, "no face", "whole+tiles"))
        assert s.remove_source(source) == faces >= 1
        s.commit()
        before, results = s.entries(), s.search(q, k=4, group_by_source=True)
    with MilvusStore.open(uri, embedder=info) as s:  # a new connection sees what the first wrote
        assert s.entries() == before and s.next_id == len(ids) and s.ntotal == len(ids) - 2 - faces
        assert dict(s.files) == {"/memes/none.jpg": FileRecord(3, 4, 0, "no face", "whole+tiles")}
        _same(s.search(q, k=4, group_by_source=True), results, ref)
        assert s.add(emb[:1], entries[:1]).tolist() == [len(ids)]
    with pytest.raises(EmbedderMismatchError):
        MilvusStore.open(uri, embedder=EmbedderInfo("blendshapes", "1", 52))


def _cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "facial_search.cli", *args], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "RPC error" not in r.stderr, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def file_answers(meme_index):
    """``facial-search info`` and ``search`` of the session's file index (the same memes, titles and finder)."""
    photo = str(FACES / "single_face.jpg")
    info = json.loads(_cli("info", str(meme_index), "--json").stdout)
    grouped = json.loads(_cli("search", photo, "--index", str(meme_index), "--json", "-k", "5").stdout)
    plain = json.loads(_cli("search", photo, "--index", str(meme_index), "--json", "-k", "5", "--all-faces").stdout)
    return photo, info, grouped, plain


def _matches(doc: dict) -> list[tuple]:
    return [(m["source"], m["face"], m["title"], round(m["distance"], 4)) for m in doc["faces"][0]["matches"]]


# Milvus Lite's CLI run takes ~30 s on 2 busy cores; the default suite has its own (test_milvus.py, 4 memes)
@pytest.mark.parametrize("backend", ["milvus", pytest.param("milvus-lite", marks=pytest.mark.slow)])
def test_the_cli_indexes_and_searches_real_memes(backend, milvus_server, sample_memes, file_answers, tmp_path):
    """Each command is a new process, as a user runs them; the answers are the file backend's."""
    photo, file_info, file_grouped, file_plain = file_answers
    uri = f"milvus://{milvus_server}/cli_memes" if backend == "milvus" else f"milvus-lite://{tmp_path / 'memes.db'}"
    memes = [str(p) for p in sample_memes]
    titles = str(MEMES.parent / "imgflip.csv")
    _cli("index", *memes, "--out", uri, "--titles", titles, "--workers", "2", "--no-progress")
    info = json.loads(_cli("info", uri, "--json").stdout)
    assert info["backend"] == backend and info["uri"] == uri
    for key in ("images", "faces", "skipped", "pictures", "embedder", "embedder_version", "dim"):
        assert info[key] == file_info[key], key
    assert info["pictures"] < info["faces"]  # a meme with several faces, and a template saved under two names
    grouped = json.loads(_cli("search", photo, "--index", uri, "--json", "-k", "5").stdout)
    plain = json.loads(_cli("search", photo, "--index", uri, "--json", "-k", "5", "--all-faces").stdout)
    assert _matches(grouped) == _matches(file_grouped) and _matches(plain) == _matches(file_plain)
    assert len({m[0] for m in _matches(grouped)}) == 5
    again = _cli("index", *memes, "--out", uri, "--titles", titles, "--workers", "2", "--no-progress")
    assert f"{len(memes)} unchanged" in again.stdout, again.stdout


def test_optional_fields_round_trip_on_the_server(milvus_server, sample):
    """Blendshapes and a video moment on some faces: the server gives back what the file backend does."""
    info, emb, entries, _ = sample
    rng = np.random.default_rng(5)
    n = min(len(entries), 12)
    entries = [{**e, "blendshapes": rng.uniform(size=52)} if i % 2 else
               {**e, "t_start": i * 1.5, "t_end": i * 1.5 + 0.75, "t_frame": i * 1.5 + 0.5, "track": i}
               for i, e in enumerate(entries[:n])]  # fmt: skip
    ref = MemeIndex(info)
    ref.add(emb[:n], entries)
    uri = f"milvus://{milvus_server}/fields"
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        s.add(emb[:n], entries)
        assert s.entries() == ref.entries()
    with MilvusStore.open(uri, embedder=info) as s:
        assert s.entries() == ref.entries() and s.entry(1).blendshapes is not None and s.entry(2).track == 2


@pytest.mark.parametrize(
    ("options", "index_type", "knob"),
    [("?index=HNSW&M=8&efConstruction=40&ef=16", "HNSW", "ef"), ("?index=IVF_FLAT&nlist=8&nprobe=8", "IVF_FLAT",
                                                                 "nprobe")],
    ids=["hnsw", "ivf_flat"],
)  # fmt: skip
def test_an_ann_index_on_the_server(milvus_server, sample, options, index_type, knob):
    """A collection made with the URI's HNSW or IVF_FLAT index (built by the server once flushed): recorded,
    shown, kept when reopened; the same answers as the file backend on the sample (every list scanned; an HNSW
    walk over a few dozen faces), plain, grouped and in the duplicate search of each added face."""
    from facial_search.errors import OptionError

    info, emb, entries, q = sample
    ref = MemeIndex(info)
    ref.add(emb, entries)
    uri = f"milvus://{milvus_server}/ann_{index_type.lower()}"
    with MilvusStore.open(uri + options, embedder=info, create=True) as s:
        s.add(emb, entries)
        s._client.flush(s.collection)  # sealed: searched through the index from now on
        assert s._client.describe_index(s.collection, "embedding")["index_type"] == index_type
        d = s.describe()
        assert d["index_type"] == index_type and knob in d["search_params"] and d["faces"] == ref.ntotal
        _same(s.search(q, k=3), ref.search(q, k=3), ref)
        _same(s.search(q, k=3, group_by_source=True), ref.search(q, k=3, group_by_source=True), ref)
        assert d["pictures"] == len(np.unique(ref.source_groups()))
    with MilvusStore.open(f"{uri}?{knob}=8", embedder=info) as s:
        assert s.describe()["index_params"] == d["index_params"] and s.describe()["search_params"] == {knob: 8}
        _same(s.search(q, k=3), ref.search(q, k=3), ref)
    with pytest.raises(OptionError, match=f"the collection's index is {index_type}"):
        MilvusStore.open(f"{uri}?index=FLAT", embedder=info)
