"""The pipelines the web app searches with: :class:`SearchPool` (no FastAPI import here)."""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Iterator

import numpy as np

from facial_search.web.config import CHECKOUT_TIMEOUT


class SearchPool:
    """``size`` :class:`~facial_search.pipeline.FacialSearch` objects sharing one open store.

    A MediaPipe landmarker (and an embedder) must not be used by two threads at once: each pipeline owns its
    own, and :meth:`checkout` lends one to a single thread at a time. The store (any URI:
    :func:`facial_search.index.open`) is opened once, read-only while serving, searched from several threads,
    and closed by :meth:`close`.

    Raises:
        FileNotFoundError, IndexFormatError, EmbedderMismatchError, AssetError: as
        :meth:`facial_search.pipeline.FacialSearch.open`.
    """

    def __init__(
        self,
        index_path: str | os.PathLike,
        size: int | None = None,
        *,
        embedder: str | None = None,
        model_path: str | os.PathLike | None = None,
    ):
        from facial_search.parallel import default_workers
        from facial_search.pipeline import FacialSearch, Pipeline

        self._closed = False
        self._fields: dict[int, tuple[str, int, str]] = {}  # match_fields, by id
        size = max(1, int(size or default_workers()))
        first = FacialSearch.open(index_path, embedder=embedder, model_path=model_path)
        self.index = first.index
        self.index_path = os.fspath(index_path)
        self.size = size
        self._all = [first]
        try:
            # what every search builds once (picture groups, the exact index): here, not in a request
            if self.index.ntotal:
                self.index.search(np.zeros((1, self.index.embedder.dim), np.float32), 1, group_by_source=True)
                self.index.search(np.zeros((1, self.index.embedder.dim), np.float32), 1)
            for _ in range(size - 1):
                pipe = Pipeline(embedder=first.pipeline.embedder.name, model_path=model_path)
                self._all.append(FacialSearch(self.index, pipe, self.index_path))
        except BaseException:
            self.close()
            raise
        self._free: queue.Queue = queue.Queue()
        for fs in self._all:
            self._free.put(fs)

    def match_fields(self, id: int) -> tuple[str, int, str]:
        """``(source, face, title)`` of face ``id`` as the search document shows them (a name's undecodable bytes
        as U+FFFD), read from the store on first use and kept: a served store only grows (ids are never reused).

        Raises:
            KeyError: no face with this id.
        """
        got = self._fields.get(id)
        if got is None:
            from facial_search.web.export import displayable

            e = self.index.entry(id)
            got = self._fields[id] = (displayable(e.source), int(e.face), displayable(e.title))
        return got

    @property
    def embedder(self) -> str:
        """The index's embedder, as ``name@version`` (what ``/healthz`` reports)."""
        return str(self.index.embedder)

    @contextlib.contextmanager
    def checkout(self, timeout: float | None = CHECKOUT_TIMEOUT) -> Iterator:
        """A free :class:`~facial_search.pipeline.FacialSearch` for this thread.

        Raises:
            TimeoutError: none frees up within ``timeout`` seconds.
        """
        try:
            fs = self._free.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("all pipelines busy") from None
        try:
            yield fs
        finally:
            self._free.put(fs)

    def close(self) -> None:
        """Close every pipeline's landmarker, and the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for fs in self._all:
            with contextlib.suppress(Exception):
                fs.close()

    def __enter__(self) -> SearchPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
