"""The One Euro filter (Casiez et al. 2012), on synthetic signals: pure unit tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facial_search.errors import OptionError
from facial_search.live.one_euro import OneEuroFilter, OneEuroParams, smoothing_factor

FPS = 30.0


def run(filt: OneEuroFilter, xs, ts) -> np.ndarray:
    return np.stack([filt(x, t) for x, t in zip(xs, ts, strict=True)])


def test_smoothing_factor_limits():
    tau = 1 / (2 * math.pi * 1.0)  # the paper's alpha = 1 / (1 + tau / dt), tau = 1 / (2 pi fc)
    assert smoothing_factor(1.0, 1 / 30) == pytest.approx(1 / (1 + tau * 30), rel=1e-12)
    assert smoothing_factor(1.0, 1 / 30) == pytest.approx(0.173170, abs=1e-6)
    assert smoothing_factor(1.0, 1 / 30) < smoothing_factor(5.0, 1 / 30)  # higher cutoff: follows more
    assert smoothing_factor(1.0, 1 / 30) < smoothing_factor(1.0, 1 / 10)  # longer gap: follows more
    assert smoothing_factor(1e9, 1.0) == pytest.approx(1.0)


def test_first_sample_passes_through_and_shape_is_kept():
    f = OneEuroFilter()
    x = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    y = f(x, 0.0)
    assert y.shape == (478, 3) and np.array_equal(y, x)
    with pytest.raises(ValueError):
        f(np.zeros(3), 0.1)


def test_reduces_jitter_of_a_noisy_constant():
    rng = np.random.default_rng(0)
    n = 300
    ts = np.arange(n) / FPS
    xs = 100.0 + rng.normal(0, 1.0, size=(n, 478, 3))  # pixels
    ys = run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.02)), xs, ts)
    raw_jitter = np.median(np.abs(np.diff(xs[30:], axis=0)))
    jitter = np.median(np.abs(np.diff(ys[30:], axis=0)))
    assert jitter < 0.5 * raw_jitter
    assert np.abs(ys[30:] - 100).std() < 0.5 * np.abs(xs[30:] - 100).std()  # nearer the truth too


def test_follows_a_step_with_bounded_lag():
    n = 90
    ts = np.arange(n) / FPS
    xs = np.where(np.arange(n) < 30, 0.0, 100.0)[:, None]  # a 100-pixel jump at frame 30
    for beta in (0.0, 0.02, 0.1):
        ys = run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=beta)), xs, ts)[:, 0]
        assert np.all(np.diff(ys) >= -1e-9) and ys.max() <= 100 + 1e-9  # monotone, no overshoot
        settle = int(np.argmax(ys >= 90)) - 30  # frames to cover 90% of the step
        assert 0 <= settle <= 30, (beta, settle)
        if beta == 0.0:  # a fixed first-order low-pass: 1 - (1 - alpha)^(n + 1) >= 0.9 after n frames
            a = smoothing_factor(1.0, 1 / FPS)
            assert settle == math.ceil(math.log(0.1) / math.log(1 - a)) - 1 == 12
    fast = run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.1)), xs, ts)[:, 0]
    slow = run(OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0)), xs, ts)[:, 0]
    assert np.argmax(fast >= 90) < np.argmax(slow >= 90)  # beta cuts the lag of fast moves


def test_respects_timestamps():
    """The same samples, twice as far apart in time, are followed more closely (the filter uses dt from
    the timestamps, not a fixed frame rate); a repeated timestamp changes nothing."""
    xs = np.r_[np.zeros(5), np.full(5, 10.0)][:, None]
    near = run(OneEuroFilter(OneEuroParams(beta=0.0)), xs, np.arange(10) / 60)
    far = run(OneEuroFilter(OneEuroParams(beta=0.0)), xs, np.arange(10) / 15)
    assert np.all(far[5:] > near[5:])
    f = OneEuroFilter(OneEuroParams(beta=0.0))
    f(np.zeros(1), 0.0)
    a = f(np.ones(1), 0.1)
    assert np.array_equal(f(np.full(1, 50.0), 0.1), a)  # dt = 0: ignored
    assert f(np.full(1, 50.0), 0.0)[0] == a[0]  # time going back: ignored
    f.reset()
    assert f(np.full(1, 7.0), 0.0)[0] == 7.0


@pytest.mark.parametrize(
    "bad",
    [
        {"min_cutoff": 0},
        {"min_cutoff": -1.0},
        {"d_cutoff": 0},
        {"beta": -1},
        {"min_cutoff": float("nan")},
        {"beta": float("inf")},
        {"d_cutoff": float("inf")},
    ],
)
def test_params_are_checked(bad):
    with pytest.raises(OptionError, match=next(iter(bad))):  # an OptionError (a ValueError) naming the parameter
        OneEuroParams(**bad)


def test_good_params_are_kept():
    p = OneEuroParams(min_cutoff=0.5, beta=0.0, d_cutoff=2.0)
    assert (p.min_cutoff, p.beta, p.d_cutoff) == (0.5, 0.0, 2.0)
