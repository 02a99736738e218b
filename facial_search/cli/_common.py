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


def add_index_option(sp: argparse.ArgumentParser) -> None:
    """``--index URI`` (required): any store :func:`facial_search.index.open` opens."""
    sp.add_argument(
        "--index",
        required=True,
        metavar="INDEX",
        help="a file (memes.fsindex, file://...), milvus-lite://PATH.db or milvus://HOST:PORT/COLLECTION",
    )


def add_match_options(sp: argparse.ArgumentParser) -> None:
    """``-k`` (matches per face) and ``--all-faces`` (the k nearest faces instead of k different memes)."""
    sp.add_argument("-k", type=int, default=3, help="matches per face (default 3)")
    sp.add_argument("--all-faces", action="store_true",
                    help="the k nearest meme faces, even several of one meme (default: k different memes)")  # fmt: skip


def check_at_least(value: float | None, option: str, minimum: float = 1) -> None:
    """Raise :class:`~facial_search.errors.OptionError` when ``value`` (not None) is below ``minimum``.

    The message names the option: ``-k: must be at least 1 (got 0)``."""
    if value is not None and value < minimum:
        from facial_search.errors import OptionError

        raise OptionError(f"{option}: must be at least {minimum:g} (got {value:g})")


def check_above(value: float | None, option: str, bound: float = 0) -> None:
    """Raise :class:`~facial_search.errors.OptionError` when ``value`` (not None) is not above ``bound``."""
    if value is not None and not value > bound:
        from facial_search.errors import OptionError

        raise OptionError(f"{option}: must be more than {bound:g} (got {value:g})")
