"""In-the-wild faces for the v4 recipe: ExpW (train, and valid for selection), SFEW train and the meme faces,
detected and aligned once like FER+ (``training/prepare.py``), cached as uint8 arrays with their labels.

Per source (:data:`WILD_SOURCES`) one file ``training/cache/wild_<source>_48_v<CACHE_VERSION>.npz``:

- ``name`` (path under the source's folder), ``sha`` (the image's sha256), ``face`` (rank of the face, left to
  right; -1: none found, the whole crop is the face), ``box`` ``(N, 4)`` pixels;
- ``images`` ``(N, 48, 48) uint8``: :func:`facial_search.vision.align.align_face` with the face's landmarks
  (the whole crop when none: the run-time fallback), ``whole`` the whole crop (memes: the face box) resized,
  ``down2`` ``(N, 4, 48, 48)`` :func:`training.prepare.down2_views` (the 2x down-up augmentation);
- ``label`` ``(N,) int8``: the emotion as an index into :data:`facial_search.embedders.expression.EMOTIONS`
  (FER+ order), -1 for the unlabelled meme faces.

Faces are found exactly as :mod:`training.teacher` finds them (same detector calls, same order), so each row
joins its teacher outputs by ``(sha, face)``: :func:`teacher_targets`.

    python -m training.wild [--source expw-train ...]     # ~15 ms a face, one process
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from pathlib import Path

import numpy as np

from facial_search.embedders.expression import EMOTIONS

from . import prepare, teacher

#: Sources: the teacher's training sources but FER+ (``training/prepare.py`` has it), and ExpW valid
#: (model selection only: never trained on).
WILD_SOURCES = ("expw-train", "sfew-train", "memes", "expw-valid")
TRAIN_SOURCES = ("expw-train", "sfew-train", "memes")
SIZE = 48


def wild_file(name: str, cache: Path | None = None) -> Path:
    return (cache or prepare.CACHE) / f"wild_{name}_{SIZE}_v{prepare.CACHE_VERSION}.npz"


def source(name: str, shared: Path | None = None) -> teacher.Source:
    """:func:`training.teacher.source`, plus ``expw-valid`` (ExpW's ``valid/`` faces, for selection)."""
    if name == "expw-valid":
        root = (shared or teacher.shared_dir()) / "data" / "wild" / "expw"
        with open(root / "labels.csv", newline="") as f:
            files = tuple(f"valid/{r['file']}" for r in csv.DictReader(f) if r["split"] == "valid")
        return teacher.Source(name, root, files, True)
    return teacher.source(name, shared)


def labels_of(src: teacher.Source) -> dict[str, int]:
    """``{name: index in EMOTIONS}`` of a labelled source (ExpW, SFEW); empty for the memes."""
    if src.name.startswith("expw"):
        csv_path, prefix = src.root / "labels.csv", lambda r: f"{r['split']}/{r['file']}"
    elif src.name == "sfew-train":
        csv_path, prefix = src.root / "labels.csv", lambda r: r["file"]
    else:
        return {}
    with open(csv_path, newline="") as f:
        return {prefix(r): EMOTIONS.index(r["emotion"]) for r in csv.DictReader(f)}


def prepare_source(src: teacher.Source, finder, out: Path, limit: int = 0, log=None) -> Path:
    """Detect and align every face of ``src`` (its first ``limit`` files when > 0) into ``out``."""
    from facial_search.io.images import load_image
    from facial_search.vision.align import align_face
    from facial_search.vision.faces import detect_in_crop

    labels = labels_of(src)
    rows: dict[str, list] = {k: [] for k in ("name", "sha", "face", "box", "images", "whole", "down2", "label")}
    files = src.files[:limit] if limit else src.files
    t0 = time.time()
    for name in files:
        p = src.root / name
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        rgb = load_image(p)
        h, w = rgb.shape[:2]
        if src.cropped:
            f = detect_in_crop(finder, rgb)
            faces = [(0, f)] if f is not None else [(-1, None)]
        else:
            faces = list(enumerate(sorted(finder.detect(rgb), key=lambda f: f.box[0])))
        for rank, f in faces:
            lm = f.landmarks if f is not None else None
            box = f.box if f is not None else (0, 0, w, h)
            x, y, bw, bh = box
            views = prepare.down2_views(rgb, lm, SIZE)
            if not src.cropped:  # a meme's "whole" is its face box, not the whole picture
                views[2:] = views[:2]
            for k, v in (("name", name), ("sha", sha), ("face", rank), ("box", box),
                         ("images", align_face(rgb, lm, SIZE)),
                         ("whole", align_face(rgb[y : y + bh, x : x + bw], None, SIZE)), ("down2", views),
                         ("label", labels.get(name, -1))):  # fmt: skip
                rows[k].append(v)
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    arrays["label"] = arrays["label"].astype(np.int8)
    arrays["face"] = arrays["face"].astype(np.int16)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    if log:
        print(f"{src.name}: {len(files)} images, {len(arrays['sha'])} faces in {time.time() - t0:.0f}s -> {out}",
              file=log, flush=True)  # fmt: skip
    return out


def load_wild(name: str, cache: Path | None = None) -> dict[str, np.ndarray]:
    with np.load(wild_file(name, cache)) as d:
        return {k: d[k] for k in d.files}


def teacher_targets(data: dict[str, np.ndarray], cached: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The teacher's outputs for each row of ``data`` (:func:`load_wild`, or FER+ rows with ``sha`` and
    ``face``) from a teacher cache (:func:`training.teacher.load_cache`), joined by ``(sha, face)``:
    ``{"probs" (N, 7), "feats" (N, 256) float32, "has" (N,) bool}`` (rows without a match: zeros, False)."""
    key = {(s, int(f)): i for i, (s, f) in enumerate(zip(cached["sha"].tolist(), cached["face"].tolist(), strict=True))}
    idx = np.array([key.get((s, int(f)), -1) for s, f in zip(data["sha"].tolist(), data["face"].tolist(), strict=True)])
    has = idx >= 0
    probs = np.zeros((len(idx), 7), np.float32)
    feats = np.zeros((len(idx), 256), np.float32)
    probs[has] = cached["probs"][idx[has]]
    feats[has] = cached["feats"][idx[has]]
    return {"probs": probs, "feats": feats, "has": has}


def main(argv: list[str] | None = None) -> None:
    import os
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", choices=WILD_SOURCES, help="default: all")
    ap.add_argument("--cache", type=Path, help="default training/cache")
    a = ap.parse_args(argv)
    if (teacher.shared_dir() / "models").is_dir():
        os.environ.setdefault("FACIAL_SEARCH_MODELS", str(teacher.shared_dir() / "models"))
    from facial_search.io.native_log import silence_native_stderr
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions

    silence_native_stderr()
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=8)) as finder:  # as training.teacher
        for name in a.source or WILD_SOURCES:
            out = wild_file(name, a.cache)
            if not out.exists():
                prepare_source(source(name), finder, out, log=sys.stdout)


if __name__ == "__main__":
    main()
