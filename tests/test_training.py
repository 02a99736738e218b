"""The training recipe runs end to end on a handful of FER+ images and exports an ONNX model that loads."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

FERPLUS = Path(os.environ.get("FERPLUS_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"))
MODELS = Path(os.environ.get("FACIAL_SEARCH_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))

pytestmark = pytest.mark.skipif(
    not (FERPLUS / "FER2013Train" / "label.csv").exists() or not (MODELS / "face_landmarker.task").exists(),
    reason="needs ../shared FER+ data and face_landmarker.task",
)


def fer_subset(tmp_path: Path, counts: dict[str, int]) -> tuple[Path, Path]:
    """A training cache of the first ``counts[split]`` faces of each split (detected and aligned for real,
    :func:`training.prepare.write_subset_cache`) and a triplet CSV over FER2013Valid's, in threes:
    ``(cache folder, triplets.csv)``. Needs ``FACIAL_SEARCH_MODELS`` set."""
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions
    from training import prepare

    cache = tmp_path / "cache"
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=1)) as finder:
        for split, n in counts.items():
            prepare.write_subset_cache(split, n, cache, finder, FERPLUS)
    names, _ = prepare.read_labels("FER2013Valid", FERPLUS)
    trip = tmp_path / "triplets.csv"
    with open(trip, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_a", "image_b", "image_c", "most_similar", "type"])
        for i in range(0, counts["FER2013Valid"], 3):
            w.writerow([names[i], names[i + 1], names[i + 2], "ab", "ONE_CLASS"])
    return cache, trip


def test_train_few_steps_and_export(tmp_path, monkeypatch):
    from facial_search.embedders.expression import GENERATION, ExpressionEmbedder
    from training import train

    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    cache, trip = fer_subset(tmp_path, {"FER2013Train": 24, "FER2013Valid": 9})
    out = tmp_path / "m.onnx"
    args = train.parse_args(
        ["--out", str(out), "--epochs", "2", "--select-from", "2", "--batch", "8", "--lr", "1e-3", "--threads", "1",
         "--limit", "24", "--cache", str(cache), "--valid-triplets", str(trip), "--calibration", "9",
         "--fp32-out", str(tmp_path / "m.fp32.onnx"), "--log", str(tmp_path / "log.json")]
    )  # fmt: skip
    summary = train.train(args)
    assert out.exists() and out.stat().st_size < 10 * 2**20
    assert (tmp_path / "m.fp32.onnx").exists()  # the float graph the int8 one was quantised from
    first, second = summary["history"]  # epoch 1 trains but is no candidate: not validated
    assert "valid" not in first and 0.0 <= second["valid"]["emb"]["overall"] <= 1.0
    assert summary["best_valid"]["epoch"] == 2
    emb = ExpressionEmbedder(model_file=out)
    # other weights, another version: an index made with the shipped model refuses these vectors
    assert emb.version != ExpressionEmbedder().version and emb.version.startswith(f"{GENERATION}+")
    x = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.float32)
    e, p = emb.run(x)
    assert e.shape == (3, 64) and p.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)


def test_triplet_accuracy_counts_closest_pair():
    from training.train import triplet_accuracy

    emb = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.0, 1.0]])
    names = ["a", "b", "c", "d"]
    trips = [
        ("a", "b", "c", "ab", "ONE_CLASS"),
        ("a", "c", "b", "bc", "TWO_CLASS"),
        ("c", "d", "b", "ac", "THREE_CLASS"),
    ]
    res = triplet_accuracy(emb, names, trips)
    assert res["ONE_CLASS"] == 1.0 and res["TWO_CLASS"] == 0.0 and res["THREE_CLASS"] == 1.0
    assert res["overall"] == pytest.approx(2 / 3)


def test_augment_keeps_shape_and_range():
    from training.train import augment

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 48, 48) * 255
    y = augment(x, x.clone(), g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 255


def test_down2_views_blur_before_alignment():
    """The precomputed 2x down-up views of a real FER+ crop: four blurred faces (less fine detail than the
    clean aligned face), aligned like it (close in the mean), the whole ones like the whole crop."""
    import cv2

    from facial_search.io.images import load_image
    from facial_search.vision.align import align_face
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions
    from training.prepare import detect_crop, down2_views, read_labels

    names, _ = read_labels("FER2013Train", FERPLUS)
    os.environ.setdefault("FACIAL_SEARCH_MODELS", str(MODELS))
    rgb = load_image(FERPLUS / "FER2013Train" / names[0])
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=1)) as finder:
        lm, how = detect_crop(finder, rgb)
    assert how > 0
    views = down2_views(rgb, lm, 48)
    assert views.shape == (4, 48, 48) and views.dtype == np.uint8
    clean, whole = align_face(rgb, lm, 48), align_face(rgb, None, 48)
    sharp = lambda a: cv2.Laplacian(a.astype(np.float64), cv2.CV_64F).var()  # noqa: E731
    for v, ref in zip(views, (clean, clean, whole, whole), strict=True):
        assert sharp(v) < 0.5 * sharp(ref)
        assert np.abs(v.astype(float) - ref).mean() < 12


def test_down2_gap_feeds_each_face_blurred(tmp_path, monkeypatch):
    """``training.down2_gap`` with the shipped model on real FER2013Valid crops: the down-up view of each face
    is embedded near its own clean face (the same faces, blurred, in the same order), and the accuracies are
    those of :func:`training.train.triplet_accuracy` on the two sets of embeddings."""
    from facial_search.embedders import expression
    from training import prepare, train
    from training.down2_gap import down2_gap

    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    cache, trip = fer_subset(tmp_path, {"FER2013Valid": 12})
    model = Path(expression.__file__).resolve().parents[1] / "models" / expression.MODEL_FILE
    res = down2_gap(model, "FER2013Valid", trip, cache)
    data = train.load_split("FER2013Valid", cache)
    with np.load(prepare.down2_file("FER2013Valid", 48, cache)) as d:
        down = d["views"][:, 0]
    clean_e, down_e = train.embed_onnx(model, data["images"])[0], train.embed_onnx(model, down)[0]
    assert res["clean"] == train.triplet_accuracy(clean_e, data["names"], train.read_triplets(trip))
    assert res["down2"] == train.triplet_accuracy(down_e, data["names"], train.read_triplets(trip))
    assert not np.allclose(clean_e, down_e)  # the views are blurred, not the clean faces again
    nearest = np.linalg.norm(down_e[:, None] - clean_e[None], axis=2).argmin(1)
    assert (nearest == np.arange(12)).sum() >= 9
