"""Load test of ``POST /api/search/vectors`` beside ``POST /api/search``, on one server, in one run.

It starts ``facial-search serve`` on loopback (as ``load_test.py`` does), then C client threads (each its own
HTTP connection, one request at a time) send first the photos of ``../shared/data/faces`` as 320 px JPEG frames
to ``/api/search`` (the page's server path), then the same photos' embeddings (made beforehand by the Python
pipeline: what the page's on-device mode sends) to ``/api/search/vectors``. It prints requests/s and p50/p99
latency of each and the ratio of requests/s (the issue's goal: >= 20x). Exit status 1 when a request failed.

    python benchmarks/load_vectors.py --index demo-out/memes.fsindex
    python benchmarks/load_vectors.py --index memes.fsindex --clients 16 --requests 200 --image-requests 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_test  # noqa: E402  (the server start-up and the photos, shared)
from _common import SHARED  # noqa: E402


def embeddings(photos: list[tuple[str, bytes]]) -> list[tuple[str, dict]]:
    """The JSON body the page sends for each photo: its faces' embeddings by the Python pipeline."""
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    out = []
    with Pipeline() as pipe:
        for name, data in photos:
            rgb = load_image(data)
            faces = pipe.faces(rgb)
            if faces:
                vectors = pipe.embed(rgb, faces).tolist()
                out.append((name, {"vectors": vectors, "boxes": [list(f.box) for f in faces], "k": 3}))
    if not out:
        raise SystemExit("no face in the photos")
    return out


def hammer(base: str, clients: int, requests: int, send) -> dict:
    """``clients`` threads x ``requests`` calls of ``send(http, i) -> ok``: requests/s and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            start.wait()
            for i in range(requests):
                t0 = time.perf_counter()
                try:
                    r = send(http, c + i)
                    ok = r.status_code == 200 and "faces" in r.json()
                    why = f"HTTP {r.status_code} {r.text[:120]}"
                except (httpx.HTTPError, ValueError) as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if not ok:
                        errors.append(why)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = clients * requests
    return {
        "requests": total,
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": round(wall, 2),
        "req_per_s": round(total / wall, 1),
        "p50_ms": round(load_test.percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(load_test.percentile(latencies, 0.99) * 1000, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="meme index (.fsindex) to serve")
    p.add_argument("--photos", default=str(SHARED / "data" / "faces"), help="folder of real photos")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=200, help="vector requests per client")
    p.add_argument("--image-requests", type=int, default=50, help="image requests per client (the slow path)")
    p.add_argument("--workers", type=int, help="server pipelines (default: the server's, one per core)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = p.parse_args(argv)
    if args.clients < 1 or not 1 <= args.clients * max(args.requests, args.image_requests) <= 10_000:
        raise SystemExit("load_vectors: 1 <= clients x requests <= 10000 (a bounded test)")
    frames = load_test.load_photos(Path(args.photos), frames=True)
    bodies = embeddings(frames)
    port = load_test.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = load_test.start_server(args, port)
    try:
        health = load_test.wait_healthy(base, proc)
        label = httpx.get(base + "/api/ondevice").json()["embedder"]
        for _, body in bodies:
            body["embedder"] = label

        def image(http, i):
            name, data = frames[i % len(frames)]
            return http.post("/api/search", files={"image": (name, data, "image/jpeg")})

        def vectors(http, i):
            return http.post("/api/search/vectors", json=bodies[i % len(bodies)][1])

        img = hammer(base, args.clients, args.image_requests, image)
        vec = hammer(base, args.clients, args.requests, vectors)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {
        "clients": args.clients,
        "pipelines": health.get("workers"),
        "index_faces": health.get("faces"),
        "cpus": cpus,
        "image_path": img,
        "vector_path": vec,
        "ratio_req_per_s": round(vec["req_per_s"] / img["req_per_s"], 1),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{args.clients} clients on loopback, {res['pipelines']} pipelines, {cpus} CPUs, {res['index_faces']} faces"
        )
        for what, r in (("POST /api/search (320 px frames)", img), ("POST /api/search/vectors", vec)):
            print(f"  {what:34s} {r['requests']:5d} requests  {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms"
                  f"  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")  # fmt: skip
        print(f"  vectors / images: {res['ratio_req_per_s']}x the requests per second")
    return 1 if img["errors"] or vec["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
