"""One face track's samples -> moments: runs of samples whose embeddings stay near one another (pure NumPy).

The rule (:func:`cut_track`), in time order:

1. **Split.** A sample starts a new moment when it lies farther than ``threshold`` (Euclidean, unit-norm
   embeddings, range [0, 2]) from the running moment's mean embedding (re-normalised), or when the running
   moment has lasted ``max_s``.
2. **Merge.** A moment shorter than ``min_s`` (a blink, a head turn, one odd sample) is merged into the
   neighbour whose mean is nearer, until none is left (or the track is one moment).
3. **Rejoin.** Neighbouring moments whose means lie within ``threshold`` of each other (the two halves of one
   expression that an odd sample had split) are joined, nearest pair first, while the result lasts at most
   ``max_s``.

A moment spans from its first sample to one sampling interval after its last (the next sample belongs to the
next moment), so consecutive moments of a track tile it without gaps.

Where the defaults come from (expression-v3 embedder, 250 ms sampling, measured 2026-12-02 on the shared
videos, ``../shared/data/videos``): the distance between consecutive samples of one track (105 pairs over the
four videos with a face) has median 0.060, p75 0.171, p90 0.358, p95 0.521. On
``WolfgangLanger_Pexels.mp4``, with its phases labelled by looking at the frames (sad 0-2.5 s, crying with a
hand on the face 2.5-6 s, looking up, hand at the mouth 6-9.5 s, smiling 12.5-20 s), a sample lies from its
own phase's mean at median 0.134, p95 0.389, max 0.493, and from the other phases' means at p10 0.390,
median 1.267 (the phase means are 0.73-1.38 apart, except sad and crying, two faces of one emotion, 0.275).
At ``threshold`` 0.45 1% of samples are farther than it from their own phase's mean (they start a moment that
the merge step folds back) and 10% of the other phases' samples are nearer (nearly all sad <-> crying);
0.40 splits 4%, 0.35 9%. ``min_s`` 0.75 s (3 samples) merges single odd samples; ``max_s`` 10 s keeps a long
steady shot a clip-sized moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Distance from the running moment's mean beyond which a sample starts a new moment (see module docstring).
THRESHOLD = 0.45
#: Moments shorter than this (seconds) are merged into their nearer neighbour.
MIN_SECONDS = 0.75
#: A moment is cut after this many seconds even when the face holds still.
MAX_SECONDS = 10.0


@dataclass(frozen=True)
class Moment:
    """One moment of a face track: an index entry (``source`` is added by the caller).

    Attributes:
        track: face track within the video.
        t_start, t_end: seconds from the video's first frame.
        t_frame: seconds of the most typical sample (nearest the mean), whose ``box`` this is.
        box: ``(x, y, w, h)`` pixels of the upright full-size frame at ``t_frame``.
        embedding: ``(D,) float32``: the mean of the samples' embeddings, re-normalised to unit length.
        blendshapes: ``(52,) float32`` of the typical sample, or ``None`` when it had none.
        picture_hash: the typical sample's face hash (:func:`~facial_search.index.dedupe.face_dhash`).
        samples: samples in the moment.
    """

    track: int
    t_start: float
    t_end: float
    t_frame: float
    box: tuple[int, int, int, int]
    embedding: np.ndarray
    blendshapes: np.ndarray | None
    picture_hash: str
    samples: int


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def split_runs(
    t: np.ndarray,
    embeddings: np.ndarray,
    *,
    every_s: float,
    threshold: float = THRESHOLD,
    min_s: float = MIN_SECONDS,
    max_s: float = MAX_SECONDS,
) -> list[tuple[int, int]]:
    """The moments of one track as ``[(start, stop), ...]`` sample index ranges (stop exclusive, in order,
    covering ``0..n``), by the rule of the module docstring.

    Args:
        t: ``(n,)`` sample times, seconds, increasing.
        embeddings: ``(n, D)`` unit-norm embeddings.
        every_s: the sampling interval, seconds (a moment lasts from its first sample to ``every_s`` after its
            last).
    """
    n = len(t)
    if n == 0:
        return []
    runs: list[list[int]] = [[0, 1]]
    total = embeddings[0].astype(np.float64).copy()
    for i in range(1, n):
        far = np.linalg.norm(embeddings[i] - _unit(total)) > threshold
        if far or t[i] - t[runs[-1][0]] >= max_s:
            runs.append([i, i + 1])
            total = embeddings[i].astype(np.float64).copy()
        else:
            runs[-1][1] = i + 1
            total += embeddings[i]

    def length(r) -> float:
        return float(t[r[1] - 1] - t[r[0]]) + every_s

    def mean(r) -> np.ndarray:
        return _unit(embeddings[r[0] : r[1]].astype(np.float64).mean(0))

    while len(runs) > 1:
        short = [j for j, r in enumerate(runs) if length(r) < min_s - 1e-9]
        if not short:
            break
        j = min(short, key=lambda j: length(runs[j]))
        m = mean(runs[j])
        near = [k for k in (j - 1, j + 1) if 0 <= k < len(runs)]
        k = min(near, key=lambda k: np.linalg.norm(mean(runs[k]) - m))
        a, b = sorted((j, k))
        runs[a:b + 1] = [[runs[a][0], runs[b][1]]]  # fmt: skip
    while len(runs) > 1:  # rejoin neighbours a short run had split (a blink in one expression)
        gaps = [np.linalg.norm(mean(runs[j]) - mean(runs[j + 1])) for j in range(len(runs) - 1)]
        j = int(np.argmin(gaps))
        if gaps[j] > threshold or length([runs[j][0], runs[j + 1][1]]) > max_s:
            break
        runs[j : j + 2] = [[runs[j][0], runs[j + 1][1]]]
    return [(a, b) for a, b in runs]


def cut_track(
    track: int,
    t,
    embeddings: np.ndarray,
    blendshapes: np.ndarray,
    boxes,
    hashes,
    *,
    every_s: float,
    duration: float | None = None,
    threshold: float = THRESHOLD,
    min_s: float = MIN_SECONDS,
    max_s: float = MAX_SECONDS,
) -> list[Moment]:
    """The :class:`Moment` s of one track's samples (:func:`split_runs`).

    Args:
        t: ``(n,)`` seconds; embeddings ``(n, D)`` unit-norm; blendshapes ``(n, 52)`` (NaN rows: none);
            boxes and hashes: ``n`` each.
        every_s: sampling interval, seconds.
        duration: the video's length, seconds: no moment ends after it (``None``: not capped).
    """
    t = np.asarray(t, np.float64)
    embeddings = np.asarray(embeddings, np.float32)
    out = []
    for a, b in split_runs(t, embeddings, every_s=every_s, threshold=threshold, min_s=min_s, max_s=max_s):
        e = embeddings[a:b]
        m = _unit(e.astype(np.float64).mean(0))
        typical = a + int(np.argmin(np.linalg.norm(e - m, axis=1)))
        t_end = float(t[b - 1]) + every_s
        if duration:
            t_end = max(float(t[b - 1]), min(t_end, duration))
        bs = np.asarray(blendshapes[typical], np.float32)
        out.append(
            Moment(
                track=int(track),
                t_start=float(t[a]),
                t_end=t_end,
                t_frame=float(t[typical]),
                box=tuple(int(v) for v in boxes[typical]),
                embedding=m.astype(np.float32),
                blendshapes=None if np.isnan(bs).any() else np.clip(bs, 0.0, 1.0),
                picture_hash=hashes[typical],
                samples=b - a,
            )
        )
    return out
