"""Options several commands share."""

from __future__ import annotations

import argparse


def add_model_options(sp: argparse.ArgumentParser, embedder: bool = True) -> None:
    """``--model`` (the landmarker bundle) and, unless ``embedder=False``, ``--embedder``."""
    sp.add_argument(
        "--model", metavar="PATH", help="face_landmarker.task (default: $FACIAL_SEARCH_MODELS, cache, or download)"
    )
    if embedder:
        sp.add_argument(
            "--embedder", metavar="NAME", help="expression embedder (default: the index's, else the default)"
        )
