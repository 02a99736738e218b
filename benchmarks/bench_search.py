"""One photo search, p50 time split into decode, landmarks, embedding and search.

Runs against an index of all imgflip memes (built into a temporary file first unless --index is given), and
reports each stage's p50 next to the whole, plus the share of each stage.

    python benchmarks/bench_search.py [--index memes.fsindex] [--repeat 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401
from _common import FACES, MEMES

from facial_search.indexing import build_index
from facial_search.io.images import load_image
from facial_search.pipeline import FacialSearch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", help="an existing index (default: index all imgflip memes first)")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--photo", default=str(FACES / "single_face.jpg"))
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    index = args.index
    if not index:
        index = str(Path(tmp.name) / "memes.fsindex")
        build_index([MEMES], index, progress=True)
    stages = {"decode": [], "landmarks": [], "embedding": [], "search": [], "total": []}
    with FacialSearch.open(index) as fs:
        p = fs.pipeline
        for i in range(args.repeat + 3):
            t0 = time.perf_counter()
            rgb = load_image(args.photo)
            t1 = time.perf_counter()
            faces = p.faces(rgb)
            t2 = time.perf_counter()
            emb = p.embed(rgb, faces)
            t3 = time.perf_counter()
            fs.index.search(emb, 3, group_by_source=True)  # what `search` does: one match per picture
            t4 = time.perf_counter()
            if i >= 3:  # warm-up
                for v, dt in zip(stages.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                    v.append(dt * 1000)
        n_faces = len(fs.index)
    med = {k: statistics.median(v) for k, v in stages.items()}
    print(f"one search of {Path(args.photo).name} against {n_faces} meme faces, p50 over {args.repeat} runs")
    for k in ("decode", "landmarks", "embedding", "search"):
        print(f"  {k:<10} {med[k]:7.2f} ms  ({med[k] / med['total']:5.1%})")
    print(f"  {'total':<10} {med['total']:7.2f} ms")
    print(f"embedding / landmarks: {med['embedding'] / med['landmarks']:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
