"""The Milvus backend at scale: Milvus Lite and a Milvus server against FAISS ``IndexFlatL2`` in the same process.

Vectors that resemble real ones, as in ``bench_scale.py`` (real embeddings of FER+ crops and memes, spread with
small noise, picture hashes near their base face's, 1 in 5 rows a re-saved copy of another). For each backend
(``lite``: a Milvus Lite database in a temporary folder, in this process; ``server``: a Milvus 2.3.5 standalone
server from ``.venv-milvus-server``, started here on free ports unless ``--server HOST:PORT`` names one), in one
run:

- ``fill_faces_per_s``: the store filled with the n faces in calls of 5,000, their groups given (the file
  backend's pictures, ``add(..., groups=...)``: no duplicate search), and ``commit_s``, the flush after it;
- ``open_s``: opening the full store again (a new connection);
- ``search_ms_p50`` (top-3, one query a call; ``search_cold_ms_p50``: the same queries just before, right after
  the flush and the reopen, while the server may still be sealing and indexing segments), ``grouped_ms_p50`` (top-3 pictures), ``faiss_flat_ms_p50`` (the
  reference) and the ratios; ``exact_share``: how many top-3 distances equal FAISS's (FLAT is exact; ids may
  differ where two copies tie);
- adding ``--add`` more faces (other sources, the same spread) to the full store, each given its picture by the
  duplicate search: ``add_faces_per_s`` in calls of ``--batch``, ``add_file_ms_p50`` for one file a call (its
  ``remove_source`` and ``add``, as ``facial-search index`` does), ``commit_after_add_s``; then ``pictures``
  (and ``pictures_s``, a scan of the groups) beside ``file_pictures_after_add``, what the file backend's merge
  over all the faces finds;
- server only: ``search_strong_ms_p50`` (the same search with ``consistency_level="Strong"``: it waits for the
  server's time tick) and ``server_rss_mb``; ``rss_mb``: this process (for Lite: the database too).

    python benchmarks/bench_milvus.py [--n 100000] [--add 5000] [--batch 1000] [--queries 50]
                                      [--backends lite,server] [--server HOST:PORT] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import _common  # noqa: F401  (sets the model path, silences native logs)
import faiss
import numpy as np
from _common import ROOT
from bench_scale import p50_ms, real_faces, spread

import facial_search.index.milvus as milvus_backend
from facial_search.index.milvus import MilvusStore
from facial_search.index.store import EmbedderInfo, MemeIndex


@contextmanager
def milvus_server(data_dir: Path):
    """``(HOST:PORT, pid)`` of a Milvus standalone server started for the run (as the tests' fixture does)."""
    venv = ROOT / ".venv-milvus-server"
    subprocess.run([str(ROOT / "scripts" / "ensure-milvus-server.sh"), str(venv)], check=True)
    log = open(data_dir / "launcher.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(venv / "bin" / "python"), str(ROOT / "scripts" / "run-milvus-server.py"),
                             str(data_dir / "server")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            text=True, start_new_session=True)  # fmt: skip
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=300)
    try:
        if not ready or not ready[0].strip():
            raise SystemExit(f"the Milvus server did not start: {(data_dir / 'launcher.log').read_text()[-2000:]}")
        doc = json.loads(ready[0])
        yield f"127.0.0.1:{doc['port']}", int(doc["pid"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        log.close()


def rss_mb(pid: int | None = None) -> float:
    """Resident memory now (``/proc``), of this process or of ``pid``."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lite_search(folder: Path, x: np.ndarray, entries: list[dict], groups: list[str], queries: np.ndarray) -> dict:
    """Milvus Lite (``milvus-lite://`` in ``folder``) filled with ``x`` in calls of 5,000 (their groups given:
    no duplicate search), flushed, reopened; then top-3, one query a call, against FAISS ``IndexFlatL2`` over the
    same rows, the two interleaved query by query. Keys ``milvus_lite_*`` (``_n``, ``_fill_s``,
    ``_commit_s``, ``_open_s``, ``_ms_p50``, ``_exact_share``: top-3 distances equal to FAISS's),
    ``faiss_flat_lite_n_ms_p50`` and ``milvus_lite_vs_faiss`` (p50 ratio)."""
    info = EmbedderInfo("expression", "bench", x.shape[1])
    uri = f"milvus-lite://{folder}/scale.db"
    r: dict = {"milvus_lite_n": len(x)}
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        t = time.perf_counter()
        for start in range(0, len(x), 5_000):
            s.add(x[start : start + 5_000], entries[start : start + 5_000], groups=groups[start : start + 5_000])
        r["milvus_lite_fill_s"] = time.perf_counter() - t
        t = time.perf_counter()
        s.commit()
        r["milvus_lite_commit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s = MilvusStore.open(uri, embedder=info)
    r["milvus_lite_open_s"] = time.perf_counter() - t
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    with s:
        s.search(queries[:1], 3)  # the first search loads the collection
        times: dict[str, list[float]] = {"lite": [], "flat": []}
        for q in queries:
            for key, fn in (("lite", lambda v: s.search(v, 3)), ("flat", lambda v: flat.search(v, 3))):
                t = time.perf_counter()
                fn(q[None])
                times[key].append((time.perf_counter() - t) * 1000)
        got = s.search(queries, 3)[0]
    want = np.sqrt(np.maximum(flat.search(queries, 3)[0], 0))  # FAISS gives squared L2
    r["milvus_lite_ms_p50"] = float(np.median(times["lite"]))
    r["faiss_flat_lite_n_ms_p50"] = float(np.median(times["flat"]))
    r["milvus_lite_vs_faiss"] = r["milvus_lite_ms_p50"] / r["faiss_flat_lite_n_ms_p50"]
    r["milvus_lite_exact_share"] = float(np.mean(np.abs(got - want) < 1e-4))
    return r


def bench_backend(uri, x, entries, groups, extra, queries, batch, flat_top3, server_pid=None) -> dict:
    info = EmbedderInfo("expression", "bench", x.shape[1])
    r: dict = {}
    with MilvusStore.open(uri, embedder=info, create=True) as s:
        t = time.perf_counter()
        for start in range(0, len(x), 5_000):
            s.add(x[start : start + 5_000], entries[start : start + 5_000], groups=groups[start : start + 5_000])
        r["fill_s"] = time.perf_counter() - t
        r["fill_faces_per_s"] = len(x) / r["fill_s"]
        t = time.perf_counter()
        s.commit()
        r["commit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    s = MilvusStore.open(uri, embedder=info)
    r["open_s"] = time.perf_counter() - t
    with s:
        r["search_cold_ms_p50"] = p50_ms(lambda q: s.search(q, 3), queries)  # right after the flush and reopen
        r["search_ms_p50"] = p50_ms(lambda q: s.search(q, 3), queries)
        r["grouped_ms_p50"] = p50_ms(lambda q: s.search(q, 3, group_by_source=True), queries)
        r["grouping"] = "server" if s.server_grouping else "client"
        got = s.search(queries, k=3)[0]
        r["exact_share"] = float(np.mean(np.abs(got - flat_top3) < 1e-4))
        if server_pid is not None:
            saved = milvus_backend.READ_CONSISTENCY
            milvus_backend.READ_CONSISTENCY = "Strong"
            try:
                r["search_strong_ms_p50"] = p50_ms(lambda q: s.search(q, 3), queries[:10])
            finally:
                milvus_backend.READ_CONSISTENCY = saved
        # adding to the full store, each face given its group by the duplicate search
        ex, ee = extra
        files = 50
        t = time.perf_counter()
        for start in range(files, len(ex), batch):
            s.add(ex[start : start + batch], ee[start : start + batch])
        r["add_s"] = time.perf_counter() - t
        r["add_faces_per_s"] = (len(ex) - files) / r["add_s"]
        times = []
        for i in range(files):  # one file (one face) a call, as `facial-search index` adds
            t = time.perf_counter()
            s.remove_source(ee[i]["source"])
            s.add(ex[i : i + 1], ee[i : i + 1])
            times.append(time.perf_counter() - t)
        r["add_file_ms_p50"] = float(np.median(times) * 1000)
        t = time.perf_counter()
        s.commit()
        r["commit_after_add_s"] = time.perf_counter() - t
        r["faces"] = s.ntotal
        t = time.perf_counter()
        r["pictures"] = s.pictures
        r["pictures_s"] = time.perf_counter() - t
        if server_pid is not None:
            r["server_rss_mb"] = rss_mb(server_pid)
    r["rss_mb"] = rss_mb()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--add", type=int, default=5_000, help="faces added to the full store, with the duplicate search")
    ap.add_argument("--batch", type=int, default=1_000, help="faces per add call of those")
    ap.add_argument("--backends", default="lite,server")
    ap.add_argument("--candidates", type=int, default=milvus_backend.DUPLICATE_CANDIDATES,
                    help="duplicate candidates a face (facial_search.index.milvus.DUPLICATE_CANDIDATES)")  # fmt: skip
    ap.add_argument("--server", help="HOST:PORT of a running Milvus server (else one is started)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    milvus_backend.DUPLICATE_CANDIDATES = args.candidates
    emb, hashes = real_faces()
    x, entries = spread(emb, hashes, args.n + args.add)
    ex, ee = x[args.n :], entries[args.n :]
    for i, e in enumerate(ee):  # other files than the store's; the first 50 are added one file a call
        e["source"] = f"/memes/new/file{i}.jpg" if i < 50 else e["source"].replace("/memes/", "/memes/new/")
    x, entries = x[: args.n], entries[: args.n]
    queries = spread(emb, hashes, args.queries, seed=1)[0]
    r: dict = {"n": args.n, "added": args.add, "dim": x.shape[1], "vectors_mb": x.nbytes / 2**20,
               "candidates": args.candidates, "threads": faiss.omp_get_max_threads()}  # fmt: skip

    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    r["faiss_flat_ms_p50"] = p50_ms(lambda q: flat.search(q, 3), queries)
    flat_top3 = np.sqrt(np.maximum(flat.search(queries, 3)[0], 0))  # FAISS gives squared L2
    info = EmbedderInfo("expression", "bench", x.shape[1])
    ref = MemeIndex(info)
    ref.add(x, entries)
    groups = [f"#{g}" for g in ref.source_groups()]  # the fill: the file backend's pictures, as given groups
    r["sources"] = len({e["source"] for e in entries})
    r["file_pictures"] = int(ref.source_groups().max()) + 1
    ref.add(ex, ee)
    r["file_pictures_after_add"] = int(ref.source_groups().max()) + 1
    del ref
    extra = (ex, ee)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        if "lite" in backends:
            r["lite"] = bench_backend(f"milvus-lite://{tmp}/bench.db", x, entries, groups, extra, queries, args.batch,
                                      flat_top3)  # fmt: skip
        if "server" in backends:
            collection = f"bench_{os.getpid()}"
            if args.server:
                r["server"] = bench_backend(f"milvus://{args.server}/{collection}", x, entries, groups, extra,
                                            queries, args.batch, flat_top3)  # fmt: skip
            else:
                with milvus_server(Path(tmp)) as (address, pid):
                    r["server"] = bench_backend(f"milvus://{address}/{collection}", x, entries, groups, extra,
                                                queries, args.batch, flat_top3, pid)  # fmt: skip
    for b in ("lite", "server"):
        if b in r:
            r[b]["search_vs_faiss"] = r[b]["search_ms_p50"] / r["faiss_flat_ms_p50"]
            r[b]["grouped_vs_search"] = r[b]["grouped_ms_p50"] / r[b]["search_ms_p50"]
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        rounded = json.loads(json.dumps(r), parse_float=lambda v: round(float(v), 4))
        print(json.dumps(rounded))
        return
    print(f"{args.n:,} faces, {r['sources']:,} sources, {r['file_pictures']:,} pictures (file backend)")
    for k, v in r.items():
        if isinstance(v, dict):
            print(f"  {k}:")
            for kk, vv in v.items():
                print(f"    {kk:24s} {vv:.4g}" if isinstance(vv, float) else f"    {kk:24s} {vv}")
        else:
            print(f"  {k:26s} {v:.4g}" if isinstance(v, float) else f"  {k:26s} {v}")
    print(f"  cpu: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
