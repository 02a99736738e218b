"""Indexing speed: `facial-search index` against a bare FaceLandmarker.detect loop over the same images.

Both run in this process's session, one after the other, so the ratios hold on a shared, noisy machine:

- per-core ratio = images/s of `facial-search index --workers 1` / images/s of the bare loop (goal >= 0.85);
- two-core speed-up = images/s with `--workers 2` / with `--workers 1` (goal >= 1.6x);
- the cost of the tiled retry (small faces, on by default): images/s with `--no-tiles` / without.

The bare loop decodes each file with Pillow (RGB) and calls MediaPipe's FaceLandmarker.detect in IMAGE mode
with the same options; `facial-search index` adds EXIF/mode handling, embedding, the index and its saves.

    python benchmarks/bench_index.py [--limit N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets the model path, silences native logs)
import mediapipe as mp
import numpy as np
from _common import MEMES, MODELS
from mediapipe.tasks.python import BaseOptions, vision
from PIL import Image


def bare_loop(files: list[Path]) -> float:
    """Seconds for decode + FaceLandmarker.detect over ``files`` (one process, IMAGE mode)."""
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(MODELS / "face_landmarker.task")),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=8,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    t0 = time.perf_counter()
    with vision.FaceLandmarker.create_from_options(options) as lm:
        for f in files:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
    return time.perf_counter() - t0


def cli_index(files: list[Path], workers: int, *extra: str) -> float:
    """Seconds of a whole `facial-search index` run (process start included) into a fresh index."""
    with tempfile.TemporaryDirectory() as d:
        listing = Path(d) / "memes"
        listing.mkdir()
        for f in files:
            (listing / f.name).symlink_to(f)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "facial_search.cli", "index", str(listing), "--out", str(Path(d) / "x.fsindex"),
             "--workers", str(workers), "--no-progress", *extra],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="first N memes only (default: all 2,105)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three runs, report medians")
    args = ap.parse_args()
    files = sorted(MEMES.glob("*.jpg"))
    files = files[: args.limit] if args.limit else files
    n = len(files)
    rows = {
        "bare FaceLandmarker loop (1 core)": [],
        "facial-search index --workers 1": [],
        "facial-search index --workers 2": [],
        "facial-search index --workers 1 --no-tiles": [],
    }
    for r in range(args.rounds):
        rows["bare FaceLandmarker loop (1 core)"].append(n / bare_loop(files))
        rows["facial-search index --workers 1"].append(n / cli_index(files, 1))
        rows["facial-search index --workers 2"].append(n / cli_index(files, 2))
        rows["facial-search index --workers 1 --no-tiles"].append(n / cli_index(files, 1, "--no-tiles"))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{n} meme images, {args.rounds} round(s), medians")
    for k, v in med.items():
        print(f"  {k:<36} {v:7.1f} images/s")
    bare, w1, w2, w1_plain = med.values()
    print(f"per-core ratio (index --workers 1 / bare loop): {w1 / bare:.2f}   (goal >= 0.85)")
    print(f"  the same with --no-tiles:                     {w1_plain / bare:.2f}")
    print(f"two-core speed-up (--workers 2 / --workers 1):  {w2 / w1:.2f}x  (goal >= 1.6x)")


if __name__ == "__main__":
    main()
