"""Benchmark of indexing videos into moments (issue 18): against a bare VIDEO-mode landmarker loop, and in
"x real time".

    .venv/bin/python benchmarks/bench_video_index.py [--video ../shared/data/videos/WolfgangLanger_Pexels.mp4]
        [--sample-ms 250] [--repeat 3] [--copies 4]

Everything is measured in this one run (a shared machine's timings are noisy: read the ratios):

- **reference**: the sampled frames (``facial_search.moments.decode.sample_frames``, every ``--sample-ms``),
  decoded once into memory, then a bare loop of a fresh VIDEO-mode ``FaceLandmarker`` over them
  (``detect_for_video`` only): what MediaPipe alone costs for these frames;
- **moments, one process**: ``facial_search.moments.video_moments`` on the file (decode from disk, RGB
  of the sampled frames, landmarker, tracking, embedding, cutting into moments), alternated with the
  reference ``--repeat`` times; ratio = its time / the reference's, and x real time = video seconds / its time;
- **index, both cores**: ``facial-search index`` (``build_index``, a process per core) of ``--copies`` copies
  of the video in a temporary folder into a new index: x real time = seconds of video indexed / wall time
  (including the workers' start).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import VIDEOS

from facial_search import embedders
from facial_search.moments import probe, sample_frames, video_moments
from facial_search.vision.faces import FaceFinder, FaceFinderOptions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bare_loop(frames) -> float:
    """Seconds of a fresh VIDEO-mode landmarker over ``frames`` (already decoded)."""
    with FaceFinder.create_from_options(FaceFinderOptions(running_mode="video")) as finder:
        t0 = time.perf_counter()
        last = -1
        for f in frames:
            last = max(last + 1, int(round(f.t * 1000)))
            finder.detect_for_video(f.rgb, last)
        return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=str(VIDEOS / "WolfgangLanger_Pexels.mp4"))
    ap.add_argument("--sample-ms", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--copies", type=int, default=4, help="copies of the video indexed on every core")
    ap.add_argument("--workers", type=int, default=None, help="index workers (default: one per core)")
    args = ap.parse_args(argv)

    info = probe(args.video)
    every = args.sample_ms / 1000
    frames = list(sample_frames(args.video, every))
    seconds = info.duration or frames[-1].t
    print(f"{Path(args.video).name}: {info.width}x{info.height}, {info.fps:.2f} frames/s, {seconds:.1f} s, "
          f"{len(frames)} sampled frames every {args.sample_ms} ms; CPU {cpu_name()}, {os.cpu_count()} cores "
          f"(load {os.getloadavg()[0]:.1f})")  # fmt: skip
    emb = embedders.get_embedder(None)
    refs, runs, cpus, found = [], [], [], None
    for _ in range(args.repeat):
        refs.append(bare_loop(frames))
        t0, c0 = time.perf_counter(), time.process_time()
        found = video_moments(args.video, emb, sample_ms=args.sample_ms)
        runs.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    ref, run, cpu = statistics.median(refs), statistics.median(runs), statistics.median(cpus)
    print(f"reference (bare VIDEO-mode landmarker over the {len(frames)} decoded frames): median {ref:.2f} s "
          f"({len(frames) / ref:.0f} frames/s), runs {', '.join(f'{r:.2f}' for r in refs)}")  # fmt: skip
    print(f"moments, one process (decode + landmarker + tracking + embedding + cutting): median {run:.2f} s, "
          f"runs {', '.join(f'{r:.2f}' for r in runs)}: {run / ref:.2f}x the reference's time, "
          f"{seconds / run:.1f}x real time; {len(found.moments)} moments")  # fmt: skip
    print(f"  CPU time (all threads) of a moments run: median {cpu:.2f} s, {seconds / cpu:.1f} video seconds per CPU "
          f"second (what one free core would give, load aside)")  # fmt: skip

    from facial_search.indexing import build_index

    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        folder = Path(tmp, "videos")
        folder.mkdir()
        for i in range(args.copies):
            shutil.copy(args.video, folder / f"copy{i}{Path(args.video).suffix}")
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        _store, report = build_index([folder], Path(tmp, "v.fsindex"), workers=args.workers, progress=False,
                                     sample_ms=args.sample_ms)  # fmt: skip
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    total = seconds * args.copies
    print(f"index, {args.workers or os.cpu_count()} workers, {args.copies} copies ({total:.0f} s of video): "
          f"{wall:.2f} s wall, {total / wall:.1f}x real time; {report.added_faces} moments; goal >= 10x")  # fmt: skip
    print(f"  workers' CPU time {child_cpu:.1f} s: {total / child_cpu:.1f} video seconds per CPU second, "
          f"{2 * total / child_cpu:.1f}x real time on two free cores (model loading included)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
