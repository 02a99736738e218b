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


def merge_duplicates(
    embeddings: np.ndarray,
    groups: np.ndarray,
    hashes: Sequence[str | None],
    rules: Sequence[tuple[float, int]] = DUPLICATE_RULES,
    block: int = 256,
) -> np.ndarray:
    """Join the groups of rows that hold the same picture: a pair of rows joins when, for one of ``rules``
    ``(distance, max_hamming)``, their embeddings are nearer than ``distance`` and their hashes differ in at
    most ``max_hamming`` bits (union-find, so transitively). A row without a hash joins nothing.

    The near pairs are found exactly, without computing all of them: rows are sorted by their projection on
    the embeddings' principal axis, and a block of rows is compared only with the rows whose projection is
    within the largest ``distance`` of the block's (points nearer than that are that near on any unit axis);
    within a block the hashes are compared first (few pairs pass), the distances then for those alone.
    50,000 faces take about 6 s on 2 busy cores (FER+ embeddings with random or index-like hashes).

    Args:
        embeddings: ``(N, D) float32`` unit-norm rows.
        groups: ``(N,)`` int group of every row (e.g. its source image), numbers 0..G-1.
        hashes: N :func:`face_dhash` values or ``None``.
        rules: ``(distance, max_hamming)`` tiers (default :data:`DUPLICATE_RULES`).

    Returns:
        ``(N,) int64`` groups after the merge, renumbered 0..G'-1.
    """
    groups = np.asarray(groups, dtype=np.int64)
    e = np.asarray(embeddings, dtype=np.float32)
    if len(e) < 2 or not rules:
        return np.unique(groups, return_inverse=True)[1].astype(np.int64)
    parent = np.arange(int(groups.max()) + 1)

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    has = np.array([h is not None for h in hashes])
    bits = np.array([int(h, 16) if h is not None else 0 for h in hashes], dtype=np.uint64)
    reach = max(d for d, _ in rules)
    most_bits = max(h for _, h in rules)
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
        sq = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", es[rows], es[cols]), 0.0)  # |a - b|^2, unit vectors
        join = np.zeros(len(rows), dtype=bool)
        for distance, max_hamming in rules:
            join |= (sq < distance * distance) & (flips <= max_hamming)
        rows, cols = rows[join], cols[join]
        for r, c in zip(rows, cols, strict=True):
            a, b = root(int(gs[r])), root(int(gs[c]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(int(g)) for g in groups], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)
