"""Indexing: folders of meme images -> a :class:`~facial_search.index.MemeIndex`, on every core, resumable.

files ──find_images──▶ new or changed files ──parallel.map_images (one Pipeline a process)──▶
faces + embeddings + picture hashes ──MemeIndex.add──▶ saved atomically every few seconds
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facial_search import embedders
from facial_search.errors import FacialSearchError, ImageError
from facial_search.index.dedupe import face_dhash
from facial_search.index.store import EmbedderInfo, FileRecord, MemeIndex
from facial_search.io.images import IMAGE_SUFFIXES, load_image
from facial_search.io.progress import progress as progress_bar
from facial_search.parallel import WorkerConfig, current_pipeline, default_workers, map_images


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
