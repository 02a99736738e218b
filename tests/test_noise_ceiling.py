"""The noise-ceiling estimate (training/noise_ceiling.py): it reads the triplet protocol as the labels were
made, and its Dirichlet fit recovers known concentrations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

FERPLUS = Path(os.environ.get("FERPLUS_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"))


@pytest.mark.skipif(not (FERPLUS / "triplets_test.csv").exists(), reason="needs ../shared FER+ data")
def test_observed_votes_reproduce_every_label():
    """An oracle whose q is the observed 10-vote distribution scores 1.0: the script's TV and label reading
    are the protocol's (and each label's pair beats the runner-up by >= 0.3, as ../shared/README.md says)."""
    from training.noise_ceiling import closest_pair, read_triplets, read_votes

    names, a, b, c, lab, typ = read_triplets(FERPLUS / "triplets_test.csv")
    v = read_votes(FERPLUS / "FER2013Test")
    q = np.stack([v[n] for n in names])
    q /= q.sum(1, keepdims=True)
    assert (closest_pair(q, a, b, c) == lab).all()
    tv = np.sort(np.stack([0.5 * np.abs(q[i] - q[j]).sum(1) for i, j in ((a, b), (a, c), (b, c))], 1), 1)
    assert (tv[:, 1] - tv[:, 0] >= 0.3 - 1e-9).all()
    assert set(typ) == {"ONE_CLASS", "TWO_CLASS", "THREE_CLASS"}


def test_dirichlet_fit_recovers_known_concentrations():
    from training.noise_ceiling import fit_dirichlet

    rng = np.random.default_rng(0)
    alpha = np.array([4.0, 1.5, 0.6, 0.3, 0.3, 0.2, 0.2, 0.1])
    q = rng.dirichlet(alpha, 20000)
    votes = np.stack([rng.multinomial(10, p) for p in q]).astype(np.float64)
    est = fit_dirichlet(votes, np.ones(len(votes)), np.ones(8))
    np.testing.assert_allclose(est, alpha, rtol=0.15)


def _votes_and_triplets(rng: np.random.Generator, faces: int = 240, count: int = 10):
    """Random 8-emotion vote counts of ``faces`` faces (``count`` votes each, a few emotions dominating) and
    triplets over them labelled, as the FER+ protocol does, by the closest observed pair, kept where it beats
    the runner-up by >= 0.3 TV: (votes, (names, a, b, c, labels, types))."""
    from training.noise_ceiling import closest_pair

    q = rng.dirichlet(np.full(8, 0.3), faces)
    votes = np.stack([rng.multinomial(count, p) for p in q]).astype(np.float64)
    p = votes / votes.sum(1, keepdims=True)
    a, b, c = (rng.integers(0, faces, 3000) for _ in range(3))
    tv = np.sort(np.stack([0.5 * np.abs(p[i] - p[j]).sum(1) for i, j in ((a, b), (a, c), (b, c))], 1), 1)
    keep = (tv[:, 1] - tv[:, 0] >= 0.3) & (a != b) & (a != c) & (b != c)
    a, b, c = a[keep], b[keep], c[keep]
    types = np.array(["ONE_CLASS", "TWO_CLASS", "THREE_CLASS"])[np.arange(len(a)) % 3]
    return votes, ([f"f{i}" for i in range(faces)], a, b, c, closest_pair(p, a, b, c), types)


def test_oracle_agrees_with_labels_as_far_as_the_votes_pin_q():
    """With 1,000x the votes the posterior pins q to the observed shares: the oracle gives every label; with
    10 votes and a flat prior q is uncertain and the oracle misses some; with every label moved, all."""
    from training.noise_ceiling import oracle_accuracy

    rng = np.random.default_rng(0)
    votes, trip = _votes_and_triplets(rng)
    flat = (np.ones(1), [np.ones(8)], 0.0)
    assert len(trip[1]) > 100
    sure = oracle_accuracy(votes * 1000, flat, trip, 3, rng)
    assert sure["overall"] == 1.0 and sure["ONE_CLASS"] == sure["TWO_CLASS"] == sure["THREE_CLASS"] == 1.0
    assert sure["sd"] == 0.0
    unsure = oracle_accuracy(votes, flat, trip, 5, rng)
    assert 0.5 < unsure["overall"] < 0.97 and unsure["sd"] > 0
    wrong = (*trip[:4], (trip[4] + 1) % 3, trip[5])
    assert oracle_accuracy(votes * 1000, flat, wrong, 2, rng)["overall"] == 0.0


def _fake_ferplus(root: Path, rng: np.random.Generator) -> None:
    """A FER+ folder in miniature: label.csv of the three splits (10 votes each, no unknown / not-a-face)
    and triplets_valid.csv / triplets_test.csv over FER2013Valid / FER2013Test."""
    import csv

    for split, name in (("FER2013Train", None), ("FER2013Valid", "valid"), ("FER2013Test", "test")):
        votes, (names, a, b, c, lab, typ) = _votes_and_triplets(rng, 120)
        (root / split).mkdir(parents=True)
        with open(root / split / "label.csv", "w", newline="") as f:
            w = csv.writer(f)
            for n, v in zip(names, votes.astype(int), strict=True):
                w.writerow([n, "(0, 0, 48, 48)", *v, 0, 0])
        if name:
            with open(root / f"triplets_{name}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image_a", "image_b", "image_c", "most_similar", "type"])
                for i, j, k, lb, t in zip(a, b, c, lab, typ, strict=True):
                    w.writerow([names[i], names[j], names[k], ("ab", "ac", "bc")[lb], t])


def test_noise_ceiling_is_seeded_and_main_prints_its_figures(tmp_path, monkeypatch, capsys):
    from training.noise_ceiling import NoiseCeilingConfig, main, noise_ceiling

    _fake_ferplus(tmp_path, np.random.default_rng(0))
    config = NoiseCeilingConfig(components=2, draws=3, seed=1)
    res = noise_ceiling(config, tmp_path)
    assert set(res) == {"loglik", "valid", "test"}
    assert res == noise_ceiling(config, tmp_path)  # one seed, one stream
    assert res != noise_ceiling(NoiseCeilingConfig(components=2, draws=3, seed=2), tmp_path)
    assert res["loglik"] < 0 and 0.5 < res["valid"]["overall"] < 1.0
    monkeypatch.setenv("FERPLUS_DIR", str(tmp_path))
    main(["--components", "2", "--draws", "3", "--seed", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"prior: 2 Dirichlet components, FER2013Train log-likelihood {res['loglik']:.4f} per face"
    for line, name in zip(lines[1:], ("valid", "test"), strict=True):
        assert line.startswith(f"{name}: oracle triplet accuracy {res[name]['overall']:.4f} (sd {res[name]['sd']:.4f})")
        assert line.endswith(f"THREE_CLASS {res[name]['THREE_CLASS']:.4f}")


def test_noise_ceiling_config_is_the_command_lines_and_refuses_bad_values(capsys):
    import dataclasses

    from training.noise_ceiling import NoiseCeilingConfig, build_parser, main, noise_ceiling

    defaults = {f.name: f.default for f in dataclasses.fields(NoiseCeilingConfig)}
    assert defaults == {"components": 16, "draws": 30, "seed": 0}  # the model card's figures
    assert vars(build_parser().parse_args([])) == defaults
    for bad in ({"components": 0}, {"draws": 0}, {"seed": -1}, {"draws": 2.5}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: must be an integer"):
            NoiseCeilingConfig(**bad)
    with pytest.raises(TypeError, match="NoiseCeilingConfig"):
        noise_ceiling({"draws": 3})
    with pytest.raises(SystemExit) as e:
        main(["--draws", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "argument --draws: must be an integer >= 1, got 0"
    )
