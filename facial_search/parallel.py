"""Process workers: each process owns one FaceFinder and one embedder (neither is shareable across threads
or processes), so work on many images uses every core. ``workers=1`` runs in the calling process."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

_PIPELINE = None


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker process builds: the embedder by name, the landmarker model path, its options."""

    embedder: str | None = None
    model_path: str | None = None
    max_faces: int = 8
    tiles: bool = True


def default_workers() -> int:
    """One worker per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init(config: WorkerConfig) -> None:
    global _PIPELINE
    from facial_search.io.native_log import silence_native_stderr
    from facial_search.pipeline import Pipeline

    silence_native_stderr()
    _PIPELINE = Pipeline(
        embedder=config.embedder, model_path=config.model_path, max_faces=config.max_faces, tiles=config.tiles
    )


def current_pipeline():
    """The :class:`~facial_search.pipeline.Pipeline` of this worker process."""
    return _PIPELINE


def map_images(func: Callable, items: Iterable, config: WorkerConfig, workers: int, chunksize: int = 4) -> Iterator:
    """``func(item)`` for every item, in order, on ``workers`` processes (``func`` reads the worker's
    pipeline with :func:`current_pipeline`; it must be a module-level function)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        _init(config)
        try:
            yield from map(func, items)
        finally:
            _close()
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(config,)) as pool:
        yield from pool.imap(func, items, chunksize=chunksize)


def _close() -> None:
    global _PIPELINE
    if _PIPELINE is not None:
        _PIPELINE.close()
        _PIPELINE = None
