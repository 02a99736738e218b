"""Triplet accuracy, the measure of FECNet (Vemulapalli & Agarwala, "A Compact Embedding for Facial
Expression Similarity", CVPR 2019): for three faces, is the pair closest in the embedding the pair people
call most alike? Triplets here are FER+ triplets in FEC's style (``../shared/data/ferplus/triplets_*.csv``,
columns ``image_a, image_b, image_c, most_similar (ab|ac|bc), type (ONE|TWO|THREE_CLASS)``) and the ExpW class
triplets in the same format (``../shared/data/wild/expw/triplets_valid.csv``, image names relative to the CSV's
folder, type TWO_CLASS: two faces share an emotion label, the third differs). With a labels CSV (``file,
emotion``, e.g. ExpW's ``labels.csv``) the accuracy is also broken down by the emotion of the labelled pair.

Every triplet counts: an image on which no face is found is embedded whole, never skipped.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facial_search import embedders
from facial_search.errors import InputNotFoundError, OptionError, TripletFileError
from facial_search.io.csv_files import read_csv_rows
from facial_search.io.images import load_image
from facial_search.io.progress import progress as progress_bar
from facial_search.parallel import WorkerConfig, current_pipeline, map_images, resolve_workers

PAIRS = ("ab", "ac", "bc")

#: Image transforms for robustness checks (applied to the decoded RGB image before anything else).
TRANSFORMS = ("none", "mirror", "downscale2", "brighter", "darker")


@dataclass(frozen=True)
class Triplet:
    a: str
    b: str
    c: str
    most_similar: str  # "ab", "ac" or "bc"
    type: str  # "ONE_CLASS", "TWO_CLASS" or "THREE_CLASS"
    line: int = field(default=0, compare=False)  # line of the triplet file (0: not from a file)


@dataclass
class TripletReport:
    """Triplet accuracy overall, per triplet type (``{type: (accuracy, n)}``) and, with labels, per emotion
    of the labelled pair (``per_pair_label``: ``{emotion: (accuracy, n)}``; ``"a|b"`` where the pair's two
    labels differ)."""

    overall: float
    n: int
    per_type: dict[str, tuple[float, int]]
    per_pair_label: dict[str, tuple[float, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The ``facial-search eval`` output: one line per type, one per pair label (``pair anger: ...``),
        then ``triplet_accuracy: 0.XXXX``."""
        out = [f"{t}: {acc:.4f} (n={n})" for t, (acc, n) in sorted(self.per_type.items())]
        out += [f"pair {t}: {acc:.4f} (n={n})" for t, (acc, n) in sorted(self.per_pair_label.items())]
        return out + [f"triplet_accuracy: {self.overall:.4f}"]


#: Columns a triplet CSV must have (``type`` is optional: triplets without it count as ``ALL``).
TRIPLET_COLUMNS = ("image_a", "image_b", "image_c", "most_similar")


def read_triplets(path: str | os.PathLike) -> list[Triplet]:
    """The triplets of a triplet CSV (columns :data:`TRIPLET_COLUMNS`, optional ``type``), in file order.

    Raises:
        InputNotFoundError: ``path`` does not exist.
        TripletFileError: the file is empty, binary, not UTF-8, lacks a column, has a malformed row, a row
            without an image name or with ``most_similar`` not one of ab, ac, bc, or holds no triplet at all;
            the message names the file and the line.
    """
    out = []
    for line, row in read_csv_rows(path, TRIPLET_COLUMNS, TripletFileError, "triplet CSV"):
        names = [row[c].strip() for c in TRIPLET_COLUMNS[:3]]
        if not all(names):
            raise TripletFileError(f"{path}:{line}: a triplet needs three image names")
        if row["most_similar"].strip() not in PAIRS:
            raise TripletFileError(
                f"{path}:{line}: most_similar must be one of ab, ac, bc (got {row['most_similar']!r})"
            )
        kind = (row.get("type") or "").strip() or "ALL"
        out.append(Triplet(*names, row["most_similar"].strip(), kind, line))
    if not out:
        raise TripletFileError(f"{path}: no triplets (only a header line)")
    return out


#: Columns of a labels CSV (``eval --labels``).
LABEL_COLUMNS = ("file", "emotion")


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """``{file: emotion}`` of a labels CSV (columns :data:`LABEL_COLUMNS`, others ignored: ExpW's
    ``labels.csv``).

    Raises:
        InputNotFoundError: ``path`` does not exist.
        TripletFileError: a bad CSV (see :func:`facial_search.io.csv_files.read_csv_rows`), a row without a
            file or an emotion, or one file given two different emotions; the message names the line.
    """
    out: dict[str, str] = {}
    for line, row in read_csv_rows(path, LABEL_COLUMNS, TripletFileError, "labels CSV"):
        name, emotion = row["file"].strip(), row["emotion"].strip()
        if not name or not emotion:
            raise TripletFileError(f"{path}:{line}: a label needs a file and an emotion")
        if out.setdefault(name, emotion) != emotion:
            raise TripletFileError(f"{path}:{line}: {name!r} labelled both {out[name]!r} and {emotion!r}")
    return out


def _label_of(labels: dict[str, str], name: str) -> str | None:
    """The label of a triplet's image: by its name as the triplet file gives it, else by its file name
    (ExpW's triplets say ``valid/x.jpg``, its labels ``x.jpg``)."""
    return labels.get(name, labels.get(Path(name).name))


def transform_image(rgb: np.ndarray, transform: str) -> np.ndarray:
    """Apply a robustness transform: ``mirror`` (left-right), ``downscale2`` (half size then back up,
    bilinear), ``brighter`` / ``darker`` (intensity x1.2 / x0.8, clipped)."""
    if transform == "none":
        return rgb
    if transform == "mirror":
        return np.ascontiguousarray(rgb[:, ::-1])
    if transform == "downscale2":
        from PIL import Image

        h, w = rgb.shape[:2]
        small = Image.fromarray(rgb).resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR))
    if transform in ("brighter", "darker"):
        f = 1.2 if transform == "brighter" else 0.8
        return np.clip(rgb.astype(np.float32) * f + 0.5, 0, 255).astype(np.uint8)
    raise OptionError(f"--transform {transform}: unknown transform; one of {', '.join(TRANSFORMS)}")


def _embed_one(task: tuple[str, bool, str]) -> np.ndarray:
    """Worker task: the embedding of the largest face of one image (the whole image when none is found)."""
    from facial_search.vision.faces import whole_image_face

    path, cropped, transform = task
    pipeline = current_pipeline()
    rgb = transform_image(load_image(path), transform)
    faces = pipeline.faces(rgb, cropped=cropped) or [whole_image_face(rgb)]
    face = max(faces, key=lambda f: f.box[2] * f.box[3])
    return pipeline.embed(rgb, [face])[0]


def embed_images(
    paths: list[str],
    *,
    cropped: bool = False,
    transform: str = "none",
    embedder: str | None = None,
    model_path: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``(len(paths), D) float32``: one embedding per image (largest face, or the whole image)."""
    config = WorkerConfig(embedder=embedder, model_path=model_path, max_faces=4)
    tasks = [(p, cropped, transform) for p in paths]
    it = map_images(_embed_one, tasks, config, workers=resolve_workers(workers), chunksize=16)
    rows = list(progress_bar(it, total=len(tasks), desc="embedding", enabled=progress))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def triplet_accuracy(
    triplets: list[Triplet], embeddings: dict[str, np.ndarray], labels: dict[str, str] | None = None
) -> TripletReport:
    """Share of triplets whose closest pair (Euclidean) in ``embeddings`` is the labelled pair, overall, per
    type and, with ``labels`` (``{image name or file name: emotion}``, see :func:`read_labels`), per emotion
    of the labelled pair (every image of the triplets needs a label then).

    Ties are broken in the order ab, ac, bc (a tie counts as a miss unless the labelled pair comes first).
    Raises ``ValueError`` for no triplets (there is no accuracy of nothing); ``TripletFileError`` for an
    image without a label (the message gives the triplet's line)."""
    if not triplets:
        raise ValueError("triplet accuracy of no triplets")
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    pair_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in triplets:
        a, b, c = embeddings[t.a], embeddings[t.b], embeddings[t.c]
        d = (np.linalg.norm(a - b), np.linalg.norm(a - c), np.linalg.norm(b - c))
        ok = PAIRS[int(np.argmin(d))] == t.most_similar
        hits[t.type][0] += ok
        hits[t.type][1] += 1
        if labels is not None:
            names = {"a": t.a, "b": t.b, "c": t.c}
            pair = [names[k] for k in t.most_similar]
            got = [_label_of(labels, n) for n in pair]
            if None in got:
                missing = pair[got.index(None)]
                raise TripletFileError(f"line {t.line}: image {missing!r} has no label in the labels CSV")
            key = got[0] if got[0] == got[1] else f"{got[0]}|{got[1]}"
            pair_hits[key][0] += ok
            pair_hits[key][1] += 1
    total = sum(h[1] for h in hits.values())
    per_type = {k: (h[0] / h[1], h[1]) for k, h in hits.items()}
    per_pair = {k: (h[0] / h[1], h[1]) for k, h in pair_hits.items()}
    overall = sum(h[0] for h in hits.values()) / total
    return TripletReport(overall, total, per_type, per_pair)


def evaluate(
    triplets_csv: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    cropped: bool = False,
    transform: str = "none",
    embedder: str | None = None,
    model_path: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> TripletReport:
    """Embed every distinct image of a triplet file once (images looked up in ``images``, default the
    triplet file's folder, as ExpW's ``valid/...`` names are) and score it; with ``labels`` (a labels CSV,
    :func:`read_labels`) also per emotion of the labelled pair.

    Raises:
        InputNotFoundError: ``triplets_csv``, the ``images`` folder or ``labels`` does not exist.
        TripletFileError: a bad triplet file (see :func:`read_triplets`) or labels CSV (:func:`read_labels`),
            a triplet names an image that is not in ``images`` (the message gives the first such line and how
            many images are missing), or an image without a label (checked before any image is embedded).
        ImageError: an image of the triplets cannot be decoded (every triplet counts: none is skipped).
        OptionError: ``workers`` below 1, or an unknown ``transform``.
        UnknownEmbedderError, AssetError, ModelLoadError, WorkerStartError: the pipeline cannot be built.
    """
    if transform not in TRANSFORMS:
        raise OptionError(f"--transform {transform}: unknown transform; one of {', '.join(TRANSFORMS)}")
    embedders.check_name(embedder)
    workers = resolve_workers(workers)
    folder = Path(images) if images is not None else Path(triplets_csv).parent
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    triplets = read_triplets(triplets_csv)
    names = sorted({n for t in triplets for n in (t.a, t.b, t.c)})
    paths = [str(folder / n) for n in names]
    missing = {n for n, p in zip(names, paths, strict=True) if not os.path.isfile(p)}
    if missing:
        line, first = next((t.line, n) for t in triplets for n in (t.a, t.b, t.c) if n in missing)
        raise TripletFileError(
            f"{triplets_csv}:{line}: image {first!r} not found in {folder} ({len(missing)} of {len(names)} "
            "images of the triplets missing)"
        )
    label_of = read_labels(labels) if labels is not None else None
    if label_of is not None:
        unlabelled = next(((t.line, n) for t in triplets for n in (t.a, t.b, t.c) if _label_of(label_of, n) is None),
                          None)  # fmt: skip
        if unlabelled:
            raise TripletFileError(f"{triplets_csv}:{unlabelled[0]}: image {unlabelled[1]!r} has no label in {labels}")
    emb = embed_images(
        paths,
        cropped=cropped,
        transform=transform,
        embedder=embedder,
        model_path=model_path,
        workers=workers,
        progress=progress,
    )
    return triplet_accuracy(triplets, dict(zip(names, emb, strict=True)), label_of)
