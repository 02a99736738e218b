"""``facial-search search``: the top-k memes for every face in a photo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facial_search.cli._common import add_index_option, add_match_options, add_model_options, check_at_least

#: ``--out`` extensions of a page (any other is a picture: :data:`PICTURE_SUFFIXES`).
PAGE_SUFFIXES = (".html", ".htm")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``search`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("search", help="find the top-k memes for every face in a photo")
    s.add_argument("image", metavar="IMAGE")
    add_index_option(s)
    add_match_options(s)
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument(
        "--explain",
        action="store_true",
        help="say why each meme matches: the (up to 3) blendshapes the two faces share most, e.g. jawOpen; "
        'with --json a match gets "explain": [{"blendshape", "query", "match"}], null where the index has none',
    )
    s.add_argument("--out", metavar="FILE", help="draw the result: .png/.jpg picture or .html page")
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.pipeline import FacialSearch

    check_at_least(args.k, "-k")
    from facial_search.index.store import MAX_K

    if args.k > MAX_K:
        from facial_search.errors import OptionError

        raise OptionError(f"-k: must be at most {MAX_K:,} (got {args.k:,})")
    if args.out:  # before the search: an output that cannot be written fails at once
        from facial_search.io.outputs import check_output_file

        check_output_file(args.out, suffixes=(*PAGE_SUFFIXES, *_picture_suffixes()))
    with FacialSearch.open(args.index, embedder=args.embedder, model_path=args.model) as fs:
        result = fs.search(args.image, k=args.k, group_by_source=not args.all_faces)
        if args.out:
            _write(result, Path(args.out))
    if args.json:
        print(json.dumps(result.to_json(explain=args.explain)))
    else:
        for i, fm in enumerate(result.faces):
            print(f"face {i + 1} at {list(fm.box)}:")
            for m in fm.matches:
                line = f"  {m.rank}. {m.title}  (distance {m.distance:.3f}, id {m.id}, {Path(m.source).name})"
                print(line.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))  # non-UTF-8 file names
                if args.explain:
                    print(f"     {_explained(fm.face.blendshapes, m.blendshapes)}")
        if args.out:
            print(f"wrote {args.out}")
    return 0


def _explained(query, match) -> str:
    """One line of ``--explain``: ``shares jawOpen (0.71 / 0.65), ...`` (query / meme scores)."""
    from facial_search.explain import shared_blendshapes

    shared = shared_blendshapes(query, match)
    if shared is None:
        return "shares: unknown (a face without blendshapes: an index built before they were stored?)"
    if not shared:
        return "shares: no blendshape above 0.1 on both faces"
    return "shares " + ", ".join(f"{s['blendshape']} ({s['query']:.2f} / {s['match']:.2f})" for s in shared)


#: ``--out`` picture extensions, kept where this Pillow can write their format (its own registry).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _picture_suffixes() -> list[str]:
    from PIL import Image

    Image.init()
    known = Image.registered_extensions()
    return [ext for ext in PICTURE_SUFFIXES if known.get(ext) in Image.SAVE]


def _write(result, out: Path) -> None:
    """Draw ``result`` to ``out``; on a failure (a full disk) no new, partial file is left behind."""
    from facial_search import render

    existed = out.exists()
    try:
        if out.suffix.lower() in PAGE_SUFFIXES:
            render.save_html(result, out)
        else:
            render.save_picture(result, out)
    except BaseException:
        if not existed:
            out.unlink(missing_ok=True)
        raise
