"""How much of the FER+ triplet labels can any model get right? The noise ceiling of triplet accuracy.

    python -m training.noise_ceiling [--components 16] [--draws 30] [--seed 0]

From Python: ``noise_ceiling(NoiseCeilingConfig())`` (the same defaults, the same figures).

A triplet's label is the closest pair (total variation, TV) of three faces' *observed* vote distributions,
10 crowd votes each (``../shared/README.md``). Those votes are a sample: the same face shown to 10 other
people would give other votes, and sometimes another label. The best any model can do is to know each
face's *true* vote distribution q (the share of all people who would pick each emotion) and answer with
q's closest pair. This script estimates how often that oracle agrees with the labels:

1. a prior over q is fitted to FER2013Train's votes (empirical Bayes): a mixture of Dirichlet distributions,
   with the Dirichlet-multinomial likelihood, EM over the components and Minka's fixed point for each
   component's concentrations (T. Minka, "Estimating a Dirichlet distribution", 2000);
2. for every face of a triplet split, q is drawn from its posterior given its 10 votes, the oracle answers
   with q's closest pair, and the agreement with the labels is averaged over ``--draws`` draws.

Measured with the defaults (2026-11-22): test 0.981 overall / 0.890 ONE_CLASS, valid 0.981 / 0.898 -- well
above the issue's targets (0.92 / 0.78) and the shipped model (0.926 / 0.762): label noise does not stop a
model from reaching them; the model's errors do. The figure depends on the prior's form; a prior that
spreads q more (weaker concentrations) gives a lower ceiling.

Needs the ``[train]`` extra (torch, for log-gamma and digamma).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import prepare, train

EMOTIONS = 8  # neutral, happiness, surprise, sadness, anger, disgust, fear, contempt (FER+ label.csv order)


def read_votes(split_dir: Path) -> dict[str, np.ndarray]:
    """``label.csv`` of a FER+ split -> {file name: (8,) float64 emotion votes}, for the faces the triplet
    protocol keeps (at most one unknown / not-a-face vote, at least one emotion vote)."""
    names, votes = prepare.read_labels(split_dir.name, split_dir.parent)
    keep = (votes[:, EMOTIONS:].sum(1) <= 1) & (votes[:, :EMOTIONS].sum(1) > 0)
    return {n: v[:EMOTIONS].astype(np.float64) for n, v, k in zip(names, votes, keep, strict=True) if k}


def _lgamma(x):
    return torch.lgamma(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _digamma(x):
    return torch.digamma(torch.as_tensor(x, dtype=torch.float64)).numpy()


def dirmult_loglik(votes: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(N, 8) vote counts, (8,) concentrations -> (N,) log Dirichlet-multinomial likelihood (without the
    multinomial coefficient, which is the same for every component)."""
    n, a = votes.sum(1), alpha.sum()
    return _lgamma(a) - _lgamma(n + a) + (_lgamma(votes + alpha) - _lgamma(alpha)).sum(1)


def fit_dirichlet(votes: np.ndarray, weight: np.ndarray, alpha: np.ndarray, iters: int = 200) -> np.ndarray:
    """Weighted maximum-likelihood Dirichlet concentrations from vote counts (Minka's fixed point)."""
    n = votes.sum(1)
    for _ in range(iters):
        a = alpha.sum()
        num = (weight[:, None] * (_digamma(votes + alpha) - _digamma(alpha))).sum(0)
        den = (weight * (_digamma(n + a) - _digamma(a))).sum()
        alpha = np.maximum(alpha * num / den, 1e-4)
    return alpha


def fit_prior(votes: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 30):
    """A k-component Dirichlet mixture over true vote distributions, fitted by EM to (N, 8) vote counts.
    Starts from the majority emotion (component ``majority + 8 * random``). Returns (weights (k,),
    concentrations list of (8,), mean log-likelihood per face)."""
    resp = np.zeros((len(votes), k))
    resp[
        np.arange(len(votes)), (votes.argmax(1) + EMOTIONS * rng.integers(0, max(1, k // EMOTIONS), len(votes))) % k
    ] = 1
    alphas = [np.ones(EMOTIONS) for _ in range(k)]
    for _ in range(rounds):
        alphas = [fit_dirichlet(votes, resp[:, j] + 1e-9, alphas[j], iters=25) for j in range(k)]  # warm start
        pis = resp.mean(0) + 1e-9
        log = np.stack([np.log(pis[j]) + dirmult_loglik(votes, alphas[j]) for j in range(k)], 1)
        ll = np.logaddexp.reduce(log, 1)
        resp = np.exp(log - ll[:, None])
    return pis, alphas, float(ll.mean())


def read_triplets(path: Path):
    """Triplet CSV -> (names, a, b, c index arrays, labels 0/1/2 for ab/ac/bc, types)."""
    rows = train.read_triplets(path)  # (image_a, image_b, image_c, most_similar, type)
    names = sorted({n for r in rows for n in r[:3]})
    idx = {n: i for i, n in enumerate(names)}
    a, b, c = (np.array([idx[r[col]] for r in rows]) for col in range(3))
    lab = np.array([("ab", "ac", "bc").index(r[3]) for r in rows])
    return names, a, b, c, lab, np.array([r[4] for r in rows])


def closest_pair(q: np.ndarray, a, b, c) -> np.ndarray:
    """(N, 8) distributions -> for each triplet 0/1/2: which of ab/ac/bc has the smallest TV."""
    tv = lambda i, j: 0.5 * np.abs(q[i] - q[j]).sum(1)  # noqa: E731
    return np.stack([tv(a, b), tv(a, c), tv(b, c)], 1).argmin(1)


def oracle_accuracy(votes: np.ndarray, prior, triplets, draws: int, rng: np.random.Generator) -> dict:
    """Mean agreement with the labels of an oracle that knows each face's true q, q drawn from the posterior
    of ``prior`` given the face's ``votes`` (rows in the order of the triplets' names)."""
    pis, alphas, _ = prior
    _, a, b, c, lab, typ = triplets
    log = np.stack([np.log(pis[j]) + dirmult_loglik(votes, alphas[j]) for j in range(len(pis))], 1)
    post = np.exp(log - np.logaddexp.reduce(log, 1)[:, None])
    cum = post.cumsum(1)
    runs = []
    for _ in range(draws):
        comp = np.minimum((cum < rng.random((len(votes), 1))).sum(1), len(pis) - 1)
        conc = votes + np.stack(alphas)[comp]
        g = rng.gamma(conc)
        ok = closest_pair(g / g.sum(1, keepdims=True), a, b, c) == lab
        runs.append(
            {"overall": ok.mean(), **{t: ok[typ == t].mean() for t in ("ONE_CLASS", "TWO_CLASS", "THREE_CLASS")}}
        )
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} | {
        "sd": float(np.std([r["overall"] for r in runs]))
    }


SPLITS = (("FER2013Valid", "valid"), ("FER2013Test", "test"))  # (FER+ folder, triplet file and result key)


@dataclass(frozen=True)
class NoiseCeilingConfig:
    """Settings of :func:`noise_ceiling` (the defaults are the model card's figures).

    components: Dirichlet components of the prior (>= 1; start: majority emotion, ``components // 8`` each).
    draws: posterior draws of every face's q averaged per split (>= 1).
    seed: seed of the one NumPy generator that the prior's start and then every draw (valid, then test)
        take from, in that order (an integer >= 0).
    """

    components: int = 16
    draws: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, low = getattr(self, f.name), 0 if f.name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{f.name}: must be an integer >= {low}, got {v!r}")


def noise_ceiling(config: NoiseCeilingConfig, root: Path | None = None) -> dict:
    """Fit the prior to FER2013Train's votes, then the oracle's agreement with the labels of
    ``triplets_valid.csv`` and ``triplets_test.csv``: ``{"loglik": mean log-likelihood per FER2013Train face
    under the prior, "valid": oracle_accuracy's dict, "test": the same}``. ``root``: the FER+ folder
    (default :func:`training.prepare.data_dir`). A few minutes with the defaults."""
    if not isinstance(config, NoiseCeilingConfig):
        raise TypeError(f"noise_ceiling() takes a NoiseCeilingConfig, got {type(config).__name__}")
    rng = np.random.default_rng(config.seed)
    root = root or prepare.data_dir()
    train_votes = np.stack(list(read_votes(root / "FER2013Train").values()))
    prior = fit_prior(train_votes, config.components, rng)
    out = {"loglik": prior[2]}
    for split, name in SPLITS:
        trip = read_triplets(root / f"triplets_{name}.csv")
        v = read_votes(root / split)
        votes = np.stack([v[n] for n in trip[0]])
        out[name] = oracle_accuracy(votes, prior, trip, config.draws, rng)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command's options, one per :class:`NoiseCeilingConfig` field, defaults read from it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(NoiseCeilingConfig):
        ap.add_argument(f"--{f.name}", type=int, default=f.default)
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    try:
        config = NoiseCeilingConfig(**vars(ap.parse_args(argv)))
    except ValueError as e:
        ap.error(f"argument --{e}")
    res = noise_ceiling(config)
    print(f"prior: {config.components} Dirichlet components, FER2013Train log-likelihood {res['loglik']:.4f} per face")
    for _, name in SPLITS:
        r = res[name]
        print(
            f"{name}: oracle triplet accuracy {r['overall']:.4f} (sd {r['sd']:.4f}), ONE_CLASS {r['ONE_CLASS']:.4f}, "
            f"TWO_CLASS {r['TWO_CLASS']:.4f}, THREE_CLASS {r['THREE_CLASS']:.4f}"
        )


if __name__ == "__main__":
    main()
