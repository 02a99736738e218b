"""Triplet accuracy through the run-time pipeline, on clean and perturbed images.

For each image of a split: perturb it (none / mirrored / 2x down-up / brightness x1.2 / x0.8), run the
FaceFinder on the crop as it is (``--pad`` also tries the edge-padded crop, as training/prepare.py does),
fall back to the whole crop when no face is found, then embed with :class:`ExpressionEmbedder`.
Landmarks per perturbation are cached under ``training/cache/`` (they do not depend on the model).

    python -m training.robustness --split FER2013Test --triplets triplets_test.csv
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import cv2
import numpy as np

from . import prepare

PERTURBATIONS = ("clean", "mirror", "downup2", "bright+20", "bright-20")


def perturb(rgb: np.ndarray, kind: str) -> np.ndarray:
    if kind == "clean":
        return rgb
    if kind == "mirror":
        return np.ascontiguousarray(rgb[:, ::-1])
    if kind == "downup2":
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind.startswith("bright"):
        f = 1 + float(kind[len("bright") :]) / 100
        return np.clip(rgb.astype(np.float32) * f + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(kind)


_finder = None
_pad = False


def _init(pad):
    global _finder, _pad
    from facial_search.faces import FaceFinder, FaceFinderOptions

    _finder = FaceFinder.create_from_options(FaceFinderOptions(max_faces=1))
    _pad = pad


def _job(args):
    from facial_search.imageio import load_image

    path, kind = args
    rgb = perturb(load_image(path), kind)
    if _pad:
        lm, _ = prepare.detect_crop(_finder, rgb)
    else:
        faces = _finder.detect(rgb)
        lm = faces[0].landmarks if faces else None
    return rgb[:, :, 0].copy(), lm


def landmarks(split: str, kind: str, pad: bool, workers: int):
    out = prepare.CACHE / f"robust_{split}_{kind}_{'pad' if pad else 'plain'}.npz"
    if out.exists():
        d = np.load(out)
        return list(d["names"]), d["images"], d["landmarks"]
    root = prepare.data_dir()
    names, _ = prepare.read_labels(split, root)
    jobs = [(str(root / split / n), kind) for n in names]
    imgs = np.zeros((len(names), 48, 48), np.uint8)
    lms = np.full((len(names), 478, 3), np.nan, np.float32)
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(pad,)) as pool:
        for i, (im, lm) in enumerate(pool.imap(_job, jobs, chunksize=64)):
            imgs[i] = im
            if lm is not None:
                lms[i] = lm
    prepare.CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.asarray(names), images=imgs, landmarks=lms)
    return names, imgs, lms


def run(split, triplets_file, kinds, pad, workers, model=None):
    from facial_search.embedders.expression import ExpressionEmbedder

    from .train import read_triplets, triplet_accuracy

    trip = read_triplets(prepare.data_dir() / triplets_file)
    emb = ExpressionEmbedder(model)
    results = {}
    for kind in kinds:
        names, imgs, lms = landmarks(split, kind, pad, workers)
        x = np.zeros((len(names), 48, 48), np.float32)
        for i in range(len(names)):
            lm = None if np.isnan(lms[i, 0, 0]) else lms[i]
            rgb = np.repeat(imgs[i][:, :, None], 3, 2)
            x[i] = emb.faces_input(rgb, [type("F", (), {"landmarks": lm})()])[0]
        e = np.concatenate([emb.run(x[i : i + 256])[0] for i in range(0, len(x), 256)])
        p = np.concatenate([emb.run(x[i : i + 256])[1] for i in range(0, len(x), 256)])
        r = {"detected": float(np.mean(~np.isnan(lms[:, 0, 0]))), "emb": triplet_accuracy(e, names, trip),
             "probs": triplet_accuracy(p, names, trip)}  # fmt: skip
        results[kind] = r
        print(kind, json.dumps(r), flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="FER2013Test")
    ap.add_argument("--triplets", default="triplets_test.csv")
    ap.add_argument("--kinds", default=",".join(PERTURBATIONS))
    ap.add_argument("--pad", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--landmarks-only", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.landmarks_only:
        for k in a.kinds.split(","):
            landmarks(a.split, k, a.pad, a.workers)
            print(k, f"{time.time() - t0:.0f}s", flush=True)
        return
    res = run(a.split, a.triplets, a.kinds.split(","), a.pad, a.workers, a.model)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
