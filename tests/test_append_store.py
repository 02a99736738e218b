"""The file store that grows by appending (format 3): commits cost what changed, dead space is compacted,
removed rows never come back, a writer killed with SIGKILL at any moment leaves its last whole commit, and
the ANN setting (HNSW segments beside an exact tail) is recorded in the index."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import FACES, needs_shared

import facial_search.index as fsi
from facial_search.index import segments
from facial_search.index.ann import HNSWParams
from facial_search.index.store import EmbedderInfo, FileRecord, MemeIndex

CLI = [sys.executable, "-m", "facial_search.cli"]
INFO = EmbedderInfo("test", "1", 16)


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faces(n: int, source: str = "m.jpg", seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"source": source if n < 4 else f"{source}-{i // 3}", "face": i % 3, "box": (i, 1, 2, 3),
             "title": f"title {i % 7}", "picture_hash": f"{int(rng.integers(2**63)):016x}"} for i in range(n)]  # fmt: skip


# -- appends and compaction ----------------------------------------------------------------------------------
def test_a_commit_appends_what_changed_and_keeps_the_rest_of_the_file(tmp_path):
    p = tmp_path / "a.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(3000), _faces(3000, "/a"))
    idx.commit()
    first, ino = p.read_bytes(), p.stat().st_ino
    idx.add(_unit(10, seed=1), _faces(10, "/b", 1))
    idx.remove_ids([5, 6])
    idx.record_file("/b-0", FileRecord(1, 2, 3, None, "whole"))
    idx.commit()
    after = p.read_bytes()
    assert p.stat().st_ino == ino and after[: len(first)] == first  # appended, nothing rewritten
    assert len(after) - len(first) < 10 * (4 * 16 + 50) + 2000  # the change (10 rows, 2 ids, 1 record) and a head
    back = MemeIndex.load(p)
    assert back.entries() == idx.entries() and dict(back.files) == dict(idx.files) and back.next_id == 3010
    np.testing.assert_array_equal(back.embeddings, idx.embeddings)
    assert 5 not in back.ids and back.ntotal == 3008


def test_dead_space_past_half_compacts_the_file(tmp_path):
    p = tmp_path / "c.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(1000), _faces(1000, "/a"))
    idx.commit()
    ino, size = p.stat().st_ino, p.stat().st_size
    idx.remove_ids(range(0, 400))
    idx.commit()  # 40% dead: appended
    assert p.stat().st_ino == ino and p.stat().st_size > size
    idx.remove_ids(range(400, 700))
    idx.commit()  # 70% dead: rewritten whole (a new file renamed over the old)
    assert p.stat().st_ino != ino and p.stat().st_size < size / 2
    back = MemeIndex.load(p)
    assert back.ids.tolist() == list(range(700, 1000)) and back.entries() == idx.entries()
    idx.add(_unit(5, seed=3), _faces(5, "/z", 3))
    idx.commit()  # and appends again
    assert MemeIndex.load(p).ids.tolist() == list(range(700, 1005))


def test_removed_rows_never_come_back_and_views_outlive_growth(tmp_path):
    idx = MemeIndex(INFO, path=tmp_path / "r.fsindex")
    x = _unit(50)
    idx.add(x, _faces(50, "/a"))
    before = idx.embeddings
    idx.add(_unit(5000, seed=1), _faces(5000, "/b", 1))  # the buffer grows: the old view still holds the rows
    np.testing.assert_array_equal(before, x)
    gone = list(range(0, 50, 2))
    assert idx.remove_ids(gone + [10**9]) == 25 and idx.remove_ids(gone) == 0
    d, ids = idx.search(x, k=5)
    assert not set(ids.ravel().tolist()) & set(gone)
    assert np.array_equal(ids[1::2, 0], np.arange(1, 50, 2))  # each kept row is its own nearest
    idx.commit()
    back = MemeIndex.load(tmp_path / "r.fsindex")
    d2, ids2 = back.search(x, k=5)
    np.testing.assert_array_equal(ids2, ids)
    small = MemeIndex(INFO)
    small.add(x[:4], _faces(4, "/s"))
    small.remove_ids([1])
    d, ids = small.search(x[:1], k=5)  # more places than live rows: padded, the removed one not among them
    assert ids[0, 0] == 0 and set(ids[0, :3].tolist()) == {0, 2, 3} and ids[0, 3:].tolist() == [-1, -1]
    assert np.isinf(d[0, 3:]).all() and small.embeddings.shape == (3, 16)
    with pytest.raises(KeyError):
        small.entry(1)


def test_bad_rows_are_refused_before_anything_is_added(tmp_path):
    idx = MemeIndex(INFO)
    idx.add(_unit(2), _faces(2))
    nan = _unit(1)
    nan[0, 3] = np.nan
    for emb, faces, message in (
        (nan, _faces(1), "NaN"),
        (_unit(1) * 3, _faces(1), "norm 3"),
        (_unit(1), [dict(_faces(1)[0], picture_hash="xyz")], "16 hex digits"),
        (_unit(1), [dict(_faces(1)[0], face=-1)], "face must be an integer >= 0"),
        (_unit(1), [dict(_faces(1)[0], box=(1, 2, 3))], "box must be 4 integers"),
        (_unit(2), _faces(1), "2 embeddings but 1 entries"),
    ):
        with pytest.raises(ValueError, match=message):
            idx.add(emb, faces)
    assert idx.ntotal == 2 and idx.next_id == 2
    idx.add(np.zeros((1, 16), np.float32), _faces(1, "zero.jpg"))  # an all-zero row is allowed
    p = tmp_path / "z.fsindex"
    idx.save(p)
    assert MemeIndex.load(p).ntotal == 3


def test_a_file_replaced_under_a_writer_is_rewritten_whole(tmp_path):
    p = tmp_path / "s.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(20), _faces(20, "/a"))
    idx.commit()
    other = MemeIndex(INFO)
    other.add(_unit(3, seed=5), _faces(3, "/other", 5))
    other.save(p)  # another save replaced the file: the index's appends would not fit it
    idx.add(_unit(2, seed=6), _faces(2, "/b", 6))
    idx.commit()
    back = MemeIndex.load(p)
    assert back.entries() == idx.entries() and back.ntotal == 22
    copy = tmp_path / "copy.fsindex"
    idx.save(copy)  # elsewhere: a whole copy, the index's own file untouched
    assert MemeIndex.load(copy).entries() == idx.entries() and MemeIndex.load(p).ntotal == 22


def test_groups_are_stored_and_not_recomputed_at_open(tmp_path):
    p = tmp_path / "g.fsindex"
    idx = MemeIndex(INFO, path=p)
    x = _unit(40)
    faces = _faces(40, "/a")
    idx.add(x, faces)
    copy = faces[7] | {"source": "/copy.jpg", "face": 0}  # the same picture saved under another name
    idx.add(x[7:8], [copy])
    idx.commit()
    groups = idx.source_groups()
    assert groups[-1] == groups[7] and len(set(groups.tolist())) == 14
    back = MemeIndex.load(p)
    np.testing.assert_array_equal(back.source_groups(), groups)
    assert back._groups.index is None  # found from the file: no duplicate search was run
    assert back.describe()["pictures"] == 14


# -- SIGKILL ------------------------------------------------------------------------------------------------
STEP = textwrap.dedent(
    """
    import numpy as np
    from facial_search.index.store import FileRecord

    def step(store, c):
        rng = np.random.default_rng(c)
        n = 2000 + 1000 * (c % 3)
        x = rng.normal(size=(n, 64)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        hashes = rng.integers(0, 2**63, n)
        store.add(x, [{"source": f"/m/{c}-{i // 3}.jpg", "face": i % 3, "box": (i, 0, 9, 9), "title": f"t{c}",
                       "picture_hash": f"{int(h):016x}"} for i, h in enumerate(hashes)])
        for old in range(max(1, c - 3), c) if c % 4 == 0 else ():  # dead space past half: a compaction
            for s in range(400):
                store.remove_source(f"/m/{old}-{s}.jpg")
        store.record_file("commits", FileRecord(c, 0, 0))
    """
)
CHILD = STEP + textwrap.dedent(
    """
    import sys
    from facial_search.index.store import EmbedderInfo, open_store

    store = open_store(sys.argv[1], embedder=EmbedderInfo("test", "1", 64), create=True, writer=True)
    c = store.files["commits"].size if "commits" in store.files else 0
    while True:
        c += 1
        step(store, c)
        store.source_groups()  # the picture groups now, so that the commit is the write
        print("writing", c, flush=True)
        store.commit()
        print(c, flush=True)
    """
)


class _Expected:
    """The index as the child makes it, replayed here commit by commit."""

    def __init__(self):
        self.scope: dict = {}
        exec(STEP, self.scope)
        self.index, self.commits = MemeIndex(EmbedderInfo("test", "1", 64)), 0

    def at(self, commits: int) -> MemeIndex:
        for c in range(self.commits + 1, commits + 1):
            self.scope["step"](self.index, c)
        self.commits = max(self.commits, commits)
        return self.index


def test_sigkill_at_any_moment_leaves_the_last_whole_commit(tmp_path):
    """A child adds and commits into a growing index (some commits compact it) and is killed with SIGKILL at
    random moments, eight times over; each time the file loads with exactly the faces of a whole commit: the last
    one the child reported, or the one it had just written when the kill came before its report."""
    p = tmp_path / "kill.fsindex"
    rng = random.Random(16)
    reported, torn, temps = 0, 0, 0
    expected = _Expected()
    for _round in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(p)], stdout=subprocess.PIPE, text=True)
        try:
            lines = []
            while len(lines) < rng.randint(2, 5):  # a commit or two, then (often) into the next one's write
                lines.append(child.stdout.readline())
                assert lines[-1], "the child stopped"
            time.sleep(rng.uniform(0, 0.004) if lines[-1].startswith("writing") else rng.uniform(0, 0.2))
            child.send_signal(signal.SIGKILL)
            lines += child.stdout.read().splitlines()
        finally:
            child.kill()
            child.wait()
        reported = max([reported, *(int(x) for x in lines if x.strip().isdigit())])
        size = p.stat().st_size
        got = MemeIndex.load(p)
        commits = got.files["commits"].size
        assert commits in (reported, reported + 1)
        want = expected.at(commits)
        assert got.ids.tolist() == want.ids.tolist() and got.next_id == want.next_id
        np.testing.assert_array_equal(got.embeddings, want.embeddings)
        assert got.entries()[-5:] == want.entries()[-5:] and dict(got.files) == dict(want.files)
        torn += size > _whole_size(p)
        temps += len(list(tmp_path.glob("kill.fsindex.*.tmp")))
        reported = commits
    # -s shows how the kills fell (the loads above are the test): into an append, into a whole rewrite
    print(f"8 kills: {torn} left a torn commit, {temps} a temporary file of a rewrite")


def _whole_size(path) -> int:
    """Where the last whole record of an index file ends."""
    import struct

    data = path.read_bytes()
    pos = 16
    while pos + 20 <= len(data):
        length = struct.unpack_from("<Q", data, pos + 8)[0]
        if pos + 20 + length + 4 > len(data):
            break
        pos += 20 + length + 4
    return pos


# -- ANN: sealed HNSW segments and an exact tail -------------------------------------------------------------
def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(40, seed=99)
    x = centres[rng.integers(0, 40, n)] + rng.normal(size=(n, 16)).astype(np.float32) * 0.15
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_an_ann_store_seals_segments_and_keeps_its_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "SEAL_ROWS", 300)  # seal every 300 rows (16,384 by default)
    p = tmp_path / "ann.fsindex"
    params = HNSWParams(M=8, ef_construction=40, ef_search=64)
    x = _clustered(2600, seed=1)
    with fsi.open(p, create=True, embedder=INFO, writer=True, ann=params) as store:
        for start in range(0, 2600, 200):
            store.add(x[start : start + 200], _faces(200, f"/b{start}", start))
            store.remove_ids([start + 3])  # removed in the tail, before its graph is built
            store.commit()
        store.remove_ids(range(0, 2600, 10))  # and from sealed segments
        store.commit()
        d = store.describe()
    assert d["backend"] == "file (hnsw)" and d["ann"] == params.to_dict() and d["faces"] == 2340 - 13
    assert 1 <= d["segments"] <= 4  # merged as they grow: 300-row seals would make 8
    exact = MemeIndex(INFO)
    exact.add(x, _faces(2600, "/x"))
    exact.remove_ids(range(0, 2600, 10))
    exact.remove_ids(range(3, 2600, 200))
    q = _clustered(200, seed=2)
    back = MemeIndex.load(p)
    assert back.describe() == d | {"uri": str(p)}
    for index in (store, back):
        _, got = index.search(q, k=3)
        _, want = exact.search(q, k=3)
        recall = np.mean([len(set(g) & set(w)) / 3 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
        assert recall > 0.9, recall
        assert not np.isin(got, np.r_[0:2600:10, 3:2600:200]).any()  # removed rows skipped in the graphs too
    _, grouped = back.search(q, k=3, group_by_source=True)
    assert (grouped >= 0).all()
    with fsi.open(p, embedder=INFO, writer=True, ann=HNSWParams(M=8, ef_construction=40, ef_search=200)) as s:
        s.commit()  # another efSearch: the graphs stay
        assert s.describe()["segments"] == d["segments"] and s.describe()["ann"]["ef_search"] == 200
    assert MemeIndex.load(p).describe()["ann"]["ef_search"] == 200
    with fsi.open(p, embedder=INFO, writer=True, ann="exact") as s:
        s.commit()
    back = MemeIndex.load(p)
    assert back.describe()["backend"] == "file (exact)" and back.describe()["ann"] is None
    np.testing.assert_array_equal(back.search(q, k=3)[1], exact.search(q, k=3)[1])


@needs_shared
def test_cli_index_with_ann_hnsw(sample_memes, tmp_path):
    out = tmp_path / "memes.fsindex"
    args = [*CLI, "index", *map(str, sample_memes[:6]), "--out", str(out), "--workers", "1", "--no-progress"]
    r = subprocess.run([*args, "--hnsw-m", "8"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "need --ann hnsw" in r.stderr
    r = subprocess.run([*args, "--ann", "hnsw", "--hnsw-m", "8", "--hnsw-ef-search", "50"], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(subprocess.run([*CLI, "info", str(out), "--json"], capture_output=True, text=True).stdout)
    assert doc["backend"] == "file (hnsw)" and doc["ann"] == {"M": 8, "ef_construction": 80, "ef_search": 50}
    r = subprocess.run([*CLI, "search", str(FACES / "single_face.jpg"), "--index", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["faces"][0]["matches"]) == 3


def test_an_exact_store_with_removed_rows_becomes_an_ann_one(tmp_path):
    """Switched to HNSW, a store whose removed rows are still in the file is compacted at the next commit, so
    that its graphs are built on live rows only; and back to exact, the removed rows stay out of the results."""
    p = tmp_path / "switch.fsindex"
    x = _clustered(900, seed=3)
    with fsi.open(p, create=True, embedder=INFO, writer=True) as store:
        store.add(x, _faces(900, "/s"))
        store.commit()
        store.remove_ids(range(0, 900, 3))
        store.commit()
    ino = p.stat().st_ino
    with fsi.open(p, embedder=INFO, writer=True, ann=HNSWParams(M=8, ef_construction=40, ef_search=64)) as store:
        _, before = store.search(x[:50], k=3)
        store.commit()
        assert store.describe()["segments"] == 1
    assert p.stat().st_ino != ino  # rewritten whole, without the removed rows
    back = MemeIndex.load(p)
    _, after = back.search(x[:50], k=3)
    assert back.ntotal == 600 and np.mean(before == after) > 0.9
    assert not np.isin(before, np.arange(0, 900, 3)).any() and not np.isin(after, np.arange(0, 900, 3)).any()
    back.remove_ids([1, 2])
    back.set_ann(None)
    _, exact = back.search(x[:50], k=3)
    assert not np.isin(exact, np.r_[0:900:3, 1, 2]).any()
