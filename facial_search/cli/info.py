"""``facial-search info``: describe an index."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``info`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("info", help="describe an index")
    s.add_argument("index", metavar="INDEX")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.index.store import MemeIndex

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

        from facial_search.errors import SkipReason

        reasons = Counter(SkipReason.parse(why) for why in index.skipped.values())
        if reasons:
            print("  skipped:  " + ", ".join(f"{n} {why or 'other'}" for why, n in reasons.most_common()))
    return 0
