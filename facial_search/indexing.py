"""Indexing: folders of meme images -> any store (:func:`facial_search.index.open`), on every core, resumable.

files ──find_images──▶ new or changed files ──parallel.map_images (one Pipeline a process)──▶
faces + embeddings + picture hashes ──Store.add──▶ Store.commit every few seconds (a file store: saved atomically)
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facial_search import embedders
from facial_search.errors import ImageError, InputNotFoundError, OptionError, SkipReason, TitlesFileError
from facial_search.index.base import Store
from facial_search.index.dedupe import face_dhash
from facial_search.index.store import EmbedderInfo, FileRecord, file_path, open_store
from facial_search.io.csv_files import read_csv_rows
from facial_search.io.images import IMAGE_SUFFIXES, load_image
from facial_search.io.progress import progress as progress_bar
from facial_search.moments.decode import VIDEO_SUFFIXES, is_video
from facial_search.parallel import WorkerConfig, current_pipeline, map_images, resolve_workers

#: File name suffixes a folder run picks up: images, and videos (:mod:`facial_search.moments`: each face
#: track cut into moments, one entry each).
INDEXED_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


@dataclass
class IndexReport:
    """What one :func:`build_index` run did.

    Attributes:
        skipped: files skipped this run, counted by :class:`~facial_search.errors.SkipReason`.
        skipped_files: ``{source: recorded reason}`` of this run's skips (``"<reason>: <detail>"``, as
            :attr:`MemeIndex.skipped` records it; :meth:`SkipReason.parse` gives its reason back).
        unreadable_folders: ``{folder: problem}`` of folders under ``inputs`` that could not be listed; the
            images in them were not looked at (and those an earlier run indexed there are kept).
        seconds: wall-clock time of the run.
        videos, video_seconds: videos processed this run (indexed or skipped) and the seconds of video decoded.
        store: the store's :meth:`~facial_search.index.base.Store.describe` at the end of the run (faces,
            images, skipped, embedder, backend...; what ``facial-search index`` prints).
    """

    scanned: int = 0
    unchanged: int = 0
    processed: int = 0
    removed: int = 0
    added_faces: int = 0
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    skipped_files: dict[str, str] = field(default_factory=dict)
    unreadable_folders: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    store: dict = field(default_factory=dict)
    videos: int = 0
    video_seconds: float = 0.0


@dataclass(frozen=True)
class _FileResult:
    source: str
    size: int
    mtime_ns: int
    boxes: list
    embeddings: np.ndarray | None
    skipped: str | None
    hashes: list = field(default_factory=list)
    reason: SkipReason | None = None
    extras: list = field(default_factory=list)  # a video's moments: per face, {t_start, t_end, t_frame, track}
    blendshapes: list = field(default_factory=list)  # per face: (52,) float32 scores or None (empty: none at all)
    video_seconds: float = 0.0


def _skip(path: str, reason: SkipReason, detail: str = "", size: int = -1, mtime_ns: int = -1) -> _FileResult:
    """A skipped file's result; size and mtime -1 (stat failed) make the next run look at it again."""
    text = f"{reason.value}: {detail}" if detail else reason.value
    return _FileResult(path, size, mtime_ns, [], None, text, [], reason)


def find_images(inputs: Iterable[str | os.PathLike], unreadable: dict[str, str] | None = None) -> list[Path]:
    """Image and video files among ``inputs`` (files, or folders searched recursively by suffix,
    :data:`INDEXED_SUFFIXES`; symbolic links to
    folders are not followed, files whose name starts with a dot are left out), absolute, sorted, without
    duplicates.

    Args:
        inputs: files and folders.
        unreadable: if given, filled with ``{folder: problem}`` for every folder that could not be listed
            (permission denied, gone while walking); without it such a folder raises its ``OSError``.

    Raises:
        InputNotFoundError: an input does not exist.
        OSError: a folder cannot be listed and ``unreadable`` is None.
    """
    found: dict[str, Path] = {}

    def onerror(e: OSError) -> None:
        if unreadable is None:
            raise e
        unreadable[str(Path(e.filename).absolute())] = e.strerror or str(e)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for folder, _dirs, names in os.walk(p, onerror=onerror):
                for name in names:
                    f = Path(folder, name)
                    if f.suffix.lower() in INDEXED_SUFFIXES and not name.startswith(".") and f.is_file():
                        found.setdefault(str(f.resolve()), f.resolve())
        elif p.exists():
            found.setdefault(str(p.resolve()), p.resolve())
        else:
            raise InputNotFoundError(f"{p}: no such file or folder")
    return [found[k] for k in sorted(found)]


def is_video_suffix(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a video suffix (:data:`~facial_search.moments.decode.VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


#: What runs the per-file work (:func:`build_index`'s ``executor``): local processes, or a Ray cluster.
EXECUTORS = ("process", "ray")

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


def gone_sources(
    recorded: Iterable[str],
    inputs: Iterable[str | os.PathLike],
    found: Iterable[Path],
    unreadable: Iterable[str | os.PathLike] = (),
) -> list[str]:
    """Recorded sources that lie under one of the folders in ``inputs``, are not among the images ``found``
    there now and no longer exist (deleted, renamed, moved): what an update of the index removes. A file
    still on disk (e.g. a hidden one indexed by name), or under one of the ``unreadable`` folders (which could
    not be listed, so nothing is known of its files), is kept."""
    folders = [Path(p).resolve() for p in inputs if Path(p).is_dir()]
    blind = [Path(p).resolve() for p in unreadable]
    present = {str(f) for f in found}
    return sorted(
        s
        for s in recorded
        if s not in present
        and any(Path(s).is_relative_to(d) for d in folders)
        and not any(Path(s).is_relative_to(d) for d in blind)
        and not os.path.lexists(s)
    )


def load_titles(csv_path: str | os.PathLike) -> dict[str, str]:
    """``{file name: title}`` from a sidecar CSV with columns ``file`` and ``title`` (e.g. ``imgflip.csv``;
    other columns are ignored, rows with an empty ``file`` left out).

    Raises:
        InputNotFoundError: ``csv_path`` does not exist.
        TitlesFileError: the file is empty, binary, not UTF-8, lacks a column, has a malformed row, or holds
            no title; the message names the file (and the line).
    """
    titles = {
        row["file"].strip(): row["title"].strip()
        for _line, row in read_csv_rows(csv_path, ("file", "title"), TitlesFileError, "titles CSV")
        if row["file"].strip()
    }
    if not titles:
        raise TitlesFileError(f"{csv_path}: no titles (only a header line)")
    return titles


def title_from_filename(path: str | os.PathLike) -> str:
    """``Success-Kid.jpg`` -> ``Success Kid``."""
    return Path(path).stem.replace("-", " ").replace("_", " ").strip()


def _index_one(path: str) -> _FileResult:
    """Worker task: decode, find faces, embed one file. What can go wrong with one file (gone, unreadable,
    not an image, no face) becomes its skip reason, by the exception's type; it never stops the run."""
    try:
        st = os.stat(path)
    except OSError as e:
        return _skip(path, SkipReason.IO_ERROR, e.strerror or str(e))
    pipeline = current_pipeline()
    if is_video(path):
        return _index_video(path, st, pipeline)
    try:
        rgb = load_image(path)
    except ImageError as e:
        return _skip(path, e.skip_reason, str(e).split(": ", 1)[-1], st.st_size, st.st_mtime_ns)
    except OSError as e:  # gone or unreadable between the stat and the read
        return _skip(path, SkipReason.IO_ERROR, e.strerror or str(e), st.st_size, st.st_mtime_ns)
    faces = pipeline.faces(rgb)
    if not faces:
        return _skip(path, SkipReason.NO_FACE, "", st.st_size, st.st_mtime_ns)
    boxes = [f.box for f in faces]
    return _FileResult(
        path, st.st_size, st.st_mtime_ns, boxes, pipeline.embed(rgb, faces), None, [face_dhash(rgb, b) for b in boxes],
        blendshapes=[f.blendshapes for f in faces],
    )  # fmt: skip


def _index_video(path: str, st: os.stat_result, pipeline) -> _FileResult:
    """Worker task for a video (:mod:`facial_search.moments`): every face track cut into moments, one entry
    each (``face``: the moment's number in time order). A file that cannot be decoded (corrupt, audio only,
    no frame) is skipped with its reason; a truncated one gives the moments of what decodes."""
    from facial_search.moments import SAMPLE_MS, moment_entry, video_moments

    o = pipeline.finder.options
    try:
        found = video_moments(path, pipeline.embedder, sample_ms=getattr(pipeline, "sample_ms", SAMPLE_MS),
                              model_path=o.model_path, max_faces=o.max_faces, on_progress=_VIDEO_PROGRESS[0])  # fmt: skip
    except ImageError as e:
        return _skip(path, e.skip_reason, str(e).split(": ", 1)[-1], st.st_size, st.st_mtime_ns)
    except OSError as e:
        return _skip(path, SkipReason.IO_ERROR, e.strerror or str(e), st.st_size, st.st_mtime_ns)
    if not found.moments:
        return _FileResult(path, st.st_size, st.st_mtime_ns, [], None, SkipReason.NO_FACE.value, [],
                           SkipReason.NO_FACE, video_seconds=found.seconds)  # fmt: skip
    moments = found.moments
    extras = [{k: moment_entry(m, i, path, "")[k] for k in ("t_start", "t_end", "t_frame", "track")}
              for i, m in enumerate(moments)]  # fmt: skip
    return _FileResult(
        path, st.st_size, st.st_mtime_ns, [m.box for m in moments], np.stack([m.embedding for m in moments]),
        None, [m.picture_hash for m in moments], blendshapes=[m.blendshapes for m in moments], extras=extras,
        video_seconds=found.seconds,
    )  # fmt: skip


#: Called with the seconds done of the video being indexed, where that runs in this process (one file, or
#: ``workers=1``): the progress bar's hook, set by :func:`_fill`; ``None`` in worker processes.
_VIDEO_PROGRESS: list = [None]


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
    executor: str = "process",
    ray_address: str | None = None,
    ann=None,
    sample_ms: int = 250,
) -> tuple[Store, IndexReport]:
    """Index every face of every image in ``inputs`` into the store ``out`` (created or updated).

    ``out`` is any store URI (:func:`facial_search.index.open`): an index file (a plain path or ``file://``),
    ``milvus-lite://PATH.db``, ``milvus://HOST:PORT/COLLECTION``. It is opened with ``create=True`` and, for a
    file, ``writer=True``: the file's writer lock is held from before the index is read until its last save,
    so a second run into it is refused at once (:mod:`facial_search.index.lock`).

    An existing index is updated: files whose size and mtime are unchanged are not processed again (unless
    :func:`needs_indexing` says the index predates what finds or hashes their faces now), changed files are
    re-indexed, new files added, and files recorded under a folder of ``inputs`` that are gone
    from disk (deleted, renamed) are removed with their faces, so the index mirrors its folders; files
    outside ``inputs`` are kept (one index can hold several folders). Files that cannot be read or have no
    face are recorded as skipped with a reason, never fatal. The store is committed
    (:meth:`~facial_search.index.base.Store.commit`: a file is saved atomically) every ``checkpoint_seconds``
    and at the end, so an interrupted run keeps what it had done. ``tiles``: see :class:`Pipeline`.
    ``ann``: a file store's search, recorded in it (:func:`~facial_search.index.store.open_store`: HNSW
    parameters, ``"exact"``, or ``None`` to keep its setting).

    Videos (:data:`~facial_search.moments.decode.VIDEO_SUFFIXES`, and animated GIFs) are sampled every
    ``sample_ms`` milliseconds and each face track cut into moments (:mod:`facial_search.moments`), one entry
    each with ``t_start``, ``t_end``, ``t_frame``, ``track``; re-indexing treats them as it treats images.

    ``executor`` runs the per-file work (decode, faces, embedding): ``"process"`` (default) on ``workers``
    local processes (:mod:`facial_search.parallel`), ``"ray"`` on a Ray cluster (:mod:`facial_search.ray_executor`:
    ``ray_address`` ``None`` starts a local Ray with ``workers`` CPUs, or uses ``$RAY_ADDRESS``, else ``"auto"``,
    ``HOST:PORT`` or ``ray://HOST:PORT``; ``workers`` defaults to the cluster's CPUs); the index is the same
    either way.

    Everything that can be checked is checked before any image is processed: the embedder name, ``workers``,
    that ``out`` can be written (for a file), the existing index, the titles file, the inputs. Folders that
    cannot be listed are reported in :attr:`IndexReport.unreadable_folders`, not silently left out.

    Returns:
        ``(store, report)``: the store, closed (a :class:`~facial_search.index.MemeIndex` stays usable in
        memory; reopen another backend with :func:`facial_search.index.open`), and the :class:`IndexReport`.

    Raises:
        UnknownEmbedderError: no embedder named ``embedder``.
        OptionError: ``workers`` below 1, an unknown ``executor``, ``ray_address`` without ``executor="ray"``.
        OutputError: no file can be written at ``out`` (its folder is missing, a file, read-only; ``out`` is a
            folder).
        EmbedderMismatchError: ``out`` exists and was built by another embedder.
        IndexFormatError: ``out`` exists and is no index.
        IndexLockedError: another run is writing ``out`` (refused at once, before any work; see
            :mod:`facial_search.index.lock`).
        IndexURIError, MissingDependencyError, IndexBackendError: ``out`` is an unknown URI, or a Milvus one
            without pymilvus or whose server cannot be reached.
        TitlesFileError: a bad ``titles`` file.
        InputNotFoundError: an input (or ``titles``) does not exist.
        AssetError, ModelLoadError, WorkerStartError: the workers cannot build their pipeline (at once); or
            (``executor="ray"``) the Ray cluster cannot be reached, and MissingDependencyError: Ray is not
            installed.
    """
    t0 = time.perf_counter()
    emb = embedders.get_embedder(embedder)
    info = EmbedderInfo.of(emb)
    workers = _check_executor(executor, ray_address, workers)
    if isinstance(sample_ms, bool) or not isinstance(sample_ms, int) or sample_ms < 1:
        raise OptionError(f"sample_ms: must be a whole number of milliseconds >= 1 (got {sample_ms!r})")
    out_file = file_path(out)  # None: another backend (no file checks, no writer lock)
    store = open_store(out, embedder=info, create=True, writer=out_file is not None, ann=ann)
    try:
        report = _fill(store, out_file, inputs, titles, emb, model_path, workers, progress, checkpoint_seconds, tiles,
                       executor=executor, ray_address=ray_address, sample_ms=sample_ms)  # fmt: skip
        report.store = store.describe()
    finally:
        store.close()
    report.seconds = time.perf_counter() - t0
    return store, report


def _check_executor(executor: str, ray_address: str | None, workers: int | None) -> int | None:
    """``workers`` resolved for ``executor`` (``None`` stays ``None`` for Ray: the cluster's CPUs); raises
    OptionError for a bad combination, MissingDependencyError for ``"ray"`` without Ray, before any work."""
    if executor not in EXECUTORS:
        raise OptionError(f"executor: must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if executor != "ray":
        if ray_address is not None:
            raise OptionError("ray_address: only with executor='ray' (--ray-address needs --executor ray)")
        return resolve_workers(workers)
    from facial_search.ray_executor import import_ray

    import_ray()
    return None if workers is None else resolve_workers(workers)


def _map_files(todo: list[str], config: WorkerConfig, workers: int | None, executor: str, ray_address: str | None):
    """:func:`_index_one` over ``todo`` by ``executor`` (see :func:`build_index`), results in order."""
    if executor == "ray":
        from facial_search import ray_executor

        return ray_executor.map_images(_index_one, todo, config, workers=workers, address=ray_address)
    return map_images(_index_one, todo, config, workers=min(workers, max(1, len(todo))))


def _fill(store, out_file, inputs, titles, emb, model_path, workers, progress, checkpoint_seconds, tiles, *,
          executor="process", ray_address=None, sample_ms=250):  # fmt: skip
    """The work of :func:`build_index` on the open ``store``; returns the :class:`IndexReport`."""
    title_map = load_titles(titles) if titles else {}
    inputs = list(inputs)
    unreadable: dict[str, str] = {}
    files = find_images(inputs, unreadable)
    report = IndexReport(scanned=len(files), unreadable_folders=unreadable)
    for source in gone_sources(list(store.files), inputs, files, unreadable):
        store.remove_source(source)
        report.removed += 1
    finder = FINDER_TILES if tiles else FINDER_WHOLE
    todo = []
    for f in files:
        try:
            st = f.stat()
        except OSError:  # gone or unreadable since it was listed: the worker records why
            todo.append(str(f))
            continue
        if needs_indexing(store.files.get(str(f)), st, finder):
            todo.append(str(f))
        else:
            report.unchanged += 1
    config = WorkerConfig(embedder=emb.name, model_path=str(model_path) if model_path else None, tiles=tiles,
                          sample_ms=sample_ms)  # fmt: skip
    last_save = time.monotonic()
    results = _map_files(todo, config, workers, executor, ray_address)
    bar = progress_bar(total=len(todo), desc="indexing", enabled=progress and bool(todo))
    finished = False

    def video_progress(t: float) -> None:  # a long video indexed in this process: its seconds as they go
        bar.set_postfix_str(f"{report.video_seconds + t:.0f} s of video", refresh=False)
        bar.update(0)

    _VIDEO_PROGRESS[0] = video_progress if progress else None
    try:
        for r in results:
            store.remove_source(r.source)
            if r.reason is not None:
                report.skipped[r.reason] += 1
                report.skipped_files[r.source] = r.skipped
            else:
                title = title_map.get(Path(r.source).name) or title_from_filename(r.source)
                store.add(
                    r.embeddings,
                    [
                        {"source": r.source, "face": i, "box": b, "title": title, "picture_hash": h}
                        | (r.extras[i] if r.extras else {})
                        | ({"blendshapes": r.blendshapes[i]} if r.blendshapes else {})
                        for i, (b, h) in enumerate(zip(r.boxes, r.hashes, strict=True))
                    ],
                )
                report.added_faces += len(r.boxes)
            store.record_file(r.source, FileRecord(r.size, r.mtime_ns, len(r.boxes), r.skipped, finder))
            report.processed += 1
            if r.video_seconds or r.extras or is_video_suffix(r.source):
                report.videos += 1
                report.video_seconds += r.video_seconds
                bar.set_postfix_str(f"{report.video_seconds:.0f} s of video", refresh=False)
            bar.update(1)
            if time.monotonic() - last_save > checkpoint_seconds:
                store.commit()
                last_save = time.monotonic()
        finished = True
    finally:
        _VIDEO_PROGRESS[0] = None
        bar.close()
        new_file = out_file is not None and not out_file.exists()
        if report.processed or report.removed or (finished and (new_file or out_file is None)):
            store.commit()  # no empty index file on a failure
    return report
