"""Teacher outputs for distillation, computed once and cached: HSEmotion's AffectNet MobileNet-7 on every face.

The teacher (``../shared/models/hsemotion_mobilenet_7.tflite``, see ``../shared/README.md``: MobileNetV1 ->
global pool (1024) -> dense 256 ``feats`` (ReLU) -> 7-class softmax; ~20-27 ms a face on one core) is too
slow to ship; v4 learns from its outputs instead. This module runs it once over the training faces of each
source (:data:`SOURCES`: FER2013Train, ExpW train, SFEW train, the imgflip meme faces) and caches, per face:

- ``probs`` ``(N, 7) float32``: softmax over :data:`EMOTIONS` (the teacher's class order);
- ``feats`` ``(N, 256) float32``: the ReLU ``feats`` layer;
- ``pooled`` ``(N, 1024) float16``: the global-pool layer before it.

The face the teacher sees (:func:`face_view`, version :data:`VIEW_VERSION`): its card's recipe, a tight face
crop -- the MediaPipe landmarks' box, no alignment -- resized to 224x224 (PIL bilinear), RGB, float, minus the
per-channel means :data:`MEANS` (HSEmotion's ``mobilenet_preprocess_input`` for its Keras models, applied to
RGB frames). Crop sources (FER+, ExpW, SFEW) take the largest face of
:func:`facial_search.vision.faces.detect_in_crop` (the run-time crop detector), the whole crop when none is
found (``face`` = -1); memes take every face :class:`facial_search.vision.faces.FaceFinder` finds (no face:
no row).

Cache: ``<cache>/<source>_<teacher sha256[:12]>_v<VIEW_VERSION>.npz``, rows keyed by the image's sha256
(``sha``; ``name`` is the path relative to the source's folder, ``face`` the face's rank left to right).
A run skips images whose sha256 is already there, checkpoints every ``checkpoint`` images (atomic replace),
so a killed run resumes; another teacher file or another view is another file. The default cache folder is
the user cache (``platformdirs``: ``~/.cache/facial-search/teacher`` on Linux), never the repository.

    OMP_NUM_THREADS=1 nice -n 19 python -m training.teacher [--source ferplus-train ...] [--cache DIR]
    python -m training.teacher --agreement 400      # teacher vs FER+ majority labels (FER2013Train faces)
    python -m training.teacher --agreement-cached   # the same over every cached FER2013Train face

Validation and test images (FER2013Valid/Test, ExpW ``valid/``) are not sources: nothing here trains on them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The teacher's class order (its softmax output).
EMOTIONS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
#: Per-channel means subtracted from the RGB pixels (0..255), HSEmotion's Keras preprocessing.
MEANS = np.array([103.939, 116.779, 123.68], np.float32)
INPUT_SIZE = 224
TEACHER_FILE = "hsemotion_mobilenet_7.tflite"
#: Bumped whenever :func:`face_view` or the face detection changes, so a cache of older views is not reused.
VIEW_VERSION = 1
#: FER+ vote columns (label.csv order) -> the teacher's class, for the agreement check (contempt has none).
FERPLUS_EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


class TeacherError(RuntimeError):
    """The teacher model cannot be found or loaded, or ``ai-edge-litert`` is not installed."""


def shared_dir() -> Path:
    """``../shared`` beside the checkout (``$FACIAL_SEARCH_SHARED`` overrides)."""
    env = os.environ.get("FACIAL_SEARCH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def teacher_file() -> Path:
    """The teacher's ``.tflite``: in ``$FACIAL_SEARCH_MODELS``, else ``../shared/models``."""
    env = os.environ.get("FACIAL_SEARCH_MODELS")
    return (Path(env) if env else shared_dir() / "models") / TEACHER_FILE


def default_cache_dir() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("facial-search") / "teacher"


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class TeacherOutput:
    probs: np.ndarray  # (7,) float32, sums to 1
    feats: np.ndarray  # (256,) float32, >= 0
    pooled: np.ndarray  # (1024,) float32


class Teacher:
    """The TFLite teacher on one face at a time (its graph has batch 1). Not thread-safe.

    Attributes: ``path``, ``sha256`` (of the file: part of every cache file's name).
    Raises:
        TeacherError: the file is missing or not a loadable TFLite model with the expected layers, or
            ``ai-edge-litert`` is not installed (``pip install -e '.[train]'``).
    """

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise TeacherError("the teacher needs ai-edge-litert: pip install -e '.[train]'") from None
        self.path = Path(path) if path is not None else teacher_file()
        if not self.path.is_file():
            raise TeacherError(f"{self.path}: teacher model not found (set FACIAL_SEARCH_MODELS)")
        self.sha256 = sha256_file(self.path)
        import warnings

        with warnings.catch_warnings():  # preserve_all_tensors warns that it is for debugging: we read 2 layers
            warnings.simplefilter("ignore")
            try:
                it = Interpreter(str(self.path), num_threads=threads, experimental_preserve_all_tensors=True)
                it.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise TeacherError(f"{self.path}: not a loadable TFLite model ({e})") from None
        self._it = it
        self._in = it.get_input_details()[0]["index"]
        self._out = it.get_output_details()[0]["index"]
        layers = {}
        for t in it.get_tensor_details():
            shape = tuple(t["shape"])
            if shape == (1, 256) and "feats" in t["name"]:
                layers["feats"] = t["index"]
            elif shape == (1, 1024) and "global_pooling" in t["name"]:
                layers["pooled"] = t["index"]
        if set(layers) != {"feats", "pooled"}:
            raise TeacherError(f"{self.path}: no 'feats' (1, 256) and global pool (1, 1024) layers")
        self._feats, self._pooled = layers["feats"], layers["pooled"]

    @staticmethod
    def preprocess(face: np.ndarray) -> np.ndarray:
        """``(h, w, 3) uint8`` RGB face crop -> ``(224, 224, 3) float32`` network input (resized, minus
        :data:`MEANS`)."""
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(face)).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        return np.asarray(img, np.float32) - MEANS

    def run(self, face: np.ndarray) -> TeacherOutput:
        """Outputs for one ``(h, w, 3) uint8`` RGB face crop (see :func:`face_view`)."""
        self._it.set_tensor(self._in, self.preprocess(face)[None])
        self._it.invoke()
        get = self._it.get_tensor
        return TeacherOutput(get(self._out)[0].copy(), get(self._feats)[0].copy(), get(self._pooled)[0].copy())


def face_view(rgb: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The teacher's view of a face: ``rgb[y:y+h, x:x+w]`` of its box (pixels), the whole image for None."""
    if box is None:
        return rgb
    x, y, w, h = box
    return rgb[y : y + h, x : x + w]


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A folder of training images: ``cropped`` (ready-made face crops: one face each) or not (every face)."""

    name: str
    root: Path
    files: tuple[str, ...]  # relative to root
    cropped: bool


def _labelled(csv_path: Path, split: str | None = None) -> tuple[str, ...]:
    with open(csv_path, newline="") as f:
        return tuple(r["file"] for r in csv.DictReader(f) if split is None or r["split"] == split)


def source(name: str, shared: Path | None = None) -> Source:
    """One of :data:`SOURCES` (raises ``KeyError`` for another name; ``FileNotFoundError`` without its data)."""
    shared = shared or shared_dir()
    data = shared / "data"
    if name == "ferplus-train":
        root = data / "ferplus" / "FER2013Train"
        with open(root / "label.csv", newline="") as f:
            files = tuple(r[0] for r in csv.reader(f) if r)
        return Source(name, root, files, True)
    if name == "expw-train":
        root = data / "wild" / "expw"
        return Source(name, root, tuple(f"train/{n}" for n in _labelled(root / "labels.csv", "train")), True)
    if name == "sfew-train":
        root = data / "wild" / "sfew" / "train"
        return Source(name, root, _labelled(root / "labels.csv"), True)
    if name == "memes":
        root = data / "memes" / "imgflip"
        return Source(name, root, tuple(sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix != ".csv")),
                      False)  # fmt: skip
    raise KeyError(f"unknown teacher source {name!r}; one of {', '.join(SOURCES)}")


#: Sources of training faces (never a validation or test image).
SOURCES = ("ferplus-train", "expw-train", "sfew-train", "memes")


def cache_file(source_name: str, teacher_sha256: str, cache: Path | None = None) -> Path:
    return (cache or default_cache_dir()) / f"{source_name}_{teacher_sha256[:12]}_v{VIEW_VERSION}.npz"


FIELDS = ("name", "sha", "face", "box", "probs", "feats", "pooled")


def load_cache(path: Path) -> dict[str, np.ndarray]:
    """A cache file's arrays (:data:`FIELDS`); empty arrays when the file does not exist."""
    if not path.exists():
        return {"name": np.zeros(0, "U1"), "sha": np.zeros(0, "U64"), "face": np.zeros(0, np.int16),
                "box": np.zeros((0, 4), np.int32), "probs": np.zeros((0, 7), np.float32),
                "feats": np.zeros((0, 256), np.float32), "pooled": np.zeros((0, 1024), np.float16)}  # fmt: skip
    with np.load(path) as d:
        return {k: d[k] for k in FIELDS}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _faces_of(finder, rgb: np.ndarray, cropped: bool) -> list[tuple[int, tuple[int, int, int, int] | None]]:
    from facial_search.vision.faces import detect_in_crop

    if cropped:
        face = detect_in_crop(finder, rgb)
        return [(0, face.box)] if face is not None else [(-1, None)]
    faces = sorted(finder.detect(rgb), key=lambda f: f.box[0])
    return [(i, f.box) for i, f in enumerate(faces)]


def compute(
    src: Source,
    teacher: Teacher,
    finder,
    cache: Path | None = None,
    limit: int = 0,
    checkpoint: int = 500,
    log=None,
) -> Path:
    """Teacher outputs for every face of ``src`` (its first ``limit`` files when > 0) into its cache file,
    skipping images whose sha256 is already cached; returns the file. Unreadable images are skipped (and
    counted in the log line)."""
    from facial_search.errors import ImageError
    from facial_search.io.images import load_image

    path = cache_file(src.name, teacher.sha256, cache)
    have = load_cache(path)
    done = set(have["sha"].tolist())
    rows: dict[str, list] = {k: [] for k in FIELDS}
    files = src.files[:limit] if limit else src.files
    t0, new, bad = time.time(), 0, 0

    def flush() -> None:
        nonlocal have
        if not rows["sha"]:
            return
        add = {k: np.asarray(v) for k, v in rows.items()}
        add["pooled"] = add["pooled"].astype(np.float16)
        have = {k: np.concatenate([have[k], add[k].astype(have[k].dtype) if k != "name" else add[k]]) for k in FIELDS}
        _save(path, have)
        for v in rows.values():
            v.clear()

    for i, name in enumerate(files):
        p = src.root / name
        data = p.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in done:
            continue
        try:
            rgb = load_image(p)
        except ImageError:
            bad += 1
            continue
        for face, box in _faces_of(finder, rgb, src.cropped):
            out = teacher.run(face_view(rgb, box))
            for k, v in (("name", name), ("sha", sha), ("face", face), ("box", box or (0, 0, rgb.shape[1], rgb.shape[0])),
                         ("probs", out.probs), ("feats", out.feats), ("pooled", out.pooled)):  # fmt: skip
                rows[k].append(v)
        done.add(sha)
        new += 1
        if new % checkpoint == 0:
            flush()
            if log:
                print(f"{src.name}: {i + 1}/{len(files)} images, {time.time() - t0:.0f}s", file=log, flush=True)
    flush()
    if log:
        print(f"{src.name}: {new} new images, {bad} unreadable, {len(have['sha'])} faces cached in "
              f"{time.time() - t0:.0f}s -> {path}", file=log, flush=True)  # fmt: skip
    return path


def lookup(arrays: dict[str, np.ndarray], shas: list[str], face: int | None = None) -> np.ndarray:
    """Row index in a cache (:func:`load_cache`) of each sha256 (its face ``face``; None: its first row), -1
    where it is not cached."""
    first: dict[str, int] = {}
    for i, (s, f) in enumerate(zip(arrays["sha"].tolist(), arrays["face"].tolist(), strict=True)):
        if (face is None or f == face) and s not in first:
            first[s] = i
    return np.array([first.get(s, -1) for s in shas], np.int64)


# ------------------------------------------------------------------------------------------ agreement check


def ferplus_agreement(teacher: Teacher, finder, n: int = 400, split: str = "FER2013Train", seed: int = 0) -> dict:
    """How often the teacher's class is the FER+ majority label, on ``n`` faces drawn from ``split`` (faces
    whose majority is contempt -- no teacher class -- or with > 1 unknown / not-a-face vote are left out):
    ``{"n", "agreement", "majority_baseline" (always answering the commonest label), "per_class"}``."""
    from facial_search.io.images import load_image

    root = shared_dir() / "data" / "ferplus" / split
    with open(root / "label.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    order = np.random.default_rng(seed).permutation(len(rows))
    labels, preds = [], []
    to_fer = [FERPLUS_EMOTIONS.index(e) for e in EMOTIONS]
    for i in order:
        votes = np.array([int(v) for v in rows[i][2:12]])
        if votes[8:].sum() > 1 or votes[:8].sum() == 0 or votes[:8].argmax() == 7:
            continue
        rgb = load_image(root / rows[i][0])
        (_, box), = _faces_of(finder, rgb, cropped=True)  # fmt: skip
        preds.append(to_fer[int(teacher.run(face_view(rgb, box)).probs.argmax())])
        labels.append(int(votes[:8].argmax()))
        if len(labels) == n:
            break
    y, p = np.array(labels), np.array(preds)
    per = {FERPLUS_EMOTIONS[c]: (float((p[y == c] == c).mean()), int((y == c).sum())) for c in np.unique(y)}
    return {"n": len(y), "agreement": float((y == p).mean()), "majority_baseline": float(np.bincount(y).max() / len(y)),
            "per_class": per}  # fmt: skip


def ferplus_agreement_cached(arrays: dict[str, np.ndarray], split: str = "FER2013Train") -> dict:
    """:func:`ferplus_agreement` over every face of a FER+ cache (``load_cache`` of ``ferplus-train``), same
    exclusions: ``{"n", "agreement", "majority_baseline", "per_class"}``."""
    root = shared_dir() / "data" / "ferplus" / split
    with open(root / "label.csv", newline="") as f:
        votes = {r[0]: np.array([int(v) for v in r[2:12]]) for r in csv.reader(f) if r}
    to_fer = np.array([FERPLUS_EMOTIONS.index(e) for e in EMOTIONS])
    labels, preds = [], []
    for name, probs in zip(arrays["name"].tolist(), arrays["probs"], strict=True):
        v = votes[name]
        if v[8:].sum() > 1 or v[:8].sum() == 0 or v[:8].argmax() == 7:
            continue
        labels.append(int(v[:8].argmax()))
        preds.append(int(to_fer[int(probs.argmax())]))
    y, p = np.array(labels), np.array(preds)
    per = {FERPLUS_EMOTIONS[c]: (float((p[y == c] == c).mean()), int((y == c).sum())) for c in np.unique(y)}
    return {"n": len(y), "agreement": float((y == p).mean()), "majority_baseline": float(np.bincount(y).max() / len(y)),
            "per_class": per}  # fmt: skip


def iter_sources(names: list[str]) -> Iterator[Source]:
    for n in names:
        yield source(n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Cache the teacher's outputs on the training faces (module docstring).")
    ap.add_argument("--source", action="append", choices=SOURCES, help="default: all")
    ap.add_argument("--cache", type=Path, help=f"cache folder (default {default_cache_dir()})")
    ap.add_argument("--limit", type=int, default=0, help="first N images of each source (0: all)")
    ap.add_argument("--agreement", type=int, metavar="N", help="only check the teacher on N FER2013Train faces")
    ap.add_argument("--agreement-cached", action="store_true",
                    help="only check the cached ferplus-train outputs against the FER+ majority labels")  # fmt: skip
    a = ap.parse_args(argv)
    if a.agreement_cached:
        path = cache_file("ferplus-train", sha256_file(teacher_file()), a.cache)
        print(ferplus_agreement_cached(load_cache(path)))
        return
    from facial_search.io.native_log import silence_native_stderr
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions

    if (shared_dir() / "models").is_dir():  # the landmarker beside the teacher, as the benchmarks find it
        os.environ.setdefault("FACIAL_SEARCH_MODELS", str(shared_dir() / "models"))
    silence_native_stderr()
    teacher = Teacher()
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=8)) as finder:
        if a.agreement:
            print(ferplus_agreement(teacher, finder, a.agreement), flush=True)
            return
        for src in iter_sources(a.source or list(SOURCES)):
            compute(src, teacher, finder, a.cache, a.limit, log=sys.stdout)


if __name__ == "__main__":
    main()
