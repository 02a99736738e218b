"""``facial-search demo``: index the built-in meme collection and match the sample photos."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_model_options


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``demo`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("demo", help="index the built-in meme collection and match the sample photos")
    s.add_argument("--memes", metavar="DIR", help="meme folder (default ../shared/data/memes/imgflip, else download)")
    s.add_argument("--photos", metavar="DIR", help="photos to match (default ../shared/data/faces)")
    s.add_argument("--out", default="demo-out", metavar="DIR", help="where the index, page and picture go")
    s.add_argument("-k", type=int, default=3)
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.demo import DemoConfig, run_demo

    config = DemoConfig(
        memes=args.memes, photos=args.photos, out=args.out, k=args.k, embedder=args.embedder, model_path=args.model
    )
    return run_demo(config)
