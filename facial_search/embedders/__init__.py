"""Expression embedders: faces -> ``(N, D) float32`` unit-norm vectors.

An embedder has a ``name``, a ``version`` and a dimension ``dim``; every index records all three and refuses
to be searched with another embedder (:class:`~facial_search.errors.EmbedderMismatchError`). Distances
between embeddings are Euclidean; with unit-norm vectors they lie in [0, 2].

Available embedders (:func:`get_embedder`):

- ``"expression"`` (default): our learned compact expression embedding (see ``facial_search/models/``).
- ``"blendshapes"``: baseline, the 52 MediaPipe blendshapes centred and normalised (0.535 triplet accuracy
  on FER+ ``triplets_test.csv``, ``../shared/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from facial_search.errors import UnknownEmbedderError
from facial_search.vision.faces import Face


@runtime_checkable
class Embedder(Protocol):
    """Turns faces into expression embeddings.

    Attributes:
        name: short identifier recorded in indexes (e.g. ``"blendshapes"``).
        version: changes whenever the same input would give other vectors (new weights, new preprocessing).
        dim: embedding dimension D.
    """

    name: str
    version: str
    dim: int

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces`` found in ``image``.

        Args:
            image: ``(H, W, 3) uint8`` RGB, the image the faces were found in.
            faces: faces from :class:`~facial_search.vision.faces.FaceFinder`, or a whole-image face
                (:func:`~facial_search.vision.faces.whole_image_face`, no landmarks) for a ready-made face crop.

        Returns:
            ``(len(faces), dim) float32``, each row unit-norm (L2).
        """
        ...


_REGISTRY: dict[str, Callable[[], Embedder]] = {}

#: The embedder used by ``index``, ``search`` and ``eval`` when none is named.
DEFAULT_EMBEDDER = "expression"


def register(name: str, factory: Callable[[], Embedder]) -> None:
    """Make ``factory`` available as :func:`get_embedder` ``(name)``."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names accepted by :func:`get_embedder`."""
    _load_builtins()
    return sorted(_REGISTRY)


def check_name(name: str | None = None) -> str:
    """The registered name ``name`` stands for (``None``: :data:`DEFAULT_EMBEDDER`), without building it.

    Raises:
        UnknownEmbedderError: no embedder of that name (a ``ValueError``); the message lists the available ones.
    """
    _load_builtins()
    name = name or DEFAULT_EMBEDDER
    if name not in _REGISTRY:
        raise UnknownEmbedderError(f"--embedder {name}: unknown embedder; available: {', '.join(sorted(_REGISTRY))}")
    return name


def get_embedder(name: str | None = None) -> Embedder:
    """A new embedder by name (default :data:`DEFAULT_EMBEDDER`).

    Raises:
        UnknownEmbedderError: no embedder of that name (see :func:`check_name`).
        ModelLoadError: the embedder's model file cannot be loaded.
    """
    return _REGISTRY[check_name(name)]()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as float32 (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32)


def _load_builtins() -> None:
    if _REGISTRY:
        return
    from . import blendshapes

    register(blendshapes.BlendshapeEmbedder.name, blendshapes.BlendshapeEmbedder)
    try:
        from . import expression
    except ImportError:  # the learned model lands with its own module
        return
    register(expression.ExpressionEmbedder.name, expression.ExpressionEmbedder)
