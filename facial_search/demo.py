"""The built-in default (``facial-search demo``, ``make demo``): index a meme collection, match the sample
photos, write a page and a picture of the results.

Memes: ``../shared/data/memes/imgflip`` when present (2,105 imgflip templates), else the original
tutorial's 359-meme list (``data/powder_gg_database.csv``: imgflip URLs with their sha256), downloaded
once into the user cache with every file checked against its sha256.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from facial_search.errors import FacialSearchError
from facial_search.io.assets import cache_dir

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
) -> tuple[int, list[str]]:
    """Download memes into ``dest`` (files already there with the right sha256 are kept).

    Args:
        items: ``[(sha256, url)]``, default :func:`meme_list` (the tutorial's 359 memes).
        base_url: fetch ``base_url + file name`` instead of each official URL (a mirror, or a test server).

    Returns:
        ``(files present, [failure messages])``; a failed or mismatching file is reported and left out.
    """
    from facial_search.io.progress import progress as progress_bar

    dest.mkdir(parents=True, exist_ok=True)
    items = meme_list() if items is None else items

    def fetch(item: tuple[str, str]) -> str | None:
        sha, url = item
        name = url.rsplit("/", 1)[-1]
        path = dest / name
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return None
        src = (base_url.rstrip("/") + "/" + name) if base_url else url
        try:
            with urllib.request.urlopen(src, timeout=30) as r:
                data = r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"{src}: {getattr(e, 'reason', e)}"
        if hashlib.sha256(data).hexdigest() != sha:
            return f"{src}: sha256 mismatch, discarded"
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return None

    with ThreadPoolExecutor(workers) as pool:
        errors = [
            e
            for e in progress_bar(pool.map(fetch, items), total=len(items), desc="downloading memes", enabled=progress)
            if e
        ]
    return len(items) - len(errors), errors


def run_demo(args) -> int:
    from facial_search import render
    from facial_search.errors import EmbedderMismatchError, NoFaceError
    from facial_search.indexing import build_index, find_images
    from facial_search.pipeline import FacialSearch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = find_shared()
    titles = None
    if args.memes:
        memes = Path(args.memes)
    elif shared and (shared / "data/memes/imgflip").is_dir():
        memes = shared / "data/memes/imgflip"
        titles = shared / "data/memes/imgflip.csv"
    else:
        memes = cache_dir() / "memes-powder-gg"
        print(f"no local meme folder: downloading the tutorial's memes into {memes}", file=sys.stderr)
        n, errors = download_memes(memes)
        for e in errors:
            print(f"  skipped {e}", file=sys.stderr)
        if n == 0:
            raise FacialSearchError("no meme could be downloaded; pass a meme folder with --memes DIR")
    photos = Path(args.photos) if args.photos else (shared / "data/faces" if shared else None)
    if photos is None or not photos.exists():
        raise FacialSearchError("no sample photos: pass a folder of face photos with --photos DIR")

    index_path = out / "memes.fsindex"
    print(f"indexing {memes} -> {index_path}", file=sys.stderr)

    def index_memes():
        return build_index([memes], index_path, titles=titles, embedder=args.embedder, model_path=args.model)

    try:
        index, report = index_memes()
    except EmbedderMismatchError:  # the demo's own index, made by an older model: start it again
        print(f"{index_path} was made by another embedder: rebuilding it", file=sys.stderr)
        index_path.unlink()
        index, report = index_memes()
    print(
        f"index: {len(index.files)} images, {len(index)} faces ({len(index.skipped)} images without a face or unreadable)"
    )

    results, skipped = [], {}
    with FacialSearch.open(index_path, embedder=args.embedder, model_path=args.model) as fs:
        for photo in find_images([photos]):
            try:
                r = fs.search(photo, k=args.k)
            except (NoFaceError, FacialSearchError) as e:
                skipped[str(photo)] = str(e).split(": ", 1)[-1]
                continue
            results.append(r)
            summary = "; ".join(
                f"face {i + 1}: " + ", ".join(m.title for m in fm.matches) for i, fm in enumerate(r.faces)
            )
            print(f"{photo.name}: {summary}")
    for photo, why in skipped.items():
        print(f"{Path(photo).name}: {why}")
    page, picture = out / "index.html", out / "results.png"
    render.save_html(results, page, title="facial-search demo: sample photos vs. memes", skipped=skipped)
    render.save_picture(results, picture)
    print(f"wrote {page.resolve()} and {picture.resolve()}")
    return 0
