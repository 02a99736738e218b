"""Explain a match: the blendshapes a query face and a meme face share most.

MediaPipe's FaceLandmarker gives every face 52 blendshape scores in [0, 1] (``_neutral`` and the 51 ARKit
blendshapes, :data:`facial_search.vision.faces.BLENDSHAPE_NAMES`); the index keeps them for every meme face
(:attr:`facial_search.index.Entry.blendshapes`, quantised to 1/255). Two faces "share" a blendshape as much as
the lesser of their two scores: ``jawOpen`` 0.71 on the query and 0.65 on the meme share 0.65, a jaw open on
one face only shares nothing. :func:`shared_blendshapes` lists the few shared most: the ``"explain"`` field of
a match in ``facial-search search --json --explain``, ``/api/search`` and ``/api/search/vectors`` (the web
page computes the same in JavaScript). Nothing here reads files or models.
"""

from __future__ import annotations

import numpy as np

from facial_search.vision.faces import BLENDSHAPE_NAMES

#: Blendshapes listed per match, at most.
TOP = 3
#: Least shared score (the lesser of the two faces' scores) a blendshape needs to be listed.
FLOOR = 0.1
#: The blendshape never listed: ``_neutral`` says nothing about what two faces do alike.
EXCLUDED = ("_neutral",)
_EXCLUDED_AT = [BLENDSHAPE_NAMES.index(n) for n in EXCLUDED]


def _scores(values, what: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: blendshape scores must be numbers (got {type(values).__name__})") from None
    if v.shape != (len(BLENDSHAPE_NAMES),):
        raise ValueError(f"{what}: {len(BLENDSHAPE_NAMES)} blendshape scores expected, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what}: blendshape scores hold NaN or infinite values")
    return v


def shared_blendshapes(query, match, top: int = TOP, floor: float = FLOOR) -> list[dict] | None:
    """The blendshapes both faces show most.

    Args:
        query, match: each ``(52,)`` scores in [0, 1] in :data:`~facial_search.vision.faces.BLENDSHAPE_NAMES`
            order (``Face.blendshapes``, ``Entry.blendshapes``), or ``None`` (a face without them: a meme of an
            index built before they were stored, a vector sent without them).
        top: most blendshapes listed.
        floor: least shared score listed (on the unrounded scores).

    Returns:
        ``None`` when either is ``None``; else up to ``top`` dicts ``{"blendshape": name, "query": score,
        "match": score}`` (scores rounded to 3 decimals), ordered by ``min(query, match)`` descending (ties:
        model order), ``_neutral`` left out, only those with ``min(query, match) >= floor`` (so maybe ``[]``).

    Raises:
        ValueError: scores that are not 52 numbers, or NaN or infinite ones.

    >>> import numpy as np
    >>> q, m = np.zeros(52), np.zeros(52)
    >>> q[25], m[25] = 0.71, 0.65  # jawOpen
    >>> shared_blendshapes(q, m)
    [{'blendshape': 'jawOpen', 'query': 0.71, 'match': 0.65}]
    """
    if query is None or match is None:
        return None
    q, m = _scores(query, "query"), _scores(match, "match")
    both = np.minimum(q, m)
    both[_EXCLUDED_AT] = -np.inf
    order = np.argsort(-both, kind="stable")[: max(int(top), 0)]
    return [{"blendshape": BLENDSHAPE_NAMES[i], "query": round(float(q[i]), 3), "match": round(float(m[i]), 3)}
            for i in order.tolist() if both[i] >= floor]  # fmt: skip


__all__ = ["EXCLUDED", "FLOOR", "TOP", "shared_blendshapes"]
