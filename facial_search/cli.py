"""The ``facial-search`` command line: index, search, info, eval, live, serve, demo.

Errors a user can cause (a bad image, no face, a missing model, a mismatched index) print one line,
``facial-search: error: ...``, and exit with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .native_log import silence_native_stderr

    silence_native_stderr()
    from .errors import FacialSearchError

    try:
        return int(args.func(args) or 0)
    except (FacialSearchError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"facial-search: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facial-search: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facial-search", description="Find the memes whose facial expression matches yours."
    )
    p.add_argument("--version", action="version", version=f"facial-search {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, embedder=True):
        sp.add_argument(
            "--model", metavar="PATH", help="face_landmarker.task (default: $FACIAL_SEARCH_MODELS, cache, or download)"
        )
        if embedder:
            sp.add_argument(
                "--embedder", metavar="NAME", help="expression embedder (default: the index's, else the default)"
            )

    s = sub.add_parser("index", help="index the faces of meme images (creates or updates an index file)")
    s.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="image files or folders (searched recursively)")
    s.add_argument("--out", required=True, metavar="INDEX", help="index file to create or update (e.g. memes.fsindex)")
    s.add_argument("--titles", metavar="CSV", help="sidecar CSV with columns file,title (e.g. imgflip.csv)")
    s.add_argument("--workers", type=int, metavar="N", help="worker processes (default: one per core)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--no-tiles", action="store_true",
                   help="no second look in tiles where the whole image shows no face (faster)")  # fmt: skip
    s.add_argument("--checkpoint-seconds", type=float, default=15.0, metavar="S",
                   help="save the index atomically at least this often while indexing (default 15)")  # fmt: skip
    common(s)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="find the top-k memes for every face in a photo")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("-k", type=int, default=3, help="matches per face (default 3)")
    s.add_argument("--all-faces", action="store_true",
                   help="the k nearest meme faces, even several of one meme (default: k different memes)")  # fmt: skip
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--out", metavar="FILE", help="draw the result: .png/.jpg picture or .html page")
    common(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("info", help="describe an index")
    s.add_argument("index", metavar="INDEX")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("eval", help="triplet accuracy of the embedder on a triplet CSV (FEC style)")
    s.add_argument("triplets", metavar="TRIPLETS_CSV")
    s.add_argument("--images", required=True, metavar="DIR", help="folder holding the triplets' images")
    s.add_argument("--cropped", action="store_true", help="images are face crops: whole image when no face is found")
    s.add_argument("--transform", default="none", choices=["none", "mirror", "downscale2", "brighter", "darker"],
                   help="robustness check: transform every image first")  # fmt: skip
    s.add_argument("--workers", type=int, metavar="N")
    s.add_argument("--no-progress", action="store_true")
    common(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("live", help="match memes live on a webcam or a video, with a smoothed face mesh")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera number (default 0 when no --video)")
    src.add_argument("--video", metavar="FILE", help="video file instead of a camera")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("--output", metavar="OUT.mp4", help="write the annotated video")
    s.add_argument("--log", metavar="OUT.jsonl", help="write one JSON line per frame")
    s.add_argument("--no-window", action="store_true", help="run headless")
    s.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror the picture (default: on for a camera, off for a video)")  # fmt: skip
    s.add_argument("-k", type=int, default=3)
    s.add_argument("--all-faces", action="store_true",
                   help="the k nearest meme faces, even several of one meme (default: k different memes)")  # fmt: skip
    s.add_argument("--min-cutoff", type=float, default=None, help="One Euro filter min_cutoff, Hz")
    s.add_argument("--beta", type=float, default=None, help="One Euro filter beta (speed coefficient)")
    s.add_argument("--d-cutoff", type=float, default=None, help="One Euro filter d_cutoff, Hz")
    s.add_argument("--embed-every", type=int, default=3, metavar="N",
                   help="embed and search each face every N frames (default 3)")  # fmt: skip
    s.add_argument("--no-filter", action="store_true", help="no landmark smoothing (for comparison)")
    s.add_argument("--no-hysteresis", action="store_true", help="no match hysteresis (for comparison)")
    common(s)
    s.set_defaults(func=cmd_live)

    s = sub.add_parser("serve", help="serve the phone-ready web page and API")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, metavar="N", help="pipelines in the pool (default: one per core)")
    s.add_argument(
        "--certfile", metavar="PEM", help="TLS certificate: serve HTTPS (phones allow the camera only on HTTPS)"
    )
    s.add_argument("--keyfile", metavar="PEM", help="TLS private key for --certfile")
    common(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="index the built-in meme collection and match the sample photos")
    s.add_argument("--memes", metavar="DIR", help="meme folder (default ../shared/data/memes/imgflip, else download)")
    s.add_argument("--photos", metavar="DIR", help="photos to match (default ../shared/data/faces)")
    s.add_argument("--out", default="demo-out", metavar="DIR", help="where the index, page and picture go")
    s.add_argument("-k", type=int, default=3)
    common(s)
    s.set_defaults(func=cmd_demo)
    return p


def _print_index_summary(index, report, out) -> None:
    print(
        f"{out}: {report.scanned} images scanned, {report.processed} processed, {report.unchanged} unchanged"
        + (f", {report.removed} gone from the folder removed" if report.removed else "")
        + f"; +{report.added_faces} faces in {report.seconds:.1f} s"
    )
    print(
        f"index: {len(index.files)} images, {len(index)} faces, {len(index.skipped)} skipped, embedder {index.embedder}"
    )
    if report.skipped:
        print("skipped this run: " + ", ".join(f"{n} {why}" for why, n in report.skipped.most_common()))
        for src, why in sorted(report.skipped_files.items()):
            if why != "no face":
                print(f"  {src}: {why}")


def cmd_index(args) -> int:
    from .pipeline import build_index

    index, report = build_index(
        args.inputs, args.out, titles=args.titles, embedder=args.embedder, model_path=args.model,
        workers=args.workers, progress=not args.no_progress, checkpoint_seconds=args.checkpoint_seconds,
        tiles=not args.no_tiles,
    )  # fmt: skip
    _print_index_summary(index, report, args.out)
    return 0


def cmd_search(args) -> int:
    from .pipeline import FacialSearch

    if args.k < 1:
        raise SystemExit("facial-search: error: -k must be >= 1")
    with FacialSearch.open(args.index, embedder=args.embedder, model_path=args.model) as fs:
        result = fs.search(args.image, k=args.k, group_by_source=not args.all_faces)
        if args.out:
            from . import render

            if Path(args.out).suffix.lower() in (".html", ".htm"):
                render.save_html(result, args.out)
            else:
                render.save_picture(result, args.out)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for i, fm in enumerate(result.faces):
            print(f"face {i + 1} at {list(fm.box)}:")
            for m in fm.matches:
                print(f"  {m.rank}. {m.title}  (distance {m.distance:.3f}, id {m.id}, {Path(m.source).name})")
        if args.out:
            print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    from .index import MemeIndex

    index = MemeIndex.load(args.index)
    doc = {"embedder": index.embedder.name, "dim": index.embedder.dim, "images": len(index.files),
           "faces": len(index), "skipped": len(index.skipped)}  # fmt: skip
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{args.index}")
        print(f"  embedder: {index.embedder}")
        print(f"  images:   {doc['images']} ({doc['skipped']} skipped)")
        print(f"  faces:    {doc['faces']}")
        from collections import Counter

        reasons = Counter(why.split(":")[0] for why in index.skipped.values())
        if reasons:
            print("  skipped:  " + ", ".join(f"{n} {why}" for why, n in reasons.most_common()))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate

    report = evaluate(
        args.triplets, args.images, cropped=args.cropped, transform=args.transform, embedder=args.embedder,
        model_path=args.model, workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    print("\n".join(report.lines()))
    return 0


def cmd_live(args) -> int:
    from .live import run_live

    return run_live(args)


def cmd_serve(args) -> int:
    from .web import serve

    return serve(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
