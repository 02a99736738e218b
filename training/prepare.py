"""Detect and align every FER+ image once; cache uint8 arrays under ``training/cache/``.

Stage 1 (``landmarks_<split>_v2.npz``): MediaPipe FaceLandmarker (IMAGE mode, one face) on each 48x48 crop
through :func:`facial_search.vision.faces.detect_in_crop`, the run-time crop detector (edge-padded crop, then
sharpened, then plain), landmarks in the crop's own normalised coordinates. Two worker processes.

Stage 2 (``aligned_<split>_48_v2.npz``): :func:`facial_search.vision.align.align_face` on each crop with its landmarks
(or the whole crop when none were found) -- exactly the run-time recipe --, the whole crop resized (the
fallback path, used as an augmentation) and the 10 FER+ vote counts.

Stage 3 (``down2_FER2013Train_48_v2.npz``): each training crop halved and brought back up, *then* aligned
(and whole), :func:`down2_views` -- the 2x down-up augmentation as the run-time pipeline meets a
low-resolution face (~40 s).

``python -m training.prepare`` (all stages, skips what is cached); ``--measure-template`` prints the
median positions of :data:`facial_search.vision.align.ALIGN_LANDMARKS` over detected FER2013Train crops (the
source of :data:`facial_search.vision.align.TEMPLATE`).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from facial_search.vision.faces import detect_in_crop

SPLITS = ("FER2013Train", "FER2013Valid", "FER2013Test")

#: Bumped whenever detection or alignment changes, so that a cache made by older code is never reused
#: (v2: the sharpening tries of :func:`facial_search.vision.faces.detect_in_crop`).
CACHE_VERSION = 2


def landmarks_file(split: str, cache: Path | None = None) -> Path:
    return (cache or CACHE) / f"landmarks_{split}_v{CACHE_VERSION}.npz"


def aligned_file(split: str, size: int, cache: Path | None = None) -> Path:
    return (cache or CACHE) / f"aligned_{split}_{size}_v{CACHE_VERSION}.npz"


ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache"


def data_dir() -> Path:
    env = os.environ.get("FERPLUS_DIR")
    if env:
        return Path(env)
    for cand in (ROOT.parent.parent / "shared" / "data" / "ferplus", Path("/work/shared/data/ferplus")):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("FER+ data not found; set FERPLUS_DIR")


def read_labels(split: str, root: Path | None = None) -> tuple[list[str], np.ndarray]:
    """File names and ``(N, 10) int`` vote counts of one split (label.csv order)."""
    root = root or data_dir()
    names, votes = [], []
    with open(root / split / "label.csv", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            names.append(row[0])
            votes.append([int(v) for v in row[2:12]])
    return names, np.asarray(votes, dtype=np.int16)


_finder = None


def _init_worker() -> None:
    global _finder
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions

    _finder = FaceFinder.create_from_options(FaceFinderOptions(max_faces=1))


def detect_crop(finder, rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Landmarks ``(478, 3)`` of a ready-made face crop in its own normalised coordinates, or None.

    Returns ``(landmarks, how)`` with how = 1 (found by :func:`facial_search.vision.faces.detect_in_crop`, the
    run-time crop detector) or 0 (none found).
    """
    face = detect_in_crop(finder, rgb)
    return (face.landmarks, 1) if face is not None else (None, 0)


def _detect_one(path: str):
    from facial_search.io.images import load_image

    lm, how = detect_crop(_finder, load_image(path))
    return (lm.astype(np.float32) if lm is not None else None), how


def detect_split(split: str, workers: int = 2) -> Path:
    out = landmarks_file(split)
    if out.exists():
        return out
    root = data_dir()
    names, _ = read_labels(split, root)
    paths = [str(root / split / n) for n in names]
    lms = np.full((len(names), 478, 3), np.nan, dtype=np.float32)
    how = np.zeros(len(names), dtype=np.int8)
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        for i, (lm, h) in enumerate(pool.imap(_detect_one, paths, chunksize=64)):
            if lm is not None:
                lms[i] = lm
            how[i] = h
            if (i + 1) % 5000 == 0:
                print(f"  {split}: {i + 1}/{len(paths)} {time.time() - t0:.0f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.asarray(names), landmarks=lms, how=how)
    print(f"{split}: detected {np.mean(how > 0):.3f} in {time.time() - t0:.0f}s")
    return out


def measure_template(split: str = "FER2013Train") -> np.ndarray:
    from facial_search.vision.align import ALIGN_LANDMARKS

    d = np.load(landmarks_file(split))
    lm = d["landmarks"][d["how"] > 0][:, list(ALIGN_LANDMARKS), :2]
    return np.median(lm, axis=0)


def align_split(split: str, size: int | None = None) -> Path:
    from facial_search.io.images import load_image
    from facial_search.vision.align import DEFAULT_SIZE, align_face

    size = size or DEFAULT_SIZE
    out = aligned_file(split, size)
    if out.exists():
        return out
    root = data_dir()
    names, votes = read_labels(split, root)
    with np.load(landmarks_file(split)) as d:  # read each array once (npz keys decompress)
        assert list(d["names"]) == names
        lms, how = d["landmarks"], d["how"]
    imgs = np.zeros((len(names), size, size), dtype=np.uint8)
    whole = np.zeros((len(names), size, size), dtype=np.uint8)
    for i, n in enumerate(names):
        rgb = load_image(root / split / n)
        lm = lms[i] if how[i] > 0 else None
        imgs[i] = align_face(rgb, lm, size)
        whole[i] = align_face(rgb, None, size)
    np.savez_compressed(out, names=np.asarray(names), images=imgs, whole=whole, votes=votes, how=how)
    return out


def down2_file(split: str, size: int, cache: Path | None = None) -> Path:
    return (cache or CACHE) / f"down2_{split}_{size}_v{CACHE_VERSION}.npz"


def down2_views(rgb: np.ndarray, landmarks: np.ndarray | None, size: int) -> np.ndarray:
    """(4, size, size) uint8: the crop halved and brought back up (PIL bilinear, then PIL box), each aligned
    with the clean crop's landmarks and whole -- a low-resolution face as the run-time pipeline sees it:
    blurred *before* the alignment's resampling (rows: aligned bilinear, aligned box, whole bilinear,
    whole box)."""
    from PIL import Image

    from facial_search.vision.align import align_face

    h, w = rgb.shape[:2]
    out = np.zeros((4, size, size), np.uint8)
    for j, method in enumerate((Image.BILINEAR, Image.BOX)):
        small = Image.fromarray(rgb).resize((max(1, w // 2), max(1, h // 2)), method)
        blurred = np.asarray(small.resize((w, h), Image.BILINEAR))
        out[j] = align_face(blurred, landmarks, size)
        out[2 + j] = align_face(blurred, None, size)
    return out


def down2_split(split: str, size: int | None = None, cache: Path | None = None) -> Path:
    """Stage 3 (``down2_<split>_48_v2.npz``, FER2013Train only): :func:`down2_views` of every crop, the
    training's 2x down-up augmentation (from the stage-1 landmarks; a few minutes, one process)."""
    from facial_search.io.images import load_image
    from facial_search.vision.align import DEFAULT_SIZE

    size = size or DEFAULT_SIZE
    out = down2_file(split, size, cache)
    if out.exists():
        return out
    root = data_dir()
    names, _ = read_labels(split, root)
    with np.load(landmarks_file(split, cache)) as d:
        assert list(d["names"]) == names
        lms, how = d["landmarks"], d["how"]
    views = np.zeros((len(names), 4, size, size), np.uint8)
    for i, n in enumerate(names):
        views[i] = down2_views(load_image(root / split / n), lms[i] if how[i] > 0 else None, size)
    np.savez_compressed(out, names=np.asarray(names), views=views)
    return out


def write_subset_cache(split: str, n: int, out_dir: Path, finder, root: Path | None = None) -> Path:
    """Detect + align the first ``n`` images of ``split`` in this process into ``out_dir`` (tests)."""
    from facial_search.io.images import load_image
    from facial_search.vision.align import DEFAULT_SIZE, align_face

    root = root or data_dir()
    names, votes = read_labels(split, root)
    names, votes = names[:n], votes[:n]
    size = DEFAULT_SIZE
    imgs = np.zeros((n, size, size), np.uint8)
    whole = np.zeros((n, size, size), np.uint8)
    how = np.zeros(n, np.int8)
    views = np.zeros((n, 4, size, size), np.uint8)
    for i, name in enumerate(names):
        rgb = load_image(root / split / name)
        lm, how[i] = detect_crop(finder, rgb)
        imgs[i] = align_face(rgb, lm, size)
        whole[i] = align_face(rgb, None, size)
        views[i] = down2_views(rgb, lm, size)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = aligned_file(split, size, out_dir)
    np.savez_compressed(out, names=np.asarray(names), images=imgs, whole=whole, votes=votes, how=how)
    np.savez_compressed(down2_file(split, size, out_dir), names=np.asarray(names), views=views)
    return out


def prepare(splits: tuple[str, ...] = SPLITS, workers: int = 2) -> None:
    """All three stages for ``splits`` (stage 3 for FER2013Train), skipping what is cached; stage 1 runs
    FaceLandmarker in ``workers`` processes (>= 1)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be an integer >= 1, got {workers!r}")
    for s in splits:
        detect_split(s, workers)
    for s in splits:
        align_split(s)
    down2_split("FER2013Train")


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=_positive_int, default=2, help="FaceLandmarker processes of stage 1")
    ap.add_argument("--measure-template", action="store_true")
    ap.add_argument("--landmarks-only", action="store_true")
    a = ap.parse_args(argv)
    for s in SPLITS:
        detect_split(s, a.workers)
    if a.measure_template:
        t = measure_template()
        print("TEMPLATE =", np.array2string(t, precision=4, separator=", "))
        return
    if not a.landmarks_only:
        prepare(SPLITS, a.workers)  # stage 1 is cached by now; stages 2 and 3


if __name__ == "__main__":
    main()
