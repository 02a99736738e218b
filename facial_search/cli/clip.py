"""``facial-search clip``: cut a video moment of an index (a match's ``id``) as a GIF or an MP4."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``clip`` command to ``sub`` (``ArgumentParser.add_subparsers()``)."""
    s = sub.add_parser(
        "clip",
        help="cut a video moment (a match's id) as a GIF or an MP4",
        description=(
            "Cut the moment of index entry ID from its video: a looping GIF (one palette, at most --max-width "
            "px wide and --max-bytes, its frame rate and width lowered until it fits) or an MP4 (H.264; MPEG-4 "
            "Part 2 where this PyAV has no libx264)."
        ),
    )
    s.add_argument("index", metavar="INDEX", help="a file (memes.fsindex, file://...), milvus-lite://, milvus://")
    s.add_argument("id", metavar="ID", type=int, help="the moment's id (a match's `id` in `search --json`)")
    s.add_argument("--out", required=True, metavar="FILE", help="moment.gif or moment.mp4")
    s.add_argument("--pad-s", type=float, default=0.3, metavar="S",
                   help="seconds added before and after the moment (default 0.3)")  # fmt: skip
    s.add_argument("--max-width", type=int, default=480, metavar="PX", help="widest frame, pixels (default 480)")
    s.add_argument("--max-bytes", type=int, default=5_000_000, metavar="N",
                   help="largest file, bytes (default 5,000,000)")  # fmt: skip
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from facial_search import clip as clips
    from facial_search import index as fsi
    from facial_search.cli._common import check_at_least
    from facial_search.errors import OptionError
    from facial_search.io.outputs import check_output_file

    check_at_least(args.max_width, "--max-width", 16)
    check_at_least(args.max_bytes, "--max-bytes", 1)
    if not args.pad_s >= 0:
        raise OptionError(f"--pad-s: must be at least 0 (got {args.pad_s:g})")
    clips.clip_format(args.out)  # before the index is opened: a bad --out fails at once
    check_output_file(args.out)
    with fsi.open(args.index) as store:
        moment = clips.moment_of(store, args.id)
    clip = clips.cut_clip(moment.source, moment.t_start, moment.t_end, args.out, pad_s=args.pad_s,
                          max_width=args.max_width, max_bytes=args.max_bytes)  # fmt: skip
    name = moment.source.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    print(
        f"wrote {args.out}: {clip.format.upper()} ({clip.codec}), {clip.frames} frames at {clip.fps:.5g} frames/s, "
        f"{clip.width}x{clip.height}, {clip.bytes / 1e3:,.0f} kB; {_clock(clip.t_start)}-{_clock(clip.t_end)} of {name}"
    )
    return 0


def _clock(t: float) -> str:
    """``m:ss.t`` of ``t`` seconds (``h:mm:ss.t`` past an hour), as result pictures show moments."""
    s, tenths = divmod(int(round(max(0.0, t) * 10)), 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}.{tenths}" if h else f"{m}:{s:02d}.{tenths}"
