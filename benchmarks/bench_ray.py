"""Index builds on Ray against the process pool: images/s of `facial-search index --executor ray` and of the
default process pool on the same memes, in one run, alternated round by round so the ratio holds on a
shared, noisy machine.

- whole run: `facial-search index` as a user runs it (a subprocess; process start, model loads, the index and
  its saves included); with `--executor ray` and no `--ray-address` it starts a local Ray with `--workers`
  CPUs and shuts it down, so this counts Ray's start too;
- warm cluster: `build_index` in this process with a Ray already started (what a run against a running
  cluster costs: actor start, model loads, Ray Data's scheduling and Arrow transfer, no cluster start).

Both executors use `--workers` processes/actors (default 2, this machine's cores).

    python benchmarks/bench_ray.py [--limit 200] [--workers 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets the model path, silences native logs)
from _common import MEMES


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def cli_run(folder: Path, out: Path, workers: int, *extra: str) -> float:
    """Seconds of a whole `facial-search index` run into a fresh index ``out``."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "facial_search.cli", "index", str(folder), "--out", str(out),
         "--workers", str(workers), "--no-progress", *extra],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def warm_run(folder: Path, out: Path, workers: int, executor: str) -> float:
    from facial_search.indexing import build_index

    t0 = time.perf_counter()
    build_index([folder], out, workers=workers, progress=False, executor=executor)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="memes to index (every k-th of the sorted folder)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    import ray

    everything = sorted(MEMES.glob("*.jpg"))
    files = everything[:: max(1, len(everything) // args.limit)][: args.limit]
    n = len(files)
    times: dict[str, list[float]] = {k: [] for k in ("cli process", "cli ray", "warm process", "warm ray")}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "memes"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        for r in range(args.rounds):
            times["cli process"].append(cli_run(folder, Path(d) / f"p{r}.fsindex", args.workers))
            times["cli ray"].append(cli_run(folder, Path(d) / f"r{r}.fsindex", args.workers, "--executor", "ray"))
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            for r in range(args.rounds):
                times["warm process"].append(warm_run(folder, Path(d) / f"wp{r}.fsindex", args.workers, "process"))
                times["warm ray"].append(warm_run(folder, Path(d) / f"wr{r}.fsindex", args.workers, "ray"))
        finally:
            ray.shutdown()
    print(f"{n} memes, {args.workers} workers, {args.rounds} round(s); CPU: {cpu_model()}; Ray {ray.__version__}")
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:<13} {statistics.median(v):7.1f} s  {rate[k]:6.2f} images/s")
    print(f"ray / process, whole run:   {rate['cli ray'] / rate['cli process']:.2f}x")
    print(f"ray / process, warm cluster: {rate['warm ray'] / rate['warm process']:.2f}x")


if __name__ == "__main__":
    main()
