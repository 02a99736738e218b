"""``facial-search live``: match memes live on a webcam or a video, with a smoothed face mesh."""

from __future__ import annotations

import argparse

from facial_search.cli._common import add_model_options


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``live`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("live", help="match memes live on a webcam or a video, with a smoothed face mesh")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera number (default 0 when no --video)")
    src.add_argument("--video", metavar="FILE", help="video file instead of a camera")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("--output", metavar="OUT.mp4", help="write the annotated video")
    s.add_argument("--log", metavar="OUT.jsonl", help="write one JSON line per frame")
    s.add_argument("--no-window", action="store_true", help="run headless")
    s.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror the picture (default: on for a camera, off for a video)")  # fmt: skip
    s.add_argument("-k", type=int, default=3)
    s.add_argument("--all-faces", action="store_true",
                   help="the k nearest meme faces, even several of one meme (default: k different memes)")  # fmt: skip
    s.add_argument("--min-cutoff", type=float, default=None, help="One Euro filter min_cutoff, Hz")
    s.add_argument("--beta", type=float, default=None, help="One Euro filter beta (speed coefficient)")
    s.add_argument("--d-cutoff", type=float, default=None, help="One Euro filter d_cutoff, Hz")
    s.add_argument("--embed-every", type=int, default=3, metavar="N",
                   help="embed and search each face every N frames (default 3)")  # fmt: skip
    s.add_argument("--no-filter", action="store_true", help="no landmark smoothing (for comparison)")
    s.add_argument("--no-hysteresis", action="store_true", help="no match hysteresis (for comparison)")
    add_model_options(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search.live.session import run_live

    return run_live(args)
