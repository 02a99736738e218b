"""The index: exact search, stable ids, atomic versioned files, embedder checks."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from facial_search.errors import EmbedderMismatchError, IndexFormatError
from facial_search.index.dedupe import merge_duplicates
from facial_search.index.store import EmbedderInfo, FileRecord, MemeIndex

INFO = EmbedderInfo("test", "1", 8)


def _unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _entries(n, source="m.jpg"):
    return [{"source": source, "face": i, "box": (i, 0, 10, 10), "title": f"t{i}"} for i in range(n)]


def test_search_matches_brute_force():
    idx = MemeIndex(INFO)
    x = _unit(200)
    ids = idx.add(x, _entries(200))
    q = _unit(5, seed=1)
    dist, got = idx.search(q, k=4)
    brute = np.linalg.norm(q[:, None] - x[None], axis=2)
    order = np.argsort(brute, axis=1)[:, :4]
    assert np.array_equal(got, ids[order])
    assert np.allclose(dist, np.take_along_axis(brute, order, 1), atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all() and dist.max() <= 2.0 + 1e-6


def test_fewer_entries_than_k_pads_with_minus_one():
    idx = MemeIndex(INFO)
    idx.add(_unit(2), _entries(2))
    dist, ids = idx.search(_unit(1, seed=3), k=3)
    assert ids[0, 2] == -1 and np.isinf(dist[0, 2]) and (ids[0, :2] >= 0).all()
    assert MemeIndex(INFO).search(_unit(1), k=2)[1].tolist() == [[-1, -1]]


def test_grouping_search_gives_each_source_once_at_its_nearest_face():
    idx = MemeIndex(INFO)
    x = _unit(60)
    sources = [f"m{i % 7}.jpg" for i in range(60)]  # 7 memes, faces interleaved, 8-9 faces each
    ids = idx.add(x, [{"source": s, "face": i, "box": (0, 0, 1, 1), "title": s} for i, s in enumerate(sources)])
    q = _unit(4, seed=5)
    dist, got = idx.search(q, k=5, group_by_source=True)
    brute = np.linalg.norm(q[:, None] - x[None], axis=2)
    for row in range(4):  # brute force: every source at its nearest face, then the 5 nearest sources
        best = {}
        for col in np.argsort(brute[row]):
            best.setdefault(sources[col], col)
        want = sorted(best.values(), key=lambda c: brute[row, c])[:5]
        assert got[row].tolist() == ids[want].tolist()
        assert np.allclose(dist[row], brute[row, want], atol=1e-5)
        assert len({idx.entry(int(i)).source for i in got[row]}) == 5
    plain = idx.search(q, k=5)[1]
    assert any(len({sources[int(i)] for i in r}) < 5 for r in plain)  # without grouping a meme repeats
    dist, got = idx.search(q, k=9, group_by_source=True)  # only 7 sources: padded
    assert (got[:, 7:] == -1).all() and np.isinf(dist[:, 7:]).all() and (got[:, :7] >= 0).all()
    idx.remove_source("m0.jpg")  # the grouping follows changes
    assert "m0.jpg" not in {idx.entry(int(i)).source for i in idx.search(q, k=6, group_by_source=True)[1].ravel()}
    assert MemeIndex(INFO).search(q, k=2, group_by_source=True)[1].tolist() == [[-1, -1]] * 4


def test_merge_duplicates_is_the_brute_force_partition():
    """Rows join when near in embedding *and* hash (transitively); the windowed search misses no pair."""
    rng = np.random.default_rng(7)
    x = _unit(3000, d=16, seed=7)
    copies = rng.integers(0, 3000, 300)
    near = x[copies] + rng.normal(scale=rng.choice([0.002, 0.03], size=(300, 1)), size=(300, 16))
    e = np.concatenate([x, near / np.linalg.norm(near, axis=1, keepdims=True)]).astype(np.float32)
    groups = np.concatenate([np.arange(3000) // 3, 1000 + np.arange(300)])  # 3 faces per picture, then copies
    bits = rng.integers(0, 2**63, 3000)
    flips = [sum(1 << int(b) for b in rng.choice(64, n, replace=False)) for n in rng.choice([0, 4, 20], 300)]
    hashes = [f"{int(h):016x}" for h in bits] + [f"{int(bits[c]) ^ f:016x}" for c, f in zip(copies, flips, strict=True)]
    hashes[-1] = None  # a face indexed before hashes existed joins nothing
    rules = ((0.01, 20), (0.05, 10))
    got = merge_duplicates(e, groups, hashes, rules, block=256)
    parent = list(range(groups.max() + 1))

    def root(g):
        while parent[g] != g:
            g = parent[g]
        return g

    d = np.linalg.norm(e[:, None] - e[None], axis=2)
    for a, b in zip(*np.nonzero(d < 0.05), strict=True):
        flips = (int(hashes[a], 16) ^ int(hashes[b], 16)).bit_count() if hashes[a] and hashes[b] else 99
        if any(d[a, b] < dist and flips <= bits for dist, bits in rules):
            ra, rb = root(groups[a]), root(groups[b])
            parent[max(ra, rb)] = min(ra, rb)
    want = np.array([root(g) for g in groups])
    pairs = {(int(a), int(b)) for a, b in zip(want, got, strict=True)}
    assert len(pairs) == len(set(want)) == len(set(got.tolist()))  # the same partition
    assert 1050 < len(set(want)) < 1250 and got.max() == len(set(want)) - 1  # some, not all, copies merged


def test_picture_hashes_of_a_real_index(meme_index, shared):
    """Indexing records each face's dHash: one template saved twice agrees within the duplicate rules' bits,
    different memes do not, and the hash survives halving the picture."""
    import cv2

    from facial_search.index.dedupe import DUPLICATE_RULES, face_dhash, hamming
    from facial_search.io.images import load_image

    most_bits = max(bits for _, bits in DUPLICATE_RULES)
    by_name = {os.path.basename(e.source): e for e in MemeIndex.load(meme_index).entries() if e.face == 0}
    h1, h2 = by_name["Hide-the-Pain-Harold.jpg"], by_name["Hide-the-pain-harold.jpg"]
    assert hamming(h1.picture_hash, h2.picture_hash) <= most_bits
    others = [e.picture_hash for n, e in by_name.items() if "arold" not in n]
    assert len(others) > 20 and min(hamming(h1.picture_hash, o) for o in others) > most_bits
    rgb = load_image(h1.source)
    half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    assert face_dhash(rgb, h1.box) == h1.picture_hash
    assert hamming(h1.picture_hash, face_dhash(half, tuple(v // 2 for v in h1.box))) <= 4
    assert len(face_dhash(rgb, (-5, -5, 10**6, 10**6))) == 16  # boxes are clipped to the image


def test_grouping_folds_a_picture_saved_twice():
    idx = MemeIndex(INFO)
    x = _unit(5, seed=11)
    hashes = ["0123456789abcdef", "fedcba9876543210", "00ff00ff00ff00ff", "0f0f0f0f0f0f0f0f", "3333333333333333"]
    idx.add(x, [{"source": f"m{i}.jpg", "face": 0, "box": (0, 0, 1, 1), "title": f"m{i}", "picture_hash": h}
                for i, h in enumerate(hashes)])  # fmt: skip
    near = x[2:3] + 0.001  # a near-identical embedding: the same picture re-encoded, or another one
    near /= np.linalg.norm(near)
    idx.add(
        near,
        [{"source": "copy.jpg", "face": 0, "box": (0, 0, 1, 1), "title": "m2", "picture_hash": "00ff00ff00ff00fe"}],
    )
    idx.add(
        near,
        [{"source": "other.jpg", "face": 0, "box": (0, 0, 1, 1), "title": "o", "picture_hash": "ff00ff00ff00ff00"}],
    )
    _, ids = idx.search(x[2], k=3, group_by_source=True)
    assert len({2, 5} & set(ids[0].tolist())) == 1 and 6 in ids[0]  # the copy folded, the other picture kept
    assert {2, 5, 6} == set(idx.search(x[2], k=3)[1][0].tolist())


def test_remove_keeps_ids_stable_and_never_reuses():
    idx = MemeIndex(INFO)
    a = idx.add(_unit(3), _entries(3, "a.jpg"))
    b = idx.add(_unit(2, seed=2), _entries(2, "b.jpg"))
    idx.record_file("a.jpg", FileRecord(1, 1, 3))
    assert idx.remove_source("a.jpg") == 3 and "a.jpg" not in idx.files
    assert idx.ids.tolist() == b.tolist()
    c = idx.add(_unit(1, seed=4), _entries(1, "c.jpg"))
    assert c[0] not in a and c[0] not in b
    assert idx.entry(int(b[1])).source == "b.jpg"


def test_save_load_roundtrip(tmp_path):
    idx = MemeIndex(INFO)
    idx.add(_unit(10), _entries(10))
    idx.record_file("m.jpg", FileRecord(123, 456, 10))
    idx.record_file("empty.jpg", FileRecord(1, 2, 0, "no face"))
    p = tmp_path / "x.fsindex"
    idx.save(p)
    back = MemeIndex.load(p, expect=INFO)
    assert np.array_equal(back.embeddings, idx.embeddings) and back.entries() == idx.entries()
    assert back.skipped == {"empty.jpg": "no face"} and back.next_id == 10
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.fsindex", "x.fsindex.lock"]  # no temporary file left


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_saved_index_has_the_usual_permissions(tmp_path):
    """Not mkstemp's 0600: a new index gets 0666 less the umask, an existing one keeps its mode."""
    idx = MemeIndex(INFO)
    idx.add(_unit(2), _entries(2))
    old = os.umask(0o022)
    try:
        idx.save(tmp_path / "new.fsindex")
        os.umask(0o077)
        idx.save(tmp_path / "private.fsindex")
    finally:
        os.umask(old)
    assert (tmp_path / "new.fsindex").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.fsindex").stat().st_mode & 0o777 == 0o600
    os.chmod(tmp_path / "new.fsindex", 0o640)
    idx.save(tmp_path / "new.fsindex")
    assert (tmp_path / "new.fsindex").stat().st_mode & 0o777 == 0o640


def test_save_removes_temporary_files_of_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    p = tmp_path / "x.fsindex"
    stale = tmp_path / f"x.fsindex.{dead_pid}.abc123.tmp"  # a writer killed mid-save left it
    live = tmp_path / f"x.fsindex.{os.getppid()}.def456.tmp"  # a writer that is still running: kept
    other = tmp_path / "y.fsindex.1.ghi789.tmp"  # another index's file: not ours to touch
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    MemeIndex(INFO).save(p)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["x.fsindex", "x.fsindex.lock", live.name, other.name])


def test_embedder_mismatch_says_reindex(tmp_path):
    p = tmp_path / "x.fsindex"
    MemeIndex(INFO).save(p)
    with pytest.raises(EmbedderMismatchError, match="re-index"):
        MemeIndex.load(p, expect=EmbedderInfo("other", "2", 64))


def test_newer_format_and_garbage_refused(tmp_path):
    p = tmp_path / "x.fsindex"
    MemeIndex(INFO).save(p)
    data = bytearray(p.read_bytes())  # the file header: magic, u32 format version, u32 CRC-32 of the 12 bytes
    data[8:12] = struct.pack("<I", 99)
    data[12:16] = struct.pack("<I", zlib.crc32(bytes(data[:12])))
    p.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="newer"):
        MemeIndex.load(p)
    p.write_text("not an index")
    with pytest.raises(IndexFormatError):
        MemeIndex.load(p)


def test_duplicate_groups_of_a_real_index(meme_index):
    """One picture saved at two sizes joins one group even when its two embeddings are far apart (the
    Leonardo DiCaprio pair: resampled differently, farther than the nearest tier's 0.05); another woman whose
    face hash is within 7 bits of a face of Distracted Boyfriend stays apart (her embedding is far)."""
    from facial_search.index.dedupe import hamming

    index = MemeIndex.load(meme_index)
    rows = {(os.path.basename(e.source), e.face): i for i, e in enumerate(index.entries())}
    groups, emb, entries = index.source_groups(), index.embeddings, index.entries()

    def group(name):
        return {int(groups[i]) for (n, _), i in rows.items() if n == name}

    harold, harold2 = group("Hide-the-Pain-Harold.jpg"), group("Hide-the-pain-harold.jpg")
    assert harold == harold2 and len(harold) == 1
    leo, leo_tv = rows["Leonardo-DiCaprio-Pointing.jpg", 0], rows["Leonardo-Dicaprio-pointing-at-tv.jpg", 0]
    assert groups[leo] == groups[leo_tv]
    assert np.linalg.norm(emb[leo] - emb[leo_tv]) > 0.05  # only a farther tier joins them
    sue = rows["Sue-Sylvester.jpg", 0]
    near_hash = [
        i
        for (n, _), i in rows.items()
        if n == "Distracted-Boyfriend.jpg" and hamming(entries[i].picture_hash, entries[sue].picture_hash) <= 7
    ]
    assert near_hash and group("Sue-Sylvester.jpg").isdisjoint(group("Distracted-Boyfriend.jpg"))
    assert groups.max() + 1 == len({e.source for e in entries}) - 2  # the two pairs, nothing else, merged
