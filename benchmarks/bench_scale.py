"""Scale: the exact index, its grouping search and its duplicate grouping against FAISS ``IndexFlatL2``.

Vectors that resemble real ones: real embeddings (default embedder) of FER+ test crops and imgflip memes,
cached in ``$TMPDIR/facial-search-bench``, each spread with small Gaussian noise (0 to ~0.3 apart) into
many; picture hashes are each base face's real dHash with 6-24 bits flipped (1 in 5 rows a near copy of
another row: same picture re-saved), so the duplicate rules have work to do. In one run: FAISS flat top-3
(the reference), ``MemeIndex.search`` top-3 plain and grouped, :func:`grouped_top_k` over FAISS, the
first ``source_groups`` (duplicate merge), ``add``, ``save``, ``load``, file size, RSS; ratios against FAISS.

    python benchmarks/bench_scale.py [--n 100000] [--queries 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets the model path, silences native logs)
import faiss
import numpy as np
from _common import MEMES, SHARED

from facial_search.index.dedupe import face_dhash
from facial_search.index.kernels import grouped_top_k
from facial_search.index.store import EmbedderInfo, MemeIndex

CACHE = Path(tempfile.gettempdir()) / "facial-search-bench"


def real_faces(n_fer: int = 600, n_memes: int = 150) -> tuple[np.ndarray, list[str]]:
    """``(embeddings (n, 64) float32, dHashes)`` of real FER+ crops and meme faces, cached."""
    cache = CACHE / f"real-{n_fer}-{n_memes}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["emb"], list(z["hashes"])
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    embs, hashes = [], []
    with Pipeline() as p:
        for f in sorted((SHARED / "data" / "ferplus" / "FER2013Test").glob("*.png"))[:n_fer]:
            rgb = load_image(f)
            embs.append(p.embed(rgb, p.faces(rgb, cropped=True)[:1])[0])
            hashes.append(face_dhash(rgb, (0, 0, rgb.shape[1], rgb.shape[0])))
        for f in sorted(MEMES.glob("*.jpg"))[:n_memes]:
            rgb = load_image(f)
            faces = p.faces(rgb)
            for face, e in zip(faces, p.embed(rgb, faces), strict=True):
                embs.append(e)
                hashes.append(face_dhash(rgb, face.box))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=np.stack(embs).astype(np.float32), hashes=np.array(hashes))
    return np.stack(embs).astype(np.float32), hashes


def spread(emb, hashes, n: int, seed: int = 0):
    """``n`` unit rows around the real ones, their hashes and entries (3 faces share a source now and then)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(emb), n)
    x = emb[base] + rng.normal(size=(n, emb.shape[1])).astype(np.float32) * rng.choice([0.003, 0.01, 0.03], (n, 1))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    h = np.array([int(s, 16) for s in hashes], dtype=np.uint64)[base]
    nflip = rng.choice([6, 10, 14, 18, 24], n)
    flips = np.zeros(n, dtype=np.uint64)
    for _ in range(24):
        pick = nflip > 0
        flips[pick] |= np.uint64(1) << rng.integers(0, 64, pick.sum()).astype(np.uint64)
        nflip -= 1
    h ^= flips
    copies = rng.random(n) < 0.2  # a re-saved picture: a near copy of an earlier row, hash within 3 bits
    src = rng.integers(0, np.maximum(np.arange(n), 1))
    x[copies] = x[src[copies]]
    h[copies] = h[src[copies]] ^ (np.uint64(1) << rng.integers(0, 64, copies.sum()).astype(np.uint64))
    source = np.arange(n) - np.where(rng.random(n) < 0.2, np.arange(n) % 3, 0)
    entries = [
        {
            "source": f"/memes/{s}.jpg",
            "face": 0,
            "box": [0, 0, 48, 48],
            "title": str(s),
            "picture_hash": f"{int(v):016x}",
        }
        for s, v in zip(source, h, strict=True)
    ]
    return x, entries


def p50_ms(fn, queries) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emb, hashes = real_faces()
    x, entries = spread(emb, hashes, args.n)
    queries = spread(emb, hashes, args.queries, seed=1)[0]
    r = {"n": args.n, "real_faces": len(emb), "threads": faiss.omp_get_max_threads()}

    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    r["faiss_flat_ms_p50"] = p50_ms(lambda q: flat.search(q, 3), queries)

    index = MemeIndex(EmbedderInfo("expression", "bench", x.shape[1]))
    t = time.perf_counter()
    index.add(x, entries)
    r["add_s"] = time.perf_counter() - t
    r["exact_ms_p50"] = p50_ms(lambda q: index.search(q, 3), queries)
    t = time.perf_counter()
    groups = index.source_groups()
    r["source_groups_s"] = time.perf_counter() - t
    r["sources"] = len({e["source"] for e in entries})
    r["pictures"] = int(groups.max()) + 1
    r["grouped_ms_p50"] = p50_ms(lambda q: index.search(q, 3, group_by_source=True), queries)

    def faiss_search(q):
        return grouped_top_k(lambda qi, kk: flat.search(q[qi], kk), len(q), groups, 3)

    r["grouped_top_k_faiss_ms_p50"] = p50_ms(faiss_search, queries)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.fsindex"
        t = time.perf_counter()
        index.save(path)
        r["save_s"] = time.perf_counter() - t
        r["file_mb"] = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
        t = time.perf_counter()
        MemeIndex.load(path)
        r["open_s"] = time.perf_counter() - t
    r["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, kB on Linux
    r["vectors_mb"] = x.nbytes / 2**20
    r["exact_vs_faiss"] = r["exact_ms_p50"] / r["faiss_flat_ms_p50"]
    r["grouped_vs_exact"] = r["grouped_ms_p50"] / r["exact_ms_p50"]
    r["grouped_top_k_faiss_vs_faiss"] = r["grouped_top_k_faiss_ms_p50"] / r["faiss_flat_ms_p50"]
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
        return
    print(f"{args.n:,} faces ({len(emb)} real faces spread), {r['sources']:,} sources -> {r['pictures']:,} pictures")
    for k, v in r.items():
        print(f"  {k:30s} {v:.4g}" if isinstance(v, float) else f"  {k:30s} {v}")
    print(f"  cpu: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
