"""The One Euro filter: an adaptive low-pass filter for noisy real-time signals, vectorised with NumPy.

Source: Géry Casiez, Nicolas Roussel, Daniel Vogel, "1€ Filter: A Simple Speed-based Low-pass Filter for
Noisy Input in Interactive Systems", CHI 2012, pp. 2527-2530, https://doi.org/10.1145/2207676.2208639
(reference code: https://gery.casiez.net/1euro/).

Each sample ``x_i`` at time ``t_i`` is smoothed by an exponential low-pass filter whose cutoff frequency
adapts to the signal's speed::

    dt      = t_i - t_{i-1}                                 (seconds, from the timestamps, never assumed)
    alpha(fc) = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)    (smoothing factor of a first-order low-pass)
    dx_i    = (x_i - xhat_{i-1}) / dt                        (speed, units of x per second)
    dxhat_i = alpha(d_cutoff) dx_i + (1 - alpha(d_cutoff)) dxhat_{i-1}
    fc_i    = min_cutoff + beta |dxhat_i|
    xhat_i  = alpha(fc_i) x_i + (1 - alpha(fc_i)) xhat_{i-1}

At rest the cutoff is ``min_cutoff``: strong smoothing removes jitter; when the signal moves fast the
cutoff rises with its speed, so lag stays small. Every element of the array gets its own filter (its own
speed and cutoff), all in one vectorised step: for face landmarks, a ``(478, 3)`` array per frame.

Tuning (Casiez et al., section "Parameter tuning"): set ``beta = 0`` and lower ``min_cutoff`` until the
jitter at rest is acceptable, then raise ``beta`` until the lag during fast moves is acceptable.
``d_cutoff = 1 Hz`` is the paper's fixed value for the speed filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facial_search.errors import OptionError

#: Defaults for face landmarks in **pixels** at video frame rates, tuned on ``WolfgangLanger_Pexels.mp4``
#: (640x360, 24 fps) by the paper's two-step procedure: ``min_cutoff`` Hz, ``beta`` in 1/pixel (Hz per
#: pixel/s of speed), ``d_cutoff`` Hz (the paper's value). See ``benchmarks/bench_live.py`` for the jitter
#: and lag they give.
DEFAULT_MIN_CUTOFF = 1.0
DEFAULT_BETA = 0.02
DEFAULT_D_CUTOFF = 1.0


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor ``alpha`` in (0, 1] of a first-order low-pass filter with cutoff ``cutoff`` (Hz,
    > 0) for a sample period ``dt`` (seconds, > 0): ``1 / (1 + 1 / (2 pi cutoff dt))``."""
    r = 2.0 * math.pi * cutoff * dt
    return r / (r + 1.0)


@dataclass(frozen=True)
class OneEuroParams:
    """Parameters of :class:`OneEuroFilter` (Casiez et al. 2012).

    Attributes:
        min_cutoff: cutoff frequency at rest, Hz (> 0). Lower: less jitter, more lag at slow speeds.
        beta: speed coefficient, (Hz) per (unit of x / s), >= 0. Higher: less lag when moving fast.
        d_cutoff: cutoff frequency of the speed estimate, Hz (> 0); the paper uses 1 Hz.

    Raises:
        OptionError: a parameter out of its range, or not finite (a ``ValueError``).
    """

    min_cutoff: float = DEFAULT_MIN_CUTOFF
    beta: float = DEFAULT_BETA
    d_cutoff: float = DEFAULT_D_CUTOFF

    def __post_init__(self):
        for name, unit in (("min_cutoff", "Hz"), ("d_cutoff", "Hz")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise OptionError(f"One Euro {name} = {value!r}: must be a finite frequency above 0 {unit}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise OptionError(f"One Euro beta = {self.beta!r}: must be finite and at least 0")


class OneEuroFilter:
    """One Euro filter over an array of any shape, one independent filter per element.

    >>> import numpy as np
    >>> f = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.02))
    >>> frames = [(i / 30, np.full((478, 3), 100.0 + (i % 2), np.float32)) for i in range(30)]  # 1 px jitter
    >>> smooth = [f(landmarks_px, t) for t, landmarks_px in frames]  # (478, 3) arrays, t in seconds
    >>> float(smooth[0][0, 0]), bool(np.ptp([s[0, 0] for s in smooth[10:]]) < 0.5)  # jitter under half
    (100.0, True)

    Args:
        params: :class:`OneEuroParams` (default: the module defaults, tuned for landmarks in pixels).

    The first sample passes through unchanged. A sample whose timestamp does not increase (``dt <= 0``) is
    a repeat: the previous estimate is returned and the state is left as it is. :meth:`reset` forgets the
    state (e.g. when a tracked face is lost).
    """

    def __init__(self, params: OneEuroParams | None = None):
        self.params = params or OneEuroParams()
        self.reset()

    def reset(self) -> None:
        """Forget the state: the next sample passes through unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @property
    def value(self) -> np.ndarray | None:
        """The last filtered value (``None`` before the first sample)."""
        return self._x

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter one sample.

        Args:
            x: the sample, any shape (same shape at every call until :meth:`reset`); float.
            t: its timestamp in seconds (from the video, not the wall clock).

        Returns:
            the filtered sample, ``float64`` array of ``x``'s shape (a new array).

        Raises:
            ValueError: ``x`` changed shape without a :meth:`reset`.
        """
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return self._x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"sample shape {x.shape} differs from the filter's {self._x.shape}; reset() first")
        dt = float(t) - self._t
        if dt <= 0:
            return self._x.copy()
        p = self.params
        dx = (x - self._x) / dt
        a_d = smoothing_factor(p.d_cutoff, dt)
        self._dx = self._dx + a_d * (dx - self._dx)
        a = smoothing_factor(p.min_cutoff + p.beta * np.abs(self._dx), dt)
        self._x = self._x + a * (x - self._x)
        self._t = float(t)
        return self._x.copy()
