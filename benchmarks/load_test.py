"""Bounded load test of ``facial-search serve`` on loopback: C concurrent clients x R requests each, real photos.

It starts the server itself (``python -m facial_search.cli serve`` on 127.0.0.1 and a free port), waits for
``/healthz``, then every client thread posts photos from ``../shared/data/faces`` to ``/api/search`` in turn
(its own HTTP connection, one request at a time), and prints p50/p99 latency, requests/s, the server's peak
memory (``VmHWM``) and the errors. Exit status 1 when any request failed.

    FACIAL_SEARCH_MODELS=../shared/models python benchmarks/load_test.py --index /tmp/memes.fsindex
    python benchmarks/load_test.py --index memes.fsindex --clients 16 --requests 50 --workers 2 --frames

``--frames`` sends every photo downscaled to 320 px JPEG first, like the page's camera frames.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACIAL_SEARCH_SHARED", ROOT.parent / "shared")).resolve()
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_photos(folder: Path, frames: bool) -> list[tuple[str, bytes]]:
    photos = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        data = p.read_bytes()
        if frames:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")
                im.thumbnail((320, 320))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=80)
                data = buf.getvalue()
        photos.append((p.name, data))
    if not photos:
        raise SystemExit(f"no photos in {folder}")
    return photos


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    i = (len(s) - 1) * q
    lo, hi = int(i), min(int(i) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "facial_search.cli", "serve", "--index", str(args.index), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = os.environ.copy()
    env.setdefault("FACIAL_SEARCH_MODELS", str(SHARED / "models"))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): {proc.stderr.read()}")
        try:
            r = httpx.get(base + "/healthz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become healthy")
        time.sleep(0.2)


def server_peak_rss_kb(pid: int) -> int | None:
    """The server's peak resident memory (``VmHWM`` of ``/proc/<pid>/status``), kB; ``None`` off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run(args) -> dict:
    photos = load_photos(Path(args.photos), args.frames)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        health = wait_healthy(base, proc)
        latencies: list[float] = []
        errors: list[str] = []
        faces_seen = [0]
        lock = threading.Lock()
        start = threading.Barrier(args.clients + 1)

        def client(c: int) -> None:
            with httpx.Client(base_url=base, timeout=args.timeout) as http:
                start.wait()
                for i in range(args.requests):
                    name, data = photos[(c + i) % len(photos)]
                    t0 = time.perf_counter()
                    try:
                        r = http.post("/api/search", files={"image": (name, data, "application/octet-stream")})
                        dt = time.perf_counter() - t0
                        ok = r.status_code == 200 and "faces" in r.json()
                        with lock:
                            latencies.append(dt)
                            if ok:
                                faces_seen[0] += len(r.json()["faces"])
                            else:
                                errors.append(f"{name}: HTTP {r.status_code} {r.text[:120]}")
                    except (httpx.HTTPError, ValueError) as e:
                        with lock:
                            errors.append(f"{name}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak_kb = server_peak_rss_kb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    total = args.clients * args.requests
    return {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "requests": total,
        "ok": total - len(errors),
        "errors": len(errors),
        "error_samples": errors[:5],
        "pipelines": health.get("workers"),
        "index_faces": health.get("faces"),
        "photos": [n for n, _ in photos],
        "photo_kb_mean": round(statistics.mean(len(d) for _, d in photos) / 1024, 1),
        "frames_320px": args.frames,
        "faces_found": faces_seen[0],
        "wall_s": round(wall, 2),
        "req_per_s": round(total / wall, 2),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "server_peak_rss_mb": round(peak_kb / 1024) if peak_kb else None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="meme index (.fsindex) to serve")
    p.add_argument("--photos", default=str(SHARED / "data" / "faces"), help="folder of real photos")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--workers", type=int, help="server pipelines (default: the server's, one per core)")
    p.add_argument("--frames", action="store_true", help="send 320 px JPEG frames, like the page's camera")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.clients * args.requests > 10_000:
        raise SystemExit("load_test: 1 <= clients x requests <= 10000 (a bounded test)")
    res = run(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['requests']} requests ({res['clients']} clients x {res['requests_per_client']}) to "
            f"{res['pipelines']} pipelines on {res['cpus']} CPUs, index of {res['index_faces']} faces, "
            f"{len(res['photos'])} photos ({res['photo_kb_mean']} KB mean{', 320 px frames' if args.frames else ''})"
        )
        print(
            f"errors {res['errors']}  |  p50 {res['p50_ms']} ms  p90 {res['p90_ms']} ms  p99 {res['p99_ms']} ms  "
            f"max {res['max_ms']} ms  |  {res['req_per_s']} req/s over {res['wall_s']} s  |  server peak RSS "
            f"{res['server_peak_rss_mb']} MB"
        )
        for e in res["error_samples"]:
            print("  " + e)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
