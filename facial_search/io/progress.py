"""Progress bars (tqdm) on stderr: live in a terminal, one line every 30 s when stderr is a log file."""

from __future__ import annotations

import sys


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "img", enabled: bool = True):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``); a no-op bar when ``enabled`` is False."""
    from tqdm import tqdm

    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
        dynamic_ncols=tty, mininterval=0.1 if tty else 30.0,
    )  # fmt: skip
