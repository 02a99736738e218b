"""Train the ``expression`` embedder on FER+ (FER2013Train), select on FER2013Valid, export ONNX.

    FACIAL_SEARCH_MODELS=../shared/models python -m training.train --seed 0 --report-test

From Python: ``train(TrainConfig(seed=0, report_test=True))`` -- :class:`TrainConfig` holds every setting, its
defaults are the recipe (the command line's defaults are read from it).

Recipe (one seeded command; prepares the aligned-face cache first if missing, see training/prepare.py):

- input: the aligned 48x48 grey face (:func:`facial_search.vision.align.align_face`); each image is standardised
  (zero mean, unit std) inside the network, so brightness/contrast changes mostly cancel;
- network: a small VGG-style CNN (28-56-112-224 channels, ~0.91 M parameters) -> 64-d unit-norm embedding
  ``z``; a linear head on ``z`` gives 8 emotion logits;
- loss: soft-label cross-entropy against the FER+ vote distribution p (8 emotions, normalised)
  + distance regression: ``||z_i - z_j||`` towards ``DIST_SCALE * TV(p_i, p_j)`` over all pairs of the batch
  + a batch-all triplet hinge (anchor i, pairs j, k with TV_ij < TV_ik - 0.1, margin grows with the TV gap);
  images with >1 unknown/not-a-face vote are dropped (as in the triplet protocol);
- augmentation: mirror, scale/rotation/shift jitter, brightness/contrast/gamma with clipping, 2x down-up
  of the crop *before* its alignment (PIL bilinear or box, then bilinear up; precomputed by
  training/prepare.py; 35 %), 3x down-up, blur, noise, and the whole (unaligned) crop instead of the
  aligned face 30 % of the time (the run-time fallback when the detector misses a crop);
- AdamW + one-cycle LR, batch 128, 50 epochs, the network under bfloat16 autocast (2.1x the speed of
  float32 on the 2-core machine's AMX units; losses, optimiser and weights stay float32); an exponential
  moving average of the weights (decay 0.998 per step) is what gets evaluated, selected (best FER2013Valid
  triplet accuracy, overall + 0.5 x ONE_CLASS) and exported; the ONNX graph averages the embedding of the
  face and its mirror image and is quantised to int8 (ONNX Runtime static quantisation, calibrated on
  FER2013Valid faces).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import prepare

DIST_SCALE = 1.4
SIZE = 48


def conv_bn(i: int, o: int) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class ExpressionNet(nn.Module):
    def __init__(self, widths=(28, 56, 112, 224), dim: int = 64, n_classes: int = 8):
        super().__init__()
        a, b, c, d = widths
        self.features = nn.Sequential(
            *conv_bn(1, a), nn.MaxPool2d(2),
            *conv_bn(a, b), *conv_bn(b, b), nn.MaxPool2d(2),
            *conv_bn(b, c), *conv_bn(c, c), nn.MaxPool2d(2),
            *conv_bn(c, d), *conv_bn(d, d),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.drop = nn.Dropout(0.2)
        self.proj = nn.Linear(d, dim)
        self.head = nn.Linear(dim, n_classes)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @staticmethod
    def standardise(x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) pixels 0..255 -> per-image zero mean, unit std."""
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = (x - mu).pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-2).sqrt()
        return (x - mu) / sd

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (N, 1, 48, 48) 0..255 -> (unit-norm embedding (N, dim), logits (N, 8))."""
        f = self.drop(self.features(self.standardise(x)))
        z = F.normalize(self.proj(f), dim=1)
        return z, self.head(z) * self.logit_scale.exp()


class ExportWrapper(nn.Module):
    """ONNX graph: uint8-range float pixels (N, 48, 48) -> embedding (N, 64) and probabilities (N, 8),
    both the average over the face and its mirror image (embedding renormalised)."""

    def __init__(self, net: ExpressionNet):
        super().__init__()
        self.net = net
        self.register_buffer("rev", torch.arange(SIZE - 1, -1, -1))

    def forward(self, image: torch.Tensor):
        x = image.unsqueeze(1)
        xm = torch.index_select(x, 3, self.rev)
        n = x.shape[0]
        z, logits = self.net(torch.cat([x, xm], 0))
        emb = F.normalize(z[:n] + z[n:], dim=1)
        probs = 0.5 * (logits[:n].softmax(1) + logits[n:].softmax(1))
        return emb, probs


# ----------------------------------------------------------------------------------------------------- data


def load_split(split: str, cache: Path | None = None):
    d = np.load(prepare.aligned_file(split, SIZE, cache))
    votes = d["votes"].astype(np.float32)
    emo = votes[:, :8]
    s = emo.sum(1, keepdims=True)
    p = emo / np.maximum(s, 1)
    keep = (votes[:, 8:].sum(1) <= 1) & (s[:, 0] > 0)
    return {"names": list(d["names"]), "images": d["images"], "whole": d["whole"], "p": p, "keep": keep}


def read_triplets(path: Path) -> list[tuple[str, str, str, str, str]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return [(t["image_a"], t["image_b"], t["image_c"], t["most_similar"], t["type"]) for t in r]


def triplet_accuracy(emb: np.ndarray, names: list[str], triplets) -> dict[str, float]:
    """Share of triplets whose closest pair in ``emb`` (rows named by ``names``) is the labelled pair."""
    idx = {n: i for i, n in enumerate(names)}
    a = np.array([idx[t[0]] for t in triplets])
    b = np.array([idx[t[1]] for t in triplets])
    c = np.array([idx[t[2]] for t in triplets])
    lab = np.array(["ab ac bc".split().index(t[3]) for t in triplets])
    typ = np.array([t[4] for t in triplets])
    d = np.stack(
        [np.linalg.norm(emb[a] - emb[b], axis=1), np.linalg.norm(emb[a] - emb[c], axis=1),
         np.linalg.norm(emb[b] - emb[c], axis=1)], 1)  # fmt: skip
    ok = d.argmin(1) == lab
    out = {"overall": float(ok.mean())}
    for t in ("ONE_CLASS", "TWO_CLASS", "THREE_CLASS"):
        m = typ == t
        if m.any():
            out[t] = float(ok[m].mean())
    return out


# ----------------------------------------------------------------------------------------------- augment


def augment(
    x: torch.Tensor,
    whole: torch.Tensor,
    g: torch.Generator,
    p_whole: float = 0.3,
    p_down2: float = 0.35,
    down2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch (N, 1, S, S) float 0..255 -> augmented copy (see module docstring).

    ``down2`` (N, 4, S, S), :func:`training.prepare.down2_views` of the same faces: when given, the 2x
    down-up share takes them (blurred before the alignment, as a low-resolution face reaches the network at
    run time) instead of halving the aligned face."""
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    use_whole = (u(n) < p_whole).view(n, 1, 1, 1)
    x = torch.where(use_whole, whole, x)
    if down2 is not None:
        r_pre = u(n).view(n, 1, 1, 1)
        view = (u(n) < 0.5).long() + 2 * use_whole.view(n).long()  # bilinear/box, aligned/whole
        x = torch.where(r_pre < p_down2, down2[torch.arange(n), view].unsqueeze(1), x)
    flip = u(n) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    # similarity jitter
    ang = (u(n) * 2 - 1) * math.radians(10)
    sc = 1 + (u(n) * 2 - 1) * 0.1
    tx, ty = (u(n) * 2 - 1) * 0.1, (u(n) * 2 - 1) * 0.1
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # resolution: 2x down-up (p_down2), 3x down-up (10 %), light blur (15 %)
    # (with ``down2`` this draw, and d2's below, go unused; they stay so that the random stream, and with it
    # the shipped weights, is what the recorded recipe made)
    r = u(n).view(n, 1, 1, 1)
    if down2 is not None:
        r = r_pre
    s = x.shape[-1]
    # half size by box or antialiased bilinear (as PIL's resize does), back up bilinear
    box = (u(n) < 0.5).view(n, 1, 1, 1)
    if down2 is None:  # (with ``down2`` the draw above is kept, the unused resampling skipped)
        half = torch.where(
            box,
            F.avg_pool2d(x, 2),
            F.interpolate(x, size=(s // 2, s // 2), mode="bilinear", antialias=True, align_corners=False),
        )
        d2 = F.interpolate(half, size=(s, s), mode="bilinear", align_corners=False)
    d3 = F.interpolate(F.interpolate(x, size=(s // 3, s // 3), mode="area"), size=(s, s), mode="bilinear",
                       align_corners=False)  # fmt: skip
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :]).view(1, 1, 3, 3))
    jittered = x
    x = torch.where(r < p_down2 + 0.2, blur, x)
    x = torch.where(r < p_down2 + 0.1, d3, x)
    x = torch.where(r < p_down2, d2 if down2 is None else jittered, x)
    # photometric: gamma, contrast, brightness, noise, clip
    gam = torch.exp((u(n) * 2 - 1) * 0.4).view(n, 1, 1, 1)
    x = 255.0 * (x.clamp(0, 255) / 255.0).pow(gam)
    con = (0.6 + 0.8 * u(n)).view(n, 1, 1, 1)
    mu = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mu) * con + mu
    x = x * (0.7 + 0.6 * u(n)).view(n, 1, 1, 1) + ((u(n) * 2 - 1) * 25).view(n, 1, 1, 1)
    noise = (u(n) < 0.3).float().view(n, 1, 1, 1) * torch.randn(x.shape, generator=g) * 4
    x = (x + noise).clamp(0, 255)
    return torch.round(x)  # pixels are integers at run time


# ------------------------------------------------------------------------------------------------- losses


def tv_matrix(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p[:, None, :] - p[None, :, :]).abs().sum(-1)


def losses(z, logits, p, w_dist: float, w_trip: float):
    ce = -(p * F.log_softmax(logits, 1)).sum(1).mean()
    tv = tv_matrix(p)
    d = torch.cdist(z, z).clamp_min(0)
    n = z.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    dist = F.smooth_l1_loss(d[off], (DIST_SCALE * tv)[off], beta=0.1)
    # batch-all triplets: anchor i, positive j, negative k with tv_ij + 0.1 < tv_ik
    gap = tv[:, None, :] - tv[:, :, None]  # [i, j, k] = tv_ik - tv_ij
    valid = (gap > 0.1) & off[:, :, None] & off[:, None, :]
    viol = F.relu(d[:, :, None] - d[:, None, :] + DIST_SCALE * 0.5 * gap)  # d_ij - d_ik + margin
    trip = (viol * valid).sum() / valid.sum().clamp_min(1)
    return ce + w_dist * dist + w_trip * trip, {"ce": ce.item(), "dist": dist.item(), "trip": trip.item()}


# -------------------------------------------------------------------------------------------------- train


@torch.no_grad()
def embed_array(model: nn.Module, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-averaged embeddings and probabilities of (N, S, S) uint8 images with the export graph."""
    wrap = ExportWrapper(model).eval()
    embs, probs = [], []
    for i in range(0, len(images), batch):
        e, p = wrap(torch.from_numpy(images[i : i + batch]).float())
        embs.append(e.numpy())
        probs.append(p.numpy())
    return np.concatenate(embs), np.concatenate(probs)


def _scores(emb: np.ndarray, probs: np.ndarray, data, triplets) -> dict:
    """Triplet accuracy of the embedding and, for comparison, of the class probabilities."""
    return {"emb": triplet_accuracy(emb, data["names"], triplets),
            "probs": triplet_accuracy(probs, data["names"], triplets)}  # fmt: skip


def selection_score(res: dict) -> float:
    """What picks the exported epoch on FER2013Valid: overall + 0.5 x ONE_CLASS triplet accuracy (embedding)."""
    return res["emb"]["overall"] + 0.5 * res["emb"].get("ONE_CLASS", 0)


def evaluate(model, data, triplets) -> dict:
    return _scores(*embed_array(model, data["images"]), data, triplets)


def embed_onnx(path: Path, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """:func:`embed_array` with an exported graph (float or int8) under ONNX Runtime: unit-norm embeddings
    ``(N, D)`` and probabilities ``(N, 8)`` of ``(N, 48, 48)`` uint8 aligned faces."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32)
    outs = [sess.run(None, {"image": x[i : i + batch]}) for i in range(0, len(x), batch)]
    emb = np.concatenate([o[0] for o in outs])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.concatenate([o[1] for o in outs])


def evaluate_onnx(path: Path, data, triplets) -> dict:
    """:func:`evaluate` with the exported graph under ONNX Runtime (what ships)."""
    return _scores(*embed_onnx(path, data["images"]), data, triplets)


def export_onnx(model: ExpressionNet, path: Path) -> None:
    wrap = ExportWrapper(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrap, torch.zeros(2, SIZE, SIZE), str(path), input_names=["image"], output_names=["embedding", "probs"],
        dynamic_axes={"image": {0: "n"}, "embedding": {0: "n"}, "probs": {0: "n"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    import onnx

    m = onnx.load(str(path))
    meta = {"input": "image: (N, 48, 48) float32 grey pixels 0..255, aligned by facial_search.vision.align",
            "outputs": "embedding (N, 64) unit-norm, probs (N, 8) neutral happiness surprise sadness anger "
                       "disgust fear contempt"}  # fmt: skip
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(path))


def quantize_int8(float_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantisation (ONNX Runtime, QDQ, per-channel weights) of the exported graph, activation
    ranges calibrated on ``calibration`` ``(N, 48, 48)`` uint8 aligned faces (FER2013Valid, never test).
    About 2x faster on CPU; the FER2013Test triplet accuracy of v2 moved by -0.0002 (float 0.9149)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = calibration.astype(np.float32)
            self.batches = iter([{"image": x[i : i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = out_path.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(float_path), str(pre))
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Relu", "MaxPool", "GlobalAveragePool"])  # fmt: skip
    finally:
        pre.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- config


class ConfigError(ValueError):
    """A :class:`TrainConfig` value out of its range: ``field`` names the setting, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A :class:`TrainConfig` field: its default, and the ``help`` (and argparse options) of its ``--flag``."""
    return field(default=default, metadata={"help": help, "cli": cli})


def _optional_path(text: str) -> Path | None:
    """Command-line path; the empty string means none (``--log ''`` writes no log)."""
    return Path(text) if text else None


DOWN2_MODES = ("after-align", "before-align")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of :func:`train`. The defaults are the shipped recipe (``expression-v3.onnx``): with the
    default seed, the same machine and the same torch, ``train(TrainConfig())`` makes the same weights as
    ``python -m training.train`` (whose option defaults are read from these fields).

    Paths are relative to the working directory (run from the repository root). Strings given for paths are
    made :class:`~pathlib.Path`; a value out of range raises :class:`ConfigError` (a ``ValueError``).

    Output
        out: the shipped graph (``.onnx``; int8 when ``int8``).
        int8: quantise ``out`` to int8 (ONNX Runtime static QDQ); the float graph goes to ``fp32_out``.
        fp32_out: the float graph (None: ``training/runs/<out stem>.fp32.onnx``).
        calibration: number of FER2013Valid faces the int8 activation ranges are calibrated on.
        log: JSON log of the run, every epoch (None: none).
        save_torch: also save the selected PyTorch ``state_dict`` to ``training/runs/<out stem>.pt``.
        export_every_best: export ``out`` (float) at every new best epoch, so a cut-short run leaves a model.
        report_test: after the export, print FER2013Test triplet accuracy of ``out`` (reporting only).
    Optimisation
        seed: seeds torch, NumPy's global generator, the batch/augmentation generator and the calibration
            draw (an integer in [0, 2**32)).
        epochs: passes over the training faces (>= 1).
        batch: faces per step (>= 1); an epoch is ``max(1, faces // batch)`` steps, the remainder unused.
        lr: peak learning rate of the one-cycle schedule (AdamW; warm-up over the first 15 % of the steps).
        wd: AdamW decoupled weight decay (per unit learning rate).
        w_dist: weight of the distance-regression loss (``||z_i - z_j||`` towards ``1.4 x TV(p_i, p_j)``).
        w_trip: weight of the batch-all triplet hinge.
        ema: decay per step of the weights' exponential moving average, which is validated, selected and
            exported (in [0, 1); 0: the raw weights).
        select_from: first epoch (1-based) that is validated and may be selected; earlier epochs train the same.
        max_steps: stop after this many optimiser steps in all (0: no limit; tests).
    Network and speed
        widths: channels of the 4 convolution stages.
        threads: torch CPU threads, and FaceLandmarker processes when the cache is prepared (>= 1).
        bf16: bfloat16 autocast of the network while training (2.1x on CPUs with AMX; False: float32, other
            weights).
        channels_last: NHWC tensors (1.14x here; other kernels, so other weights).
    Data and augmentation
        p_whole: share of training faces replaced by the whole (unaligned) crop, in [0, 1].
        p_down2: share of training faces seen 2x downscaled and back up, in [0, 1].
        down2: ``"before-align"`` (the crop halved before its alignment, precomputed by ``training/prepare.py``)
            or ``"after-align"`` (the aligned face halved: the v2 recipe).
        limit: use only the first N kept training faces (0: all; tests).
        cache: folder of prepared ``aligned_*.npz`` / ``down2_*.npz`` (None: ``training/cache``, prepared
            first when missing).
        valid_split: the FER+ split validated on (never FER2013Test for selecting).
        valid_triplets: its triplet CSV (None: ``triplets_valid.csv`` of the FER+ folder).
    """

    out: Path = _setting(Path("facial_search/models/expression-v3.onnx"), "the shipped graph (.onnx)")
    seed: int = _setting(0, "seed of every random draw")
    epochs: int = _setting(50, "passes over the training faces")
    batch: int = _setting(128, "faces per step")
    lr: float = _setting(3e-3, "peak learning rate of the one-cycle schedule (AdamW)")
    wd: float = _setting(5e-4, "AdamW weight decay")
    w_dist: float = _setting(1.0, "weight of the distance-regression loss")
    w_trip: float = _setting(1.0, "weight of the triplet loss")
    ema: float = _setting(0.998, "weight EMA decay per step (0: off)")
    int8: bool = _setting(True, "ship the int8-quantised graph (the float one goes to --fp32-out)")
    fp32_out: Path | None = _setting(None, "float graph (default training/runs/<out>.fp32.onnx)")
    calibration: int = _setting(512, "FER2013Valid faces to calibrate int8 with")
    widths: tuple[int, int, int, int] = _setting((28, 56, 112, 224), "channels of the 4 stages", nargs=4)
    threads: int = _setting(2, "torch threads (and FaceLandmarker processes when preparing)")
    select_from: int = _setting(1, "validate (and select among) epochs from this one on; earlier epochs train the same")
    channels_last: bool = _setting(False, "NHWC tensors (1.14x the speed here; other weights)")
    bf16: bool = _setting(
        True,
        "bfloat16 autocast of the network while training: 2.1x the speed on CPUs with AMX "
        "(the 2-core machine), slower without; --no-bf16 trains in float32",
    )
    p_whole: float = _setting(0.3, "share of whole (unaligned) crops")
    p_down2: float = _setting(0.35, "share of 2x down-up images")
    down2: Literal["after-align", "before-align"] = _setting(
        "before-align",
        "2x down-up of the crop before its alignment (training/prepare.py stage 3, as a low-resolution face "
        "reaches the network at run time), or of the aligned face (the v2 recipe)",
        choices=DOWN2_MODES,
    )
    limit: int = _setting(0, "use only the first N training images (tests)")
    max_steps: int = _setting(0, "stop after N steps (tests)")
    cache: Path | None = _setting(None, "folder of aligned_*.npz (default: training/cache, prepared)")
    valid_split: str = _setting("FER2013Valid", "FER+ split to validate (and select) on")
    valid_triplets: Path | None = _setting(None, "its triplet CSV (default: triplets_valid.csv of the FER+ folder)")
    report_test: bool = _setting(False, "print FER2013Test figures (never selects)")
    save_torch: bool = _setting(False, "also save the selected state_dict to training/runs/<out>.pt")
    export_every_best: bool = _setting(False, "export ONNX at each new best epoch")
    log: Path | None = _setting(Path("training/runs/train_log.json"), "JSON log of the run ('': none)")

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def integer(name: str, low: int, high: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v >= high):
                where = f">= {low}" if high is None else f"in [{low}, {high})"
                raise ConfigError(name, f"must be an integer {where}, got {v!r}")

        def number(name: str, low: float, high: float | None = None, *, open_low: bool = False,
                   open_high: bool = False) -> None:  # fmt: skip
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if open_low else v >= low)
            ok = ok and (high is None or (v < high if open_high else v <= high))
            if not ok:
                lo, hi = "(" if open_low else "[", ")" if open_high else "]"
                where = f"in {lo}{low}, {high}{hi}" if high is not None else f"{'>' if open_low else '>='} {low}"
                raise ConfigError(name, f"must be a number {where}, got {v!r}")
            put(name, float(v))

        for name in ("out", "fp32_out", "cache", "valid_triplets", "log"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = Path(v) if v or name == "out" else None
                put(name, v)
            if not (isinstance(v, Path) or (v is None and name != "out")):
                raise ConfigError(name, f"must be a path{'' if name == 'out' else ' or None'}, got {v!r}")
        if self.out == Path(""):
            raise ConfigError("out", "must name a file")
        integer("seed", 0, 2**32)  # NumPy's seed range
        for name in ("epochs", "batch", "calibration", "threads", "select_from"):
            integer(name, 1)
        for name in ("limit", "max_steps"):
            integer(name, 0)
        number("lr", 0.0, open_low=True)
        for name in ("wd", "w_dist", "w_trip"):
            number(name, 0.0)
        number("ema", 0.0, 1.0, open_high=True)
        number("p_whole", 0.0, 1.0)
        number("p_down2", 0.0, 1.0)
        for name in ("int8", "channels_last", "bf16", "report_test", "save_torch", "export_every_best"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.down2 not in DOWN2_MODES:
            raise ConfigError("down2", f"must be one of {', '.join(DOWN2_MODES)}, got {self.down2!r}")
        w = self.widths
        whole = lambda c: isinstance(c, int) and not isinstance(c, bool) and c >= 1  # noqa: E731
        if not isinstance(w, tuple | list) or len(w) != 4 or not all(map(whole, w)):
            raise ConfigError("widths", f"must be 4 integers >= 1, got {w!r}")
        put("widths", tuple(w))
        if not isinstance(self.valid_split, str) or not self.valid_split:
            raise ConfigError("valid_split", f"must name a FER+ split, got {self.valid_split!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (paths as strings, widths as a list): the log's ``"args"``."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            out[k] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out


# ---------------------------------------------------------------------------------------------------- run


def train(config: TrainConfig) -> dict:
    """Train, select and export one model as ``config`` says (module docstring); returns the run's summary,
    also written to ``config.log``: ``{"best_valid": the selected epoch's row, "train_s": seconds,
    "args": config.to_dict(), "history": one row per epoch ({"epoch", "time_s", "ce", "dist", "trip"} and,
    for the validated epochs, "valid": {"emb": accuracies, "probs": accuracies})}`` and, with
    ``report_test``, ``"test_cached"``. Raises ``TypeError`` for anything but a :class:`TrainConfig`."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(config.threads)
    g = torch.Generator().manual_seed(config.seed)
    cache = config.cache
    if cache is None:
        prepare.prepare(workers=config.threads)
    tr = load_split("FER2013Train", cache)
    va = load_split(config.valid_split, cache)
    trip_va = read_triplets(config.valid_triplets or prepare.data_dir() / "triplets_valid.csv")
    keep = np.flatnonzero(tr["keep"])
    if config.limit:
        keep = keep[: config.limit]
    X = torch.from_numpy(tr["images"][keep]).float().unsqueeze(1)
    W = torch.from_numpy(tr["whole"][keep]).float().unsqueeze(1)
    P = torch.from_numpy(tr["p"][keep])
    D2 = None
    if config.down2 == "before-align":
        with np.load(prepare.down2_file("FER2013Train", SIZE, cache)) as d:  # prepared above (stage 3)
            assert list(d["names"]) == tr["names"]
            D2 = torch.from_numpy(d["views"][keep]).float()
    model = ExpressionNet(widths=tuple(config.widths))
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    # exponential moving average of the weights (and BatchNorm statistics): evaluated, selected and exported
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.wd)
    steps_per_epoch = max(1, len(keep) // config.batch)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
    best, best_state, history = -1.0, None, []
    t0 = time.time()
    step = 0
    for ep in range(config.epochs):
        model.train()
        perm = torch.randperm(len(keep), generator=g)
        agg = {"ce": 0.0, "dist": 0.0, "trip": 0.0}
        for s in range(steps_per_epoch):
            if config.max_steps and step >= config.max_steps:
                break
            idx = perm[s * config.batch : (s + 1) * config.batch]
            x = augment(X[idx], W[idx], g, config.p_whole, config.p_down2, None if D2 is None else D2[idx])
            x = x.contiguous(memory_format=layout)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                z, logits = model(x)
            loss, parts = losses(z.float(), logits.float(), P[idx], config.w_dist, config.w_trip)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
            step += 1
            for k in agg:
                agg[k] += parts[k] / steps_per_epoch
        net = ema.module if config.ema > 0 else model
        net.eval()
        row = {"epoch": ep + 1, "time_s": round(time.time() - t0), **{k: round(v, 4) for k, v in agg.items()}}
        history.append(row)
        last = ep + 1 == config.epochs or (config.max_steps and step >= config.max_steps)
        if ep + 1 < config.select_from and not last:  # not a candidate: not validated (the training is the same)
            print(json.dumps(row), flush=True)
            continue
        row["valid"] = res = evaluate(net, va, trip_va)
        row["time_s"] = round(time.time() - t0)  # with the validation, as before
        score = selection_score(res)
        print(json.dumps(row), flush=True)
        if score > best:
            best = score
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if config.export_every_best:  # something usable even if the run is cut short
                export_onnx(net, config.out)
        if config.max_steps and step >= config.max_steps:
            break
    model.load_state_dict(best_state)
    model.eval()
    out = config.out
    export_onnx(model, out)
    if config.int8:
        fp32 = config.fp32_out or Path(f"training/runs/{out.stem}.fp32.onnx")
        fp32.parent.mkdir(parents=True, exist_ok=True)
        out.replace(fp32)
        calib = va["images"][np.random.default_rng(config.seed).permutation(len(va["images"]))[: config.calibration]]
        quantize_int8(fp32, out, calib)
    if config.save_torch:
        torch.save(model.state_dict(), f"training/runs/{out.stem}.pt")
    summary = {"best_valid": max((h for h in history if "valid" in h), key=lambda h: selection_score(h["valid"])),
               "train_s": round(time.time() - t0), "args": config.to_dict(), "history": history}  # fmt: skip
    if config.report_test:
        te = load_split("FER2013Test", cache)
        summary["test_cached"] = evaluate_onnx(out, te, read_triplets(prepare.data_dir() / "triplets_test.csv"))
        print(f"test (cached aligned faces, {out.name}):", json.dumps(summary["test_cached"]))
    if config.log:
        config.log.parent.mkdir(parents=True, exist_ok=True)
        config.log.write_text(json.dumps(summary, indent=1))
    return summary


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """``python -m training.train``'s options: one ``--flag`` per :class:`TrainConfig` field (``w_dist`` ->
    ``--w-dist``), its default the field's; booleans true by default get ``--no-flag``, false ones are
    switches."""
    ap = argparse.ArgumentParser(description="Train the expression embedder (see module docstring).")
    for f in dataclasses.fields(TrainConfig):
        flag, kw = "--" + f.name.replace("_", "-"), dict(f.metadata["cli"])
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        elif f.name in ("out", "fp32_out", "cache", "valid_triplets", "log"):
            kw["type"] = Path if f.name == "out" else _optional_path
        elif isinstance(f.default, tuple):
            kw["type"] = type(f.default[0])
        elif f.default is not None:
            kw["type"] = type(f.default)
        ap.add_argument(flag, default=f.default, help=f.metadata["help"], **kw)
    return ap


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Command-line arguments -> :class:`TrainConfig`; a bad value exits with argparse's usage error (status 2)
    naming the option."""
    ap = build_parser()
    ns = ap.parse_args(argv)
    try:
        return TrainConfig(**vars(ns))
    except ConfigError as e:
        ap.error(f"argument --{e.field.replace('_', '-')}: {e.reason}")


def main(argv: list[str] | None = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    main()
