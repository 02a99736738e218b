"""The web app (FastAPI): :func:`create_app`, :func:`serve` with a :class:`ServeConfig`, :class:`SearchPool`.

``ServeConfig`` and ``serve`` import no web framework, so a missing fastapi or uvicorn is reported by
``serve`` as :class:`~facial_search.errors.MissingDependencyError` (one line, with the pip command);
``create_app`` and ``SearchPool`` are loaded on first use. Routes, status codes and limits:
:mod:`facial_search.web.app`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from facial_search.web.config import ServeConfig
from facial_search.web.server import serve

if TYPE_CHECKING:
    from facial_search.web.app import create_app
    from facial_search.web.pool import SearchPool

_LAZY = {"create_app": "facial_search.web.app", "SearchPool": "facial_search.web.pool"}

__all__ = ["SearchPool", "ServeConfig", "create_app", "serve"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
