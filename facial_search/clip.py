"""Cut a video moment as a GIF or an MP4 clip (``facial-search clip``, the web page's moment player).

Everything is FFmpeg's, through PyAV: the source is opened, seeked (to the keyframe before the range) and
decoded by libavformat/libavcodec; one filter graph rotates (the stream's display matrix, as ``ffmpeg``'s
autorotate does), resamples to a constant frame rate (``fps``, which also evens out a variable-rate source),
scales (``scale``, Lanczos) and, for a GIF, makes one palette for the whole clip and maps the frames onto it
(``split``, ``palettegen`` ``stats_mode=diff``, ``paletteuse`` Bayer dithering); the encoders are FFmpeg's
``gif`` and ``libx264`` (H.264, yuv420p, CRF 23, ``+faststart`` so a browser plays it while it loads; FFmpeg's
``mpeg4``, MPEG-4 Part 2, where this PyAV has no libx264). The only per-frame code here picks the decoded
frames inside the time range and hands them on.

Times are seconds from the video's first frame (its presentation timestamp is 0, whatever the container's start
time), the times an index records for a moment (``t_start``, ``t_end``; :mod:`facial_search.moments`).

A GIF larger than ``max_bytes`` is cut again smaller: its frame rate lowered to 10 frames/s, then its width to
240 px, then 6 frames/s and 120 px (:data:`GIF_STEPS`); each try aims a little under the budget from the size
of the one before, a GIF's size growing about as fps^0.9 x width^2 (measured on ``WolfgangLanger_Pexels.mp4``,
3.6 s: 3.40 MB at 15 frames/s and 480 px, 2.38 MB at 10, 1.51 MB at 6; 1.56 MB at 15 and 320 px, 0.89 MB at
240 px). An MP4 over budget is cut again at a higher CRF (up to 35), then a smaller width.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from facial_search.errors import (
    ClipError,
    ClipRangeError,
    ClipSourceError,
    ClipTooLargeError,
    InputNotFoundError,
    NotAMomentError,
    OutputError,
    UnknownIdError,
)
from facial_search.io.outputs import check_output_file

#: Output extensions and the container each writes.
CLIP_FORMATS = {".gif": "gif", ".mp4": "mp4"}
#: Frame rate of a GIF's first try (frames/s; a source slower than that keeps its own), and the lowest tried.
GIF_FPS, GIF_MIN_FPS = 15.0, 6.0
#: Highest frame rate of an MP4 (frames/s): a faster source is resampled to it.
MP4_MAX_FPS = 30.0
#: Narrowest width tried to fit the byte budget, pixels.
MIN_WIDTH = 120
#: How a GIF over budget is made smaller: (frame rate, width) floors of each stage, frame rate first.
GIF_STEPS = ((10.0, 240), (GIF_MIN_FPS, MIN_WIDTH))
#: CRF of an MP4's first try (libx264: 0 lossless .. 51; 23 is x264's default), and the highest tried.
MP4_CRF, MP4_MAX_CRF = 23, 35
#: Tries at most before :class:`~facial_search.errors.ClipTooLargeError`.
MAX_TRIES = 8
#: Bits a pixel of an ``mpeg4`` (no libx264) clip at the first try; each +6 of the "CRF" halves it.
MPEG4_BITS_PER_PIXEL = 0.12
#: How far past the video's end ``t_end`` may reach (seconds): the last frame's end is not always recorded.
END_TOLERANCE_S = 0.1


@dataclass(frozen=True)
class Clip:
    """A clip :func:`cut_clip` wrote.

    Attributes:
        path: the file.
        format: ``"gif"`` or ``"mp4"``.
        codec: the encoder: ``"gif"``, ``"libx264"`` (H.264) or ``"mpeg4"`` (MPEG-4 Part 2, no libx264 here).
        t_start, t_end: the range cut from the source (the moment widened by the padding, within the video),
            seconds.
        frames: frames written.
        fps: frame rate, frames/s.
        width, height: frame size, pixels (after rotation).
        bytes: file size.
        tries: encodings made to fit ``max_bytes`` (1 when the first fitted).
    """

    path: Path
    format: str
    codec: str
    t_start: float
    t_end: float
    frames: int
    fps: float
    width: int
    height: int
    bytes: int
    tries: int

    @property
    def duration(self) -> float:
        """Playing time, seconds (``frames / fps``)."""
        return self.frames / self.fps


def mp4_codec() -> str:
    """The MP4 encoder this PyAV has: ``"libx264"`` (H.264) where its FFmpeg has it, else ``"mpeg4"``."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def clip_format(out: str | os.PathLike) -> str:
    """``"gif"`` or ``"mp4"`` from the extension of ``out``.

    Raises:
        OutputError: another extension.
    """
    fmt = CLIP_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        suffix = Path(out).suffix
        what = f"unknown extension {suffix!r}" if suffix else "no extension"
        raise OutputError(f"{out}: {what}; one of {', '.join(CLIP_FORMATS)}")
    return fmt


def cut_clip(
    source: str | os.PathLike,
    t_start: float,
    t_end: float,
    out: str | os.PathLike,
    *,
    pad_s: float = 0.3,
    max_width: int = 480,
    max_bytes: int = 5_000_000,
) -> Clip:
    """Cut ``[t_start - pad_s, t_end + pad_s]`` (within the video) of ``source`` to ``out``, a GIF or an MP4.

    Args:
        source: a video file (any container and codec FFmpeg decodes; an animated GIF too).
        t_start, t_end: the moment, seconds from the video's first frame; ``0 <= t_start < t_end``, ``t_start``
            before the video's end and ``t_end`` at most at it (0.1 s tolerance).
        out: the clip; ``.gif`` (one palette, looping) or ``.mp4`` (H.264, see :func:`mp4_codec`). Written to a
            temporary file beside it and renamed over it at the end: a failure leaves no partial file, and an
            existing one as it was.
        pad_s: seconds added before and after the moment (>= 0), clamped to the video.
        max_width: widest frame, pixels (>= 16): a wider video is scaled down, its aspect kept; never up.
        max_bytes: largest file; a larger clip is cut again at a lower frame rate and width (module docstring).

    Returns:
        What was written (:class:`Clip`).

    Raises:
        InputNotFoundError: ``source`` does not exist.
        ClipSourceError: ``source`` is a folder, no video, or no frame of it decodes.
        ClipRangeError: the range is outside the video, empty, or holds no frame.
        OutputError: ``out`` has another extension, or cannot be written (missing or read-only folder, a full
            disk); checked before any decoding.
        ClipTooLargeError: over ``max_bytes`` at the lowest frame rate and width tried.
        ValueError: ``pad_s < 0``, ``max_width < 16`` or ``max_bytes < 1``.
    """
    if not pad_s >= 0:
        raise ValueError(f"pad_s must be at least 0 (got {pad_s})")
    if max_width < 16:
        raise ValueError(f"max_width must be at least 16 (got {max_width})")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1 (got {max_bytes})")
    out = Path(out)
    fmt = clip_format(out)
    check_output_file(out)
    source = Path(source)
    probe = _probe(source)
    a, b = _padded_range(source, probe, float(t_start), float(t_end), float(pad_s))
    width = min(int(max_width), probe.display_width)
    if fmt == "gif":
        fps = min(GIF_FPS, probe.fps) if probe.fps else GIF_FPS
        codec, quality = "gif", None
    else:
        fps = min(MP4_MAX_FPS, probe.fps) if probe.fps else MP4_MAX_FPS
        codec, quality = mp4_codec(), MP4_CRF
    tries = 0
    while True:
        tries += 1
        tmp = _temp_beside(out)
        try:
            frames, size = _encode(source, probe, a, b, tmp, fmt, codec, fps, width, quality)
            nbytes = tmp.stat().st_size
            if nbytes <= max_bytes:
                if out.exists():
                    os.chmod(tmp, out.stat().st_mode & 0o7777)
                os.replace(tmp, out)
                return Clip(out, fmt, codec, a, b, frames, fps, size[0], size[1], nbytes, tries)
        except (InputNotFoundError, ClipError):  # the source (gone since the probe), not the output
            raise
        except OSError as e:
            raise OutputError(f"{out}: cannot write: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        step = _smaller(fmt, fps, width, quality, nbytes, max_bytes) if tries < MAX_TRIES else None
        if step is None:
            raise ClipTooLargeError(
                f"{out}: {nbytes:,} bytes at {fps:g} frames/s and {width} px wide, over the {max_bytes:,} allowed "
                f"(a shorter moment, less padding or a smaller width may fit)"
            )
        fps, width, quality = step


@dataclass(frozen=True)
class Moment:
    """Where an index entry's moment is: its video ``source``, ``t_start``/``t_end`` and ``t_frame`` (its most
    typical sample; ``t_start`` where the index has none), seconds."""

    id: int
    source: Path
    t_start: float
    t_end: float
    t_frame: float


def moment_of(store, id: int) -> Moment:
    """The moment of entry ``id`` of ``store`` (any :class:`~facial_search.index.base.Store`).

    Raises:
        UnknownIdError: no entry has that id.
        NotAMomentError: the entry is a picture (no ``t_start`` / ``t_end``).
    """
    try:
        entry = store.entry(int(id))
    except KeyError:
        raise UnknownIdError(f"id {id}: not in the index") from None
    t_start, t_end = getattr(entry, "t_start", None), getattr(entry, "t_end", None)
    if t_start is None or t_end is None:
        raise NotAMomentError(f"id {id}: a picture ({Path(entry.source).name}), not a video moment")
    t_frame = getattr(entry, "t_frame", None)
    return Moment(
        int(id), Path(entry.source), float(t_start), float(t_end), float(t_start if t_frame is None else t_frame)
    )


def still_jpeg(source: str | os.PathLike, t: float, max_side: int = 256, quality: int = 75) -> bytes:
    """A JPEG of the frame of video ``source`` shown at ``t`` seconds (upright:
    :func:`facial_search.moments.decode.frame_at`), its longest side at most ``max_side`` pixels (never
    enlarged): a moment's picture where a picture is wanted (the web page's thumbnails). Made once per video
    version (path, size, mtime) and time, and kept (the last 1,024).

    Raises:
        InputNotFoundError: no such file. ClipSourceError: no video, or no frame decodes.
    """
    source = Path(source)
    try:
        st = source.stat()
    except FileNotFoundError:
        raise InputNotFoundError(f"{source}: no such file") from None
    return _still_jpeg(os.fspath(source), st.st_size, st.st_mtime_ns, float(t), int(max_side), int(quality))


@functools.lru_cache(maxsize=1024)
def _still_jpeg(path: str, size: int, mtime_ns: int, t: float, max_side: int, quality: int) -> bytes:
    import io

    from PIL import Image

    from facial_search.errors import ImageError
    from facial_search.moments.decode import frame_at

    try:
        img = Image.fromarray(frame_at(path, t))
    except ImageError as e:  # the video errors of facial_search.moments.decode
        raise ClipSourceError(str(e)) from None
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


#: Clips :func:`cached_clip` keeps, at most (bytes in all); the least recently used go first.
CACHE_MAX_BYTES = 500_000_000
#: Part of every cache key: a change of how clips are cut makes new ones.
CACHE_VERSION = 1


def cached_clip(
    source: str | os.PathLike,
    t_start: float,
    t_end: float,
    fmt: str,
    *,
    folder: str | os.PathLike | None = None,
    max_cache_bytes: int = CACHE_MAX_BYTES,
    **options,
) -> Path:
    """The clip of a moment as :func:`cut_clip` cuts it (``fmt``: ``"gif"`` or ``"mp4"``), cut once and kept.

    Kept in ``folder`` (default ``<user cache>/clips``, :func:`facial_search.io.assets.cache_dir`) under a key
    of the source's path, size and mtime, the times, ``fmt``, ``options`` (``cut_clip``'s keywords) and the
    encoder, so a changed video or other times make a new clip. After a new clip is written, the least recently
    used are removed while the folder holds over ``max_cache_bytes``. Two requests at once may both cut the
    clip; each renames a whole file into place.

    Raises:
        what :func:`cut_clip` raises; OutputError: the cache folder cannot be made.
    """
    if fmt not in CLIP_FORMATS.values():
        raise OutputError(f"clip format {fmt!r}: one of {', '.join(CLIP_FORMATS.values())}")
    import hashlib

    from facial_search.io.assets import cache_dir

    source = Path(source)
    try:
        st = source.stat()
    except FileNotFoundError:
        raise InputNotFoundError(f"{source}: no such file") from None
    codec = "gif" if fmt == "gif" else mp4_codec()
    key = f"{CACHE_VERSION}\0{os.path.abspath(source)}\0{st.st_size}\0{st.st_mtime_ns}\0{t_start!r}\0{t_end!r}"
    key += f"\0{codec}\0{sorted(options.items())!r}"
    folder = Path(folder) if folder is not None else cache_dir() / "clips"
    path = folder / f"{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.{fmt}"
    if path.is_file():
        os.utime(path)  # recently used
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot make the clip cache: {e.strerror or e}") from None
    cut_clip(source, t_start, t_end, path, **options)
    _prune(folder, max_cache_bytes, keep=path)
    return path


def _prune(folder: Path, max_bytes: int, keep: Path) -> None:
    """Remove the least recently used clips of ``folder`` while it holds over ``max_bytes`` (never ``keep``)."""
    files = []
    for p in folder.iterdir():
        if p.suffix in (".gif", ".mp4") and p != keep and not p.name.startswith("."):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files) + keep.stat().st_size
    for _, size, p in sorted(files):
        if total <= max_bytes:
            break
        p.unlink(missing_ok=True)
        total -= size


@dataclass(frozen=True)
class _Probe:
    """What :func:`_probe` learnt of a source: its first frame's time (seconds on the stream's clock), duration
    from it (seconds or None), frame rate (FFmpeg's guess, frames/s, or None), display width (after rotation,
    pixels)."""

    start: float
    duration: float | None
    fps: float | None
    display_width: int


def _open(source: Path):
    import av

    if not source.exists():
        raise InputNotFoundError(f"{source}: no such file")
    if source.is_dir():
        raise ClipSourceError(f"{source}: is a folder, not a video")
    try:
        container = av.open(str(source), "r")
    except av.FFmpegError as e:
        raise ClipSourceError(f"{source}: cannot be read as a video ({_reason(e)})") from None
    except OSError as e:
        raise ClipSourceError(f"{source}: cannot be read: {e.strerror or e}") from None
    if not container.streams.video:
        container.close()
        raise ClipSourceError(f"{source}: has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _probe(source: Path) -> _Probe:
    """Open ``source`` and decode its first frame (the rotation is known from decoded frames only)."""
    import av

    container, stream = _open(source)
    try:
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        if stream.duration is not None and tb:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base - start
        else:
            duration = None
        # FFmpeg's guess (the container's base rate where it is plausible): a variable-rate phone video's average
        # (26.4 frames/s for a 30 frames/s iPhone clip) would slow the clip's rate below what the video shows
        rate = stream.guessed_rate or stream.average_rate
        fps = float(rate) if rate and 0 < float(rate) <= 1000 else None
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise ClipSourceError(f"{source}: no frame decodes ({_reason(e)})") from None
        if first is None:
            raise ClipSourceError(f"{source}: no frame decodes")
        if first.time is not None:  # times count from the first frame (as the index's moments do)
            if duration is not None:
                duration -= first.time - start
            start = first.time
        turned = abs(_rotation(first)) == 90
        width = first.height if turned else first.width
        return _Probe(start, duration, fps, width)
    finally:
        container.close()


def _rotation(frame) -> int:
    """The frame's display rotation, counter-clockwise degrees rounded to a quarter turn (0, 90, 180, -90)."""
    r = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
    return {0: 0, 90: 90, 180: 180, 270: -90}[r]


def _padded_range(source: Path, probe: _Probe, t_start: float, t_end: float, pad_s: float) -> tuple[float, float]:
    if not (math.isfinite(t_start) and math.isfinite(t_end)):
        raise ClipRangeError(f"{source}: times must be finite (got {t_start}-{t_end} s)")
    if t_start < 0:
        raise ClipRangeError(f"{source}: t_start {t_start:g} s is before the video's start")
    if t_end <= t_start:
        raise ClipRangeError(f"{source}: t_end {t_end:g} s is not after t_start {t_start:g} s")
    end = probe.duration
    if end is not None:
        if t_start >= end:
            raise ClipRangeError(f"{source}: t_start {t_start:g} s is past the video's end ({end:.3f} s)")
        if t_end > end + END_TOLERANCE_S:
            raise ClipRangeError(f"{source}: t_end {t_end:g} s is past the video's end ({end:.3f} s)")
    return max(0.0, t_start - pad_s), t_end + pad_s if end is None else min(end, t_end + pad_s)


def _temp_beside(out: Path) -> Path:
    """A new empty file beside ``out`` (mode 0666 less the umask, as any new file)."""
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    except OSError as e:
        raise OutputError(f"{out}: cannot write: {e.strerror or e}") from None
    return tmp


def _smaller(fmt: str, fps: float, width: int, quality: int | None, nbytes: int, max_bytes: int):
    """The next try's ``(fps, width, quality)`` towards ``max_bytes``, or None when nothing is left to lower."""
    ratio = 0.9 * max_bytes / nbytes  # aim a little under the budget
    if fmt == "mp4":
        if quality < MP4_MAX_CRF:  # +6 CRF about halves an H.264 stream
            return fps, width, min(MP4_MAX_CRF, quality + max(3, math.ceil(-6 * math.log2(ratio))))
        new_width = max(MIN_WIDTH, int(width * math.sqrt(ratio)) // 2 * 2)
        return (fps, new_width, quality) if new_width < width else None
    for fps_floor, width_floor in GIF_STEPS:  # a GIF's size ~ fps^0.9 x width^2 (measured, module docstring)
        new_fps = max(min(fps, fps_floor), fps * ratio ** (1 / 0.9))
        rest = ratio / (new_fps / fps) ** 0.9
        new_width = max(min(width, width_floor), int(width * math.sqrt(min(1.0, rest))))
        if (new_fps, new_width) != (fps, width):
            return new_fps, new_width, quality
    return None


def _chain(g, first, stream, fmt: str, fps: float, width: int):
    """Add the video's buffer source and filters to graph ``g``, made for the first decoded frame: rotation,
    ``fps``, ``scale`` (and yuv420p for an MP4). Returns the last filter."""
    node = g.add_buffer(width=first.width, height=first.height, format=first.format.name, time_base=stream.time_base)
    chain = []
    rotation = _rotation(first)
    if rotation == 90:  # counter-clockwise
        chain.append(g.add("transpose", "cclock"))
    elif rotation == -90:
        chain.append(g.add("transpose", "clock"))
    elif rotation == 180:
        chain += [g.add("hflip"), g.add("vflip")]
    chain.append(g.add("fps", f"fps={_rate(fps)}"))
    chain.append(g.add("setpts", "PTS-STARTPTS"))
    if fmt == "mp4":  # yuv420p wants even sides
        chain.append(g.add("scale", f"w='trunc(min({width},iw)/2)*2':h=-2:flags=lanczos"))
        chain.append(g.add("format", "pix_fmts=yuv420p"))
    else:
        chain.append(g.add("scale", f"w='min({width},iw)':h=-1:flags=lanczos"))
    for f in chain:
        node.link_to(f)
        node = f
    return node


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _frames(source: Path, probe: _Probe, a: float, b: float):
    """The decoded frames of ``[a, b)`` (seconds from the video's first frame), with the stream: the container
    seeked to the keyframe before ``a``; frames before it are dropped. A frame that fails to decode after the
    first ends the range there."""
    import av

    container, stream = _open(source)
    first = True
    try:
        container.seek(int((probe.start + a) / stream.time_base), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t = frame.time - probe.start
                if t < a - 1e-6:
                    continue
                if t >= b - 1e-6:
                    break
                yield frame, stream
                first = False
        except av.FFmpegError as e:
            if first:
                raise ClipSourceError(f"{source}: no frame decodes in {a:.3f}-{b:.3f} s ({_reason(e)})") from None
    finally:
        container.close()


def _pull(sink):
    """The frames ``sink`` (a ``buffersink``) has ready."""
    while True:
        try:
            yield sink.pull()
        except (BlockingIOError, EOFError):  # av.error's: the graph wants more input, or is done
            return


def _filtered(source: Path, probe: _Probe, a: float, b: float, build):
    """The frames of ``[a, b)`` through the graph ``build(graph, first frame, stream)`` fills in (the video's
    buffer source first; it returns the ``buffersink`` to pull from)."""
    import av.filter

    graph = sink = None
    for frame, stream in _frames(source, probe, a, b):
        if graph is None:
            graph = av.filter.Graph()
            sink = build(graph, frame, stream)
            graph.configure()
        graph.vpush(frame, at=0)
        yield from _pull(sink)
    if graph is None:
        raise ClipRangeError(f"{source}: no frame in {a:.3f}-{b:.3f} s")
    graph.vpush(None, at=0)
    yield from _pull(sink)


def _palette(source: Path, probe: _Probe, a: float, b: float, fps: float, width: int):
    """Pass 1 of a GIF: ``palettegen``'s 256-colour palette (a 16x16 frame) of the frames of ``[a, b)``."""

    def build(g, first, stream):
        node = _chain(g, first, stream, "gif", fps, width)
        gen, sink = g.add("palettegen", "stats_mode=diff"), g.add("buffersink")
        node.link_to(gen)
        gen.link_to(sink)
        return sink

    palettes = list(_filtered(source, probe, a, b, build))
    if not palettes:
        raise ClipRangeError(f"{source}: no frame in {a:.3f}-{b:.3f} s")
    return palettes[-1]


def _encode(source: Path, probe: _Probe, a: float, b: float, tmp: Path, fmt: str, codec: str, fps: float,
            width: int, quality: int | None) -> tuple[int, tuple[int, int]]:  # fmt: skip
    """One try: decode ``[a, b)`` of ``source``, filter, encode to ``tmp``. A GIF takes two passes, as
    ``ffmpeg``'s documented palette recipe does: the palette of the whole clip first, then ``paletteuse`` with
    it (so no pass holds more than a few frames). Returns (frames, (width, height))."""
    import av

    palette = _palette(source, probe, a, b, fps, width) if fmt == "gif" else None

    def build(g, first, stream):
        node, sink = _chain(g, first, stream, fmt, fps, width), g.add("buffersink")
        if palette is None:
            node.link_to(sink)
            return sink
        pal = g.add_buffer(width=palette.width, height=palette.height, format=palette.format.name,
                           time_base=palette.time_base)  # fmt: skip
        use = g.add("paletteuse", "dither=bayer:bayer_scale=5:diff_mode=rectangle")
        node.link_to(use, 0, 0)
        pal.link_to(use, 0, 1)
        use.link_to(sink)
        g.configure()
        palette.pts = 0
        g.vpush(palette, at=1)
        g.vpush(None, at=1)
        return sink

    rate = _rate(fps)
    sink = av.open(str(tmp), "w", format=fmt, options={"movflags": "+faststart"} if fmt == "mp4" else {})
    written, size, ostream = 0, (0, 0), None
    try:
        for frame in _filtered(source, probe, a, b, build):
            if ostream is None:
                ostream = sink.add_stream(codec, rate=rate)
                ostream.width, ostream.height = size = (frame.width, frame.height)
                ostream.pix_fmt = "pal8" if fmt == "gif" else "yuv420p"
                if codec == "libx264":
                    ostream.options = {"crf": str(quality), "preset": "veryfast"}
                elif codec == "mpeg4":  # a bit rate instead of a CRF: 0.12 bit a pixel at "CRF" 23, halved every +6
                    bpp = MPEG4_BITS_PER_PIXEL * 2 ** ((MP4_CRF - quality) / 6)
                    ostream.bit_rate = int(bpp * frame.width * frame.height * float(rate))
                ostream.codec_context.time_base = 1 / rate
            frame.pts, frame.time_base = written, 1 / rate
            sink.mux(ostream.encode(frame))
            written += 1
        if ostream is not None:
            sink.mux(ostream.encode(None))
    finally:
        sink.close()
    if written == 0:
        raise ClipRangeError(f"{source}: no frame in {a:.3f}-{b:.3f} s")
    return written, size
