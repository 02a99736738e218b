"""Scale: the file store (format 3) against FAISS ``IndexFlatL2``: exact and grouping search, add, commit,
open, RSS, and adding 10,000 faces to a full store.

Vectors that resemble real ones: real embeddings (default embedder) of FER+ test crops and imgflip memes,
cached in ``$TMPDIR/facial-search-bench``, each spread with small Gaussian noise (0 to ~0.3 apart) into
many; picture hashes are each base face's real dHash with 6-24 bits flipped (1 in 5 rows a near copy of
another row: same picture re-saved), so the duplicate rules have work to do. In one run: FAISS flat top-3
(the reference), ``MemeIndex.search`` top-3 plain and grouped, ``add`` of all rows, the first commit (the
picture groups of every row, then the whole file), 10,000 more added and committed (an append), then in
fresh processes (so that their RSS is the store's): open, searches and peak RSS; open, add 10,000 faces, their
picture groups, the commit (an append). Ratios against FAISS.

    python benchmarks/bench_scale.py [--n 100000] [--queries 50] [--ann ivf|hnsw|none] [--ref-n 200000]
                                     [--milvus-n N] [--json]

``--ann KIND`` (default ``ivf``) adds the ANN index's figures (``bench_ann.ann_figures``: ``ann_ms_p50``,
``ann_ms_p99``, ``ann_recall_at_3``, ``ann_build_s``, ``ann_bytes``; the index built over the same vectors,
outside the store), ``ann_add_10k_s`` (10,000 rows added to it built on the others) and the ANN-add reference,
stock FAISS HNSW's own add of 10,000 rows at ``--ref-n`` rows (``faiss_hnsw_add_10k_s``, beside ours at that
size: ``ann_add_vs_faiss_hnsw``). Milvus Lite (``bench_milvus.lite_search``): the first ``--milvus-n`` rows
(default ``min(n, 200000)``: a Lite fill runs at a few thousand rows a second) filled with their groups, top-3
p50 (``milvus_lite_ms_p50``, at ``milvus_lite_n`` rows) against FAISS flat over the same rows.

The functions are separate (``real_faces``, ``spread``, ``bench_search``, ``bench_build``, ``bench_open``,
``bench_add``) so that other benchmarks can reuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets the model path, silences native logs)
import faiss
import numpy as np
from _common import MEMES, SHARED

from facial_search.index.dedupe import face_dhash
from facial_search.index.store import EmbedderInfo, MemeIndex

CACHE = Path(tempfile.gettempdir()) / "facial-search-bench"
INFO = EmbedderInfo("expression", "bench", 64)


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


def spread(emb, hashes, n: int, seed: int = 0, prefix: str = ""):
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
            "source": f"/memes/{prefix}{s}.jpg",
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


def bench_search(index: MemeIndex, x: np.ndarray, queries: np.ndarray) -> dict:
    """FAISS ``IndexFlatL2`` top-3 (the reference, on a copy of the rows) and the store's top-3, plain and
    grouped, interleaved query by query (so that a busy machine slows all three alike); p50 milliseconds."""
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    index.search(queries[:1], 3, group_by_source=True)  # the first grouping search makes its caches
    times: dict[str, list[float]] = {"faiss_flat_ms_p50": [], "exact_ms_p50": [], "grouped_ms_p50": []}
    for _ in range(2):
        for q in queries:
            for key, fn in (
                ("faiss_flat_ms_p50", lambda v: flat.search(v, 3)),
                ("exact_ms_p50", lambda v: index.search(v, 3)),
                ("grouped_ms_p50", lambda v: index.search(v, 3, group_by_source=True)),
            ):
                t = time.perf_counter()
                fn(q[None])
                times[key].append((time.perf_counter() - t) * 1000)
    r = {k: statistics.median(v) for k, v in times.items()}
    r["exact_vs_faiss"] = r["exact_ms_p50"] / r["faiss_flat_ms_p50"]
    r["grouped_vs_exact"] = r["grouped_ms_p50"] / r["exact_ms_p50"]
    return r


def bench_build(path: Path, x: np.ndarray, entries: list[dict]) -> tuple[MemeIndex, dict]:
    """``add`` of every row, then the first commit (picture groups of all rows, then the whole file)."""
    index = MemeIndex(INFO, path=path)
    t = time.perf_counter()
    index.add(x, entries)
    r = {"add_s": time.perf_counter() - t}
    t = time.perf_counter()
    index.source_groups()
    r["group_all_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index.commit()
    r["first_commit_s"] = time.perf_counter() - t
    r["file_mb"] = path.stat().st_size / 2**20
    r["pictures"] = int(index.source_groups().max()) + 1
    return index, r


_CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
t0 = time.perf_counter()
from facial_search.index.store import MemeIndex
import numpy as np
t = time.perf_counter()
index = MemeIndex.load({path!r})
r = {{"open_s": time.perf_counter() - t, "import_s": t - t0}}
{body}
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
r["rss_mb"] = int(status["VmHWM"].split()[0]) / 1024  # peak RSS of this process (ru_maxrss carries the parent's)
r["rss_now_mb"] = int(status["VmRSS"].split()[0]) / 1024
print(json.dumps(r))
"""

_SEARCHES = """
import bench_scale as bs
q = bs.spread(*bs.real_faces(), 20, seed=1)[0]
t = time.perf_counter(); index.search(q[:1], 3, group_by_source=True); r["first_grouped_s"] = time.perf_counter() - t
for v in q:
    index.search(v[None], 3); index.search(v[None], 3, group_by_source=True)
"""

_ADD = """
import bench_scale as bs
emb, hashes = bs.real_faces()
x, entries = bs.spread(emb, hashes, 10_000, seed=7, prefix="new-")
size = __import__("os").path.getsize({path!r})
t = time.perf_counter()
index.add(x, entries)
r["add_10k_only_s"] = time.perf_counter() - t
t1 = time.perf_counter()
index.source_groups()
r["add_10k_group_s"] = time.perf_counter() - t1
t1 = time.perf_counter()
index.commit()
r["add_10k_append_s"] = time.perf_counter() - t1
r["add_10k_s"] = time.perf_counter() - t
r["add_10k_file_growth_mb"] = (__import__("os").path.getsize({path!r}) - size) / 2**20
"""


def _child(path: Path, body: str) -> dict:
    bench = str(Path(__file__).resolve().parent)
    code = _CHILD.format(bench=bench, path=str(path), body=body.format(path=str(path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_open(path: Path) -> dict:
    """In a fresh process: open the store, 20 plain and grouped searches; open time and peak RSS."""
    return _child(path, _SEARCHES)


def bench_add(path: Path) -> dict:
    """In a fresh process: open the store, add 10,000 faces and commit (an append): the time from the add."""
    r = _child(path, _ADD)
    return {k: v for k, v in r.items() if k.startswith("add_10k")}


def bench_ann(kind: str, x: np.ndarray, queries: np.ndarray, ref_n: int) -> dict:
    """The ANN figures: our ``kind`` index (``bench_ann.ann_figures``: built over all rows, single-query top-3
    p50/p99, recall@3 against exact); adding 10,000 rows to ours built on the other ``n - 10,000``
    (``ann_add_10k_s``); and the ANN-add reference, stock FAISS ``IndexHNSWFlat`` (M 32, efConstruction 80)
    built on the first ``ref_n - 10,000`` rows, given the next 10,000 (``faiss_hnsw_add_10k_s``), beside ours
    the same way at ``ref_n`` (``ann_add_10k_at_ref_n_s``, ``ann_add_vs_faiss_hnsw``)."""
    from bench_ann import REF_EF_CONSTRUCTION, REF_M, ann_figures
    from bench_ann import build as build_ann

    from facial_search.index.ann import PARAMS

    r = ann_figures(kind, x, queries)
    add_n = 10_000
    built: dict = {}
    build_ann(kind, x, add_n, PARAMS[kind](), built)
    r["ann_add_10k_s"] = built[f"{kind}_add_10k_s"]
    ref_n = min(ref_n, len(x))
    ref = faiss.IndexHNSWFlat(x.shape[1], REF_M)
    ref.hnsw.efConstruction = REF_EF_CONSTRUCTION
    ref.add(x[: ref_n - add_n])
    t = time.perf_counter()
    ref.add(x[ref_n - add_n : ref_n])
    r["faiss_hnsw_add_10k_s"] = time.perf_counter() - t
    r["faiss_hnsw_n"] = ref_n
    del ref
    if ref_n < len(x):
        built = {}
        build_ann(kind, x[:ref_n], add_n, PARAMS[kind](), built)
    r["ann_add_10k_at_ref_n_s"] = built[f"{kind}_add_10k_s"]
    r["ann_add_vs_faiss_hnsw"] = r["ann_add_10k_at_ref_n_s"] / r["faiss_hnsw_add_10k_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50, help="timed queries of the exact and grouped searches")
    ap.add_argument("--ann-queries", type=int, default=1000,
                    help="queries of the ANN figures (recall@3 over all, p50/p99 over the first 500)")  # fmt: skip
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ann", choices=["hnsw", "ivf", "none"], default="ivf",
                    help="the ANN index measured (bench_ann.ann_figures), or none")  # fmt: skip
    ap.add_argument("--ref-n", type=int, default=200_000,
                    help="rows of the FAISS HNSW add reference (at most --n; its build is slow)")  # fmt: skip
    ap.add_argument("--milvus-n", type=int, help="rows filled into Milvus Lite (default min(n, 200000); 0: none)")
    args = ap.parse_args()
    milvus_n = min(args.n, 200_000) if args.milvus_n is None else min(args.milvus_n, args.n)
    emb, hashes = real_faces()
    x, entries = spread(emb, hashes, args.n)
    queries = spread(emb, hashes, args.queries, seed=1)[0]
    r = {"n": args.n, "real_faces": len(emb), "threads": faiss.omp_get_max_threads(), "cpu": _cpu()}
    r["load_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = Path(tmp) / "scale.fsindex"
        index, built = bench_build(path, x, entries)
        r |= built
        r["sources"] = len({e["source"] for e in entries})
        lite_groups = [f"#{g}" for g in index.source_groups()[:milvus_n].tolist()]
        r |= bench_search(index, x, queries)
        t = time.perf_counter()
        index.add(*spread(emb, hashes, 10_000, seed=8, prefix="old-"))
        index.commit()
        r["add_10k_in_process_s"] = time.perf_counter() - t  # the store holds N + 10,000 faces from here on
        del index
        opened = bench_open(path)
        r |= {k: opened[k] for k in ("open_s", "rss_mb", "rss_now_mb", "first_grouped_s")}
        r |= bench_add(path)
        path.unlink()
        if milvus_n:
            from bench_milvus import lite_search

            r |= lite_search(Path(tmp), x[:milvus_n], entries[:milvus_n], lite_groups, queries)
        del entries, lite_groups
    r["vectors_mb"] = (len(x) + 10_000) * x.shape[1] * 4 / 2**20  # what the opened store holds
    r["rss_vs_vectors"] = r["rss_mb"] / r["vectors_mb"]
    r["grouped_vs_plain"] = r["grouped_ms_p50"] / r["exact_ms_p50"]
    if args.ann != "none":
        r |= bench_ann(args.ann, x, spread(emb, hashes, args.ann_queries, seed=2)[0], args.ref_n)
        r["ann_queries"] = args.ann_queries
        r["ann_vs_faiss_flat"] = r["ann_ms_p50"] / r["faiss_flat_ms_p50"]
    r["load_end"] = os.getloadavg()[0]
    r["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
        return
    print(f"{args.n:,} faces ({len(emb)} real faces spread), {r['sources']:,} sources -> {r['pictures']:,} pictures")
    for k, v in r.items():
        print(f"  {k:30s} {v:.4g}" if isinstance(v, float) else f"  {k:30s} {v}")


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    except OSError:
        name = "?"
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
