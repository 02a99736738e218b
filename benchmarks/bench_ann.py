"""The ANN indexes (:mod:`facial_search.index.ann`: ``HNSWGraph``, ``IVFIndex``) against stock FAISS HNSW.

Vectors that resemble real ones (``bench_scale.real_faces`` + ``spread``: 710 real face embeddings spread with
small noise into n, 20% exact copies), queries from the same generator with another seed. In one process:
FAISS ``IndexFlatL2`` (exact: the ground truth and a latency reference), stock FAISS ``IndexHNSWFlat`` (M=32,
efConstruction 80, the issue's reference; efSearch ``--ref-ef-search``) and ours (``--index``: ``hnsw``,
``ivf`` or both), each built on n - 10,000 rows, then given the last 10,000 (``..._add_10k_s``). Single-query
latency (one query a call, ``--threads`` FAISS threads), all searches timed in turn query by query so that
they see the same machine load. Keys ``hnsw_*`` and ``ivf_*`` are ours; ``ann_*``, ``build_s``,
``add_10k_s`` and ``bytes`` repeat the first of ``--index``.

``--store ROWS`` also measures each of ours as the file store holds it (``--ann hnsw|ivf``:
:class:`facial_search.index.segments.Segments`, sealed segments merged as they grow, an IVF one rebuilt when
its lists would change): the rows given ``ROWS`` at a time (one commit each; ``SEAL_ROWS`` 16,384), keys
``store_{kind}_*`` (build_s: all the commits' seals and merges; segments; ms p50/p99, recall@3) and
``store_{kind}_vs_{kind}_ms``, the segmented search's time against the one index's in the same run.

recall@3 counts a returned row as right when its exact distance is within the exact third-nearest's (ties
count: 20% of the rows are exact copies, so which of two equal rows comes back is arbitrary);
``..._id_recall_at_3`` is the plain share of exact ids found, ``..._d3_within_1pct`` the share of queries
whose third result is within 1% of the exact third-nearest's distance.

    python benchmarks/bench_ann.py [--n 100000] [--index hnsw,ivf] [--queries 1000] [--sweep] [--no-reference]
                                   [--store ROWS] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import _common  # noqa: F401  (sets the model path, silences native logs)
import faiss
import numpy as np
from bench_scale import real_faces, spread

from facial_search.index.ann import HNSWGraph, HNSWParams, IVFIndex, IVFParams

REF_M, REF_EF_CONSTRUCTION = 32, 80


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def exact_kth(x: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """``(Q,)`` float64 squared distance of each query's exact k-th nearest, recomputed directly from FAISS flat's
    top ids (``ids`` ``(Q, > k)``: FAISS computes ``|x|^2 + |q|^2 - 2 x.q`` in float32, off by ~1e-7)."""
    d = ((x[ids].astype(np.float64) - queries[:, None, :].astype(np.float64)) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k - 1]


def recall_at_k(x: np.ndarray, queries: np.ndarray, kth: np.ndarray, exact_ids: np.ndarray, rows: np.ndarray):
    """``(recall, id recall, share of queries whose k-th distance is within 1% of the exact k-th)`` of ``rows``
    ``(Q, k)``: a row is right when its distance (float64) is within the exact k-th nearest's (``kth``, from
    :func:`exact_kth`); id recall is the share of the exact ids (``exact_ids[:, :k]``) found."""
    k = rows.shape[1]
    safe = np.where(rows >= 0, rows, 0)
    d = ((x[safe].astype(np.float64) - queries[:, None, :].astype(np.float64)) ** 2).sum(-1)
    ok = (rows >= 0) & (d <= kth[:, None] * (1 + 1e-6))
    ids = np.mean([len(set(r.tolist()) & set(e.tolist())) / k for r, e in zip(rows, exact_ids[:, :k], strict=True)])
    near = np.sqrt(np.where(rows[:, -1] >= 0, d[:, -1], np.inf)) <= np.sqrt(kth) * 1.01
    return float(ok.sum() / rows.size), float(ids), float(near.mean())


def timed_each(queries: np.ndarray, fns: list) -> list[list[float]]:
    """Milliseconds of each ``fn(query (1, D))`` for every query: the fns called in turn per query, starting
    one further on at each query (so that none always runs right after another one's cache misses)."""
    times = [[] for _ in fns]
    for i, q in enumerate(queries):
        q = q[None]
        for j in range(len(fns)):
            j = (i + j) % len(fns)
            start = time.perf_counter()
            fns[j](q)
            times[j].append((time.perf_counter() - start) * 1000)
    return times


def p99(t: list[float]) -> float:
    return float(np.percentile(t, 99))


def build(kind: str, x: np.ndarray, add_n: int, params, r: dict):
    """Our index of ``kind`` over ``x``: built on all rows but the last ``add_n``, then given those."""
    cls = HNSWGraph if kind == "hnsw" else IVFIndex
    t = time.perf_counter()
    index = cls.build(x[: len(x) - add_n], params)
    r[f"{kind}_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index.add(x[len(x) - add_n :])
    r[f"{kind}_add_10k_s"] = time.perf_counter() - t
    index.attach(x)  # as the store does: one array of all rows
    r[f"{kind}_params"] = params.to_dict()
    r[f"{kind}_bytes"] = index.nbytes
    r[f"{kind}_bytes_per_vector"] = index.nbytes / len(x)
    return index


def build_store(kind: str, x: np.ndarray, params, rows: int, r: dict):
    """The segments a file store with ``ann=params`` holds after taking ``x`` in commits of ``rows`` rows
    (each commit seals the tail once it has ``SEAL_ROWS`` rows, as :meth:`MemeIndex.commit` does)."""
    from facial_search.index.segments import Segments

    seg = Segments(params)
    t = time.perf_counter()
    for end in range(rows, len(x) + rows, rows):
        seg.seal(x, min(end, len(x)))
    r[f"store_{kind}_build_s"] = time.perf_counter() - t
    r[f"store_{kind}_segments"] = [s.end - s.start for s in seg.sealed]
    r[f"store_{kind}_tail"] = len(x) - seg.tail_start
    if kind == "ivf":
        r["store_ivf_lists"] = [s.graph.nlist for s in seg.sealed]
    live = np.ones(len(x), bool)
    return lambda q, **kw: seg.search(q, 3, x, live, len(x), **kw)


def ann_figures(kind: str, x: np.ndarray, queries: np.ndarray) -> dict:
    """Our ``kind`` (``"hnsw"`` or ``"ivf"``) index at its default parameters over ``x``: the ``ann_*`` keys of
    ``bench_scale.py --ann KIND`` (build, bytes, single-query top-3 p50/p99 ms, recall@3 against exact)."""
    cls, params = (HNSWGraph, HNSWParams()) if kind == "hnsw" else (IVFIndex, IVFParams())
    t = time.perf_counter()
    index = cls.build(x, params)
    r = {"ann": kind, "ann_params": params.to_dict(), "ann_build_s": time.perf_counter() - t, "ann_bytes": index.nbytes}
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        t = timed_each(queries, [lambda q: index.search(q, 3)])[0]
    finally:
        faiss.omp_set_num_threads(threads)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    exact_ids = flat.search(queries, 20)[1]
    kth = exact_kth(x, queries, exact_ids, 3)
    r["ann_ms_p50"], r["ann_ms_p99"] = statistics.median(t), p99(t)
    r["ann_recall_at_3"] = recall_at_k(x, queries, kth, exact_ids, index.search(queries, 3)[1])[0]
    return r


def main() -> None:
    hnsw_defaults, ivf_defaults = HNSWParams(), IVFParams()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--index", default="hnsw,ivf", help="ours to measure, comma-separated: hnsw, ivf")
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall; the first 500 are timed")
    ap.add_argument("--M", type=int, default=hnsw_defaults.M)
    ap.add_argument("--ef-construction", type=int, default=hnsw_defaults.ef_construction)
    ap.add_argument("--ef-search", type=int, default=hnsw_defaults.ef_search)
    ap.add_argument("--nlist", type=int, default=ivf_defaults.nlist)
    ap.add_argument("--nprobe", type=int, default=ivf_defaults.nprobe)
    ap.add_argument("--ref-ef-search", type=int, default=256, help="efSearch of the stock FAISS HNSW reference")
    ap.add_argument("--sweep", action="store_true", help="also report each index at other efSearch / nprobe")
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads while searching (build: all cores)")
    ap.add_argument("--no-reference", action="store_true", help="skip the stock FAISS HNSW (its build is slow)")
    ap.add_argument("--store", type=int, metavar="ROWS", help="also measure the store's segments, ROWS a commit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.index.split(",") if k.strip()]
    if not kinds or set(kinds) - {"hnsw", "ivf"}:
        ap.error("--index takes hnsw, ivf or both")
    params = {
        "hnsw": HNSWParams(args.M, args.ef_construction, args.ef_search),
        "ivf": IVFParams(args.nlist, args.nprobe),
    }
    add_n = min(10_000, args.n // 2)
    emb, hashes = real_faces()
    x, _ = spread(emb, hashes, args.n)
    queries = spread(emb, hashes, args.queries, seed=1)[0]
    timed = queries[:500]
    build_threads = faiss.omp_get_max_threads()
    r: dict = {"n": args.n, "dim": x.shape[1], "queries": args.queries, "cpu": cpu_model(), "cores": os.cpu_count()}
    r.update(search_threads=args.threads, build_threads=build_threads, load_start=os.getloadavg()[0])

    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    exact_ids = flat.search(queries, 20)[1]
    kth = exact_kth(x, queries, exact_ids, 3)
    ours = {kind: build(kind, x, add_n, params[kind], r) for kind in kinds}
    stores = {kind: build_store(kind, x, params[kind], args.store, r) for kind in kinds} if args.store else {}
    r["vectors_bytes"] = x.nbytes

    ref = None
    if not args.no_reference:
        ref = faiss.IndexHNSWFlat(x.shape[1], REF_M)
        ref.hnsw.efConstruction = REF_EF_CONSTRUCTION
        t = time.perf_counter()
        ref.add(x[: args.n - add_n])
        r["faiss_hnsw_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ref.add(x[args.n - add_n :])
        r["faiss_hnsw_add_10k_s"] = time.perf_counter() - t
        h = ref.hnsw
        r["faiss_hnsw_bytes"] = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4 + x.nbytes

    faiss.omp_set_num_threads(args.threads)
    ref_params = faiss.SearchParametersHNSW()
    ref_params.efSearch = args.ref_ef_search
    # FAISS flat alone (a scan of all the vectors would evict the others' memory), then the ANN ones in turn
    r["faiss_flat_ms_p50"] = statistics.median(timed_each(timed[:100], [lambda q: flat.search(q, 3)])[0])
    names = list(kinds) + [f"store_{kind}" for kind in stores]
    fns = [lambda q, i=index: i.search(q, 3) for index in ours.values()] + list(stores.values())
    if ref is not None:
        names.append("faiss_hnsw")
        fns.append(lambda q: ref.search(q, 3, params=ref_params))
    for name, t in zip(names, timed_each(timed, fns), strict=True):
        r[f"{name}_ms_p50"], r[f"{name}_ms_p99"] = statistics.median(t), p99(t)
    for kind, index in ours.items():
        rec = recall_at_k(x, queries, kth, exact_ids, index.search(queries, 3)[1])
        r[f"{kind}_recall_at_3"], r[f"{kind}_id_recall_at_3"], r[f"{kind}_d3_within_1pct"] = rec
        r[f"{kind}_vs_faiss_flat_ms"] = r[f"{kind}_ms_p50"] / r["faiss_flat_ms_p50"]
    for kind, search in stores.items():
        rec = recall_at_k(x, queries, kth, exact_ids, search(queries)[1])
        r[f"store_{kind}_recall_at_3"], r[f"store_{kind}_id_recall_at_3"], r[f"store_{kind}_d3_within_1pct"] = rec
        r[f"store_{kind}_vs_{kind}_ms"] = r[f"store_{kind}_ms_p50"] / r[f"{kind}_ms_p50"]
    if ref is not None:
        r["faiss_hnsw_ef_search"] = args.ref_ef_search
        ref_rows = ref.search(queries, 3, params=ref_params)[1]
        rec = recall_at_k(x, queries, kth, exact_ids, ref_rows)
        r["faiss_hnsw_recall_at_3"], r["faiss_hnsw_id_recall_at_3"], r["faiss_hnsw_d3_within_1pct"] = rec
        for kind in kinds:
            r[f"{kind}_vs_faiss_hnsw_ms"] = r[f"{kind}_ms_p50"] / r["faiss_hnsw_ms_p50"]
            r[f"{kind}_add_10k_vs_faiss_hnsw"] = r[f"{kind}_add_10k_s"] / r["faiss_hnsw_add_10k_s"]
            r[f"{kind}_build_vs_faiss_hnsw"] = r[f"{kind}_build_s"] / r["faiss_hnsw_build_s"]
            r[f"{kind}_bytes_vs_faiss_hnsw"] = r[f"{kind}_bytes"] / r["faiss_hnsw_bytes"]
    first = kinds[0]
    r.update(ann=first, ann_ms_p50=r[f"{first}_ms_p50"], ann_ms_p99=r[f"{first}_ms_p99"])
    r.update(ann_recall_at_3=r[f"{first}_recall_at_3"], build_s=r[f"{first}_build_s"])
    r.update(add_10k_s=r[f"{first}_add_10k_s"], bytes=r[f"{first}_bytes"])

    if args.sweep:
        knobs = {"hnsw": ("ef_search", [64, 128, 192, 256, 384, 512]), "ivf": ("nprobe", [4, 8, 16, 32, 64])}
        for kind, index in ours.items():
            knob, values = knobs[kind]
            sweep = []
            for v in values:
                t = timed_each(timed, [lambda q, i=index, kw={knob: v}: i.search(q, 3, **kw)])[0]
                rec = recall_at_k(x, queries, kth, exact_ids, index.search(queries, 3, **{knob: v})[1])
                sweep.append({knob: v, "ms_p50": statistics.median(t), "ms_p99": p99(t), "recall_at_3": rec[0],
                              "id_recall_at_3": rec[1], "d3_within_1pct": rec[2]})  # fmt: skip
            r[f"{kind}_sweep"] = sweep
    r["load_end"] = os.getloadavg()[0]

    def rounded(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, list):
            return [rounded(i) for i in v]
        if isinstance(v, dict):
            return {k: rounded(i) for k, i in v.items()}
        return v

    if args.json:
        print(json.dumps(rounded(r)))
        return
    print(f"{args.n:,} vectors ({len(emb)} real faces spread), {r['cpu']}, {r['cores']} cores")
    for k, v in rounded(r).items():
        if isinstance(v, list):
            print(f"  {k}")
            for row in v:
                print(f"    {row}")
        else:
            print(f"  {k:32s} {v}")


if __name__ == "__main__":
    main()
