"""The built-in default (``facial-search demo``, ``make demo``): index a meme collection, match the sample
photos, write a page and a picture of the results.

Memes: ``../shared/data/memes/imgflip`` when present (2,105 imgflip templates), else the original
tutorial's 359-meme list (``data/powder_gg_database.csv``: imgflip URLs with their sha256), downloaded
once into the user cache with every file checked against its sha256. Videos: ``../shared/data/videos`` when
present, indexed beside the memes as moments (:mod:`facial_search.moments`); the page then shows, under each
photo's memes, its nearest video moments with their times.
"""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from facial_search.errors import AssetError, FacialSearchError, InputNotFoundError, OptionError
from facial_search.io.assets import cache_dir, fetch

#: Where the project's development data lives (a checkout with ../shared beside it).
SHARED_CANDIDATES = ("../shared", "shared")


def find_shared() -> Path | None:
    """``$FACIAL_SEARCH_SHARED``, else ``../shared`` or ``./shared`` if present."""
    env = os.environ.get("FACIAL_SEARCH_SHARED")
    for c in ([env] if env else []) + list(SHARED_CANDIDATES):
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    return None


def meme_list() -> list[tuple[str, str]]:
    """``[(sha256, url)]`` of the original tutorial's meme database (359 imgflip templates)."""
    text = resources.files("facial_search").joinpath("data/powder_gg_database.csv").read_text(encoding="utf-8")
    return [(r["sha256"], r["url"]) for r in csv.DictReader(text.splitlines())]


def download_memes(
    dest: Path,
    items: list[tuple[str, str]] | None = None,
    *,
    base_url: str | None = None,
    workers: int = 8,
    progress: bool = True,
    timeout: float = 30.0,
) -> tuple[int, list[str]]:
    """Download memes into ``dest`` (files already there with the right sha256 are kept), each through
    :func:`facial_search.io.assets.fetch` (sha256-checked, atomic).

    Args:
        items: ``[(sha256, url)]``, default :func:`meme_list` (the tutorial's 359 memes).
        base_url: fetch ``base_url + file name`` instead of each official URL (a mirror, or a test server).
        workers: downloads at once (threads).
        timeout: seconds to wait for a server, per file.

    Returns:
        ``(files present, [failure messages])``: a failed or mismatching file is reported
        (``"<url>: <problem>"``, one line) and left out; nothing of it is left in ``dest``.
    """
    from facial_search.io.progress import progress as progress_bar

    dest.mkdir(parents=True, exist_ok=True)
    items = meme_list() if items is None else items

    def get(item: tuple[str, str]) -> str | None:
        sha, url = item
        name = url.rsplit("/", 1)[-1]
        src = (base_url.rstrip("/") + "/" + name) if base_url else url
        try:
            fetch(src, sha, dest / name, timeout=timeout)
        except AssetError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(workers) as pool:
        errors = [
            e
            for e in progress_bar(pool.map(get, items), total=len(items), desc="downloading memes", enabled=progress)
            if e
        ]
    return len(items) - len(errors), errors


@dataclass(frozen=True)
class DemoConfig:
    """What :func:`run_demo` does (``facial-search demo``'s options).

    Attributes:
        memes: the meme folder to index; ``None``: ``../shared/data/memes/imgflip`` (with its titles CSV) when
            present, else the tutorial's 359 memes downloaded into ``<user cache>/memes-powder-gg``.
        photos: the photos to match; ``None``: ``../shared/data/faces``.
        out: folder for ``memes.fsindex``, ``index.html`` and ``results.png`` (created).
        k: matches per face, >= 1.
        embedder: embedder name; ``None``: the default.
        model_path: ``face_landmarker.task``; ``None``: found or downloaded (:mod:`facial_search.io.assets`).
        videos: a folder of videos indexed beside the memes (moments); ``None``: ``../shared/data/videos``
            when present, else none; ``""``: none.
    """

    memes: str | os.PathLike | None = None
    photos: str | os.PathLike | None = None
    out: str | os.PathLike = "demo-out"
    k: int = 3
    embedder: str | None = None
    model_path: str | os.PathLike | None = None
    videos: str | os.PathLike | None = None


def _moment_results(fs, result, k: int):
    """``result`` (a photo's search) again, against the video moments of ``fs``'s index only: each face's k
    nearest moments (any video; several of one video), as a :class:`SearchResult` named ``<photo> · moments``.
    ``None`` when the index holds no moment."""
    from facial_search.pipeline import FaceMatches, Match, SearchResult, _moment_of

    moments = {e.id: e for e in fs.index.entries() if e.t_start is not None}
    if not moments:
        return None
    faces = []
    for fm in result.faces:
        dist, ids = fs.index.search(fm.embedding[None], min(fs.index.ntotal, 10_000))
        found = [(float(d), moments[int(i)]) for d, i in zip(dist[0], ids[0], strict=True) if int(i) in moments][:k]
        matches = [Match(r, e.id, e.source, e.face, e.title, d, e.box, *_moment_of(e))
                   for r, (d, e) in enumerate(found, start=1)]  # fmt: skip
        faces.append(FaceMatches(fm.face, matches, fm.embedding))
    return SearchResult(f"{result.image} · moments", faces, result.rgb)


def run_demo(config: DemoConfig) -> int:
    """Index the memes, match every photo, write ``index.html`` and ``results.png`` into ``config.out``.

    Prints one line per photo (its faces' matches, or why it was skipped) and the paths written. An index left in
    ``config.out`` by another embedder is the demo's own: it is rebuilt. Returns 0.

    Raises:
        OptionError: ``k`` < 1. InputNotFoundError: the meme or photo folder does not exist, or there is none.
        AssetError: no meme could be downloaded, or the landmarker model is missing. OutputError: ``out`` or
            a file in it cannot be written.
    """
    from facial_search import render
    from facial_search.errors import EmbedderMismatchError, OutputError
    from facial_search.index.store import MAX_K
    from facial_search.indexing import build_index, find_images
    from facial_search.pipeline import FacialSearch

    if not 1 <= config.k <= MAX_K:
        raise OptionError(f"-k: must be from 1 to {MAX_K:,} (got {config.k})")
    shared = find_shared()
    photos = Path(config.photos) if config.photos else (shared / "data/faces" if shared else None)
    if photos is None:
        raise InputNotFoundError("no sample photos: pass a folder of face photos with --photos DIR")
    if not photos.exists():
        raise InputNotFoundError(f"{photos}: no such photo folder")
    titles = None
    if config.memes:
        memes = Path(config.memes)
        if not memes.is_dir():
            raise InputNotFoundError(f"{memes}: no such meme folder")
    elif shared and (shared / "data/memes/imgflip").is_dir():
        memes = shared / "data/memes/imgflip"
        titles = shared / "data/memes/imgflip.csv"
    else:
        memes = None
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the folder: {e.strerror or e}") from None
    if memes is None:
        memes = cache_dir() / "memes-powder-gg"
        print(f"no local meme folder: downloading the tutorial's memes into {memes}", file=sys.stderr)
        n, errors = download_memes(memes)
        for e in errors:
            print(f"  skipped {e}", file=sys.stderr)
        if n == 0:
            raise AssetError("no meme could be downloaded; pass a meme folder with --memes DIR")

    if config.videos:
        videos = Path(config.videos)
        if not videos.is_dir():
            raise InputNotFoundError(f"{videos}: no such video folder")
    elif config.videos is None and shared and (shared / "data/videos").is_dir():
        videos = shared / "data/videos"
    else:
        videos = None

    index_path = out / "memes.fsindex"
    inputs = [memes] + ([videos] if videos else [])
    print(f"indexing {', '.join(map(str, inputs))} -> {index_path}", file=sys.stderr)

    def index_memes():
        return build_index(inputs, index_path, titles=titles, embedder=config.embedder, model_path=config.model_path)

    try:
        _store, report = index_memes()
    except EmbedderMismatchError:  # the demo's own index, made by an older model: start it again
        print(f"{index_path} was made by another embedder: rebuilding it", file=sys.stderr)
        index_path.unlink()
        _store, report = index_memes()
    d = report.store  # the index's describe()
    print(f"index: {d['images']} images, {d['faces']} faces ({d['skipped']} images without a face or unreadable)")

    results, skipped = [], {}
    with FacialSearch.open(index_path, embedder=config.embedder, model_path=config.model_path) as fs:
        for photo in find_images([photos]):
            try:
                r = fs.search(photo, k=config.k)
            except FacialSearchError as e:  # no face, not an image...: reported, never fatal
                skipped[str(photo)] = str(e).split(": ", 1)[-1]
                continue
            results.append(r)
            summary = "; ".join(
                f"face {i + 1}: " + ", ".join(m.title for m in fm.matches) for i, fm in enumerate(r.faces)
            )
            print(render.displayable(f"{photo.name}: {summary}"))
            moments = _moment_results(fs, r, config.k) if videos else None
            if moments is not None:
                results.append(moments)
    for photo, why in skipped.items():
        print(render.displayable(f"{Path(photo).name}: {why}"))
    page, picture = out / "index.html", out / "results.png"
    render.save_html(results, page, title="facial-search demo: sample photos vs. memes", skipped=skipped)
    render.save_picture(results, picture)
    print(f"wrote {page.resolve()} and {picture.resolve()}")
    return 0
