"""Search kernels of the index: exact top-k over a distance matrix, and the nearest row of every group.

Pure NumPy on ``(Q, N)`` distance matrices (Q queries, N indexed rows); :class:`~facial_search.index.store.MemeIndex`
computes the distances and maps columns back to entry ids.
"""

from __future__ import annotations

import numpy as np


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of every row of ``distances`` ``(Q, N)``, ascending (ties: lower column first).

    Returns:
        ``(distances, columns)``, both ``(Q, k)``: float32, and int64 column numbers; ``inf`` and ``-1``
        past the N-th when k > N.
    """
    nq, n = distances.shape
    dist = np.full((nq, k), np.inf, dtype=np.float32)
    cols = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return dist, cols
    kk = min(k, n)
    part = np.argpartition(distances, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (nq, 1))
    order = np.take_along_axis(distances, part, 1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(part, order, 1)
    dist[:, :kk] = np.take_along_axis(distances, top, 1)
    cols[:, :kk] = top
    return dist, cols


def group_layout(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`group_min` needs of ``groups`` ``(N,)`` (numbers 0..G-1, all used), computed once per
    grouping: ``order``, the rows sorted by group (stable), and ``starts``, each group's first position in it."""
    groups = np.asarray(groups, dtype=np.int64)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    return order, np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])


def group_min(distances: np.ndarray, layout: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest member of every group, for every query.

    Args:
        distances: ``(Q, N)`` from Q queries to N rows.
        layout: :func:`group_layout` of the rows' groups (e.g. :meth:`MemeIndex.group_layout`).

    Returns:
        ``(distances, rows)``, both ``(Q, G)``: the smallest distance within each group, and the row it is at
        (the first such row on a tie).

    Raises:
        ValueError: ``distances`` has another number of columns than ``layout`` has rows.
    """
    d = np.asarray(distances)
    order, starts = layout
    if d.shape[1] != len(order):
        raise ValueError(f"{d.shape[1]} distance columns but {len(order)} grouped rows")
    ds = d[:, order]
    mins = np.minimum.reduceat(ds, starts, axis=1)
    counts = np.diff(np.r_[starts, len(order)])
    pos = np.where(ds == np.repeat(mins, counts, axis=1), np.arange(len(order)), len(order))
    return mins, order[np.minimum.reduceat(pos, starts, axis=1)]
