"""The index as the page's private mode holds it: every face's embedding, id, picture group, title and file.

``GET /api/index/export`` (:func:`index_export`) hands the whole index to the page once; the page
(``static/private.js``) then searches it itself (exact Euclidean top-k, one answer per picture, as
:meth:`facial_search.index.store.MemeIndex.search` with ``group_by_source=True``), so no embedding of a face
leaves the phone. The document is columnar, for its size: for the 1,365 faces of the 2,105 imgflip templates it
is about 0.6 MB (README). Thumbnails (``GET /api/memes/{id}/thumb``, :func:`thumbnail`) are small JPEGs of
each file, made once and cached.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from facial_search.errors import IndexExportError

#: Where the page finds a face's thumbnail and its full image (``{id}``: the face's id).
THUMB_URL = "/api/memes/{id}/thumb"
IMAGE_URL = "/api/memes/{id}/image"
#: Most faces an index may have to be exported: 100,000 faces of 64 float32 are 25.6 MB (34 MB as base64),
#: about as much as a phone's browser should keep in memory and in its cache.
MAX_EXPORT_FACES = 100_000
#: Longest side of a thumbnail, pixels, and its JPEG quality.
THUMB_SIDE = 256
THUMB_QUALITY = 75
#: Thumbnails kept in memory (about 10 KB each).
THUMB_CACHE = 4096
#: The export document's format (``format`` field); a page that reads another refuses it.
FORMAT = "facial-search-export/1"


def displayable(text: str) -> str:
    """``text`` as valid Unicode: a file name's undecodable bytes (surrogate-escaped) as U+FFFD, as the search
    document shows it (:func:`facial_search.pipeline.SearchResult.to_json`)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _embeddings_and_ids(store) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D) float32`` embeddings and ``(N,) int64`` ids of every face, rows aligned.

    Raises:
        IndexExportError: the backend gives out no embeddings.
    """
    emb = getattr(store, "embeddings", None)
    if isinstance(emb, np.ndarray):  # the file backend (MemeIndex): a read-only view, rows as ``ids``
        return np.asarray(emb, dtype=np.float32), np.asarray(store.ids, dtype=np.int64)
    ids = np.array([e.id for e in store.entries()], dtype=np.int64)
    if callable(emb):  # Milvus: embeddings(ids)
        return np.asarray(emb(ids.tolist()), dtype=np.float32).reshape(len(ids), -1), ids
    raise IndexExportError(
        f"{type(store).__name__} does not give out its embeddings: private mode needs a file index (.fsindex)"
    )


def _groups(store, sources: np.ndarray) -> np.ndarray:
    """``(N,) int64`` picture group of every face, rows as the store's: the store's own grouping where it has one
    (:meth:`~facial_search.index.store.MemeIndex.source_groups`), else one group per source file."""
    groups = getattr(store, "source_groups", None)
    if callable(groups):
        return np.asarray(groups(), dtype=np.int64)
    return np.unique(sources, return_inverse=True)[1].astype(np.int64)


def build_export(store, embedder: str) -> dict:
    """The export document of ``store`` (see :class:`facial_search.web.schemas.IndexExport`).

    Args:
        store: any :class:`~facial_search.index.base.Store` that gives out its embeddings (the file backend;
            Milvus through ``embeddings(ids)``).
        embedder: the index's embedder as the vector API names it (``"expression v3+1a2b..."``).

    Returns:
        A JSON-ready dict: ``embeddings`` base64 of ``(N, D)`` little-endian float32 rows; ``ids``, ``groups``,
        ``faces``, ``source`` (into ``sources``), ``title`` (into ``titles``): one number per face, rows in
        the same order; ``thumb_ids``: one face id per source file, whose ``thumb_url`` shows that file;
        ``blendshapes``: base64 of ``(N, 52)`` uint8 rows, each face's blendshape scores times 255, rounded (as
        the index stores them; a row of zeros for a face without, whose row number ``blendshapes_missing``
        lists), or ``None`` when no face has them (:func:`blendshape_rows`); ``moments``: the rows that are a
        video's moments and their times, or ``None`` (:func:`moment_rows`).

    Raises:
        IndexExportError: a backend without its embeddings, or more than :data:`MAX_EXPORT_FACES` faces.
    """
    if store.ntotal > MAX_EXPORT_FACES:
        raise IndexExportError(
            f"the index has {store.ntotal:,} faces: private mode holds at most {MAX_EXPORT_FACES:,} on the phone"
        )
    emb, ids = _embeddings_and_ids(store)
    by_id = {e.id: e for e in store.entries()}
    if len(by_id) != len(ids) or any(int(i) not in by_id for i in ids):
        raise IndexExportError("the index changed while it was exported: try again")
    entries = [by_id[int(i)] for i in ids]
    sources: dict[str, int] = {}
    titles: dict[str, int] = {}
    thumb_ids: list[int] = []
    source_of, title_of = [], []
    for e in entries:
        s = sources.get(e.source)
        if s is None:
            s = sources[e.source] = len(sources)
            thumb_ids.append(e.id)
        source_of.append(s)
        title_of.append(titles.setdefault(e.title, len(titles)))
    groups = _groups(store, np.array(source_of, dtype=np.int64))
    data = np.ascontiguousarray(emb, dtype="<f4")
    digest = hashlib.sha256(data.tobytes() + ids.astype("<i8").tobytes() + groups.astype("<i8").tobytes())
    scores, missing = blendshape_rows(entries)
    if scores is not None:
        digest.update(scores.tobytes())  # an index re-built with blendshapes is another export
    return {
        "format": FORMAT,
        "embedder": embedder,
        "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
        "count": len(ids),
        "digest": digest.hexdigest()[:16],
        "embeddings": base64.b64encode(data.tobytes()).decode("ascii"),
        "ids": ids.tolist(),
        "groups": groups.tolist(),
        "faces": [e.face for e in entries],
        "source": source_of,
        "title": title_of,
        "sources": [displayable(s) for s in sources],
        "titles": [displayable(t) for t in titles],
        "thumb_ids": thumb_ids,
        "thumb_url": THUMB_URL,
        "image_url": IMAGE_URL,
        "blendshapes": None if scores is None else base64.b64encode(scores.tobytes()).decode("ascii"),
        "blendshapes_missing": missing,
        "moments": moment_rows(entries),
    }


def moment_rows(entries: list) -> dict | None:
    """``{"rows", "t_start", "t_end", "t_frame", "track"}`` of the entries that are a video's moments (times in
    seconds, 3 decimals, as the search document gives them), ``None`` when none is."""
    rows = [i for i, e in enumerate(entries) if getattr(e, "t_start", None) is not None]
    if not rows:
        return None
    es = [entries[i] for i in rows]
    return {
        "rows": rows,
        "t_start": [round(float(e.t_start), 3) for e in es],
        "t_end": [round(float(e.t_end), 3) for e in es],
        "t_frame": [round(float(e.t_start if e.t_frame is None else e.t_frame), 3) for e in es],
        "track": [-1 if e.track is None else int(e.track) for e in es],
    }


def blendshape_rows(entries: list) -> tuple[np.ndarray | None, list[int]]:
    """``((N, 52) uint8, rows without)`` of the entries' blendshapes (``round(255 * score)``: the index's own
    quantisation, so the page's explanations equal the server's); ``(None, all rows)`` when none has them."""
    from facial_search.index.table import BLENDSHAPES, quantise_blendshapes

    missing = [i for i, e in enumerate(entries) if getattr(e, "blendshapes", None) is None]
    if len(missing) == len(entries):
        return None, missing
    out = np.zeros((len(entries), BLENDSHAPES), np.uint8)
    for i, e in enumerate(entries):
        if e.blendshapes is not None:
            out[i] = quantise_blendshapes(e.blendshapes)
    return out, missing


def encode(doc: dict) -> bytes:
    """The document as compact JSON bytes (what ``GET /api/index/export`` sends)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def thumbnail(path: str | os.PathLike) -> bytes:
    """A JPEG of the image at ``path``, its longest side at most :data:`THUMB_SIDE` pixels (never enlarged),
    decoded as the pipeline decodes it (:func:`facial_search.io.images.load_image`: EXIF rotation, alpha on
    white). Made once per file version (path, size, mtime) and kept (:data:`THUMB_CACHE` of them).

    Raises:
        OSError: the file cannot be read. ImageError: it is no image (it was one when it was indexed).
    """
    st = Path(path).stat()
    return _thumbnail(os.fspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=THUMB_CACHE)
def _thumbnail(path: str, size: int, mtime_ns: int) -> bytes:
    from PIL import Image

    from facial_search.io.images import load_image

    img = Image.fromarray(load_image(path))
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()
