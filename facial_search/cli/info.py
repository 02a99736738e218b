"""``facial-search info``: describe an index (any store URI)."""

from __future__ import annotations

import argparse
import json

#: ``info --json`` keys, in order: the documented five, then the store's backend, URI and pictures.
JSON_KEYS = ("embedder", "dim", "images", "faces", "skipped", "backend", "uri", "pictures")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``info`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("info", help="describe an index")
    s.add_argument("index", metavar="INDEX", help="a file (memes.fsindex, file://...), milvus-lite://, milvus://")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search import index as fsi

    with fsi.open(args.index) as store:
        d = store.describe()
        reasons = _skip_reasons(store)
    doc = {key: d.get(key) for key in JSON_KEYS} | {k: v for k, v in d.items() if k not in JSON_KEYS}
    if args.json:
        print(json.dumps(doc))
        return 0
    version = f" v{d['embedder_version']}" if "embedder_version" in d else ""
    print(f"{args.index}")
    print(f"  backend:  {d['backend']}")
    print(f"  embedder: {d['embedder']}{version} ({d['dim']}-d)")
    print(f"  images:   {d['images']} ({d['skipped']} skipped)")
    print(f"  faces:    {d['faces']}" + (f" ({d['pictures']} pictures)" if d.get("pictures") is not None else ""))
    for key, value in d.items():
        if key not in JSON_KEYS and key != "embedder_version":
            print(f"  {key + ':':<9} {_show(value)}")
    if reasons:
        print("  skipped:  " + ", ".join(f"{n} {why or 'other'}" for why, n in reasons.most_common()))
    return 0


def _show(value) -> str:
    """A value of ``describe()`` as ``info`` prints it: a dict (ANN parameters) as ``ivf, nlist 4096, nprobe 16``
    (``kind`` first, by itself), a list as ``a, b, c`` (empty ones: ``none``), anything else as ``str``."""
    if isinstance(value, dict):
        return ", ".join(str(v) if k == "kind" else f"{k} {v}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _skip_reasons(store):
    """``Counter`` of the skip reasons of the store's files (:class:`~facial_search.errors.SkipReason`)."""
    from collections import Counter

    from facial_search.errors import SkipReason

    return Counter(SkipReason.parse(r.skipped) for r in store.files.values() if r.skipped)
