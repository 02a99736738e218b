"""``facial-search eval``: triplet accuracy of the embedder on a triplet CSV (FEC style)."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_model_options, check_at_least


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``eval`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("eval", help="triplet accuracy of the embedder on a triplet CSV (FEC style)")
    s.add_argument("triplets", metavar="TRIPLETS_CSV")
    s.add_argument(
        "--images",
        metavar="DIR",
        help="folder holding the triplets' images (default: the CSV's folder, as for ExpW's valid/...)",
    )
    s.add_argument(
        "--labels",
        metavar="CSV",
        help="file,emotion CSV (ExpW's labels.csv): also break the accuracy down by the labelled pair's emotion",
    )
    s.add_argument("--cropped", action="store_true", help="images are face crops: whole image when no face is found")
    s.add_argument("--transform", default="none", choices=["none", "mirror", "downscale2", "brighter", "darker"],
                   help="robustness check: transform every image first")  # fmt: skip
    s.add_argument("--workers", type=int, metavar="N")
    s.add_argument("--no-progress", action="store_true")
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.evaluate import evaluate

    check_at_least(args.workers, "--workers")
    report = evaluate(
        args.triplets, args.images, labels=args.labels, cropped=args.cropped, transform=args.transform, embedder=args.embedder,
        model_path=args.model, workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    print("\n".join(report.lines()))
    return 0
