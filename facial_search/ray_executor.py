"""Index builds on Ray: the per-file work of :func:`facial_search.indexing.build_index` (decode -> faces ->
embedding) mapped over a Ray cluster with Ray Data, for ``facial-search index ... --executor ray``.

paths ──ray.data.from_items──▶ map_batches(_Worker: an actor pool, one Pipeline an actor, built once)
──▶ Arrow tables (:func:`schema`) ──iter_batches, in order──▶ per-file results in the driver, which adds them
to the store and commits it as they arrive (so a driver killed mid-run keeps what it had committed)

The results are those of the process pool (:mod:`facial_search.parallel`): the same function runs on the same
pipeline, and its results cross Arrow as explicit columns (boxes ``4n`` int64, embeddings ``n x D`` float32,
row-major), in the order of the input.

Where Ray runs (``address``): ``None`` starts a new local Ray with ``workers`` CPUs
(``ray.init(address="local", num_cpus=...)``) and shuts it down at the end, unless this process is already
connected to one, or ``$RAY_ADDRESS`` names one (as in a ``ray job submit`` job), which is used and left
running; ``"auto"``, ``HOST:PORT`` (a head node's GCS) or ``ray://HOST:PORT`` (Ray Client) connects to that
cluster and leaves it running. Every node needs facial-search installed (the same version as the driver); the
driver's ``FACIAL_SEARCH_*`` variables (``FACIAL_SEARCH_MODELS``, ``FACIAL_SEARCH_CACHE``...) are passed to
the actors, and ``model_path`` must name a file that exists on every node.

Errors are those of the process pool, typed, at once and without Ray's tracebacks: an actor that cannot
build its pipeline keeps the reason and hands it back (pickled, in the ``error`` column) with its first
batch, and the driver raises it (:class:`~facial_search.errors.ModelLoadError`, ...). Ray not installed:
:class:`~facial_search.errors.MissingDependencyError`; a cluster that cannot be reached:
:class:`~facial_search.errors.WorkerStartError`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from facial_search.errors import MissingDependencyError, OptionError, SkipReason, WorkerStartError
from facial_search.index.table import BLENDSHAPES as NUM_BLENDSHAPES
from facial_search.parallel import WorkerConfig, install_pipeline, resolve_workers

PIP_COMMAND = "pip install 'facial-search[ray]'"

#: Files a Ray task works on at once (``map_batches(batch_size=...)``): small, so results reach the store soon.
BATCH_SIZE = 4

#: Seconds to wait for a cluster's port before ``ray.init`` (which, on a wrong address, waits minutes).
CONNECT_TIMEOUT_S = 5.0


def import_ray():
    """The ``ray`` module (with ``ray.data``); :class:`MissingDependencyError` naming the extra if missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs pyarrow and pandas: the ``ray[data]`` extra)
    except ImportError as e:
        raise MissingDependencyError(
            f"--executor ray needs Ray Data (ray[data]), which is not installed ({e.name or e}): {PIP_COMMAND}"
        ) from None
    return ray


def schema():
    """The Arrow schema of the tables the actors return, one row per input file:

    ``source`` str, ``size`` and ``mtime_ns`` int64 (-1: stat failed), ``boxes`` list<int64> (``(x, y, w, h)``
    pixels of each face, ``4n`` values), ``embeddings`` list<float32> (``n x D``, row-major), ``hashes``
    list<str> (``n`` picture hashes), ``blendshapes`` list<float32> (``n x 52`` scores, row-major, NaN rows for a
    face without; empty: no face has them), ``moments`` str or null (a video's per-face moment keys as JSON:
    ``t_start``, ``t_end``, ``t_frame``, ``track``), ``video_seconds`` float64, ``skipped`` and ``reason`` str or null (a skip: the recorded text and the
    :class:`~facial_search.errors.SkipReason` value), ``error`` binary or null (a pickled exception: the task
    failed; the driver raises it).
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("source", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("boxes", pa.list_(pa.int64())),
            ("embeddings", pa.list_(pa.float32())),
            ("hashes", pa.list_(pa.string())),
            ("blendshapes", pa.list_(pa.float32())),
            ("moments", pa.string()),
            ("video_seconds", pa.float64()),
            ("skipped", pa.string()),
            ("reason", pa.string()),
            ("error", pa.binary()),
        ]
    )


def encode(results: list, sources: list[str] | None = None, error: BaseException | None = None):
    """Per-file results (:func:`facial_search.indexing._index_one`'s) -> an Arrow table of :func:`schema`;
    with ``error``, one row per name of ``sources`` that carries it (pickled) instead."""
    import pyarrow as pa

    if error is not None:
        n = len(sources or ())
        blob = _pickled(error)
        columns = {
            "source": sources,
            "size": [-1] * n,
            "mtime_ns": [-1] * n,
            "boxes": [[]] * n,
            "embeddings": [[]] * n,
            "hashes": [[]] * n,
            "blendshapes": [[]] * n,
            "moments": [None] * n,
            "video_seconds": [0.0] * n,
            "skipped": [None] * n,
            "reason": [None] * n,
            "error": [blob] * n,
        }
        return pa.table(columns, schema=schema())
    embeddings = [
        np.zeros(0, np.float32) if r.embeddings is None else np.ascontiguousarray(r.embeddings, np.float32).ravel()
        for r in results
    ]
    columns = {
        "source": [r.source for r in results],
        "size": [r.size for r in results],
        "mtime_ns": [r.mtime_ns for r in results],
        "boxes": [[int(v) for b in r.boxes for v in b] for r in results],
        "embeddings": pa.array(embeddings, type=pa.list_(pa.float32())),
        "hashes": [list(r.hashes) for r in results],
        "blendshapes": pa.array([_blendshapes(r) for r in results], type=pa.list_(pa.float32())),
        "moments": [json.dumps(r.extras) if r.extras else None for r in results],
        "video_seconds": [float(r.video_seconds) for r in results],
        "skipped": [r.skipped for r in results],
        "reason": [None if r.reason is None else r.reason.value for r in results],
        "error": [None] * len(results),
    }
    return pa.table(columns, schema=schema())


def decode(table) -> Iterator:
    """The per-file results of a table of :func:`schema`, in its order: ``_FileResult`` with boxes as
    ``(x, y, w, h)`` int tuples and embeddings ``(n, D) float32`` (``None`` for a skip).

    Raises:
        the exception of the first row that carries one (a task failed: see :func:`encode`).
        ValueError: a row whose boxes, embeddings and hashes disagree on the number of faces.
    """
    from facial_search.indexing import _FileResult

    errors = table.column("error").to_pylist()
    for blob in errors:
        if blob is not None:
            raise pickle.loads(blob)
    emb = table.column("embeddings").combine_chunks()
    values = emb.values.to_numpy(zero_copy_only=False)
    offsets = emb.offsets.to_numpy()
    bs = table.column("blendshapes").combine_chunks()
    bs_values, bs_offsets = bs.values.to_numpy(zero_copy_only=False), bs.offsets.to_numpy()
    rows = table.drop_columns(["embeddings", "error", "blendshapes"]).to_pylist()
    for i, row in enumerate(rows):
        n = len(row["hashes"])
        flat = values[offsets[i] : offsets[i + 1]]
        if len(row["boxes"]) != 4 * n or (n and len(flat) % n) or (not n and len(flat)):
            raise ValueError(f"{row['source']}: a result of {n} faces with {len(row['boxes'])} box values and "
                             f"{len(flat)} embedding values")  # fmt: skip
        scores = bs_values[bs_offsets[i] : bs_offsets[i + 1]]
        if len(scores) not in (0, NUM_BLENDSHAPES * n):
            raise ValueError(f"{row['source']}: a result of {n} faces with {len(scores)} blendshape values")
        scores = scores.reshape(-1, NUM_BLENDSHAPES)
        yield _FileResult(
            source=row["source"],
            size=row["size"],
            mtime_ns=row["mtime_ns"],
            boxes=[tuple(row["boxes"][j : j + 4]) for j in range(0, 4 * n, 4)],
            embeddings=flat.reshape(n, -1).copy() if n else None,
            skipped=row["skipped"],
            hashes=list(row["hashes"]),
            reason=None if row["reason"] is None else SkipReason(row["reason"]),
            blendshapes=[None if np.isnan(b).any() else b.copy() for b in scores],
            extras=json.loads(row["moments"]) if row["moments"] else [],
            video_seconds=row["video_seconds"],
        )


def _blendshapes(r) -> np.ndarray:
    """A result's blendshapes as ``n x 52`` float32 values (NaN rows: a face without), empty when none has them."""
    if not r.blendshapes or all(b is None for b in r.blendshapes):
        return np.zeros(0, np.float32)
    rows = [np.full(NUM_BLENDSHAPES, np.nan, np.float32) if b is None else np.asarray(b, np.float32)
            for b in r.blendshapes]  # fmt: skip
    return np.concatenate(rows)


def _pickled(error: BaseException) -> bytes:
    """``error`` pickled; one that does not pickle (or unpickle) becomes a :class:`WorkerStartError` with its text."""
    try:
        blob = pickle.dumps(error)
        pickle.loads(blob)
        return blob
    except Exception:
        return pickle.dumps(WorkerStartError(f"a Ray worker failed: {type(error).__name__}: {error}"))


class _Worker:
    """A Ray Data actor: builds the pipeline of ``config`` once, then runs ``func`` on each path of a batch.

    A pipeline that cannot be built is not raised here (Ray would retry the actor and then fail with its own
    traceback): the reason is kept and handed back with every batch, as the process pool's workers do."""

    def __init__(self, func: Callable, config: WorkerConfig):
        from facial_search.io.native_log import silence_native_stderr

        silence_native_stderr()  # this actor's process is ours: no MediaPipe log lines
        self.func = func
        self.error: BaseException | None = None
        try:
            install_pipeline(config)
        except Exception as e:
            self.error = e

    def __call__(self, batch):
        sources = batch.column("item").to_pylist()
        if self.error is not None:
            return encode([], sources, self.error)
        try:
            results = [self.func(s) for s in sources]
        except Exception as e:  # as the process pool: what the function raises stops the run, with its type
            return encode([], sources, e)
        return encode(results)


def map_images(
    func: Callable,
    items: Iterable[str],
    config: WorkerConfig,
    *,
    workers: int | None = None,
    address: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator:
    """``func(path)`` for every path, in order, on a pool of Ray actors (``func``: a module-level function
    that returns indexing's per-file result and reads the actor's pipeline with
    :func:`facial_search.parallel.current_pipeline`, as :func:`facial_search.indexing._index_one` does).

    Args:
        workers: actors, one CPU each (default: the cluster's CPUs; for a local Ray, one per core here).
        address: the cluster (see the module docstring); ``None``: a local Ray.
        batch_size: paths an actor works on at once.

    The first results are waited for before this returns, so a configuration that cannot work fails here,
    before the caller shows any progress. Closing the iterator (or reaching its end) stops the Ray work and
    disconnects from a Ray that this call connected to (a local one it started stops).

    Raises:
        MissingDependencyError: Ray Data is not installed.
        WorkerStartError: the cluster at ``address`` cannot be reached or Ray cannot start.
        ModelLoadError, AssetError, UnknownEmbedderError: an actor could not build its pipeline (its reason).
        OptionError: ``workers`` or ``batch_size`` below 1.
        whatever ``func`` raises, from the iterator.
    """
    items = [str(p) for p in items]
    if workers is not None:
        workers = resolve_workers(workers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size: must be a whole number of at least 1 (got {batch_size!r})")
    if not items:
        return iter(())
    ray = import_ray()
    connected = _connect(ray, address, workers)
    results = None
    try:
        actors = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(items))
        results = _results(ray, func, items, config, actors, batch_size)
        first = next(results, None)
    except BaseException:
        _finish(ray, results, connected)
        raise
    return _chained(ray, first, results, connected)


def _chained(ray, first, results: Iterator, connected: bool) -> Iterator:
    try:
        if first is not None:
            yield first
            yield from results
    finally:
        _finish(ray, results, connected)


def _finish(ray, results: Iterator | None, connected: bool) -> None:
    """Stop the Ray work; disconnect if this call connected (a local Ray it started stops with it)."""
    if results is not None:
        results.close()
    if connected:
        ray.shutdown()


def _results(ray, func, items, config, actors: int, batch_size: int) -> Iterator:
    """The results of ``func`` over ``items`` as they arrive, in order (Ray Data's streaming execution)."""
    with _quiet_ray_data(ray) as ctx:
        ctx.execution_options.preserve_order = True  # ids are given in input order, as by the process pool
        ds = ray.data.from_items(items).map_batches(
            _Worker,
            fn_constructor_args=(func, config),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            runtime_env={"env_vars": env} if (env := _forwarded_env()) else None,
        )
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            yield from decode(table)


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("FACIAL_SEARCH_")}


@contextmanager
def _quiet_ray_data(ray):
    """Ray Data without its progress bars, start and stats lines and error logs (the driver shows its own bar
    and raises typed errors); the data context and the logger level are restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.enable_progress_bars,
        ctx.enable_auto_log_stats,
        ctx.print_on_execution_start,
        ctx.execution_options.preserve_order,
    )
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars = ctx.enable_auto_log_stats = ctx.print_on_execution_start = False
    logger.setLevel(logging.CRITICAL)
    try:
        yield ctx
    finally:
        (
            ctx.enable_progress_bars,
            ctx.enable_auto_log_stats,
            ctx.print_on_execution_start,
            ctx.execution_options.preserve_order,
        ) = saved
        logger.setLevel(level)


def _connect(ray, address: str | None, workers: int | None) -> bool:
    """Connect to (or start) Ray; returns whether this call did (and so must disconnect: ``ray.shutdown()``,
    which stops a local Ray it started and leaves a cluster running).

    Raises:
        WorkerStartError: the cluster cannot be reached, or Ray does not start.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None  # as `ray job submit` sets it
    if address:
        _check_reachable(address)
    # "local": a new Ray of our own, never one that `ray start` left running here
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": workers, "include_dashboard": False}
    try:
        ray.init(**kwargs, log_to_driver=False, logging_level=logging.ERROR)
    except (Exception, SystemExit) as e:  # Ray exits the process on some connection failures
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise WorkerStartError(f"cannot start {where}: {type(e).__name__}: {e}") from None
    return True


def _check_reachable(address: str) -> None:
    """For ``HOST:PORT`` and ``ray://HOST:PORT``: the port answers within :data:`CONNECT_TIMEOUT_S` (``ray.init``
    on a wrong address waits minutes, then exits the process)."""
    hostport = address.removeprefix("ray://")
    if address == "auto" or "://" in hostport:
        return
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise WorkerStartError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise WorkerStartError(f"the Ray cluster at {address} cannot be reached: {e.strerror or e}") from None
