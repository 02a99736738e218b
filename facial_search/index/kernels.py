"""Search kernels of the index: exact top-k over a distance matrix, the nearest row of every group, and
the k nearest groups from plain top-k searches (:func:`grouped_top_k`).

Pure NumPy on ``(Q, N)`` distance matrices (Q queries, N indexed rows); :class:`~facial_search.index.store.MemeIndex`
computes the distances and maps columns back to entry ids.
"""

from __future__ import annotations

from collections.abc import Callable

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


def grouped_top_k(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    n_queries: int,
    groups: np.ndarray,
    k: int,
    fetch: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest groups of every query from plain top-k searches, without a ``(Q, N)`` grouping: exactly
    ``top_k(*group_min(distances, group_layout(groups)), k)`` mapped to rows (each group at its nearest row,
    the lowest row on a tie; groups ordered by distance, the lower group number on a tie).

    A plain top-k' (k' = ``fetch`` * k at first) is fetched, and the first row of each group in it kept;
    the groups nearer than the k'-th distance are exact (every nearer row was fetched). Queries with fewer
    than k of them are searched again with 4 times k', until they have k or every row has been fetched.

    Args:
        search: ``search(queries, kk) -> (distances, rows)``, both ``(len(queries), kk)``: an exact plain
            top-kk of the query numbers ``queries`` (``(q,) int64``, 0..n_queries-1), ascending, ``-1`` rows
            past the N-th (e.g. ``lambda q, kk: top_k(d[q], kk)`` over a distance matrix, or FAISS's
            ``index.search(x[q], kk)``). Ties may come in any order.
        n_queries: Q.
        groups: ``(N,)`` int group of every row, numbers 0..G-1.
        k: groups per query, >= 1.
        fetch: the first over-fetch factor.

    Returns:
        ``(distances, rows)``, both ``(Q, k)``: float32 distances ascending, int64 rows; ``inf`` and ``-1``
        past the number of groups.
    """
    groups = np.asarray(groups, dtype=np.int64)
    n = len(groups)
    dist = np.full((n_queries, k), np.inf, dtype=np.float32)
    rows = np.full((n_queries, k), -1, dtype=np.int64)
    todo = np.arange(n_queries, dtype=np.int64)
    kk = min(n, max(k * fetch, k + 16))
    while len(todo) and n:
        d, r = search(todo, kk)
        d, r = np.asarray(d, dtype=np.float32), np.asarray(r, dtype=np.int64)
        complete = kk >= n
        left = []
        for q, dq, rq in zip(todo, d, r, strict=True):
            ok = rq >= 0
            dq, rq = dq[ok], rq[ok]
            o = np.lexsort((rq, dq))  # by distance, then row
            dq, rq = dq[o], rq[o]
            gq = groups[rq]
            _, first = np.unique(gq, return_index=True)  # each group's first (nearest, lowest) row
            if not complete:
                first = first[dq[first] < dq[-1]]  # exact: every row nearer than the last was fetched
                if len(first) < k:
                    left.append(q)
                    continue
            first = first[np.lexsort((gq[first], dq[first]))][:k]
            dist[q, : len(first)], rows[q, : len(first)] = dq[first], rq[first]
        todo = np.asarray(left, dtype=np.int64)
        kk = min(n, kk * 4)
    return dist, rows
