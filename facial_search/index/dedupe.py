"""Duplicate pictures: the same meme template saved under two names (a re-upload, another crop or size).

Two faces are the same picture when their expression embeddings are near *and* their pixels agree (a 64-bit
difference hash, dHash, of the face's bounding box): the nearer the embeddings, the more hash bits may
differ (:data:`DUPLICATE_RULES`). Neither is enough alone: in a dense part of the embedding space two
different smiling people can be 0.02 apart; two faces of one template can differ by a few hash bits after
re-encoding, and by up to ~0.7 in the embedding when saved at another size or crop; and two panels of one
meme share most hash bits while showing two expressions. The index groups such sources so that one picture
fills one place of a top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations, product
from math import comb

import cv2
import numpy as np

#: When two faces are one picture: ``(distance, max_hamming)`` tiers, a pair joins when it meets any one --
#: embedding distance (Euclidean, unit-norm, range [0, 2]) under ``distance`` *and* at most ``max_hamming``
#: of the 64 dHash bits differ. The nearer the embeddings, the more the pixels may differ. Measured on the
#: 1,365-face imgflip index (2,105 templates, expression v3, 2026-11-22), face crops of candidate pairs
#: from different files looked at side by side (all those with 5-10 bits, the farthest 66 with 0-4):
#:
#: - (0.05, 10): 162 pairs, whose titles name one meme ("Woman Yelling At Cat" / "woman yelling at cat",
#:   "Matrix Morpheus" / "What if i told you", "Executive Order Trump" / "Trump Bill Signing" at 10).
#: - (0.15, 9): one picture saved at another size or crop can be far apart in the embedding, its landmarks
#:   and the 48-pixel face resampled differently ("Leonardo DiCaprio Pointing" / "Leonardo Dicaprio pointing
#:   at tv" 0.122 apart, 9 bits); 216 more pairs, one of them two people ("Fabulous Frank" / "Hillary
#:   Clinton", 0.071, 9 bits). At 10 bits beyond 0.05, different people come in often ("Calculating meme" /
#:   "Helpful Tyler Durden", "Tom Cruise laugh" / "WTF").
#: - (0.5, 7): within 7 bits every pair up to 0.69 apart was one picture (up to 0.5: 122 more pairs, "Drake
#:   Hotline Bling" / "Orange Jacket Guy", "Smudge the cat" / "Woman Yelling At Cat"); beyond 0.8 come two
#:   panels of one meme with two expressions ("Disappointed Black Guy" / "Happy sad", 1.3) and different
#:   people ("Distracted Boyfriend" / "Sue Sylvester", 1.3), which must stay apart.
#:
#: The 1,109 source files make 1,010 picture groups with the first tier alone, 895 with all three.
DUPLICATE_RULES: tuple[tuple[float, int], ...] = ((0.05, 10), (0.15, 9), (0.5, 7))


def face_dhash(rgb: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """The difference hash (dHash: Krawetz 2013, "Kind of Like That") of a face: its bounding box in grey,
    shrunk to 9x8 (area average), one bit per horizontal neighbour pair (right brighter than left).

    Args:
        rgb: ``(H, W, 3) uint8`` image.
        box: ``(x, y, w, h)`` pixels, clipped to the image.

    Returns:
        16 lowercase hex digits (64 bits); stable under scaling and JPEG re-encoding of the picture.
    """
    h, w = rgb.shape[:2]
    x, y, bw, bh = box
    x0, y0 = min(max(0, x), w - 1), min(max(0, y), h - 1)
    crop = rgb[y0 : max(y0 + 1, min(h, y + bh)), x0 : max(x0 + 1, min(w, x + bw))]
    grey = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return np.packbits(bits).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Differing bits of two :func:`face_dhash` values."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _chunks(m: int) -> list[tuple[int, int]]:
    """The 64 hash bits cut into ``m`` disjoint runs, as even as possible: ``(shift, width)`` each."""
    edges = [round(64 * i / m) for i in range(m + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(m)]


def _plan(n: int, max_bits: int, window: float, cell: float) -> tuple[int, int]:
    """How to bucket one tier: ``(m, axes)``, m hash chunks (a pair within ``max_bits`` agrees on at least
    ``m - max_bits`` of them, pigeonhole) and how many extra principal axes (0 to 2) are cut into cells, the
    plan with the fewest estimated row visits + candidate pairs for ``n`` rows. ``window`` and ``cell`` are
    the estimated shares of pairs that pass the first axis's window and share a cell of another axis."""
    best, best_cost = (max_bits + 1, 0), np.inf
    for m in range(max_bits + 1, max_bits + 7):
        agree = m - max_bits
        key_bits = sum(sorted(w for _, w in _chunks(m))[:agree])
        for axes in range(3):
            passes = comb(m, agree) * 2**axes
            cost = passes * (4.0 * n + n * n / 2.0 ** (key_bits + 1) * window * cell**axes)
            if cost < best_cost:
                best, best_cost = (m, axes), cost
    return best


def _tier_pairs(
    e: np.ndarray,
    proj: np.ndarray,
    hs: np.ndarray,
    groups: np.ndarray,
    distance: float,
    max_bits: int,
    batch: int,
    plan: tuple[int, int] | None = None,
):
    """Yield ``(rows_a, rows_b)`` of every pair of ``e`` (rows with a hash, sorted by ``proj[:, 0]``) in
    different ``groups`` nearer than ``distance`` whose hashes ``hs`` differ in at most ``max_bits`` bits
    (each pair at least once). Candidates share the bits of ``m - max_bits`` hash chunks and, on each extra
    axis, a cell of width ``2 * distance`` in one of two grids half a cell apart (two points nearer than
    ``distance`` on an axis share a cell in one of them); within such a bucket only rows within ``distance``
    on the first axis are compared."""
    n = len(e)
    sd = proj.std(0) * np.sqrt(np.pi) + 1e-12
    if plan is None:
        plan = _plan(n, max_bits, min(1.0, distance / sd[0]), min(1.0, 2 * distance / float(sd[1:].max(initial=0))))
    m, axes = max(plan[0], max_bits + 1), min(plan[1], proj.shape[1] - 1)
    chunks = _chunks(m)
    margin = 1e-4  # float32 projections: never lose a pair at the window's edge
    for agree in combinations(range(m), m - max_bits):
        packed = np.zeros(n, dtype=np.uint64)
        for c in agree:
            shift, width = chunks[c]
            packed = (packed << np.uint64(width)) | ((hs >> np.uint64(shift)) & np.uint64((1 << width) - 1))
        for grid in product((0.0, distance), repeat=axes):
            key = packed
            for a, offset in enumerate(grid, start=1):
                cells = np.floor((proj[:, a] + 2.0 + offset) / (2 * distance)).astype(np.uint64)
                key = (key << np.uint64(8)) ^ cells  # < 2^8 cells of >= 0.02 on [-2, 2]; a clash only adds pairs
            order = np.argsort(key, kind="stable")  # rows are sorted by proj[:, 0] already: it stays so per key
            ks = key[order]
            run = np.cumsum(np.r_[False, ks[1:] != ks[:-1]])
            along = run * 8.0 + proj[order, 0]  # increasing: per key, then along the first axis (|proj| <= 1)
            ends = np.searchsorted(along, along + distance + margin, side="right")
            counts = ends - np.arange(n) - 1
            (busy,) = np.nonzero(counts)
            if not len(busy):
                continue
            total = np.cumsum(counts[busy])
            lo = 0
            while lo < len(busy):
                hi = int(np.searchsorted(total, (total[lo - 1] if lo else 0) + batch, side="right"))
                hi = max(hi, lo + 1)
                first, many = busy[lo:hi], counts[busy[lo:hi]]
                i = np.repeat(first, many)
                step = np.arange(len(i)) - np.repeat(np.cumsum(many) - many, many) + 1
                a, b = order[i], order[i + step]
                keep = (groups[a] != groups[b]) & (np.bitwise_count(hs[a] ^ hs[b]) <= max_bits)
                a, b = a[keep], b[keep]
                sq = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", e[a], e[b]), 0.0)  # |a - b|^2, unit vectors
                near = sq < distance * distance
                yield a[near], b[near]
                lo = hi


def merge_duplicates(
    embeddings: np.ndarray,
    groups: np.ndarray,
    hashes: Sequence[str | None],
    rules: Sequence[tuple[float, int]] = DUPLICATE_RULES,
    block: int = 1 << 20,
    plan: tuple[int, int] | None = None,
) -> np.ndarray:
    """Join the groups of rows that hold the same picture: a pair of rows joins when, for one of ``rules``
    ``(distance, max_hamming)``, their embeddings are nearer than ``distance`` and their hashes differ in at
    most ``max_hamming`` bits (union-find, so transitively). A row without a hash joins nothing.

    The pairs are found exactly without looking at all of them (multi-index hashing, Norouzi, Punjani & Fleet,
    CVPR 2012, joined with a grid on the embeddings): per tier, the 64 hash bits are cut into m chunks, and
    a pair within ``max_hamming`` bits agrees exactly on at least ``m - max_hamming`` of them; rows are
    bucketed by the bits of each such set of chunks (and, where it pays, by cells on the embeddings' second
    and third principal axes), and compared within a bucket only with the rows within ``distance`` on the
    first principal axis. m and the axes are chosen from the number of rows, so that buckets stay small:
    candidate pairs grow about linearly with N for hashes spread like dHashes (a copy's hash near its
    original's, different pictures' hashes far apart). Measured (``benchmarks/bench_scale.py``): see there.

    Args:
        embeddings: ``(N, D) float32`` unit-norm rows.
        groups: ``(N,)`` int group of every row (e.g. its source image), numbers 0..G-1.
        hashes: N :func:`face_dhash` values or ``None``.
        rules: ``(distance, max_hamming)`` tiers (default :data:`DUPLICATE_RULES`).
        block: most candidate pairs checked at once (memory: ~40 bytes + 8 D bytes each).
        plan: ``(m, axes)`` for every tier instead of the chosen ones (m raised to ``max_hamming + 1`` where
            lower, axes 0 to 2): the result is the same, only the time differs (tests, benchmarks).

    Returns:
        ``(N,) int64`` groups after the merge, renumbered 0..G'-1 in the order of each merged group's lowest
        original number.
    """
    groups = np.asarray(groups, dtype=np.int64)
    e = np.asarray(embeddings, dtype=np.float32)
    if len(e) < 2 or not rules:
        return np.unique(groups, return_inverse=True)[1].astype(np.int64)
    has = np.array([h is not None for h in hashes], dtype=bool)
    bits = np.array([int(h, 16) if h is not None else 0 for h in hashes], dtype=np.uint64)
    rows = np.flatnonzero(has)
    edges = []
    if len(rows) > 1:
        sample = e[rows[:: max(1, len(rows) // 4096)]]
        axes = np.linalg.svd(sample - sample.mean(0), full_matrices=False)[2][:3]
        proj = e[rows] @ axes.T
        along = np.argsort(proj[:, 0], kind="stable")
        order = rows[along]
        es, hs, gs, ps = e[order], bits[order], groups[order], proj[along]
        for distance, max_hamming in rules:
            for a, b in _tier_pairs(es, ps, hs, gs, float(distance), int(max_hamming), int(block), plan):
                edges.append(np.stack([gs[a], gs[b]], 1))
    parent = np.arange(int(groups.max()) + 1)

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    if edges:
        for a, b in np.unique(np.sort(np.concatenate(edges), axis=1), axis=0):
            ra, rb = root(int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(int(g)) for g in groups], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)
