"""Duplicate pictures: the same meme template saved under two names (a re-upload, another crop or size).

Two faces are the same picture when their expression embeddings are near (:data:`DUPLICATE_DISTANCE`) *and*
their pixels agree (a 64-bit difference hash, dHash, of the face's bounding box, within
:data:`DUPLICATE_HAMMING` bits). Neither is enough alone: in a dense part of the embedding space two
different smiling people can be 0.02 apart, and two faces of one template can differ by a few hash bits
after re-encoding. The index groups such sources so that one picture fills one place of a top-k.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Embedding distance (Euclidean, unit-norm, range [0, 2]) under which two faces may be one picture.
#: Measured on the 1,365-face imgflip index (2,105 templates): pairs of faces from different files nearer
#: than 0.05 number 481; the median distance from a face to its nearest other face is 0.146.
DUPLICATE_DISTANCE = 0.05
#: Most differing dHash bits (of 64) for one picture. Among those 481 pairs the bits differ by 0-10 in 156,
#: whose titles name one meme ("Woman Yelling At Cat" / "woman yelling at cat", "Matrix Morpheus" / "What if
#: i told you", "Executive Order Trump" / "Trump Bill Signing" at 10), and by 12 or more in the other 325
#: (different people: "Oblivious Hot Girl" / "Sheltering Suburban Mom" 12, "Hillary Clinton" / "Sheltering
#: Suburban Mom" 16; but also one re-crop, "Nick Cage and Pedro pascal" twice, at 15).
DUPLICATE_HAMMING = 10


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
    distance: float = DUPLICATE_DISTANCE,
    max_hamming: int = DUPLICATE_HAMMING,
    block: int = 1024,
) -> np.ndarray:
    """Join the groups of rows that hold the same picture: embeddings nearer than ``distance`` and hashes
    within ``max_hamming`` bits (union-find, so transitively). A row without a hash joins nothing.

    The near pairs are found exactly, without computing all of them: rows are sorted by their projection on
    the embeddings' principal axis, and a block of rows is compared only with the rows whose projection is
    within ``distance`` of the block's (points nearer than ``distance`` are that near on any unit axis).
    50,000 faces take about 5 s on 2 busy cores.

    Args:
        embeddings: ``(N, D) float32`` unit-norm rows.
        groups: ``(N,)`` int group of every row (e.g. its source image), numbers 0..G-1.
        hashes: N :func:`face_dhash` values or ``None``.

    Returns:
        ``(N,) int64`` groups after the merge, renumbered 0..G'-1.
    """
    groups = np.asarray(groups, dtype=np.int64)
    e = np.asarray(embeddings, dtype=np.float32)
    if len(e) < 2:
        return np.unique(groups, return_inverse=True)[1].astype(np.int64)
    parent = np.arange(int(groups.max()) + 1)

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    sample = e[:: max(1, len(e) // 4096)]
    axis = np.linalg.svd(sample - sample.mean(0), full_matrices=False)[2][0]
    order = np.argsort(e @ axis, kind="stable")
    es, gs = e[order], groups[order]
    hs = [hashes[i] for i in order]
    proj = es @ axis
    limit = 2.0 - distance * distance  # |a - b|^2 = 2 - 2 a.b for unit vectors: near when 2 a.b > limit
    for start in range(0, len(es), block):
        stop = min(start + block, len(es))
        lo = int(np.searchsorted(proj, proj[start] - distance, side="left"))
        hi = int(np.searchsorted(proj, proj[stop - 1] + distance, side="right"))
        rows, cols = np.nonzero(2.0 * (es[start:stop] @ es[lo:hi].T) > limit)
        rows += start
        cols += lo
        other = gs[rows] != gs[cols]
        for r, c in zip(rows[other], cols[other], strict=True):
            if hs[r] is None or hs[c] is None or hamming(hs[r], hs[c]) > max_hamming:
                continue
            a, b = root(int(gs[r])), root(int(gs[c]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(int(g)) for g in groups], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)
