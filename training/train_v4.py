"""Expression v4 recipe (skeleton, issue 19): v3's network and FER+ vote-distribution losses, plus the ExpW and
SFEW train labels, distillation of the AffectNet teacher's cached outputs on every training face (the
unlabelled meme faces too) and phone/meme augmentations. Exploratory: the shipped model stays v3 until a v4
meets every target of the issue.

    python -m training.teacher          # once: the teacher's outputs (user cache, ~25 min at one core)
    python -m training.prepare          # once: FER+ aligned faces (training/cache)
    python -m training.wild             # once: ExpW / SFEW / meme faces aligned (training/cache, ~3 min)
    python -m training.train_v4 --seed 0 [--epochs N] [--out training/runs/expression-v4.onnx]

Each batch: ``1 - wild_share - unlabelled_share`` of FER2013Train faces (an epoch is one pass over them),
``wild_share`` drawn from ExpW train + SFEW train, ``unlabelled_share`` from the meme faces (no label).

Losses (on the 64-d unit-norm embedding ``z``; the heads are linear, so ``z`` must carry what they read):

- labelled rows (FER+, ExpW, SFEW): v3's :func:`training.train.losses` -- soft-label cross-entropy, distance
  regression towards 1.4 x TV(p_i, p_j), batch-all triplet hinge -- with p the FER+ vote shares, or for a
  wild face its one-hot label smoothed towards the teacher's probabilities (``wild_smooth``: their labels
  are noisy);
- rows with teacher outputs (all training faces): ``w_kl`` x temperature-softened KL divergence of a 7-class
  head to the teacher's probabilities, ``w_feat`` x (1 - cosine) of a 256-d head to the teacher's unit-norm
  ``feats``, and ``w_rkd`` x relational distillation: smooth-L1 of the in-batch embedding distances towards
  the teacher's unit-``feats`` distances (those distances alone score ExpW valid 0.481, the probabilities 0.436).

Augmentation: v3's (:func:`training.train.augment`, with each source's precomputed 2x down-up views) then
:func:`training.augment.phone_and_meme` (occlusion, low light, JPEG-like blocks).

Selection: the weight EMA each epoch, by FER2013Valid ``overall + 0.5 x ONE_CLASS`` + ExpW valid
``overall`` (cached aligned faces); export: float32 ONNX, the same interface as v3 (``image`` -> ``embedding``,
``probs``), so ``ExpressionEmbedder(model_file=...)`` and ``python -m training.eval_graph`` run it. The
graph of each new best epoch is exported at once and the log rewritten every epoch (a run cut short leaves
both); the log's ``teacher_coverage`` is the share of each part's rows with teacher outputs.

Exploration (2026-12-02, Intel Xeon with AMX, 2 cores shared with ~6 jobs, one torch thread, nice 19, bf16):

- Width: 16-32-64-128 (the default) is the float32 width within the cost budget: its graph (1.2 MB) timed
  0.89-0.94x v3's int8 one in ``benchmarks/bench_embedding.py`` (embedding/landmarks 0.064-0.086 against
  int8's 0.069-0.085 under load); v3's widths in float32 cost 2.3-3.2x.
- Teacher cache only 42 % of FER2013Train (11,227 of 28,558 images; the rest, ExpW/SFEW/memes, not computed
  in the time): so no wild-label smoothing, no KD on wild faces, ``--unlabelled-share 0``.
- ``--epochs 7 --ema 0.99`` (1,862 steps of 96 FER+ + 32 ExpW/SFEW faces; EMA horizon ~5 % of the steps, as
  v3's 0.998 over 10,750): FER2013Valid 0.822 / ONE_CLASS 0.564, ExpW valid 0.469 (cached faces);
  ``eval_graph``: FER+ test 0.8216 / ONE_CLASS 0.6005, ExpW valid 0.4690 -- far under v3 (0.9261 / 0.7618,
  0.4872): too few steps for FER+, and ExpW does not move with the wild labels at this length.
- ``--epochs 20 --ema 0.995`` (5,320 steps, ~27 min at ~70 s an epoch once the machine calmed): best epoch
  18, FER2013Valid 0.864 / 0.643, ExpW valid 0.483; ``eval_graph``: FER+ test 0.8600 / ONE_CLASS 0.6402,
  ExpW valid 0.4832. FER+ still climbing (+3.8 points for 2.9x the steps), ExpW flat from epoch 12 at
  v3's level: ExpW labels at a 25 % share and partial distillation do not reach 0.60; the next try needs the
  whole teacher cache, ~50 epochs (v3's length) and probably a larger ExpW/SFEW weight or share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facial_search.embedders.expression import EMOTIONS

from . import augment as phone
from . import prepare, teacher, train, wild
from .train import ConfigError, _setting

#: Teacher class (its order) -> index in the FER+ order of :data:`EMOTIONS`.
TEACHER_TO_FER = [EMOTIONS.index(e) for e in teacher.EMOTIONS]


class StudentNet(train.ExpressionNet):
    """v3's :class:`training.train.ExpressionNet` and two distillation heads on its embedding (training only:
    the export keeps ``z`` and the FER+ head)."""

    def __init__(self, widths=(28, 56, 112, 224), dim: int = 64):
        super().__init__(widths=widths, dim=dim)
        self.kd_head = nn.Linear(dim, len(teacher.EMOTIONS))
        self.feat_head = nn.Linear(dim, 256)


@dataclass(frozen=True)
class V4Config:
    """Every setting of :func:`train_v4` (defaults: the exploratory recipe, not a shipped one).

    Data: ``cache`` (FER+ aligned faces, ``training/prepare.py``; None: ``training/cache``), ``wild_cache``
    (``training/wild.py``; None: ``training/cache``), ``teacher_cache`` (``training/teacher.py``; None: the
    user cache), ``valid_triplets`` / ``expw_triplets`` (None: ``../shared``'s), ``limit`` / ``limit_wild``
    (first N faces of FER+ / of each wild source; 0: all; tests). Values out of range raise
    :class:`training.train.ConfigError`."""

    out: Path = _setting(Path("training/runs/expression-v4.onnx"), "the exported float32 graph (never the shipped one)")
    seed: int = _setting(0, "seed of every random draw")
    epochs: int = _setting(30, "passes over the FER2013Train faces")
    batch: int = _setting(128, "faces per step (all sources)")
    lr: float = _setting(3e-3, "peak learning rate of the one-cycle schedule (AdamW)")
    wd: float = _setting(5e-4, "AdamW weight decay")
    w_dist: float = _setting(1.0, "weight of the distance-regression loss (labelled rows)")
    w_trip: float = _setting(1.0, "weight of the triplet loss (labelled rows)")
    w_kl: float = _setting(1.0, "weight of the KL distillation of the teacher's probabilities")
    kd_temperature: float = _setting(2.0, "temperature of the KL distillation")
    w_feat: float = _setting(1.0, "weight of the cosine regression to the teacher's feats")
    w_rkd: float = _setting(0.5, "weight of the relational distillation (embedding vs teacher-feats distances)")
    wild_share: float = _setting(0.25, "share of each batch from ExpW + SFEW train")
    unlabelled_share: float = _setting(0.1, "share of each batch from the meme faces (teacher targets only)")
    wild_smooth: float = _setting(0.3, "weight of the teacher's probabilities in a wild face's label")
    p_whole: float = _setting(0.3, "share of whole (unaligned) crops")
    p_down2: float = _setting(0.35, "share of 2x down-up faces (precomputed views)")
    p_occlude: float = _setting(0.2, "share of partly occluded faces")
    p_low_light: float = _setting(0.15, "share of low-light faces")
    p_block: float = _setting(0.15, "share of JPEG-like blocky faces")
    ema: float = _setting(0.998, "weight EMA decay per step (0: off)")
    widths: tuple[int, int, int, int] = _setting(
        (16, 32, 64, 128),
        "channels of the 4 stages (16-32-64-128: the float32 graph costs about v3's int8 one, within budget)",
        nargs=4,
    )
    threads: int = _setting(2, "torch threads")
    bf16: bool = _setting(False, "bfloat16 autocast (fast only on CPUs with AMX / AVX-512 BF16)")
    limit: int = _setting(0, "use only the first N FER2013Train faces (tests)")
    limit_wild: int = _setting(0, "use only the first N faces of each wild source (tests)")
    max_steps: int = _setting(0, "stop after N steps (tests)")
    cache: Path | None = _setting(None, "folder of the FER+ aligned_*.npz (default training/cache)")
    wild_cache: Path | None = _setting(None, "folder of the wild_*.npz (default training/cache)")
    teacher_cache: Path | None = _setting(None, "folder of the teacher's .npz (default: the user cache)")
    valid_triplets: Path | None = _setting(None, "FER2013Valid triplets (default ../shared's)")
    expw_triplets: Path | None = _setting(None, "ExpW valid triplets (default ../shared's)")
    log: Path | None = _setting(Path("training/runs/train_v4_log.json"), "JSON log ('': none)")

    def __post_init__(self) -> None:
        for name in ("out", "cache", "wild_cache", "teacher_cache", "valid_triplets", "expw_triplets", "log"):
            v = getattr(self, name)
            if isinstance(v, str):
                object.__setattr__(self, name, Path(v) if v or name == "out" else None)
        for name in ("epochs", "batch", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
        for name in ("seed", "limit", "limit_wild", "max_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {v!r}")
        shares = ("wild_share", "unlabelled_share", "wild_smooth", "p_whole", "p_down2", "p_occlude",
                  "p_low_light", "p_block")  # fmt: skip
        for name in shares:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ConfigError(name, f"must be a number in [0, 1], got {v!r}")
        if self.wild_share + self.unlabelled_share >= 1:
            raise ConfigError("wild_share", "wild_share + unlabelled_share must leave room for FER+ faces")
        for name in ("lr", "kd_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
                raise ConfigError(name, f"must be a number > 0, got {v!r}")
        for name in ("wd", "w_dist", "w_trip", "w_kl", "w_feat", "w_rkd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(name, f"must be a number >= 0, got {v!r}")
        if not 0 <= self.ema < 1:
            raise ConfigError("ema", f"must be in [0, 1), got {self.ema!r}")
        object.__setattr__(self, "widths", tuple(self.widths))

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- data


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def load_training_set(config: V4Config) -> dict[str, Any]:
    """Every training face as tensors, sources concatenated: ``x``, ``whole`` ``(N, 1, 48, 48)``, ``down2``
    ``(N, 4, 48, 48)``, ``p`` ``(N, 8)`` label distributions, ``labelled``, ``t_probs`` ``(N, 7)``,
    ``t_feats`` ``(N, 256)`` unit-norm, ``has_teacher``; and the row ranges ``fer``, ``wild``, ``unlabelled``.
    A face without teacher outputs (not cached) only loses the distillation terms."""
    tsha = teacher.Teacher().sha256 if config.teacher_cache is None else _teacher_sha(config.teacher_cache)
    tr = train.load_split("FER2013Train", config.cache)
    keep = np.flatnonzero(tr["keep"])
    if config.limit:
        keep = keep[: config.limit]
    with np.load(prepare.down2_file("FER2013Train", train.SIZE, config.cache)) as d:
        fer_down2 = d["views"][keep]
    tc = teacher.load_cache(teacher.cache_file("ferplus-train", tsha, config.teacher_cache))
    # by the image's sha256: a picture FER2013 holds twice is cached once, under its first name
    root = prepare.data_dir() / "FER2013Train"
    rows = teacher.lookup(tc, [teacher.sha256_file(root / tr["names"][i]) for i in keep])
    fer_t = {"probs": np.zeros((len(keep), 7), np.float32), "feats": np.zeros((len(keep), 256), np.float32),
             "has": rows >= 0}  # fmt: skip
    fer_t["probs"][fer_t["has"]] = tc["probs"][rows[fer_t["has"]]]
    fer_t["feats"][fer_t["has"]] = tc["feats"][rows[fer_t["has"]]]
    parts = [{"x": tr["images"][keep], "whole": tr["whole"][keep], "down2": fer_down2, "p": tr["p"][keep],
              "labelled": np.ones(len(keep), bool), **fer_t}]  # fmt: skip
    sizes = [len(keep)]
    for name in wild.TRAIN_SOURCES:
        d = wild.load_wild(name, config.wild_cache)
        if config.limit_wild:
            d = {k: v[: config.limit_wild] for k, v in d.items()}
        t = wild.teacher_targets(d, teacher.load_cache(teacher.cache_file(name, tsha, config.teacher_cache)))
        labelled = d["label"] >= 0
        p = np.zeros((len(labelled), 8), np.float32)
        p[np.flatnonzero(labelled), d["label"][labelled]] = 1.0
        mapped = np.zeros_like(p)
        mapped[:, TEACHER_TO_FER] = t["probs"]
        smooth = (labelled & t["has"])[:, None] * config.wild_smooth
        p = (1 - smooth) * p + smooth * mapped
        parts.append({"x": d["images"], "whole": d["whole"], "down2": d["down2"], "p": p, "labelled": labelled, **t})
        sizes.append(len(labelled))
    cat = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    n_fer, n_expw, n_sfew, n_memes = sizes
    return {
        "x": torch.from_numpy(cat["x"]).float().unsqueeze(1),
        "whole": torch.from_numpy(cat["whole"]).float().unsqueeze(1),
        "down2": torch.from_numpy(cat["down2"]).float(),
        "p": torch.from_numpy(cat["p"].astype(np.float32)),
        "labelled": torch.from_numpy(cat["labelled"]),
        "t_probs": torch.from_numpy(cat["probs"].astype(np.float32)),
        "t_feats": torch.from_numpy(_unit(cat["feats"].astype(np.float32))),
        "has_teacher": torch.from_numpy(cat["has"]),
        "fer": (0, n_fer),
        "wild": (n_fer, n_fer + n_expw + n_sfew),
        "unlabelled": (n_fer + n_expw + n_sfew, n_fer + n_expw + n_sfew + n_memes),
    }


def _teacher_sha(cache: Path) -> str:
    """The teacher's sha256 from its file when it is there, else from the (only) cache files' names."""
    try:
        return teacher.Teacher().sha256
    except teacher.TeacherError:
        names = {p.name.split("_")[1] for p in Path(cache).glob("*_v*.npz")}
        if len(names) != 1:
            raise
        return names.pop()


# -------------------------------------------------------------------------------------------------- losses


def distill_losses(model: StudentNet, z: torch.Tensor, t_probs, t_feats, temperature: float):
    """``(kl, 1 - cosine, relational)`` on rows with teacher outputs (see module docstring)."""
    s = model.kd_head(z) / temperature
    q = t_probs.clamp_min(1e-8).pow(1 / temperature)
    q = q / q.sum(1, keepdim=True)
    kl = (q * (q.log() - F.log_softmax(s, 1))).sum(1).mean() * temperature**2
    cos = 1 - (F.normalize(model.feat_head(z), dim=1) * t_feats).sum(1).mean()
    dz, dt = torch.cdist(z, z), torch.cdist(t_feats, t_feats)
    off = ~torch.eye(len(z), dtype=torch.bool)
    rkd = F.smooth_l1_loss(dz[off], dt[off], beta=0.1) if len(z) > 1 else z.sum() * 0
    return kl, cos, rkd


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate_both(net: nn.Module, fer_valid, fer_triplets, expw_valid, expw_triplets) -> dict:
    """Triplet accuracies of the embedding (mirror-averaged, as exported) on FER2013Valid and ExpW valid
    (cached aligned faces) and the selection score."""
    fer = train.triplet_accuracy(train.embed_array(net, fer_valid["images"])[0], fer_valid["names"], fer_triplets)
    expw = train.triplet_accuracy(train.embed_array(net, expw_valid["images"])[0], list(expw_valid["name"]),
                                  expw_triplets)  # fmt: skip
    return {"fer": fer, "expw": expw, "score": fer["overall"] + 0.5 * fer.get("ONE_CLASS", 0) + expw["overall"]}


# ----------------------------------------------------------------------------------------------------- run


def train_v4(config: V4Config) -> dict:
    """Train, select and export one model (module docstring); returns the summary written to ``config.log``:
    ``{"best": the selected epoch's row, "train_s", "args", "history"}``."""
    if not isinstance(config, V4Config):
        raise TypeError(f"train_v4() takes a V4Config, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(config.threads)
    g = torch.Generator().manual_seed(config.seed)
    data = load_training_set(config)
    fer_valid = train.load_split("FER2013Valid", config.cache)
    fer_trip = train.read_triplets(config.valid_triplets or prepare.data_dir() / "triplets_valid.csv")
    expw_valid = wild.load_wild("expw-valid", config.wild_cache)
    expw_trip = train.read_triplets(config.expw_triplets or wild.source("expw-valid").root / "triplets_valid.csv")
    n_wild = round(config.batch * config.wild_share)
    n_unl = round(config.batch * config.unlabelled_share)
    n_fer = config.batch - n_wild - n_unl
    (f0, f1), (w0, w1), (u0, u1) = data["fer"], data["wild"], data["unlabelled"]
    if w1 == w0:
        n_wild = 0
    if u1 == u0:
        n_unl = 0
    steps_per_epoch = max(1, (f1 - f0) // n_fer)
    # share of each part's rows with teacher outputs (a partly computed teacher cache trains, with less KD)
    coverage = {
        k: round(float(data["has_teacher"][a:b].float().mean()), 4) if b > a else None
        for k, (a, b) in (("fer", data["fer"]), ("wild", data["wild"]), ("unlabelled", data["unlabelled"]))
    }
    print(
        json.dumps(
            {
                "teacher_coverage": coverage,
                "steps_per_epoch": steps_per_epoch,
                "batch": {"fer": n_fer, "wild": n_wild, "unlabelled": n_unl},
            }
        ),
        flush=True,
    )
    model = StudentNet(widths=config.widths)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.wd)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
    best, history, step, t0 = -1.0, [], 0, time.time()
    for ep in range(config.epochs):
        model.train()
        perm = torch.randperm(f1 - f0, generator=g) + f0
        agg = dict.fromkeys(("ce", "dist", "trip", "kl", "feat", "rkd"), 0.0)
        done = 0
        for s in range(steps_per_epoch):
            if config.max_steps and step >= config.max_steps:
                break
            idx = torch.cat([perm[s * n_fer : (s + 1) * n_fer],
                             torch.randint(w0, max(w1, w0 + 1), (n_wild,), generator=g),
                             torch.randint(u0, max(u1, u0 + 1), (n_unl,), generator=g)])  # fmt: skip
            x = train.augment(data["x"][idx], data["whole"][idx], g, config.p_whole, config.p_down2,
                              data["down2"][idx])  # fmt: skip
            x = phone.phone_and_meme(x, g, config.p_occlude, config.p_low_light, config.p_block)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                z, logits = model(x)
            z, logits = z.float(), logits.float()
            lab, th = data["labelled"][idx], data["has_teacher"][idx]
            loss, parts = train.losses(z[lab], logits[lab], data["p"][idx][lab], config.w_dist, config.w_trip)
            if th.any():
                kl, cos, rkd = distill_losses(model, z[th], data["t_probs"][idx][th], data["t_feats"][idx][th],
                                              config.kd_temperature)  # fmt: skip
                loss = loss + config.w_kl * kl + config.w_feat * cos + config.w_rkd * rkd
                parts.update(kl=kl.item(), feat=cos.item(), rkd=rkd.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(model)
            step += 1
            done += 1
            for k in agg:
                agg[k] += parts.get(k, 0.0)
        net = ema.module if config.ema > 0 else model
        net.eval()
        res = evaluate_both(net, fer_valid, fer_trip, expw_valid, expw_trip)
        row = {"epoch": ep + 1, "time_s": round(time.time() - t0), **{k: round(v / max(done, 1), 4) for k, v in agg.items()},
               "valid": res}  # fmt: skip
        history.append(row)
        print(json.dumps(row), flush=True)
        if res["score"] > best:
            best = res["score"]
            train.export_onnx(net, config.out)  # a run cut short still leaves its best epoch's graph
        summary = {"best": max(history, key=lambda h: h["valid"]["score"]), "train_s": round(time.time() - t0),
                   "args": config.to_dict(), "teacher_coverage": coverage, "history": history}  # fmt: skip
        if config.log:  # every epoch, so a run cut short leaves its log
            config.log.parent.mkdir(parents=True, exist_ok=True)
            config.log.write_text(json.dumps(summary, indent=1))
        if config.max_steps and step >= config.max_steps:
            break
    return summary


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per :class:`V4Config` field, its default the field's."""
    ap = argparse.ArgumentParser(description="Train an expression v4 candidate (see module docstring).")
    for f in dataclasses.fields(V4Config):
        flag, kw = "--" + f.name.replace("_", "-"), dict(f.metadata["cli"])
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name in ("out", "cache", "wild_cache", "teacher_cache", "valid_triplets", "expw_triplets", "log"):
            kw["type"] = Path if f.name == "out" else train._optional_path
        elif isinstance(f.default, tuple):
            kw["type"] = type(f.default[0])
        else:
            kw["type"] = type(f.default)
        ap.add_argument(flag, default=f.default, help=f.metadata["help"], **kw)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    try:
        config = V4Config(**vars(ap.parse_args(argv)))
    except ConfigError as e:
        ap.error(f"argument --{e.field.replace('_', '-')}: {e.reason}")
    train_v4(config)


if __name__ == "__main__":
    main()
