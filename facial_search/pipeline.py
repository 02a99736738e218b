"""The facial-search pipeline, top to bottom:

    image file ──decode──▶ RGB ──FaceLandmarker──▶ faces (box, 478 landmarks, 52 blendshapes)
               ──embedder──▶ (N, D) unit-norm embeddings ──index.search──▶ top-k memes per face

:class:`Pipeline` is one process's decode + faces + embedding (no index); :class:`FacialSearch` adds a
loaded index and is the three-line happy path; :func:`build_index` indexes folders of memes on every core.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import embedders
from .dedupe import face_dhash
from .errors import FacialSearchError, ImageError, NoFaceError
from .faces import (
    TILE_MIN_CONFIDENCE,
    Face,
    FaceFinder,
    FaceFinderOptions,
    detect_in_crop,
    detect_in_tiles,
    whole_image_face,
)
from .imageio import IMAGE_SUFFIXES, load_image
from .index import EmbedderInfo, FileRecord, MemeIndex
from .progress import progress as progress_bar
from .workers import WorkerConfig, current_pipeline, default_workers, map_images


class Pipeline:
    """Decode, find faces and embed them, in this process (not thread-safe: one per thread/process).

    Args:
        embedder: embedder name (default :data:`facial_search.embedders.DEFAULT_EMBEDDER`) or instance.
        model_path: ``face_landmarker.task`` path; default found or downloaded by :mod:`facial_search.assets`.
        max_faces: most faces per image.
        tiles: where the whole image gives no face, look in overlapping tiles
            (:func:`facial_search.faces.detect_in_tiles`), for faces too small for the detector.
    """

    def __init__(self, embedder=None, model_path=None, max_faces: int = 8, tiles: bool = True):
        self.embedder = embedders.get_embedder(embedder) if embedder is None or isinstance(embedder, str) else embedder
        self.finder = FaceFinder.create_from_options(FaceFinderOptions(model_path=model_path, max_faces=max_faces))
        self.tiles = tiles
        self._tile_finder: FaceFinder | None = None

    def faces(self, image: np.ndarray, *, cropped: bool = False) -> list[Face]:
        """Faces in ``image`` (``(H, W, 3) uint8``), left to right: the whole image, else (``tiles``) its
        overlapping tiles. With ``cropped=True`` the image is a ready-made face crop
        (:func:`facial_search.faces.detect_in_crop`: padded, sharpened, plain), and when no face is found
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

    def to_json(self) -> dict:
        """The ``facial-search search --json`` document."""
        return {
            "image": self.image,
            "faces": [
                {
                    "box": list(fm.box),
                    "matches": [
                        {
                            "rank": m.rank,
                            "id": m.id,
                            "source": m.source,
                            "face": m.face,
                            "title": m.title,
                            "distance": round(float(m.distance), 6),
                        }
                        for m in fm.matches
                    ],
                }  # fmt: skip
                for fm in self.faces
            ],
        }


class FacialSearch:
    """Search a meme index with face photos: the three-line happy path.

    >>> fs = FacialSearch.open("memes.fsindex")
    >>> for face in fs.search("me.jpg", k=3):
    ...     print(face.box, [m.title for m in face.matches])
    """

    def __init__(self, index: MemeIndex, pipeline: Pipeline, index_path: str | None = None):
        self.index = index
        self.pipeline = pipeline
        self.index_path = index_path

    @classmethod
    def open(cls, index_path: str | os.PathLike, *, embedder=None, model_path=None, max_faces: int = 8) -> FacialSearch:
        """Load an index and build the pipeline that matches it.

        Raises:
            FileNotFoundError, IndexFormatError: the index cannot be read.
            EmbedderMismatchError: the index was built by another embedder than the one asked for.
            AssetError: the landmarker model cannot be found or downloaded.
        """
        index = MemeIndex.load(index_path)
        if embedder is None:
            embedder = index.embedder.name if index.embedder.name in embedders.available() else None
        pipeline = Pipeline(embedder=embedder, model_path=model_path, max_faces=max_faces)
        expect = EmbedderInfo.of(pipeline.embedder)
        if index.embedder != expect:
            pipeline.close()
            MemeIndex.load(index_path, expect=expect)  # raises EmbedderMismatchError with the message
        return cls(index, pipeline, str(index_path))

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
                matches.append(Match(rank, en.id, en.source, en.face, en.title, float(d), en.box))
            out.append(FaceMatches(face, matches, e))
        return SearchResult(name, out, rgb)

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> FacialSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Indexing: folders of memes, every core, resumable
# ---------------------------------------------------------------------------------------------------------


@dataclass
class IndexReport:
    """What one :func:`build_index` run did."""

    scanned: int = 0
    unchanged: int = 0
    processed: int = 0
    removed: int = 0
    added_faces: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class _FileResult:
    source: str
    size: int
    mtime_ns: int
    boxes: list
    embeddings: np.ndarray | None
    skipped: str | None
    hashes: list = field(default_factory=list)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders searched recursively by suffix), absolute, sorted,
    without duplicates. Raises ``FileNotFoundError`` for an input that does not exist."""
    found: dict[str, Path] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    found.setdefault(str(f.resolve()), f.resolve())
        elif p.exists():
            found.setdefault(str(p.resolve()), p.resolve())
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return [found[k] for k in sorted(found)]


#: How an index looked for a file's faces (:attr:`facial_search.index.FileRecord.finder`): the whole image
#: only (``--no-tiles``), or the whole image then its tiles (:meth:`Pipeline.faces`).
FINDER_WHOLE, FINDER_TILES = "whole", "whole+tiles"


def needs_indexing(record: FileRecord | None, stat: os.stat_result, finder: str) -> bool:
    """Whether a file must be (re)processed: new, changed (size or mtime), recorded by an index of format 1
    (no picture hashes), or recorded without a face by a weaker ``finder`` ("whole" when "whole+tiles" now)."""
    if record is None or record.size != stat.st_size or record.mtime_ns != stat.st_mtime_ns:
        return True
    if record.finder is None:
        return True
    return record.faces == 0 and record.finder == FINDER_WHOLE and finder == FINDER_TILES


def gone_sources(recorded: Iterable[str], inputs: Iterable[str | os.PathLike], found: Iterable[Path]) -> list[str]:
    """Recorded sources that lie under one of the folders in ``inputs``, are not among the images ``found``
    there now and no longer exist (deleted, renamed, moved): what an update of the index removes. A file
    still on disk (e.g. a hidden one indexed by name) is kept."""
    folders = [Path(p).resolve() for p in inputs if Path(p).is_dir()]
    present = {str(f) for f in found}
    return sorted(
        s
        for s in recorded
        if s not in present and any(Path(s).is_relative_to(d) for d in folders) and not os.path.lexists(s)
    )


def load_titles(csv_path: str | os.PathLike) -> dict[str, str]:
    """``{file name: title}`` from a sidecar CSV with columns ``file`` and ``title`` (e.g. ``imgflip.csv``)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames or "title" not in reader.fieldnames:
            raise FacialSearchError(f"{csv_path}: a titles CSV needs the columns 'file' and 'title'")
        return {row["file"]: row["title"] for row in reader if row.get("file")}


def title_from_filename(path: str | os.PathLike) -> str:
    """``Success-Kid.jpg`` -> ``Success Kid``."""
    return Path(path).stem.replace("-", " ").replace("_", " ").strip()


def _index_one(path: str) -> _FileResult:
    """Worker task: decode, find faces, embed one file; errors become a skip reason."""
    st = os.stat(path)
    pipeline = current_pipeline()
    try:
        rgb = load_image(path)
        faces = pipeline.faces(rgb)
        if not faces:
            return _FileResult(path, st.st_size, st.st_mtime_ns, [], None, "no face")
        boxes = [f.box for f in faces]
        return _FileResult(
            path,
            st.st_size,
            st.st_mtime_ns,
            boxes,
            pipeline.embed(rgb, faces),
            None,
            [face_dhash(rgb, b) for b in boxes],
        )
    except ImageError as e:
        return _FileResult(path, st.st_size, st.st_mtime_ns, [], None, f"unreadable: {str(e).split(': ', 1)[-1]}")


def build_index(
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    titles: str | os.PathLike | None = None,
    embedder: str | None = None,
    model_path: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    checkpoint_seconds: float = 15.0,
    tiles: bool = True,
) -> tuple[MemeIndex, IndexReport]:
    """Index every face of every image in ``inputs`` into ``out`` (created or updated).

    An existing index is updated: files whose size and mtime are unchanged are not processed again (unless
    :func:`needs_indexing` says the index predates what finds or hashes their faces now), changed files are
    re-indexed, new files added, and files recorded under a folder of ``inputs`` that are gone
    from disk (deleted, renamed) are removed with their faces, so the index mirrors its folders; files
    outside ``inputs`` are kept (one index can hold several folders). Files that cannot be read or have no
    face are recorded as skipped with a reason, never fatal. The index is saved atomically every
    ``checkpoint_seconds`` and at the end, so an interrupted run keeps what it had done. ``tiles``: see
    :class:`Pipeline`.

    Raises:
        EmbedderMismatchError: ``out`` exists and was built by another embedder.
        FileNotFoundError: an input does not exist.
    """
    t0 = time.perf_counter()
    emb = embedders.get_embedder(embedder)
    info = EmbedderInfo.of(emb)
    out = Path(out)
    index = MemeIndex.load(out, expect=info) if out.exists() else MemeIndex(info)
    title_map = load_titles(titles) if titles else {}
    inputs = list(inputs)
    files = find_images(inputs)
    report = IndexReport(scanned=len(files))
    for source in gone_sources(index.files, inputs, files):
        index.remove_source(source)
        report.removed += 1
    finder = FINDER_TILES if tiles else FINDER_WHOLE
    todo = []
    for f in files:
        if needs_indexing(index.files.get(str(f)), f.stat(), finder):
            todo.append(str(f))
        else:
            report.unchanged += 1
    workers = workers or default_workers()
    config = WorkerConfig(embedder=emb.name, model_path=str(model_path) if model_path else None, tiles=tiles)
    last_save = time.monotonic()
    results = map_images(_index_one, todo, config, workers=min(workers, max(1, len(todo))))
    bar = progress_bar(total=len(todo), desc="indexing", enabled=progress and bool(todo))
    try:
        for r in results:
            index.remove_source(r.source)
            if r.skipped:
                report.skipped[r.skipped.split(":")[0]] += 1
                report.skipped_files[r.source] = r.skipped
            else:
                title = title_map.get(Path(r.source).name) or title_from_filename(r.source)
                index.add(
                    r.embeddings,
                    [
                        {"source": r.source, "face": i, "box": b, "title": title, "picture_hash": h}
                        for i, (b, h) in enumerate(zip(r.boxes, r.hashes, strict=True))
                    ],
                )
                report.added_faces += len(r.boxes)
            index.record_file(r.source, FileRecord(r.size, r.mtime_ns, len(r.boxes), r.skipped, finder))
            report.processed += 1
            bar.update(1)
            if time.monotonic() - last_save > checkpoint_seconds:
                index.save(out)
                last_save = time.monotonic()
    finally:
        bar.close()
        if report.processed or report.removed or not out.exists():
            index.save(out)
        report.seconds = time.perf_counter() - t0
    return index, report
