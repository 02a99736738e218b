"""Process workers: each process owns one FaceFinder and one embedder (neither is shareable across threads
or processes), so work on many images uses every core. ``workers=1`` runs in the calling process.

A worker that cannot build its pipeline (a model file that does not load, an unknown embedder) fails the whole
run at once with the worker's reason: the error is kept by the worker's initializer and raised by its first
task, so the caller gets the same typed error (:class:`~facial_search.errors.ModelLoadError`, ...) as with
``workers=1``. A worker process that dies (a crash in native code, killed for memory) breaks the pool
(``concurrent.futures``' ``BrokenProcessPool``), raised as :class:`~facial_search.errors.WorkerStartError`;
the pool never respawns failing workers.

Only the spawned worker processes silence MediaPipe's native log lines (:mod:`facial_search.io.native_log`);
the calling process is left as it is (a host program's ``sys.stderr`` and file descriptors are its own).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from facial_search.errors import FacialSearchError, OptionError, WorkerStartError

_PIPELINE = None
_INIT_ERROR: BaseException | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker process builds: the embedder by name, the landmarker model path, its options."""

    embedder: str | None = None
    model_path: str | None = None
    max_faces: int = 8
    tiles: bool = True
    sample_ms: int = 250  # videos: sampling interval, milliseconds (facial_search.moments)


def default_workers() -> int:
    """One worker per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """``workers``, or :func:`default_workers` for ``None``; raises :class:`OptionError` below 1."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"workers: must be a whole number of at least 1 (got {workers!r})")
    return workers


def _build_pipeline(config: WorkerConfig):
    """The pipeline of ``config``; a failure that is not one of ours becomes :class:`WorkerStartError`."""
    from facial_search.pipeline import Pipeline

    try:
        pipeline = Pipeline(
            embedder=config.embedder, model_path=config.model_path, max_faces=config.max_faces, tiles=config.tiles
        )
        pipeline.sample_ms = config.sample_ms  # read by the video task (facial_search.indexing._index_video)
        return pipeline
    except FacialSearchError:
        raise
    except Exception as e:
        raise WorkerStartError(f"a worker could not start: {type(e).__name__}: {e}") from None


def _init_worker(config: WorkerConfig) -> None:
    """Initializer of a spawned worker: silence native logs, build the pipeline, or keep why it failed.

    Ctrl-C is the parent's to handle (it cancels the run and shuts the pool down): a worker ignores SIGINT,
    so the terminal gets no traceback from every worker."""
    global _PIPELINE, _INIT_ERROR
    from facial_search.io.native_log import silence_native_stderr

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    silence_native_stderr()
    try:
        _PIPELINE = _build_pipeline(config)
    except Exception as e:  # raised by the first task, so the parent sees the reason instead of a dead pool
        _INIT_ERROR = e


def _run_task(func: Callable, item):
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    return func(item)


def current_pipeline():
    """The :class:`~facial_search.pipeline.Pipeline` of this worker process."""
    return _PIPELINE


def install_pipeline(config: WorkerConfig) -> None:
    """Build the pipeline of ``config`` as this process's :func:`current_pipeline`: for a worker process that
    another executor started (the actors of :mod:`facial_search.ray_executor`).

    Raises:
        ModelLoadError, AssetError, UnknownEmbedderError: the pipeline cannot be built (its reason).
        WorkerStartError: it cannot be built for a reason that is not one of ours.
    """
    global _PIPELINE
    _PIPELINE = _build_pipeline(config)


def map_images(func: Callable, items: Iterable, config: WorkerConfig, workers: int, chunksize: int = 4) -> Iterator:
    """``func(item)`` for every item, in order, on ``workers`` processes (``func`` reads the worker's
    pipeline with :func:`current_pipeline`; it must be a module-level function).

    The pipeline (``workers=1``: in this process) or the first worker is built before this returns, so a
    configuration that cannot work fails here, before the caller shows any progress.

    Raises:
        ModelLoadError, AssetError, UnknownEmbedderError: a worker could not build its pipeline (its reason).
        WorkerStartError: a worker could not start for another reason, or a worker process died.
        OptionError: ``workers`` below 1.
        whatever ``func`` raises, from the iterator at the item that raised it (the rest is cancelled).
    """
    global _PIPELINE
    items = list(items)
    workers = resolve_workers(workers)
    if not items:
        return iter(())
    if workers == 1 or len(items) <= 1:
        _PIPELINE = _build_pipeline(config)
        return _serial(func, items)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(config,)
    )
    try:
        pool.submit(_run_task, _ready, None).result()
    except BaseException as e:
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, BrokenProcessPool):
            raise WorkerStartError(f"a worker process stopped while starting ({e})") from None
        raise
    return _pooled(pool, func, items, chunksize)


def _ready(_item) -> bool:
    return True


def _serial(func: Callable, items: list) -> Iterator:
    try:
        yield from map(func, items)
    finally:
        _close()


def _pooled(pool: ProcessPoolExecutor, func: Callable, items: list, chunksize: int) -> Iterator:
    try:
        yield from pool.map(functools.partial(_run_task, func), items, chunksize=chunksize)
    except BrokenProcessPool as e:
        raise WorkerStartError(f"a worker process stopped unexpectedly ({e})") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _close() -> None:
    global _PIPELINE
    if _PIPELINE is not None:
        _PIPELINE.close()
        _PIPELINE = None
