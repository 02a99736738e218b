"""``facial-search eval`` of an expression graph that is not the shipped one (a candidate, a float copy).

The product's command embeds with a registered embedder by name; this registers an
:class:`~facial_search.embedders.expression.ExpressionEmbedder` on the given ``.onnx`` file under a temporary
name and runs :func:`facial_search.evaluate.evaluate` in this process (one worker): the same detector,
alignment, fallbacks and scoring as the command, only the weights differ.

    python -m training.eval_graph MODEL.onnx TRIPLETS_CSV [--images DIR] [--labels CSV] [--cropped] [--transform T]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from facial_search import embedders
from facial_search.evaluate import TRANSFORMS, TripletReport, evaluate

NAME = "expression-candidate"


def evaluate_graph(
    model: str | os.PathLike,
    triplets: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    cropped: bool = True,
    transform: str = "none",
    progress: bool = False,
) -> TripletReport:
    """:func:`facial_search.evaluate.evaluate` with the expression graph ``model`` (raises what it raises,
    and ``AssetError`` / ``ModelLoadError`` for a missing or unloadable graph, from the first image)."""
    from facial_search.embedders.expression import ExpressionEmbedder

    path = Path(model)
    ExpressionEmbedder(model_file=path)  # a bad file fails here, with its own error
    embedders.register(NAME, lambda: ExpressionEmbedder(model_file=path))
    return evaluate(triplets, images, labels=labels, cropped=cropped, transform=transform, embedder=NAME,
                    workers=1, progress=progress)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("triplets", type=Path)
    ap.add_argument("--images", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--cropped", action="store_true")
    ap.add_argument("--transform", default="none", choices=TRANSFORMS)
    a = ap.parse_args(argv)
    shared = Path(__file__).resolve().parents[2] / "shared" / "models"
    if shared.is_dir():
        os.environ.setdefault("FACIAL_SEARCH_MODELS", str(shared))
    from facial_search.io.native_log import silence_native_stderr

    silence_native_stderr()
    report = evaluate_graph(a.model, a.triplets, a.images, labels=a.labels, cropped=a.cropped, transform=a.transform)
    print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
