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
    import cv2

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


# -- incremental: each new face's picture at add time ---------------------------------------------------------
_QUERY_BATCH = 2048  # queries a range search at once (its result lists are held until they are checked)


def band_thresholds(bands: int, max_bits: int) -> list[int]:
    """Per band, how many of its bits a query's band may differ from a row's for :class:`BandIndex` to look
    there: ``-1`` (not looked up) or more, summing to ``max_bits - bands + 1``, as even as possible, the larger
    ones first. Two hashes within ``max_bits`` bits then differ in at most ``t_i`` bits of some band ``i``: if
    every band differed in ``t_i + 1`` or more, they would differ in ``max_bits + 1`` or more (the general
    pigeonhole principle: Qin et al., "GPH: Similarity Search in Hamming Space", ICDE 2018)."""
    total = max_bits - bands + 1 + bands  # the thresholds plus one each: max_bits + 1 units spread over the bands
    return [total // bands - 1 + (1 if i < total % bands else 0) for i in range(bands)]


def band_plan(n: int, max_bits: int) -> int:
    """How many bands :class:`BandIndex` cuts the 64 bits into for ``n`` rows: 4 of 16 bits (at 10 bits,
    thresholds 2, 2, 2, 1 (:func:`band_thresholds`): 428 look-ups a query in hash tables of at most 65,536
    buckets). Counted on the ``benchmarks/bench_scale.py`` data (10,000 new rows against 1M; 710 real faces
    spread, so buckets are crowded): 10,800 rows scanned a query (0.3% of them within 10 bits); 3 bands of
    21-22 bits (3, 3, 2) scan 2,800 but need 3,600 look-ups a query in tables of ~1M buckets; 5 bands of
    12-13 bits (2, 1, 1, 1, 1) scan 27,000. The old plain pigeonhole (radius 2 in each of 4 bands) scanned
    15,000."""
    return 4


def _rotate(h: np.ndarray, shift: int) -> np.ndarray:
    """64-bit hashes rotated right by ``shift`` bits (Hamming distances unchanged; the band now in the low bits)."""
    if not shift:
        return h
    return (h >> np.uint64(shift)) | (h << np.uint64(64 - shift))


class BandIndex:
    """The rows that have a picture hash, found by hash within ``max_bits`` differing bits without looking at
    all of them: multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) with the general pigeonhole
    principle's thresholds (:func:`band_thresholds`). The 64 bits are cut into m bands (:func:`band_plan`);
    band i is a FAISS ``IndexBinaryHash`` keyed by that band's bits (the hashes rotated so that it is the low
    bits) that looks up every bucket within ``t_i`` bits of a query's band (``nflip``) and keeps the rows within
    ``max_bits`` bits over all 64 (a range search, in C++ on every core): each pair of rows within ``max_bits``
    bits comes out at least once, and no farther one. Rows are added as they come (:meth:`extend`: amortised
    O(1) a row and band); removed rows stay (the caller filters them). Memory ~16 bytes a row per band (its id
    and its hash), built by a writer only.

    Args:
        max_bits: the largest Hamming distance looked for (0 to 63).
        bands: how many bands (default: :func:`band_plan`; 2 to 32, so that each has at most 32 bits).
    """

    def __init__(self, max_bits: int, bands: int | None = None):
        import faiss

        self.max_bits = int(max_bits)
        m = bands or band_plan(0, self.max_bits)
        edges = [round(64 * i / m) for i in range(m + 1)]
        self.cuts = [(edges[i], edges[i + 1] - edges[i]) for i in range(m)]
        self.thresholds = band_thresholds(m, self.max_bits)
        self.tables = []
        for (_, width), t in zip(self.cuts, self.thresholds, strict=True):
            table = faiss.IndexBinaryHash(64, width)
            table.nflip = max(t, 0)
            self.tables.append(table)
        self.upto = 0

    def extend(self, hashes: np.ndarray, has: np.ndarray, upto: int) -> None:
        """Take in rows ``[self.upto, upto)`` (those with ``has``); ``hashes`` ``(N,) uint64``."""
        if upto <= self.upto:
            return
        rows = self.upto + np.flatnonzero(has[self.upto : upto])
        self.upto = upto
        h = np.ascontiguousarray(hashes[rows], dtype=np.uint64)
        for (shift, width), t, table in zip(self.cuts, self.thresholds, self.tables, strict=True):
            if t < 0:
                continue
            r = _rotate(h, shift)
            band = (r & np.uint64((1 << width) - 1)).astype(np.uint32)
            order = np.argsort(band.astype(np.uint16) if width <= 16 else band, kind="stable")  # bucket by bucket
            table.add_with_ids(np.ascontiguousarray(r[order]).view(np.uint8).reshape(-1, 8), rows[order])

    def candidates(self, hashes: np.ndarray, queries: np.ndarray):
        """Yield ``(q, c, bits)`` arrays: a query row, a row within ``max_bits`` bits of it (itself included)
        and their differing bits; every such pair exactly once (from the first band that finds it)."""
        queries = np.asarray(queries, dtype=np.int64)
        for start in range(0, len(queries), _QUERY_BATCH):
            q = queries[start : start + _QUERY_BATCH]
            h = np.ascontiguousarray(hashes[q], dtype=np.uint64)
            for k, ((shift, _), t, table) in enumerate(zip(self.cuts, self.thresholds, self.tables, strict=True)):
                if t < 0 or not table.ntotal:
                    continue
                lims, bits, rows = table.range_search(_rotate(h, shift).view(np.uint8).reshape(-1, 8),
                                                      self.max_bits + 1)  # fmt: skip
                if not len(rows):
                    continue
                a, b = np.repeat(q, np.diff(lims).astype(np.int64)), rows.astype(np.int64)
                seen = np.zeros(len(a), dtype=bool)
                x = hashes[a] ^ hashes[b]
                for (s, w), tj in zip(self.cuts[:k], self.thresholds[:k], strict=True):
                    if tj >= 0:  # an earlier band found this pair already
                        seen |= np.bitwise_count((x >> np.uint64(s)) & np.uint64((1 << w) - 1)) <= tj
                if seen.any():
                    a, b, bits = a[~seen], b[~seen], bits[~seen]
                yield a, b, bits


def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            return r
        r = up


class PictureGroups:
    """Picture groups that grow with the rows: a union-find over group *labels* (a row's picture is the root
    of its label), joined as faces come in.

    The store gives each new row the label of its source's rows (a new label for a new source), then
    :meth:`join_duplicates` joins the labels of every pair of a new row and any live row that are one picture
    by ``rules`` (:data:`DUPLICATE_RULES`), found through a :class:`BandIndex`: the same pairs
    :func:`merge_duplicates` finds over all rows at once, so the groups are the same as its (for rows added and
    never removed: a removal does not split a group). Cost: a range search of the new rows' hashes (pairs
    whose labels are one picture already are not looked at further).

    Args:
        rules: ``(distance, max_hamming)`` tiers.
    """

    def __init__(self, rules: Sequence[tuple[float, int]] = DUPLICATE_RULES):
        self.rules = tuple((float(d), int(h)) for d, h in rules)
        self.max_bits = max((h for _, h in self.rules), default=0)
        self.parent = np.zeros(0, dtype=np.int64)
        self.index: BandIndex | None = None

    def reset_index(self) -> None:
        """Forget the band index (rows moved: it is rebuilt at the next join)."""
        self.index = None

    def new_labels(self, count: int) -> np.ndarray:
        """``count`` new labels, each its own root; returns them."""
        first = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(first, first + count, dtype=np.int64)])
        return np.arange(first, first + count, dtype=np.int64)

    def set_labels(self, next_group: int, merges: np.ndarray) -> None:
        """Labels 0..next_group-1, joined by the ``(m, 2)`` label pairs ``merges`` (as a file records them)."""
        self.parent = np.arange(next_group, dtype=np.int64)
        self.union(merges)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        return self.parent[np.asarray(labels, dtype=np.int64)]

    def union(self, pairs: np.ndarray) -> np.ndarray:
        """Join the labels of each pair ``(m, 2)``; returns the root pairs that were apart (what to record: a
        replay of them gives the same groups). The parent array is left flat (every label's parent a root)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if not len(pairs):
            return np.zeros((0, 2), dtype=np.int64)
        p = self.parent
        ra, rb = _roots(p, pairs[:, 0]), _roots(p, pairs[:, 1])
        apart = ra != rb
        joined = np.unique(np.stack([np.minimum(ra, rb), np.maximum(ra, rb)], 1)[apart], axis=0)
        a, b = joined[:, 0], joined[:, 1]
        while len(a):
            ra, rb = _roots(p, a), _roots(p, b)
            keep = ra != rb
            ra, rb = ra[keep], rb[keep]
            if not len(ra):
                break
            np.minimum.at(p, np.maximum(ra, rb), np.minimum(ra, rb))  # hook the higher root under the lower
            a, b = ra, rb
        p[:] = _roots(p, np.arange(len(p)))
        return joined

    def join_duplicates(
        self,
        embeddings: np.ndarray,
        hashes: np.ndarray,
        has: np.ndarray,
        live: np.ndarray,
        labels: np.ndarray,
        new_rows: np.ndarray,
    ) -> np.ndarray:
        """Join the labels of the rows ``new_rows`` with those of the live rows that hold the same picture
        (the band index takes in every row below ``len(embeddings)`` first, so new rows meet each other too).
        When the new rows are at least as many as the others (a first build, a converted file), the pairs are
        found by :func:`merge_duplicates` over all rows at once instead (the same pairs, faster in bulk).

        Args:
            embeddings: ``(N, D) float32`` unit-norm (or zero) rows; hashes ``(N,) uint64``; has, live
                ``(N,) bool``; labels ``(N,) int64`` every row's label.
            new_rows: ``(k,) int64`` the rows to look up.

        Returns:
            the root pairs joined (see :meth:`union`).
        """
        n = len(embeddings)
        q = np.asarray(new_rows, dtype=np.int64)
        q = q[has[q] & live[q]]
        if not len(q) or not self.rules:
            return np.zeros((0, 2), dtype=np.int64)
        if 2 * len(q) >= n:
            return self._join_all(embeddings, hashes, has & live, labels)
        if self.index is None:
            self.index = BandIndex(self.max_bits)
        self.index.extend(hashes, has, n)
        found = []
        for a, b, bits in self.index.candidates(hashes, q):
            keep = live[b] & (a != b)
            keep[keep] = self.parent[labels[a[keep]]] != self.parent[labels[b[keep]]]  # one picture already
            a, b, bits = a[keep], b[keep], bits[keep]
            if not len(a):
                continue
            sq = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", embeddings[a], embeddings[b]), 0.0)  # as merge_duplicates
            join = np.zeros(len(a), dtype=bool)
            for distance, max_hamming in self.rules:
                join |= (sq < distance * distance) & (bits <= max_hamming)
            if join.any():
                found.append(np.stack([labels[a[join]], labels[b[join]]], 1))
        return self.union(np.concatenate(found)) if found else np.zeros((0, 2), dtype=np.int64)

    def _join_all(self, embeddings, hashes, use, labels) -> np.ndarray:
        """:func:`merge_duplicates` over the rows ``use``, its groups joined into the labels."""
        rows = np.flatnonzero(use)
        roots = self.roots(labels[rows])
        start, dense = np.unique(roots, return_inverse=True)
        hex_hashes = [f"{int(h):016x}" for h in hashes[rows].tolist()]
        merged = merge_duplicates(embeddings[rows], dense, hex_hashes, self.rules)
        first = np.full(int(merged.max()) + 1, -1, dtype=np.int64)
        first[merged[::-1]] = start[dense[::-1]]  # a label of each merged group
        pairs = np.stack([start[dense], first[merged]], 1)
        return self.union(pairs[pairs[:, 0] != pairs[:, 1]])
