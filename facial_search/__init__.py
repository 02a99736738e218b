"""facial-search: find the memes whose facial expression matches yours.

>>> from facial_search import FacialSearch
>>> fs = FacialSearch.open("memes.fsindex")
>>> for face in fs.search("me.jpg", k=3):
...     print(face.box, [(m.title, round(m.distance, 3)) for m in face.matches])
(...) [(...)]

The public names below are imported when first used (``import facial_search`` stays cheap: the command line
starts without loading MediaPipe).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "FacialSearch": "facial_search.pipeline",
    "Pipeline": "facial_search.pipeline",
    "SearchResult": "facial_search.pipeline",
    "FaceMatches": "facial_search.pipeline",
    "Match": "facial_search.pipeline",
    "build_index": "facial_search.indexing",
    "IndexReport": "facial_search.indexing",
    "Face": "facial_search.vision.faces",
    "FaceFinder": "facial_search.vision.faces",
    "FaceFinderOptions": "facial_search.vision.faces",
    "MemeIndex": "facial_search.index.store",
    "EmbedderInfo": "facial_search.index.store",
    "Entry": "facial_search.index.store",
    "load_image": "facial_search.io.images",
    "get_embedder": "facial_search.embedders",
    "evaluate": "facial_search.evaluate",
    "FacialSearchError": "facial_search.errors",
    "ImageError": "facial_search.errors",
    "NoFaceError": "facial_search.errors",
    "AssetError": "facial_search.errors",
    "IndexFormatError": "facial_search.errors",
    "EmbedderMismatchError": "facial_search.errors",
    "LiveError": "facial_search.errors",
}

__all__ = [
    "__version__",
    "FacialSearch",
    "Pipeline",
    "SearchResult",
    "FaceMatches",
    "Match",
    "build_index",
    "IndexReport",
    "Face",
    "FaceFinder",
    "FaceFinderOptions",
    "MemeIndex",
    "EmbedderInfo",
    "Entry",
    "load_image",
    "get_embedder",
    "evaluate",
    "FacialSearchError",
    "ImageError",
    "NoFaceError",
    "AssetError",
    "IndexFormatError",
    "EmbedderMismatchError",
    "LiveError",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily (__getattr__)
    from facial_search.embedders import get_embedder
    from facial_search.errors import (
        AssetError,
        EmbedderMismatchError,
        FacialSearchError,
        ImageError,
        IndexFormatError,
        LiveError,
        NoFaceError,
    )
    from facial_search.evaluate import evaluate
    from facial_search.index.store import EmbedderInfo, Entry, MemeIndex
    from facial_search.indexing import IndexReport, build_index
    from facial_search.io.images import load_image
    from facial_search.pipeline import FaceMatches, FacialSearch, Match, Pipeline, SearchResult
    from facial_search.vision.faces import Face, FaceFinder, FaceFinderOptions


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facial_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
