"""Duplicate pictures and grouping search at scale: the bucketed :func:`merge_duplicates` against the
all-pairs reference, and :func:`grouped_top_k` against ``group_min`` over the whole distance matrix, on the
real sample index and on real FER+ embeddings spread into many rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from helpers import FERPLUS

from facial_search.index import EmbedderInfo, MemeIndex
from facial_search.index.dedupe import DUPLICATE_RULES, face_dhash, merge_duplicates
from facial_search.index.kernels import group_layout, group_min, grouped_top_k, top_k

PLANS = [None, (11, 0), (11, 1), (12, 0), (13, 2), (9, 2)]  # None: the chosen one; m is raised to bits + 1


def sweep_reference(embeddings, groups, hashes: Sequence[str | None], rules=DUPLICATE_RULES, block=256):
    """The previous implementation (sorted on the principal axis, every block against all rows within the
    largest distance on it), kept as the reference: its groups are the ones the real index pins."""
    groups = np.asarray(groups, dtype=np.int64)
    e = np.asarray(embeddings, dtype=np.float32)
    if len(e) < 2 or not rules:
        return np.unique(groups, return_inverse=True)[1].astype(np.int64)
    parent = np.arange(int(groups.max()) + 1)

    def root(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    has = np.array([h is not None for h in hashes])
    bits = np.array([int(h, 16) if h is not None else 0 for h in hashes], dtype=np.uint64)
    reach, most_bits = max(d for d, _ in rules), max(h for _, h in rules)
    sample = e[:: max(1, len(e) // 4096)]
    axis = np.linalg.svd(sample - sample.mean(0), full_matrices=False)[2][0]
    order = np.argsort(e @ axis, kind="stable")
    es, gs, hs, ok_hash = e[order], groups[order], bits[order], has[order]
    proj = es @ axis
    for start in range(0, len(es), block):
        stop = min(start + block, len(es))
        lo = int(np.searchsorted(proj, proj[start] - reach, side="left"))
        hi = int(np.searchsorted(proj, proj[stop - 1] + reach, side="right"))
        block_flips = np.bitwise_count(hs[start:stop, None] ^ hs[None, lo:hi])
        rows, cols = np.nonzero(block_flips <= most_bits)
        flips = block_flips[rows, cols]
        rows += start
        cols += lo
        keep = (gs[rows] != gs[cols]) & ok_hash[rows] & ok_hash[cols]
        rows, cols, flips = rows[keep], cols[keep], flips[keep]
        sq = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", es[rows], es[cols]), 0.0)
        join = np.zeros(len(rows), dtype=bool)
        for distance, max_hamming in rules:
            join |= (sq < distance * distance) & (flips <= max_hamming)
        for r, c in zip(rows[join], cols[join], strict=True):
            a, b = root(int(gs[r])), root(int(gs[c]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(int(g)) for g in groups], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def brute_force(embeddings, groups, hashes, rules=DUPLICATE_RULES):
    """Every pair looked at: union-find over the pairs that meet a rule (the same float32 distance formula)."""
    e = np.asarray(embeddings, dtype=np.float32)
    groups = np.asarray(groups, dtype=np.int64)
    parent = list(range(int(groups.max()) + 1))

    def root(g):
        while parent[g] != g:
            g = parent[g]
        return g

    bits = np.array([int(h, 16) if h else 0 for h in hashes], dtype=np.uint64)
    has = np.array([h is not None for h in hashes])
    for i in range(len(e) - 1):
        j = np.arange(i + 1, len(e))
        j = j[has[j] & has[i] & (groups[j] != groups[i])]
        sq = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", e[np.full(len(j), i)], e[j]), 0.0)
        flips = np.bitwise_count(bits[j] ^ bits[i])
        join = np.zeros(len(j), dtype=bool)
        for distance, max_hamming in rules:
            join |= (sq < distance * distance) & (flips <= max_hamming)
        for b in j[join]:
            ra, rb = root(int(groups[i])), root(int(groups[b]))
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(int(g)) for g in groups])
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def _index_inputs(index: MemeIndex):
    entries = index.entries()
    by_source = np.unique([e.source for e in entries], return_inverse=True)[1].astype(np.int64)
    return np.array(index.embeddings), by_source, [e.picture_hash for e in entries]


@pytest.fixture(scope="module")
def ferplus_faces(shared):
    """``(embeddings (n, 64) float32, dHashes)`` of 160 real FER+ test crops (default embedder)."""
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    files = sorted((FERPLUS / "FER2013Test").glob("*.png"))[:160]
    embs, hashes = [], []
    with Pipeline() as p:
        for f in files:
            rgb = load_image(f)
            faces = p.faces(rgb, cropped=True)
            embs.append(p.embed(rgb, faces[:1])[0])
            hashes.append(face_dhash(rgb, (0, 0, rgb.shape[1], rgb.shape[0])))
    return np.stack(embs).astype(np.float32), hashes


def spread(faces, n: int, seed: int):
    """``n`` rows from real faces: each a face's embedding plus noise (0.01 to 0.5 apart), its hash with
    0 to 20 bits flipped or a random one; 3 rows share a group (a picture with three faces) here and there."""
    emb, hashes = faces
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(emb), n)
    scale = rng.choice([0.0, 0.001, 0.006, 0.02, 0.06], size=(n, 1))
    x = emb[base] + rng.normal(size=(n, emb.shape[1])) * scale
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    out = []
    for b, flips in zip(base, rng.choice([0, 2, 6, 7, 8, 9, 10, 11, 20, 64], n), strict=True):
        h = int(hashes[b], 16)
        if flips == 64:
            h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        else:
            for bit in rng.choice(64, flips, replace=False):
                h ^= 1 << int(bit)
        out.append(f"{h:016x}")
    for i in rng.choice(n, n // 50, replace=False):
        out[i] = None
    groups = np.arange(n) - np.where(rng.random(n) < 0.2, np.arange(n) % 3, 0)  # some rows join the one before
    groups = np.unique(np.maximum(groups, 0), return_inverse=True)[1]
    return x, groups, out


def test_real_index_groups_are_the_sweep_reference(meme_index):
    """On the real sample index the bucketed search gives the old sweep's groups, whatever the plan."""
    emb, by_source, hashes = _index_inputs(MemeIndex.load(meme_index))
    want = sweep_reference(emb, by_source, hashes)
    assert want.max() < by_source.max()  # some pictures are merged: the comparison means something
    np.testing.assert_array_equal(want, brute_force(emb, by_source, hashes))
    for plan in PLANS:
        np.testing.assert_array_equal(merge_duplicates(emb, by_source, hashes, plan=plan), want, err_msg=str(plan))


def test_spread_real_embeddings_match_brute_force(ferplus_faces):
    """3,000 rows spread from 160 real FER+ faces (dense: many pairs within every tier's distance and
    bits): every plan, and a small pair batch, give the all-pairs partition."""
    x, groups, hashes = spread(ferplus_faces, 3000, seed=3)
    want = brute_force(x, groups, hashes)
    assert 0.2 * (groups.max() + 1) < want.max() + 1 < 0.9 * (groups.max() + 1)  # many merged, not all
    for plan in PLANS:
        got = merge_duplicates(x, groups, hashes, plan=plan, block=1000)
        np.testing.assert_array_equal(got, want, err_msg=str(plan))
    np.testing.assert_array_equal(sweep_reference(x, groups, hashes), want)


def test_merge_duplicates_edge_cases(ferplus_faces):
    """No hash, one row, no rules: nothing joins; a pair exactly at a tier's bits joins, one bit more not."""
    x, groups, hashes = spread(ferplus_faces, 50, seed=5)
    assert merge_duplicates(x, groups, [None] * 50).tolist() == groups.tolist()
    assert merge_duplicates(x[:1], [0], hashes[:1]).tolist() == [0]
    assert merge_duplicates(x, groups, hashes, rules=()).tolist() == groups.tolist()
    e = np.stack([x[0], x[0]])
    h = int(hashes[0] or "0", 16)
    for flips, joined in ((10, True), (11, False)):
        other = f"{h ^ ((1 << flips) - 1):016x}"
        assert merge_duplicates(e, [0, 1], [f"{h:016x}", other]).tolist() == ([0, 0] if joined else [0, 1])


def _group_min_answer(d, groups, k):
    """The k nearest groups by :func:`group_min` over the whole matrix, ties to the lower group (a full
    stable sort: ``top_k``'s argpartition may take either of two equal columns at its boundary)."""
    mins, rows = group_min(d, group_layout(groups))
    cols = np.argsort(mins, axis=1, kind="stable")[:, :k]
    dist = np.full((len(d), k), np.inf, dtype=np.float32)
    ids = np.full((len(d), k), -1, dtype=np.int64)
    dist[:, : cols.shape[1]] = np.take_along_axis(mins, cols, 1)
    ids[:, : cols.shape[1]] = np.take_along_axis(rows, cols, 1)
    return dist, ids


@pytest.mark.parametrize("fetch", [1, 4])
def test_grouped_top_k_is_group_min_on_the_real_index(meme_index, ferplus_faces, fetch):
    index = MemeIndex.load(meme_index)
    groups = index.source_groups()
    q = np.concatenate([ferplus_faces[0][:40], index.embeddings[::7]])
    d = index.distances(q)
    for k in (1, 3, 10, int(groups.max()) + 5):
        want = _group_min_answer(d, groups, k)
        got = grouped_top_k(lambda qi, kk: top_k(d[qi], kk), len(q), groups, k, fetch=fetch)
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"k={k}")
        np.testing.assert_array_equal(got[0], want[0])
    assert (got[1][:, -4:] == -1).all() and (got[1][:, :-4] >= 0).all()  # more places than pictures: padded


def test_grouped_top_k_with_big_groups_and_ties(ferplus_faces):
    """Groups of up to 400 rows around the queries (the first fetch holds few groups, so it grows), exact
    copies (ties: the lower row, the lower group), and one group holding every row."""
    x, _, _ = spread(ferplus_faces, 3000, seed=11)
    rng = np.random.default_rng(11)
    x[2000:2100] = x[:100]  # exact copies of rows in other groups
    groups = rng.integers(0, 1500, 3000)
    groups[np.argsort(np.linalg.norm(x - x[0], axis=1))[:400]] = groups.max() + 1  # the nearest 400: one group
    groups = np.unique(groups, return_inverse=True)[1]
    q = np.concatenate([x[:30], ferplus_faces[0][:20]])
    d = np.sqrt(np.maximum(2.0 - 2.0 * q @ x.T, 0.0)).astype(np.float32)
    for k in (1, 5, 50):
        want = _group_min_answer(d, groups, k)
        got = grouped_top_k(lambda qi, kk: top_k(d[qi], kk), len(q), groups, k, fetch=2)
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"k={k}")
        np.testing.assert_array_equal(got[0], want[0])
    one = np.zeros(3000, dtype=np.int64)
    got = grouped_top_k(lambda qi, kk: top_k(d[qi], kk), len(q), one, 3)
    np.testing.assert_array_equal(got[1][:, 0], d.argmin(1))
    assert (got[1][:, 1:] == -1).all()


# -- incremental: each face's picture found when it is added, kept in the file ----------------------------------
def _same_partition(a, b) -> bool:
    a, b = np.asarray(a).tolist(), np.asarray(b).tolist()
    return len(a) == len(b) and len(set(zip(a, b, strict=True))) == len(set(a)) == len(set(b))


def test_the_stored_groups_of_the_real_index_are_merge_duplicates(meme_index):
    """The index built by ``facial-search index`` found its faces' pictures as they came in; they are the
    groups :func:`merge_duplicates` finds over all the faces at once (the sample holds the two pairs of
    test_index.test_duplicate_groups_of_a_real_index)."""
    index = MemeIndex.load(meme_index)
    emb, by_source, hashes = _index_inputs(index)
    want = merge_duplicates(emb, by_source, hashes)
    assert want.max() < by_source.max()
    assert _same_partition(index.source_groups(), want)


def test_incremental_groups_are_the_all_pairs_ones(ferplus_faces, tmp_path):
    """3,000 rows spread from 160 real FER+ faces (dense: many pairs within every tier), added in random
    batches with commits and reopenings between: the groups are the all-pairs partition of the rows (the
    duplicates found through the band index, joined across batches and across sessions)."""
    x, groups, hashes = spread(ferplus_faces, 3000, seed=3)
    want = brute_force(x, groups, hashes)
    info = EmbedderInfo("test", "1", x.shape[1])
    path = tmp_path / "g.fsindex"
    index = MemeIndex(info, path=path)
    rng = np.random.default_rng(4)
    start = 0
    while start < len(x):
        stop = min(len(x), start + int(rng.integers(1, 700)))
        index.add(x[start:stop], [{"source": f"/s/{g}.jpg", "face": 0, "box": (0, 0, 1, 1), "title": "t",
                                   "picture_hash": h} for g, h in zip(groups[start:stop], hashes[start:stop],
                                                                      strict=True)])  # fmt: skip
        if rng.random() < 0.5:
            index.commit()
        if rng.random() < 0.3:
            index.commit()
            index = MemeIndex.load(path)
        start = stop
    index.commit()
    assert _same_partition(index.source_groups(), want)
    assert _same_partition(MemeIndex.load(path).source_groups(), want)


@pytest.mark.parametrize(("bands", "max_bits"), [(4, 10), (3, 10), (5, 10), (4, 7), (4, 2), (4, 0)])
def test_the_band_index_finds_every_pair_within_the_bits(bands, max_bits):
    """Multi-index hashing with the general pigeonhole thresholds is exact: every pair of hashes within
    ``max_bits`` differing bits comes out, once, and no other, with 4 bands of 16 bits (thresholds 2, 2, 2, 1 at 10
    bits; 0, 0, 0 and a band not looked up at 2 bits), 3 of 21-22 (3, 3, 2) and 5 of 12-13 (2, 1, 1, 1, 1)."""
    from facial_search.index.dedupe import BandIndex, band_thresholds

    assert sum(band_thresholds(bands, max_bits)) == max_bits - bands + 1
    rng = np.random.default_rng(bands + 100 * max_bits)
    base = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    near = base.copy()
    for i in range(len(near)):  # a partner 0..12 bits away
        for bit in rng.choice(64, int(rng.integers(0, 13)), replace=False):
            near[i] ^= np.uint64(1) << np.uint64(int(bit))
    hashes = np.concatenate([base, near])
    index = BandIndex(max_bits, bands=bands)
    index.extend(hashes, np.ones(len(hashes), bool), 500)  # rows in two parts
    index.extend(hashes, np.ones(len(hashes), bool), len(hashes))
    pairs = []
    for a, b, bits in index.candidates(hashes, np.arange(len(hashes))):
        pairs += zip(a.tolist(), b.tolist(), strict=True)
        np.testing.assert_array_equal(bits, np.bitwise_count(hashes[a] ^ hashes[b]))
    found = set(pairs)
    assert len(found) == len(pairs)  # each pair once, from the first band that finds it
    bits = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    want = {(int(a), int(b)) for a, b in zip(*np.nonzero(bits <= max_bits), strict=True) if a != b}
    assert len(index.cuts) == bands and len(want) > 40
    assert found == want | {(i, i) for i in range(len(hashes))}  # every pair within the bits, none farther
