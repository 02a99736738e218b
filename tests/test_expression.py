"""The shipped expression embedder (real ONNX model, real MediaPipe landmarks, FER+ and meme images)."""

from __future__ import annotations

import csv
import hashlib
import os

import cv2
import numpy as np
import pytest
from helpers import FACES, FERPLUS

from facial_search.embedders import get_embedder
from facial_search.embedders.expression import GENERATION, MODEL_FILE, ExpressionEmbedder, model_path
from facial_search.io.images import load_image
from facial_search.vision.align import DEFAULT_SIZE, TEMPLATE, align_face, similarity_transform
from facial_search.vision.faces import FaceFinder, FaceFinderOptions, whole_image_face


@pytest.fixture(scope="module")
def finder(shared):
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=1)) as f:
        yield f


@pytest.fixture(scope="module")
def embedder():
    return ExpressionEmbedder()


def _faces(finder, rgb):
    return finder.detect(rgb) or [whole_image_face(rgb)]


# --------------------------------------------------------------------------------------------- alignment


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (13, 2))
    ang, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m = similarity_transform(src, src @ (s * r).T + t)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_template_is_symmetric_and_inside():
    assert TEMPLATE.shape == (13, 2) and np.all((TEMPLATE > 0) & (TEMPLATE < 1))
    np.testing.assert_allclose(TEMPLATE[[0, 1, 11]][:, 0], 1 - TEMPLATE[[3, 2, 12]][:, 0], atol=1e-4)


def test_whole_image_face_is_the_centred_square():
    img = np.zeros((300, 200, 3), np.uint8)
    img[50:250] = 255  # the centred 200x200 square is white, the bands above and below black
    out = align_face(img, None)
    assert out.shape == (DEFAULT_SIZE, DEFAULT_SIZE) and out.dtype == np.uint8
    assert out.min() == 255


def _smooth_image(side: int) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] * (300 / side)
    grey = (128 + 100 * np.sin(x / 23) * np.cos(y / 31)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, 2)


@pytest.mark.parametrize("side", [300, 900])  # 900: the face is shrunk by 0.27 (the area-averaging path)
def test_align_maps_template_landmarks_to_the_output_square(side):
    """Landmarks placed at the template, scaled into the square [0.4, 0.6]^2 of the image: the aligned face is
    that square resized to the output size."""
    from facial_search.vision.align import ALIGN_LANDMARKS

    img = _smooth_image(side)
    lm = np.full((478, 3), 0.5, np.float32)
    lm[list(ALIGN_LANDMARKS), :2] = TEMPLATE * 0.2 + 0.4
    out = align_face(img, lm)
    assert out.shape == (DEFAULT_SIZE, DEFAULT_SIZE) and out.dtype == np.uint8
    lo, hi = round(side * 0.4), round(side * 0.6)
    expected = cv2.resize(img[lo:hi, lo:hi, 0], (DEFAULT_SIZE, DEFAULT_SIZE), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - expected).max() <= 6
    assert np.abs(out.astype(int) - align_face(img, None)).mean() > 20  # not the whole image


def test_aligned_fer_crop_looks_like_the_crop(finder):
    """The template is FER+'s framing: aligning a detected FER+ crop changes it little."""
    root = FERPLUS / "FER2013Test"
    diffs = []
    for name in sorted(os.listdir(root))[:40]:
        if not name.endswith(".png"):
            continue
        rgb = load_image(root / name)
        faces = finder.detect(rgb)
        if faces:
            a = align_face(rgb, faces[0].landmarks).astype(float)
            w = align_face(rgb, None).astype(float)
            diffs.append(np.corrcoef(a.ravel(), w.ravel())[0, 1])
    assert len(diffs) > 20 and np.median(diffs) > 0.6


# -------------------------------------------------------------------------------------------- embeddings


def test_registered_and_output_contract(embedder):
    e = get_embedder("expression")
    assert (e.name, e.dim) == ("expression", 64)
    # the version an index records names the weights: generation + sha256 prefix of the shipped file
    digest = hashlib.sha256(model_path().read_bytes()).hexdigest()
    assert e.version == f"{GENERATION}+{digest[:12]}" and MODEL_FILE == f"expression-v{GENERATION}.onnx"
    img = np.full((48, 48, 3), 128, np.uint8)
    out = embedder.embed(img, [whole_image_face(img), whole_image_face(img)])
    assert out.shape == (2, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed(img, []).shape == (0, 64)


def test_mirrored_face_is_close_to_itself(finder, embedder):
    rgb = load_image(FACES / "0-f15-hao-ph.jpg")
    a = embedder.embed(rgb, _faces(finder, rgb))[0]
    m = np.ascontiguousarray(rgb[:, ::-1])
    b = embedder.embed(m, _faces(finder, m))[0]
    assert np.linalg.norm(a - b) < 0.15


def test_meme_and_crop_paths(finder, embedder):
    """A colour photo of any size and a 48x48 grey crop of it land close (same input recipe)."""
    rgb = load_image(FACES / "0-f1-su-ph.jpg")
    faces = finder.detect(rgb)
    assert faces
    e_photo = embedder.embed(rgb, faces)[0]
    grey48 = np.repeat(align_face(rgb, faces[0].landmarks)[:, :, None], 3, 2)  # a FER-style crop of it
    e_crop = embedder.embed(grey48, _faces(finder, grey48))[0]
    e_whole = embedder.embed(grey48, [whole_image_face(grey48)])[0]
    assert e_photo.shape == (64,)
    assert np.linalg.norm(e_photo - e_crop) < 0.35
    assert np.linalg.norm(e_photo - e_whole) < 0.35


def _clear_images(label: int, n: int) -> list[str]:
    out = []
    with open(FERPLUS / "FER2013Test" / "label.csv", newline="") as f:
        for row in csv.reader(f):
            if row and int(row[2 + label]) >= 9:
                out.append(row[0])
            if len(out) == n:
                break
    return out


def test_same_emotion_closer_than_different(finder, embedder):
    groups = [_clear_images(k, 6) for k in (1, 2, 0)]  # happiness, surprise, neutral
    embs = []
    for names in groups:
        rows = []
        for n in names:
            rgb = load_image(FERPLUS / "FER2013Test" / n)
            rows.append(embedder.embed(rgb, _faces(finder, rgb))[0])
        embs.append(np.stack(rows))
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    within = np.mean([d(e, e)[np.triu_indices(len(e), 1)].mean() for e in embs])
    between = np.mean([d(embs[i], embs[j]).mean() for i in range(3) for j in range(i + 1, 3)])
    assert within < 0.6 * between


def test_model_small():
    assert model_path().stat().st_size < 10 * 2**20
