"""Picture groups found incrementally (:meth:`PictureGroups.join_duplicates`, through the band index) are the
groups one :func:`merge_duplicates` over all the rows finds, on real FER+ embeddings spread the way
``benchmarks/bench_scale.py`` spreads them (dense: base faces with thousands of near rows, hashes a few bits
apart, re-saved copies)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FERPLUS

from facial_search.index.dedupe import BandIndex, PictureGroups, face_dhash, merge_duplicates


@pytest.fixture(scope="module")
def real_faces(shared):
    """``(embeddings (n, 64) float32, hashes (n,) uint64)`` of 80 real FER+ test crops (default embedder)."""
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    embs, hashes = [], []
    with Pipeline() as p:
        for f in sorted((FERPLUS / "FER2013Test").glob("*.png"))[:80]:
            rgb = load_image(f)
            embs.append(p.embed(rgb, p.faces(rgb, cropped=True)[:1])[0])
            hashes.append(int(face_dhash(rgb, (0, 0, rgb.shape[1], rgb.shape[0])), 16))
    return np.stack(embs).astype(np.float32), np.array(hashes, dtype=np.uint64)


def spread(faces, n: int, seed: int):
    """``n`` rows around the real faces (noise 0.003 to 0.03 a dimension, hashes 2 to 14 bits flipped), 1 in 5
    a copy of an earlier row with one bit flipped, 1 in 50 without a hash; ``(x, sources, hashes, has)``,
    sources in row order (3 rows share one now and then)."""
    emb, base_hashes = faces
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(emb), n)
    x = emb[base] + rng.normal(size=(n, emb.shape[1])).astype(np.float32) * rng.choice([0.003, 0.01, 0.03], (n, 1))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    h = base_hashes[base].copy()
    flips = rng.choice([2, 6, 10, 14], n)
    for i, f in enumerate(flips):
        for bit in rng.choice(64, f, replace=False):
            h[i] ^= np.uint64(1) << np.uint64(int(bit))
    copies = np.flatnonzero(rng.random(n) < 0.2)[1:]
    src = rng.integers(0, copies)
    x[copies] = x[src]
    h[copies] = h[src] ^ (np.uint64(1) << rng.integers(0, 64, len(copies)).astype(np.uint64))
    has = rng.random(n) >= 0.02
    sources = np.maximum(np.arange(n) - np.where(rng.random(n) < 0.2, np.arange(n) % 3, 0), 0)
    return x, np.unique(sources, return_inverse=True)[1].astype(np.int64), h, has


def _same_partition(a, b) -> bool:
    a, b = np.asarray(a).tolist(), np.asarray(b).tolist()
    return len(a) == len(b) and len(set(zip(a, b, strict=True))) == len(set(a)) == len(set(b))


def _join_in_batches(x, sources, hashes, has, cuts, bands=None):
    """Rows added in the batches ``cuts`` (ends), each batch's new sources given new labels, then joined."""
    groups = PictureGroups()
    labels = np.full(len(x), -1, dtype=np.int64)
    label_of: dict[int, int] = {}
    live = np.ones(len(x), dtype=bool)
    start, joined = 0, []
    for stop in cuts:
        for row in range(start, stop):
            s = int(sources[row])
            if s not in label_of:
                label_of[s] = int(groups.new_labels(1)[0])
            labels[row] = label_of[s]
        if bands is not None and groups.index is None and 2 * (stop - start) < stop:
            groups.index = BandIndex(groups.max_bits, bands=bands)
        got = groups.join_duplicates(x[:stop], hashes[:stop], has[:stop], live[:stop], labels[:stop],
                                     np.arange(start, stop))  # fmt: skip
        joined.append(len(got))
        start = stop
    return groups.roots(labels), joined


@pytest.mark.parametrize("bands", [None, 3, 5])
def test_incremental_join_is_one_merge(real_faces, bands):
    """6,000 rows: the first 3,000 joined at once (the bulk path), then 1, 60, 400, 900 and 1,639 more,
    each looked up in the band index (4 bands by default; 3 and 5 give the same answer): the groups are
    :func:`merge_duplicates`'s over all 6,000."""
    x, sources, hashes, has = spread(real_faces, 6000, seed=1)
    hex_hashes = [f"{int(h):016x}" if ok else None for h, ok in zip(hashes, has, strict=True)]
    want = merge_duplicates(x, sources, hex_hashes)
    assert 0.05 * (sources.max() + 1) < want.max() + 1 < 0.8 * (sources.max() + 1)  # many merged, not all
    got, joined = _join_in_batches(x, sources, hashes, has, [3000, 3001, 3061, 3461, 4361, 6000], bands)
    assert all(j > 0 for j in joined[2:])  # the later batches join pictures of earlier ones
    assert _same_partition(got, want)


def test_one_at_a_time_is_one_merge(real_faces):
    """Rows added one or a few at a time from the second on (the band index grows by one row a call): the
    same groups as one merge."""
    x, sources, hashes, has = spread(real_faces, 400, seed=2)
    hex_hashes = [f"{int(h):016x}" if ok else None for h, ok in zip(hashes, has, strict=True)]
    want = merge_duplicates(x, sources, hex_hashes)
    assert want.max() < sources.max()
    cuts = [2, *range(3, 60), *range(62, 401, 7), 400]
    got, _ = _join_in_batches(x, sources, hashes, has, sorted(set(cuts)))
    assert _same_partition(got, want)
