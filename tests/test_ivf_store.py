"""The file store with inverted-file segments (``--ann ivf``, :mod:`facial_search.index.segments` with
:class:`~facial_search.index.ann.IVFParams`): sealing and merging (lists rebuilt as segments grow), the
setting recorded in the file and read back, the search knob, damaged segment bytes, and the command line."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import FACES, needs_shared

import facial_search.index as fsi
from facial_search.errors import IndexFormatError, OptionError
from facial_search.index import segments
from facial_search.index.ann import HNSWParams, IVFParams, ivf_nlist
from facial_search.index.store import EmbedderInfo, MemeIndex

CLI = [sys.executable, "-m", "facial_search.cli"]
INFO = EmbedderInfo("test", "1", 16)
PARAMS = IVFParams(nlist=64, nprobe=8)


def _clustered(n: int, seed: int) -> np.ndarray:
    """``(n, 16)`` unit rows around 40 centres (as tests/test_append_store.py's ANN tests)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(40, 16)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + rng.normal(size=(n, 16)).astype(np.float32) * 0.15
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _faces(n: int, source: str, seed: int = 0) -> list[dict]:
    """Three faces a picture, each picture's hash random (so that no two pictures are one)."""
    rng = np.random.default_rng(seed)
    return [{"source": f"{source}-{i // 3}", "face": i % 3, "box": (i, 1, 2, 3), "title": f"t {i % 7}",
             "picture_hash": f"{int(rng.integers(2**63)):016x}"} for i in range(n)]  # fmt: skip


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist(), strict=True)]))


@pytest.fixture
def ivf_store(tmp_path, monkeypatch) -> tuple[Path, np.ndarray, MemeIndex]:
    """``(path, vectors (2600, 16), the exact store of the same live rows)``: an IVF store grown in 13 commits
    of 200 rows (segments sealed every 300 rows and merged), with rows removed in the tail and in segments."""
    monkeypatch.setattr(segments, "SEAL_ROWS", 300)
    p = tmp_path / "ivf.fsindex"
    x = _clustered(2600, seed=1)
    with fsi.open(p, create=True, embedder=INFO, writer=True, ann=PARAMS) as store:
        for start in range(0, 2600, 200):
            store.add(x[start : start + 200], _faces(200, f"/b{start}", start))
            store.remove_ids([start + 3])
            store.commit()
        store.remove_ids(range(0, 2600, 10))
        store.commit()
    exact = MemeIndex(INFO)
    exact.add(x, _faces(2600, "/x"))
    exact.remove_ids(np.r_[0:2600:10, 3:2600:200])
    return p, x, exact


def test_an_ivf_store_seals_merges_and_reads_back(ivf_store):
    p, x, exact = ivf_store
    store = MemeIndex.load(p)
    d = store.describe()
    assert d["backend"] == "file (ivf)" and d["faces"] == 2600 - 260 - 13
    assert d["ann"] == {"kind": "ivf", "nlist": 64, "nprobe": 8} == PARAMS.to_dict()
    assert 1 <= d["segments"] <= 4 and len(d["ivf_lists"]) == d["segments"]  # merged: 300-row seals would make 8
    sealed = store._segments.sealed
    # every segment has over half the lists a build on its rows makes (merged segments were built again when they
    # would have 2x the lists: one only grown would keep the 4 lists of its first 200 rows)
    for s, lists in zip(sealed, d["ivf_lists"], strict=True):
        assert ivf_nlist(s.end - s.start, 64) / 2 < lists <= ivf_nlist(s.end - s.start, 64), (s, lists)
    assert max(d["ivf_lists"]) > 2 * ivf_nlist(200, 64)
    q = _clustered(200, seed=2)
    _, want = exact.search(q, k=3)
    dist, got = store.search(q, k=3)
    assert _recall(got, want) > 0.9
    assert not np.isin(got, np.r_[0:2600:10, 3:2600:200]).any()  # removed rows skipped in the segments too
    assert (np.diff(dist, axis=1) >= 0).all()
    again = MemeIndex.load(p)  # the same bytes read twice: the same answers
    np.testing.assert_array_equal(again.search(q, k=3)[1], got)
    assert again.describe() == d
    _, grouped = store.search(q, k=3, group_by_source=True)
    assert (grouped >= 0).all()


def test_nprobe_keeps_the_lists_nlist_and_kind_rebuild_them(ivf_store):
    p, x, exact = ivf_store
    q = _clustered(200, seed=2)
    before = MemeIndex.load(p).describe()
    wide = IVFParams(nlist=64, nprobe=64)
    with fsi.open(p, embedder=INFO, writer=True, ann=wide) as s:
        s.commit()  # another nprobe: the lists stay (only the setting is appended)
        assert s.describe()["ivf_lists"] == before["ivf_lists"] and s.describe()["ann"]["nprobe"] == 64
    back = MemeIndex.load(p)
    assert back.describe()["ann"] == wide.to_dict() and back.describe()["ivf_lists"] == before["ivf_lists"]
    _, want = exact.search(q, k=3)
    assert _recall(back.search(q, k=3)[1], want) >= _recall(MemeIndex.load(p).search(q, k=3)[1], want) - 1e-9
    assert _recall(back.search(q, k=3)[1], want) > 0.97  # every list scanned: misses only among exact ties
    with fsi.open(p, embedder=INFO, writer=True, ann=IVFParams(nlist=4, nprobe=2)) as s:
        s.commit()  # another nlist: built again (the whole file is rewritten: removed rows compacted away)
        assert s.describe()["ivf_lists"] == [4] * s.describe()["segments"]
    with fsi.open(p, embedder=INFO, writer=True, ann=HNSWParams(M=8, ef_construction=40, ef_search=64)) as s:
        s.commit()
    back = MemeIndex.load(p)
    assert back.describe()["backend"] == "file (hnsw)" and "ivf_lists" not in back.describe()
    with fsi.open(p, embedder=INFO, writer=True, ann="exact") as s:
        s.commit()
    assert MemeIndex.load(p).describe()["backend"] == "file (exact)"
    np.testing.assert_array_equal(MemeIndex.load(p).search(q, k=3)[1], exact.search(q, k=3)[1])


def test_a_small_ivf_store_has_one_list_and_finds_its_rows(tmp_path):
    p = tmp_path / "small.fsindex"
    x = _clustered(30, seed=4)
    with fsi.open(p, create=True, embedder=INFO, writer=True, ann=IVFParams()) as store:
        store.add(x, _faces(30, "/s"))
        store.commit()  # the first commit writes the whole file: every row in a segment, of 30 // 50 -> 1 list
        assert store.describe()["ivf_lists"] == [1]
    back = MemeIndex.load(p)
    dist, ids = back.search(x[:5], k=2)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4] and (dist[:, 0] == 0).all()


def test_the_search_knob_of_each_kind(ivf_store):
    p, x, exact = ivf_store
    store = MemeIndex.load(p)
    n, emb, ids, live, (seg, _sealed) = store._snapshot()
    q = _clustered(200, seed=2)
    _, want = exact.search(q, k=3)
    narrow = ids[seg.search(q, 3, emb, live, n, nprobe=1)[1]]  # rows -> ids (all found: no -1 here)
    wide = ids[seg.search(q, 3, emb, live, n, nprobe=64)[1]]
    assert _recall(narrow, want) < _recall(wide, want)
    with pytest.raises(OptionError, match="ef_search: an IVF store takes nprobe"):
        seg.search(q, 3, emb, live, n, ef_search=64)
    with pytest.raises(OptionError, match="IVF nprobe"):
        seg.search(q, 3, emb, live, n, nprobe=0)
    hnsw = segments.Segments(HNSWParams())
    with pytest.raises(OptionError, match="nprobe: an HNSW store takes ef_search"):
        hnsw.search(q, 3, emb, live, n, nprobe=4)


def _graph_sections(path: Path) -> list[tuple[int, int, int]]:
    """``(record offset, payload length, offset of a "graph" section in the payload)`` of each segment written
    (the layout of :mod:`facial_search.index.fileformat`, read here independently of its reader)."""
    data = path.read_bytes()
    pos, found = 16, []
    while pos + 20 <= len(data):
        length = struct.unpack_from("<Q", data, pos + 8)[0]
        payload = data[pos + 20 : pos + 20 + length]
        (hlen,) = struct.unpack_from("<I", payload)
        at = 4 + hlen
        for name, dtype, shape in json.loads(payload[4:at])["sections"]:
            if name == "graph":
                found.append((pos, length, at))
            at += np.dtype(dtype).itemsize * int(np.prod(shape))
        pos += 20 + length + 4
    return found


def test_damaged_ivf_bytes_are_refused_on_load(ivf_store, tmp_path):
    p, _, _ = ivf_store
    pos, length, at = _graph_sections(p)[-1]
    data = bytearray(p.read_bytes())
    data[pos + 20 + at + 200] ^= 0x40  # inside the IVF's FAISS bytes, then the commit's own CRC made valid
    data[pos + 20 + length : pos + 24 + length] = struct.pack("<I", zlib.crc32(data[pos + 20 : pos + 20 + length]))
    bad = tmp_path / "bad.fsindex"
    bad.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"damaged index: damaged IVFIndex: CRC-32"):
        MemeIndex.load(bad)
    data[pos + 20 + at : pos + 20 + at + 8] = b"FSHNSW\x00\x01"  # an HNSW graph's magic in an IVF store
    data[pos + 20 + length : pos + 24 + length] = struct.pack("<I", zlib.crc32(data[pos + 20 : pos + 20 + length]))
    bad.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="not an IVFIndex"):
        MemeIndex.load(bad)


def test_open_refuses_what_is_no_ann_setting(tmp_path):
    with pytest.raises(OptionError, match="HNSWParams / IVFParams"):
        fsi.open(tmp_path / "x.fsindex", create=True, embedder=INFO, ann=PARAMS.to_dict())
    with pytest.raises(OptionError, match="file stores only"):
        fsi.open(f"milvus-lite://{tmp_path / 'm.db'}", create=True, embedder=INFO, ann=PARAMS)
    with pytest.raises(OptionError, match=r"nprobe \(32\) must be at most nlist \(8\)"):
        IVFParams(nlist=8, nprobe=32)


@needs_shared
def test_cli_index_with_ann_ivf(sample_memes, tmp_path):
    out = tmp_path / "memes.fsindex"
    args = [*CLI, "index", *map(str, sample_memes[:6]), "--out", str(out), "--workers", "1", "--no-progress"]
    for bad, message in (
        (["--ivf-nprobe", "4"], "--ivf-nlist, --ivf-nprobe: need --ann ivf"),
        (["--ann", "hnsw", "--ivf-nlist", "8"], "need --ann ivf"),
        (["--ann", "ivf", "--hnsw-m", "8"], "need --ann hnsw"),
        (["--ann", "ivf", "--ivf-nlist", "0"], "IVF nlist must be an integer from 1"),
        (["--ann", "ivf", "--ivf-nlist", "4", "--ivf-nprobe", "8"], "nprobe (8) must be at most nlist (4)"),
    ):
        r = subprocess.run([*args, *bad], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr, (bad, r.stderr)
    assert not out.exists()  # refused before anything was written
    r = subprocess.run([*args, "--ann", "ivf", "--ivf-nlist", "8"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(subprocess.run([*CLI, "info", str(out), "--json"], capture_output=True, text=True).stdout)
    assert doc["backend"] == "file (ivf)" and doc["ann"] == {"kind": "ivf", "nlist": 8, "nprobe": 8}
    assert doc["segments"] == 1 and doc["ivf_lists"] == [1]  # a few faces: one list (< 100 rows)
    text = subprocess.run([*CLI, "info", str(out)], capture_output=True, text=True).stdout
    assert "backend:  file (ivf)" in text and "ann:      ivf, nlist 8, nprobe 8" in text
    r = subprocess.run([*CLI, "search", str(FACES / "single_face.jpg"), "--index", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["faces"][0]["matches"]) == 3
