"""Face tracks across video frames, their smoothed landmarks, and stable top-k matches.

- :func:`match_boxes`: pairs the faces of a frame with the tracks of the previous ones (greedy on box IoU,
  centre distance as a fallback; a handful of faces needs no Hungarian algorithm).
- :class:`Tracker`: gives each face a track id that it keeps across frames, smooths each track's 478
  landmarks with a :class:`~facial_search.live.one_euro.OneEuroFilter`, ends a track after it has been missing
  ``max_missing`` frames (its id is never reused; a face that comes back gets a new id and a fresh filter).
- :class:`MatchHysteresis`: a track's top-k memes change only when a new meme wins clearly (by ``margin``)
  or for ``hold`` updates in a row, so the shown matches do not flicker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facial_search.live.one_euro import OneEuroFilter, OneEuroParams
from facial_search.vision.faces import Face, box_from_landmarks, box_iou

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------------------
# Frame-to-frame association
# ---------------------------------------------------------------------------------------------------------


def _centre_distance(a: Box, b: Box) -> float:
    """Distance between box centres divided by the larger box's side (0 = same centre)."""
    d = np.hypot(a[0] + a[2] / 2 - b[0] - b[2] / 2, a[1] + a[3] / 2 - b[1] - b[3] / 2)
    return float(d / max(a[2], a[3], b[2], b[3], 1))


def match_boxes(
    previous: Sequence[Box], current: Sequence[Box], min_iou: float = 0.1, max_centre: float = 0.5
) -> list[tuple[int, int]]:
    """Pairs ``(i_previous, j_current)`` of boxes that are the same face, greedily by best score first.

    A pair qualifies when its IoU is at least ``min_iou`` or its centre distance (relative to the larger
    box side) is at most ``max_centre``; its score is the IoU, then the closeness of the centres.
    Each box is in at most one pair. Pure function; O(P·C log(P·C)) for P previous and C current boxes.
    """
    scored = []
    for i, a in enumerate(previous):
        for j, b in enumerate(current):
            iou, cd = box_iou(a, b), _centre_distance(a, b)
            if iou >= min_iou or cd <= max_centre:
                scored.append((-iou, cd, i, j))
    scored.sort()
    used_i, used_j, pairs = set(), set(), []
    for _, _, i, j in scored:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            pairs.append((i, j))
    return sorted(pairs)


# ---------------------------------------------------------------------------------------------------------
# Tracks
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Track:
    """One face followed across frames.

    Attributes:
        id: track id, unique within a :class:`Tracker`, never reused (0, 1, 2, ...).
        face: the face in the last frame it was seen, with **smoothed** landmarks (and the box of those);
            blendshapes and transformation matrix as found.
        raw: the same face as the landmarker found it (unsmoothed).
        first_frame, last_frame: frame numbers where it was first and last seen.
        missing: frames in a row it has not been seen (0 when seen in the current frame).
        filter: the track's landmark filter (state in pixels), ``None`` when unfiltered.
        hysteresis: the track's stable matches (set by the caller, see :class:`MatchHysteresis`).
        data: free room for callers (e.g. the frame of the last embedding).
    """

    id: int
    face: Face
    raw: Face
    first_frame: int
    last_frame: int
    missing: int = 0
    filter: OneEuroFilter | None = None
    hysteresis: MatchHysteresis | None = None
    data: dict = field(default_factory=dict)

    @property
    def box(self) -> Box:
        return self.face.box

    @property
    def seen(self) -> bool:
        """Seen in the current frame."""
        return self.missing == 0


def smooth_face(face: Face, filt: OneEuroFilter | None, t: float) -> Face:
    """``face`` with its landmarks passed through ``filt`` at time ``t`` (seconds) and its box recomputed
    from them. The filter works in pixels (x, y by the image width/height, z by the width), so its
    ``beta`` is in 1/pixel. ``filt=None`` or a face without landmarks returns ``face`` unchanged."""
    if filt is None or face.landmarks is None:
        return face
    w, h = face.image_size
    scale = np.array([w, h, w], dtype=np.float64)
    lm = (filt(face.landmarks.astype(np.float64) * scale, t) / scale).astype(np.float32)
    return Face(box_from_landmarks(lm, w, h), lm, face.blendshapes, face.transformation_matrix, face.image_size)


class Tracker:
    """Track ids and smoothed landmarks for the faces of successive video frames.

    Args:
        filter_params: One Euro parameters for the landmarks in pixels (default: the module defaults of
            :mod:`facial_search.live.one_euro`); ``None`` turns smoothing off.
        max_missing: a track not seen for more than this many frames in a row ends (its filter with it).
        min_iou, max_centre: association thresholds (see :func:`match_boxes`).

    >>> from facial_search import FaceFinder, load_image
    >>> with FaceFinder.create_from_options() as finder:
    ...     faces = finder.detect(load_image("me.jpg"))
    >>> tracker = Tracker(OneEuroParams())
    >>> for frame_no, t in enumerate([0.0, 1 / 30]):  # t: seconds, from the video; the same face twice
    ...     print([track.id for track in tracker.update(faces, t, frame_no)])
    [0]
    [0]
    """

    def __init__(
        self,
        filter_params: OneEuroParams | None = OneEuroParams(),  # noqa: B008 - frozen, immutable
        max_missing: int = 5,
        min_iou: float = 0.1,
        max_centre: float = 0.5,
    ):
        self.filter_params = filter_params
        self.max_missing = max_missing
        self.min_iou = min_iou
        self.max_centre = max_centre
        self.tracks: list[Track] = []
        self.ended: list[Track] = []
        self._next_id = 0

    def update(self, faces: Sequence[Face], t: float, frame: int) -> list[Track]:
        """Associate this frame's ``faces`` (from the landmarker) with the tracks, smooth their landmarks.

        Args:
            faces: faces found in the frame.
            t: frame timestamp, seconds (increasing; from the video).
            frame: frame number.

        Returns:
            the tracks seen in this frame, left to right. Tracks that ended in this update are in
            :attr:`ended` until the next update.
        """
        pairs = match_boxes([tr.raw.box for tr in self.tracks], [f.box for f in faces], self.min_iou, self.max_centre)
        matched_t = {i: j for i, j in pairs}
        matched_f = {j for _, j in pairs}
        kept: list[Track] = []
        self.ended = []
        for i, tr in enumerate(self.tracks):
            if i in matched_t:
                face = faces[matched_t[i]]
                tr.raw, tr.face = face, smooth_face(face, tr.filter, t)
                tr.last_frame, tr.missing = frame, 0
                kept.append(tr)
            elif tr.missing + 1 > self.max_missing:
                self.ended.append(tr)
            else:
                tr.missing += 1
                kept.append(tr)
        for j, face in enumerate(faces):
            if j not in matched_f:
                filt = OneEuroFilter(self.filter_params) if self.filter_params is not None else None
                tr = Track(self._next_id, smooth_face(face, filt, t), face, frame, frame, filter=filt)
                self._next_id += 1
                kept.append(tr)
        self.tracks = kept
        return sorted((tr for tr in kept if tr.seen), key=lambda tr: (tr.box[0], tr.box[1]))


# ---------------------------------------------------------------------------------------------------------
# Stable matches
# ---------------------------------------------------------------------------------------------------------


class MatchHysteresis:
    """Top-k matches of one track that change only on a clear or lasting win (hysteresis).

    Each :meth:`update` gets the distances from the track's current embedding to every indexed face and
    returns the k shown, as row numbers of the index with their current distances:

    - rank 1 (the top-1) changes when the new nearest meme beats the shown top-1 by more than ``margin``
      (a clear win), or has been the nearest for ``hold`` updates in a row (a lasting win);
    - ranks 2..k are the k-1 nearest others, where the shown ones and those that have stayed among the
      raw top-k for ``hold`` updates get a bonus of ``margin`` (so they do not swap on noise).

    With ``margin=0, hold=1`` it is the raw top-k, as :meth:`MemeIndex.search` gives it.

    Args:
        k: matches shown (>= 1).
        margin: Euclidean distance by which a newcomer must win to replace a shown match at once
            (unit-norm embeddings: distances in [0, 2]).
        hold: updates in a row a newcomer must win to replace a shown match without a clear margin.

    The hold of 0.5 s (12 updates when every frame is matched at 24 frames/s; ``live`` matches every 3rd
    frame and uses ``hold=4``) was chosen on ``WolfgangLanger_Pexels.mp4`` with the blendshapes embedder.
    The margin 0.05 is the expression-v3 embedder's (``make demo``'s 1,365-face index, live's defaults,
    2026-11-22): there a face's nearest other face is at a median 0.135, its 3rd at +0.035 and its 5th at
    +0.055, so a shown top-1 stays within about the 5 nearest. The blendshapes' 0.08 (about the 10 nearest
    here) showed a top-1 outside the top-3 of the run without hysteresis in 22 % of face-frames, 0.05 in
    15 %, for 1.68 top-1 changes/s against 1.48 (without hysteresis 2.90); on ``single_face.mp4`` and
    ``noface_face.mov`` 0.05 was as steady as 0.08 (2.11 and 0.79 changes/s) and stale a third less often than
    0.08 (17 % / 16 % against 25 %) (``benchmarks/bench_live.py`` and a sweep of ``LiveConfig.hysteresis``).
    """

    def __init__(self, k: int = 3, margin: float = 0.05, hold: int = 12):
        if k < 1 or hold < 1 or margin < 0:
            raise ValueError("MatchHysteresis needs k >= 1, hold >= 1, margin >= 0")
        self.k, self.margin, self.hold = k, margin, hold
        self.shown: list[int] = []
        self._leader, self._leader_run = -1, 0
        self._runs: dict[int, int] = {}

    def update(self, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step.

        Args:
            distances: ``(N,)`` distances from the track's embedding to the N indexed faces (row order).

        Returns:
            ``(rows, distances)``: ``(min(k, N),)`` int64 row numbers of the shown matches, top-1 first, and
            their ``float32`` distances in this update.
        """
        d = np.asarray(distances, dtype=np.float32)
        n = len(d)
        k = min(self.k, n)
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        raw = np.argpartition(d, k - 1)[:k] if k < n else np.arange(n)
        raw = raw[np.argsort(d[raw], kind="stable")]
        best = int(raw[0])
        self._leader_run = self._leader_run + 1 if best == self._leader else 1
        self._leader = best
        self._runs = {int(r): self._runs.get(int(r), 0) + 1 for r in raw}
        if not self.shown or self.margin == 0 and self.hold == 1:
            self.shown = [int(r) for r in raw]
            return raw.astype(np.int64), d[raw]
        top = self.shown[0]
        if best != top and (d[top] - d[best] > self.margin or self._leader_run >= self.hold):
            top = best
        if k > 1:
            biased = d.copy()
            favoured = set(self.shown) | {r for r, run in self._runs.items() if run >= self.hold}
            favoured.discard(top)
            if favoured:
                biased[list(favoured)] -= self.margin
            biased[top] = np.inf
            m = min(k - 1, n - 1)
            rest = np.argpartition(biased, m - 1)[:m] if m < n else np.arange(n)
            rest = rest[np.argsort(biased[rest], kind="stable")]
            rows = np.concatenate([[top], rest]).astype(np.int64)
        else:
            rows = np.array([top], dtype=np.int64)
        self.shown = [int(r) for r in rows]
        return rows, d[rows]
