"""The training recipe runs end to end on a handful of FER+ images and exports an ONNX model that loads; its
typed configuration (``TrainConfig``) is the command line's single source of defaults and refuses bad values."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

FERPLUS = Path(os.environ.get("FERPLUS_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"))
MODELS = Path(os.environ.get("FACIAL_SEARCH_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))

needs_data = pytest.mark.skipif(
    not (FERPLUS / "FER2013Train" / "label.csv").exists() or not (MODELS / "face_landmarker.task").exists(),
    reason="needs ../shared FER+ data and face_landmarker.task",
)

#: The shipped recipe (expression-v3.onnx, model card): what ``python -m training.train`` runs by default.
RECIPE = {
    "out": Path("facial_search/models/expression-v3.onnx"), "seed": 0, "epochs": 50, "batch": 128, "lr": 3e-3,
    "wd": 5e-4, "w_dist": 1.0, "w_trip": 1.0, "ema": 0.998, "int8": True, "fp32_out": None, "calibration": 512,
    "widths": (28, 56, 112, 224), "threads": 2, "select_from": 1, "channels_last": False, "bf16": True,
    "p_whole": 0.3, "p_down2": 0.35, "down2": "before-align", "limit": 0, "max_steps": 0, "cache": None,
    "valid_split": "FER2013Valid", "valid_triplets": None, "report_test": False, "save_torch": False,
    "export_every_best": False, "log": Path("training/runs/train_log.json"),
}  # fmt: skip


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


@needs_data
def test_train_few_steps_and_export(tmp_path, monkeypatch):
    import onnx

    from facial_search.embedders.expression import GENERATION, ExpressionEmbedder
    from training import train
    from training.train import TrainConfig

    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    cache, trip = fer_subset(tmp_path, {"FER2013Train": 24, "FER2013Valid": 9})
    out, fp32, log = tmp_path / "m.onnx", tmp_path / "m.fp32.onnx", tmp_path / "log.json"
    config = TrainConfig(
        out=out, epochs=2, select_from=2, batch=8, lr=1e-3, threads=1, limit=24, cache=cache,
        valid_triplets=trip, calibration=9, fp32_out=fp32, log=log,
    )  # fmt: skip
    summary = train.train(config)
    assert out.exists() and out.stat().st_size < 10 * 2**20
    assert fp32.exists()  # the float graph the int8 one was quantised from
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    assert "QuantizeLinear" in ops(out) and "QuantizeLinear" not in ops(fp32)
    first, second = summary["history"]  # epoch 1 trains but is no candidate: not validated
    assert "valid" not in first and summary["best_valid"] == second
    assert first["ce"] > 0 and first["dist"] > 0 and second["ce"] != first["ce"]  # losses computed, weights moved
    # the figures the selection read are those of the float graph written (the selected EMA weights)
    va = train.load_split("FER2013Valid", cache)
    assert second["valid"] == train.evaluate_onnx(fp32, va, train.read_triplets(trip))
    assert sorted(second["valid"]["emb"]) == ["ONE_CLASS", "overall"]
    # the log is the summary, its "args" the configuration (JSON: paths as strings)
    logged = json.loads(log.read_text())
    assert logged["history"] == summary["history"] and TrainConfig(**logged["args"]) == config
    emb = ExpressionEmbedder(model_file=out)
    # other weights, another version: an index made with the shipped model refuses these vectors
    assert emb.version != ExpressionEmbedder().version and emb.version.startswith(f"{GENERATION}+")
    x = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.float32)
    e, p = emb.run(x)
    assert e.shape == (3, 64) and p.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)


def test_train_takes_only_a_config():
    from training.train import train

    with pytest.raises(TypeError, match="TrainConfig"):
        train({"epochs": 1})


def test_config_defaults_are_the_recipe_and_the_command_lines():
    """One source of truth: every option of ``python -m training.train`` defaults to its TrainConfig field,
    field by field, and those defaults are the shipped recipe."""
    from training.train import TrainConfig, build_parser, parse_config

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert fields == RECIPE  # a recipe change must be made here too, on purpose
    ns = vars(build_parser().parse_args([]))
    assert set(ns) == set(fields)  # no option without a field, no field without an option
    for name, default in fields.items():
        assert ns[name] == default, name
    assert parse_config([]) == TrainConfig()
    assert dataclasses.asdict(TrainConfig()) == RECIPE


def test_command_line_maps_onto_the_config():
    from training.train import TrainConfig, parse_config

    c = parse_config(
        ["--epochs", "3", "--w-dist", "0.5", "--no-bf16", "--no-int8", "--channels-last", "--widths", "8", "8", "16",
         "16", "--down2", "after-align", "--cache", "c", "--log", "", "--select-from", "2"]
    )  # fmt: skip
    assert c == dataclasses.replace(
        TrainConfig(), epochs=3, w_dist=0.5, bf16=False, int8=False, channels_last=True, widths=(8, 8, 16, 16),
        down2="after-align", cache=Path("c"), log=None, select_from=2,
    )  # fmt: skip
    assert TrainConfig(out="a.onnx", cache="", widths=[1, 2, 3, 4]) == TrainConfig(
        out=Path("a.onnx"), cache=None, widths=(1, 2, 3, 4)
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [({"epochs": 0}, "epochs"), ({"epochs": 2.5}, "epochs"), ({"batch": -1}, "batch"), ({"lr": 0.0}, "lr"),
     ({"lr": float("nan")}, "lr"), ({"ema": 1.0}, "ema"), ({"p_down2": 1.5}, "p_down2"), ({"seed": -1}, "seed"),
     ({"down2": "sideways"}, "down2"), ({"widths": (8, 8, 8)}, "widths"), ({"threads": 0}, "threads"),
     ({"bf16": "yes"}, "bf16"), ({"out": ""}, "out")],
)  # fmt: skip
def test_config_refuses_bad_values(change, field):
    from training.train import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=f"^{field}: must ") as e:
        TrainConfig(**change)
    assert e.value.field == field and isinstance(e.value, ValueError)


def test_config_refuses_unknown_settings():
    from training.train import TrainConfig

    with pytest.raises(TypeError, match="epoch"):
        TrainConfig(epoch=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
     (["--p-whole", "2"], "argument --p-whole: must be a number in [0.0, 1.0], got 2.0"),
     (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
     (["--frobnicate"], "unrecognized arguments: --frobnicate")],
)  # fmt: skip
def test_command_line_bad_value_is_a_usage_error(argv, message, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and err.strip().endswith(message)


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


def test_augment_is_seeded_and_draws_the_whole_crop_and_down2_views():
    """Seeded: the same generator state gives the same batch, another seed another one. ``p_whole`` and
    ``p_down2`` pick the source: constant faces stay constant through the geometric jitter, so a dark
    whole crop (0) and a bright aligned face (255) tell, after the photometric jitter (gain 0.7..1.3,
    offset +-25, noise), which one each output came from."""
    from training.train import augment

    x = torch.rand(16, 1, 48, 48) * 255
    y = augment(x, x.clone(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert torch.equal(y, augment(x, x.clone(), torch.Generator().manual_seed(0)))
    assert not torch.equal(y, augment(x, x.clone(), torch.Generator().manual_seed(1)))
    bright, dark = torch.full((32, 1, 48, 48), 255.0), torch.zeros(32, 1, 48, 48)
    g = torch.Generator().manual_seed(0)
    assert augment(bright, dark, g, p_whole=0.0, p_down2=0.0).mean(dim=(1, 2, 3)).min() > 120
    assert augment(bright, dark, g, p_whole=1.0, p_down2=0.0).mean(dim=(1, 2, 3)).max() < 60
    down2 = torch.zeros(32, 4, 48, 48)  # the precomputed down-up views: dark
    assert augment(bright, bright, g, p_whole=0.0, p_down2=1.0, down2=down2).mean(dim=(1, 2, 3)).max() < 60
    assert augment(bright, bright, g, p_whole=0.0, p_down2=0.0, down2=down2).mean(dim=(1, 2, 3)).min() > 120


@needs_data
def test_down2_views_blur_before_alignment(monkeypatch):
    """The precomputed 2x down-up views of a real FER+ crop: four blurred faces (less fine detail than the
    clean aligned face), aligned like it (close in the mean), the whole ones like the whole crop."""
    import cv2

    from facial_search.io.images import load_image
    from facial_search.vision.align import align_face
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions
    from training.prepare import detect_crop, down2_views, read_labels

    names, _ = read_labels("FER2013Train", FERPLUS)
    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
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


@needs_data
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


@needs_data
def test_v4_recipe_few_steps_with_wild_labels_and_teacher(tmp_path, monkeypatch):
    """The v4 skeleton on a handful of real faces: FER+ (24 train, 9 valid), ExpW (6 train, 9 valid), SFEW (4)
    and two memes, the teacher's outputs computed and cached for them; a few steps train every loss (the
    distillation terms included) and export a graph the expression embedder loads."""
    pytest.importorskip("ai_edge_litert")
    from facial_search.embedders.expression import ExpressionEmbedder
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions
    from training import teacher, wild
    from training.train_v4 import V4Config, train_v4

    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    cache, trip = fer_subset(tmp_path, {"FER2013Train": 30, "FER2013Valid": 9})
    tcache, wcache = tmp_path / "teacher", tmp_path / "wild"
    t = teacher.Teacher()
    limits = {"ferplus-train": 30, "expw-train": 6, "sfew-train": 4}
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=8)) as finder:
        for name, n in limits.items():
            teacher.compute(teacher.source(name), t, finder, tcache, limit=n)
        memes = teacher.source("memes")
        memes = teacher.Source("memes", memes.root, ("Distracted-Boyfriend.jpg", "Success-Kid.jpg"), False)
        teacher.compute(memes, t, finder, tcache)
        for src in (wild.source("expw-train"), wild.source("sfew-train"), memes, wild.source("expw-valid")):
            n = {"expw-train": 6, "sfew-train": 4, "expw-valid": 9}.get(src.name, 0)
            wild.prepare_source(src, finder, wild.wild_file(src.name, wcache), limit=n)
    valid = wild.load_wild("expw-valid", wcache)
    assert valid["images"].shape == (9, 48, 48) and (valid["label"] >= 0).all()
    memes_rows = wild.load_wild("memes", wcache)
    assert (memes_rows["label"] == -1).all() and len(memes_rows["label"]) >= 2  # unlabelled, every face
    joined = wild.teacher_targets(memes_rows, teacher.load_cache(teacher.cache_file("memes", t.sha256, tcache)))
    assert joined["has"].all()  # the same faces, found the same way, join by (sha, face)
    expw_trip = tmp_path / "expw.csv"
    names = list(valid["name"])
    with open(expw_trip, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_a", "image_b", "image_c", "most_similar", "type"])
        for i in range(0, 9, 3):
            w.writerow([names[i], names[i + 1], names[i + 2], "ab", "TWO_CLASS"])
    out, log = tmp_path / "v4.onnx", tmp_path / "v4.json"
    config = V4Config(
        out=out, epochs=2, batch=12, threads=1, limit=24, cache=cache, wild_cache=wcache, teacher_cache=tcache,
        valid_triplets=trip, expw_triplets=expw_trip, log=log,
    )  # fmt: skip
    summary = train_v4(config)
    first, second = summary["history"]
    for row in (first, second):
        assert row["ce"] > 0 and row["kl"] > 0 and row["feat"] > 0 and row["rkd"] > 0
        assert set(row["valid"]) == {"fer", "expw", "score"}
    assert second["ce"] != first["ce"]
    assert json.loads(log.read_text())["history"] == summary["history"]
    e, p = ExpressionEmbedder(model_file=out).run(valid["images"].astype(np.float32))
    assert e.shape == (9, 64) and p.shape == (9, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)


def test_phone_and_meme_augmentations_are_seeded_and_change_faces():
    from training import augment as phone

    x = torch.rand(32, 1, 48, 48) * 255
    a = phone.phone_and_meme(x, torch.Generator().manual_seed(0), 0.5, 0.5, 0.5)
    assert torch.equal(a, phone.phone_and_meme(x, torch.Generator().manual_seed(0), 0.5, 0.5, 0.5))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert torch.equal(phone.phone_and_meme(x, torch.Generator().manual_seed(0), 0, 0, 0), torch.round(x))
    flat = torch.full((8, 1, 48, 48), 100.0)
    occluded = phone.occlude(flat, torch.Generator().manual_seed(1), p=1.0)
    changed = (occluded != 100).float().mean(dim=(1, 2, 3))
    assert ((changed > 0.01) & (changed < 0.2)).sum() >= 6  # a rectangle of 15-40 % a side (unless its grey is ~100)
    dark = phone.low_light(x, torch.Generator().manual_seed(2), p=1.0)
    assert not torch.equal(dark, x) and (dark - x).abs().mean() < 40  # noisy, quantised, brought back up


def test_v4_config_refuses_bad_values():
    from training.train import ConfigError
    from training.train_v4 import V4Config

    with pytest.raises(ConfigError, match="^wild_share: "):
        V4Config(wild_share=0.7, unlabelled_share=0.3)
    with pytest.raises(ConfigError, match="^kd_temperature: must be a number > 0"):
        V4Config(kd_temperature=0)
    with pytest.raises(ConfigError, match="^p_occlude: "):
        V4Config(p_occlude=1.5)
    assert V4Config(out="x.onnx", cache="").cache is None and V4Config().out != RECIPE["out"]  # never v3's file
