"""Indexing speed: `facial-search index` against bare MediaPipe FaceLandmarker.detect calls on the same images.

All run in this process's session, one after the other, so the ratios hold on a shared, noisy machine:

- per-core ratio = images/s of `facial-search index --workers 1` / images/s of the bare loop making the
  same detector calls (goal >= 0.85): the whole image, and where it shows no face, its four tiles with a
  detector of confidence 0.75 (`facial_search.vision.faces.detect_in_tiles`);
- the same for `--no-tiles` against a bare loop of whole images only;
- two-core speed-up = images/s with `--workers 2` / with `--workers 1` (goal >= 1.6x);
- what the tiles cost: images/s with them / with `--no-tiles`.

The bare loops decode each file with Pillow (RGB) and call MediaPipe's FaceLandmarker.detect in IMAGE mode
with the same options; `facial-search index` adds EXIF/mode handling, embedding, picture hashes, the index
and its saves.

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

from facial_search.vision.faces import TILE_MIN_CONFIDENCE, TILE_MIN_SIDE, tile_windows


def bare_loop(files: list[Path], tiles: bool) -> float:
    """Seconds for decode + FaceLandmarker.detect over ``files`` (one process, IMAGE mode); with ``tiles``,
    the four tiles of every image where the whole shows no face, as ``facial-search index`` does."""

    def landmarker(confidence: float):
        return vision.FaceLandmarker.create_from_options(
            vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(MODELS / "face_landmarker.task")),
                running_mode=vision.RunningMode.IMAGE,
                num_faces=8,
                min_face_detection_confidence=confidence,
                min_face_presence_confidence=confidence,
                output_face_blendshapes=True,
                output_facial_transformation_matrixes=True,
            )
        )

    t0 = time.perf_counter()
    with landmarker(0.5) as lm, landmarker(TILE_MIN_CONFIDENCE) as tile_lm:
        for f in files:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            found = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).face_landmarks
            if tiles and not found and min(rgb.shape[:2]) >= TILE_MIN_SIDE:
                for y, x, h, w in tile_windows(*rgb.shape[:2]):
                    tile = np.ascontiguousarray(rgb[y : y + h, x : x + w])
                    tile_lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=tile))
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
    runs = {
        "bare loop, whole + tiles (1 core)": lambda: bare_loop(files, tiles=True),
        "bare loop, whole only (1 core)": lambda: bare_loop(files, tiles=False),
        "facial-search index --workers 1": lambda: cli_index(files, 1),
        "facial-search index --workers 2": lambda: cli_index(files, 2),
        "facial-search index --workers 1 --no-tiles": lambda: cli_index(files, 1, "--no-tiles"),
    }
    rows = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            rows[name].append(n / run())
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{n} meme images, {args.rounds} round(s), medians")
    for k, v in med.items():
        print(f"  {k:<44} {v:7.1f} images/s")
    bare, bare_plain, w1, w2, w1_plain = med.values()
    print(f"per-core ratio (index --workers 1 / bare loop, same calls): {w1 / bare:.2f}   (goal >= 0.85)")
    print(f"  with --no-tiles (/ bare loop of whole images):            {w1_plain / bare_plain:.2f}")
    print(f"two-core speed-up (--workers 2 / --workers 1):              {w2 / w1:.2f}x  (goal >= 1.6x)")
    print(f"tiles cost (index / index --no-tiles, 1 core):              {w1 / w1_plain:.2f}x the speed")


if __name__ == "__main__":
    main()
