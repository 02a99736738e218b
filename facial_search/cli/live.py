"""``facial-search live``: match memes live on a webcam or a video, with a smoothed face mesh."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from facial_search.cli._common import add_index_option, add_match_options, add_model_options

if TYPE_CHECKING:
    from facial_search.live.run import LiveOptions


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``live`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser("live", help="match memes live on a webcam or a video, with a smoothed face mesh")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera number (default 0 when no --video)")
    src.add_argument("--video", metavar="FILE", help="video file instead of a camera")
    add_index_option(s)
    s.add_argument("--output", metavar="OUT.mp4", help="write the annotated video")
    s.add_argument("--log", metavar="OUT.jsonl", help="write one JSON line per frame")
    s.add_argument("--no-window", action="store_true", help="run headless")
    s.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror the picture (default: on for a camera, off for a video)")  # fmt: skip
    add_match_options(s)
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


def options_from_args(args: argparse.Namespace) -> LiveOptions:
    """The :class:`~facial_search.live.run.LiveOptions` of parsed ``facial-search live`` arguments.

    Raises:
        OptionError: a value out of its range (``-k 0``, ``--embed-every 0``, a cutoff not above 0 Hz, a
            negative ``--beta`` or camera number).
    """
    from facial_search.live.one_euro import OneEuroParams
    from facial_search.live.run import LiveOptions
    from facial_search.live.session import LiveConfig

    d = OneEuroParams()
    params = OneEuroParams(
        min_cutoff=d.min_cutoff if args.min_cutoff is None else args.min_cutoff,
        beta=d.beta if args.beta is None else args.beta,
        d_cutoff=d.d_cutoff if args.d_cutoff is None else args.d_cutoff,
    )
    session = LiveConfig(
        k=args.k,
        filter=None if args.no_filter else params,
        hysteresis=None if args.no_hysteresis else LiveConfig.hysteresis,
        embedding_filter=None if args.no_hysteresis else LiveConfig().embedding_filter,
        embed_every=args.embed_every,
        group_by_source=not args.all_faces,
        model_path=args.model,
    )
    return LiveOptions(
        index=args.index,
        video=args.video,
        camera=args.camera,
        output=args.output,
        log=args.log,
        window=not args.no_window,
        mirror=args.mirror,
        embedder=args.embedder,
        session=session,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``facial-search live`` and print a one-line summary; returns the exit status (0)."""
    from facial_search.live.run import run_live

    stats = run_live(options_from_args(args))
    share = stats.frames_with_faces / stats.frames if stats.frames else 0.0
    wrote = ", ".join(str(p) for p in (args.output, args.log) if p)
    print(
        f"{stats.source}: {stats.frames} frames, a face in {share:.0%}, {stats.fps:.1f} frames/s"
        + (" (stopped by a key press)" if stats.stopped else "")
        + (f"; wrote {wrote}" if wrote else "")
    )
    return 0
