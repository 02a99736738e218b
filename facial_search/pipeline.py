"""The facial-search pipeline, top to bottom:

    image file ──decode──▶ RGB ──FaceLandmarker──▶ faces (box, 478 landmarks, 52 blendshapes)
               ──embedder──▶ (N, D) unit-norm embeddings ──Store.search──▶ top-k memes per face

:class:`Pipeline` is one process's decode + faces + embedding (no index); :class:`FacialSearch` adds an
open store (any backend: :func:`facial_search.index.open`) and is the three-line happy path. Indexing folders of memes on every core is
:func:`facial_search.indexing.build_index`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from facial_search import embedders
from facial_search.errors import NoFaceError
from facial_search.index.base import Store
from facial_search.index.store import EmbedderInfo, check_embedder, open_store
from facial_search.io.images import load_image
from facial_search.vision.faces import (
    TILE_MIN_CONFIDENCE,
    Face,
    FaceFinder,
    FaceFinderOptions,
    detect_in_crop,
    detect_in_tiles,
    whole_image_face,
)


class Pipeline:
    """Decode, find faces and embed them, in this process (not thread-safe: one per thread/process).

    Args:
        embedder: embedder name (default :data:`facial_search.embedders.DEFAULT_EMBEDDER`) or instance.
        model_path: ``face_landmarker.task`` path; default found or downloaded by :mod:`facial_search.io.assets`.
        max_faces: most faces per image.
        tiles: where the whole image gives no face, look in overlapping tiles
            (:func:`facial_search.vision.faces.detect_in_tiles`), for faces too small for the detector.
    """

    def __init__(self, embedder=None, model_path=None, max_faces: int = 8, tiles: bool = True):
        self.embedder = embedders.get_embedder(embedder) if embedder is None or isinstance(embedder, str) else embedder
        self.finder = FaceFinder.create_from_options(FaceFinderOptions(model_path=model_path, max_faces=max_faces))
        self.tiles = tiles
        self._tile_finder: FaceFinder | None = None

    def faces(self, image: np.ndarray, *, cropped: bool = False) -> list[Face]:
        """Faces in ``image`` (``(H, W, 3) uint8``), left to right: the whole image, else (``tiles``) its
        overlapping tiles. With ``cropped=True`` the image is a ready-made face crop
        (:func:`facial_search.vision.faces.detect_in_crop`: padded, sharpened, plain), and when no face is found
        the whole image is the face."""
        if not cropped:
            faces = self.finder.detect(image)
            if faces or not self.tiles:
                return faces
            if self._tile_finder is None:
                o = self.finder.options
                self._tile_finder = FaceFinder.create_from_options(
                    replace(
                        o, min_detection_confidence=TILE_MIN_CONFIDENCE, min_presence_confidence=TILE_MIN_CONFIDENCE
                    )
                )
            return detect_in_tiles(self._tile_finder, image)
        face = detect_in_crop(self.finder, image)
        return [face if face is not None else whole_image_face(image)]

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(len(faces), D) float32`` unit-norm embeddings."""
        if not faces:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return self.embedder.embed(image, faces)

    def close(self) -> None:
        self.finder.close()
        if self._tile_finder is not None:
            self._tile_finder.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Searching: the happy path
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One meme face matching a query face. ``distance``: Euclidean between unit-norm embeddings, [0, 2]."""

    rank: int
    id: int
    source: str
    face: int
    title: str
    distance: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: a video's moment (:mod:`facial_search.moments`): its span and typical frame, seconds, and face track;
    #: ``None`` for a picture
    t_start: float | None = None
    t_end: float | None = None
    t_frame: float | None = None
    track: int | None = None
    #: the meme face's ``(52,) float32`` blendshape scores as the index stores them (``None``: none stored)
    blendshapes: np.ndarray | None = field(default=None, compare=False, repr=False)

    def moment_json(self) -> dict:
        """``{"t_start", "t_end", "t_frame", "track"}`` (seconds, 3 decimals) of a video's moment; ``{}`` for a
        picture (its match JSON has none of these keys)."""
        if self.t_start is None:
            return {}
        return {"t_start": round(self.t_start, 3), "t_end": round(self.t_end, 3),
                "t_frame": round(self.t_frame, 3), "track": self.track}  # fmt: skip


@dataclass
class FaceMatches:
    """A face of the query image and its top-k matches, nearest first."""

    face: Face
    matches: list[Match]
    embedding: np.ndarray | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Bounding box ``(x, y, w, h)``, pixels of the query image."""
        return self.face.box


@dataclass
class SearchResult:
    """Every face of one query image with its matches (faces left to right)."""

    image: str
    faces: list[FaceMatches]
    rgb: np.ndarray | None = field(default=None, repr=False)

    def __iter__(self):
        return iter(self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    def to_json(self, *, explain: bool = False) -> dict:
        """The ``facial-search search --json`` document; with ``explain``, each match has ``"explain"``: the
        blendshapes the query face and the meme face share most (:func:`facial_search.explain.
        shared_blendshapes`: up to 3 ``{"blendshape", "query", "match"}``, or ``null`` when either face has
        none)."""
        if explain:
            from facial_search.explain import shared_blendshapes
        return {
            "image": self.image,
            "faces": [
                {
                    "box": list(fm.box),
                    "matches": [
                        {
                            "rank": m.rank,
                            "id": m.id,
                            "source": _displayable(m.source),
                            "face": m.face,
                            "title": _displayable(m.title),
                            "distance": round(float(m.distance), 6),
                        }
                        | m.moment_json()
                        | ({"explain": shared_blendshapes(fm.face.blendshapes, m.blendshapes)} if explain else {})
                        for m in fm.matches
                    ],
                }  # fmt: skip
                for fm in self.faces
            ],
        }


def _moment_of(entry) -> tuple:
    """``(t_start, t_end, t_frame, track)`` of an index entry (all ``None`` for a picture, or a store without them)."""
    t = getattr(entry, "t_start", None)
    if t is None:
        return (None, None, None, None)
    t_frame, track = getattr(entry, "t_frame", None), getattr(entry, "track", None)
    return (
        float(t),
        float(entry.t_end),
        float(t if t_frame is None else t_frame),
        None if track is None else int(track),
    )


def _displayable(text: str) -> str:
    """``text`` as valid Unicode: a file name's undecodable bytes (surrogate-escaped, ``os.fsdecode``) become
    U+FFFD, so the JSON (and the web answer) can carry it; the index keeps the real name."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class FacialSearch:
    """Search a meme index with face photos: the three-line happy path.

    >>> fs = FacialSearch.open("memes.fsindex")
    >>> for face in fs.search("me.jpg", k=3):
    ...     print(face.box, [m.title for m in face.matches])
    (...) [...]
    """

    def __init__(self, index: Store, pipeline: Pipeline, index_path: str | None = None, *, owns_index: bool = False):
        self.index = index
        self.pipeline = pipeline
        self.index_path = index_path
        self._owns_index = owns_index

    @classmethod
    def open(cls, index_path: str | os.PathLike, *, embedder=None, model_path=None, max_faces: int = 8) -> FacialSearch:
        """Open an index (any store URI: a path, ``file://``, ``milvus-lite://``, ``milvus://``; see
        :func:`facial_search.index.open`) and build the pipeline that matches it. :meth:`close` closes both.

        Raises:
            FileNotFoundError, IndexFormatError: the index cannot be read.
            IndexURIError, MissingDependencyError, IndexBackendError: an unknown URI, or a Milvus one without
                pymilvus or whose server cannot be reached.
            EmbedderMismatchError: the index was built by another embedder than the one asked for.
            AssetError: the landmarker model cannot be found or downloaded.
        """
        index = open_store(index_path)
        try:
            if embedder is None:
                embedder = index.embedder.name if index.embedder.name in embedders.available() else None
            pipeline = Pipeline(embedder=embedder, model_path=model_path, max_faces=max_faces)
            try:
                check_embedder(index, EmbedderInfo.of(pipeline.embedder))
            except BaseException:
                pipeline.close()
                raise
        except BaseException:
            index.close()
            raise
        return cls(index, pipeline, os.fspath(index_path), owns_index=True)

    def search(
        self, image: str | os.PathLike | bytes | np.ndarray, k: int = 3, *, group_by_source: bool = True
    ) -> SearchResult:
        """Top-k memes for every face in ``image`` (a path, encoded bytes, or ``(H, W, 3) uint8`` RGB).

        ``group_by_source`` (default): k different pictures, each at its face nearest the query (a meme's
        faces, and copies of one template under other names, are one picture:
        :meth:`~facial_search.index.MemeIndex.source_groups`); with ``False`` the k nearest faces.

        Raises:
            ImageError: the file cannot be decoded. NoFaceError: no face found.
        """
        name = "<array>" if isinstance(image, np.ndarray) else "<upload>" if isinstance(image, bytes) else str(image)
        rgb = image if isinstance(image, np.ndarray) else load_image(image)
        faces = self.pipeline.faces(rgb)
        if not faces:
            raise NoFaceError(f"{name}: no face found")
        return self.search_faces(rgb, faces, k=k, name=name, group_by_source=group_by_source)

    def search_faces(
        self,
        rgb: np.ndarray,
        faces: Sequence[Face],
        k: int = 3,
        name: str = "<array>",
        *,
        group_by_source: bool = True,
    ) -> SearchResult:
        """Top-k memes for faces already found in ``rgb`` (used by video and the web app); as :meth:`search`."""
        emb = self.pipeline.embed(rgb, faces)
        dist, ids = self.index.search(emb, k, group_by_source=group_by_source)
        out = []
        for face, e, drow, irow in zip(faces, emb, dist, ids, strict=True):
            matches = []
            for rank, (d, i) in enumerate(zip(drow, irow, strict=True), start=1):
                if i < 0:
                    break
                en = self.index.entry(int(i))
                matches.append(Match(rank, en.id, en.source, en.face, en.title, float(d), en.box, *_moment_of(en),
                                     blendshapes=getattr(en, "blendshapes", None)))  # fmt: skip
            out.append(FaceMatches(face, matches, e))
        return SearchResult(name, out, rgb)

    def close(self) -> None:
        """Close the pipeline's landmarker, and the index where :meth:`open` opened it (idempotent)."""
        self.pipeline.close()
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> FacialSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
