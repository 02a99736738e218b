"""Pictures of results: a PNG sheet (each query face beside its k memes) and a self-contained HTML page.

The page is a Jinja2 template (``facial_search/templates/results.html``, autoescaped: a title or file name
holding markup is shown as text). File names that are not valid UTF-8 (Linux allows any bytes; Python holds
them surrogate-escaped) are shown with U+FFFD in their place (:func:`displayable`). Both writers are atomic: a
temporary file in the destination folder is renamed over it, so a failure leaves no empty or partial file.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from facial_search.errors import OutputError
from facial_search.io.images import load_image
from facial_search.pipeline import SearchResult, _displayable

THUMB = 220  # thumbnail height, pixels
_PAD = 12
_BG = (250, 250, 250)
_ACCENT = (230, 57, 70)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def crop_box(rgb: np.ndarray, box: Sequence[int], margin: float = 0.25) -> Image.Image:
    """The face ``box`` ``(x, y, w, h)`` of ``rgb`` with ``margin`` (share of the box side) around it."""
    x, y, w, h = box
    m = int(max(w, h) * margin)
    H, W = rgb.shape[:2]
    return Image.fromarray(rgb[max(0, y - m) : min(H, y + h + m), max(0, x - m) : min(W, x + w + m)])


def _fit(im: Image.Image, height: int, max_width: int | None = None) -> Image.Image:
    w = max(1, round(im.width * height / im.height))
    if max_width and w > max_width:
        return im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.LANCZOS)
    return im.resize((w, height), Image.LANCZOS)


@lru_cache(maxsize=256)
def _meme(source: str, box: tuple[int, int, int, int], t_frame: float | None = None) -> Image.Image:
    """A meme image with the matched face's box drawn on it; a video's moment: its frame at ``t_frame`` seconds."""
    try:
        if t_frame is None:
            im = Image.fromarray(load_image(source))
        else:
            from facial_search.moments.decode import frame_at

            im = Image.fromarray(frame_at(source, t_frame))
    except Exception:
        im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        ImageDraw.Draw(im).text((10, 10), "image missing", fill=(0, 0, 0), font=_font(16))
        return im
    d = ImageDraw.Draw(im)
    x, y, w, h = box
    d.rectangle([x, y, x + w, y + h], outline=_ACCENT, width=max(2, im.width // 150))
    return im


def displayable(text: str | os.PathLike) -> str:
    """``text`` (a title, a file name) as valid Unicode for a page, a picture or a terminal: the undecodable
    bytes of a file name (surrogate-escaped, as ``os.fsdecode`` gives them) become U+FFFD."""
    return _displayable(os.fspath(text))


def result_sheet(result: SearchResult, *, redact: bool = False) -> Image.Image:
    """One row per query face: the face crop, then its matches (meme with the face boxed, title, distance).

    ``redact=True`` blurs the meme images (for pictures published where third-party images may not go).
    Returns an RGB image ``THUMB + 58`` pixels high per face, plus a title line (the query's file name)."""
    rgb = result.rgb if result.rgb is not None else load_image(result.image)
    rows = []
    for i, fm in enumerate(result.faces):
        tiles = [(_fit(crop_box(rgb, fm.box), THUMB), f"face {i + 1}", "query")]
        for m in fm.matches:
            tile = _fit(_meme(m.source, m.box, m.t_frame), THUMB, max_width=THUMB * 2)
            if redact:
                tile = tile.filter(ImageFilter.GaussianBlur(radius=9))
            tiles.append((tile, displayable(f"#{m.rank} {m.title}"), f"distance {m.distance:.3f}" + _span(m)))
        width = sum(t[0].width for t in tiles) + _PAD * (len(tiles) + 1)
        row = Image.new("RGB", (width, THUMB + 58), _BG)
        d = ImageDraw.Draw(row)
        x = _PAD
        for j, (im, line1, line2) in enumerate(tiles):
            row.paste(im, (x, 6))
            if j == 0:
                d.rectangle([x - 3, 3, x + im.width + 2, 6 + THUMB + 2], outline=_ACCENT, width=3)
            d.text((x, THUMB + 12), _ellipsis(line1, im.width, 16), fill=(20, 20, 20), font=_font(16))
            d.text((x, THUMB + 32), line2, fill=(90, 90, 90), font=_font(14))
            x += im.width + _PAD
        rows.append(row)
    title_h = 34
    width = max([r.width for r in rows] + [400])
    sheet = Image.new("RGB", (width, title_h + sum(r.height for r in rows) + _PAD), _BG)
    ImageDraw.Draw(sheet).text((_PAD, 8), displayable(Path(result.image).name), fill=(0, 0, 0), font=_font(20))
    y = title_h
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


def _span(m) -> str:
    """``" · 0:03.2-0:05.0"``: a video moment's time span, for its caption; ``""`` for a picture."""
    if m.t_start is None:
        return ""
    from facial_search.moments.decode import format_span

    return f" · {format_span(m.t_start, m.t_end)}"


def _ellipsis(text: str, width: int, size: int) -> str:
    font = _font(size)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def save_picture(
    results: SearchResult | Sequence[SearchResult], path: str | os.PathLike, *, redact: bool = False
) -> None:
    """Write the result sheet(s) (:func:`result_sheet`, stacked vertically for several query images) to ``path``,
    atomically, in the format its extension names (``.png``, ``.jpg``, ``.webp``: any Pillow writes).

    Raises:
        OutputError: an extension no Pillow writer knows, or ``path`` cannot be written (missing or read-only
            folder, full disk); no file is left at ``path`` then (an existing one is kept as it was).
    """
    path = Path(path)
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise OutputError(f"{path}: unknown picture extension {path.suffix!r} (.png, .jpg, .webp...)")
    results = [results] if isinstance(results, SearchResult) else list(results)
    sheets = [result_sheet(r, redact=redact) for r in results]
    out = Image.new("RGB", (max([s.width for s in sheets] + [400]), max(1, sum(s.height for s in sheets))), _BG)
    y = 0
    for s in sheets:
        out.paste(s, (0, y))
        y += s.height
    _write_atomic(path, lambda f: out.save(f, fmt))


def _data_uri(im: Image.Image, max_side: int = 480) -> str:
    im = im.copy()
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _annotated(rgb: np.ndarray, result: SearchResult) -> Image.Image:
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    lw = max(2, im.width // 200)
    for i, fm in enumerate(result.faces):
        x, y, w, h = fm.box
        d.rectangle([x, y, x + w, y + h], outline=_ACCENT, width=lw)
        d.text((x + lw, max(0, y - 28)), str(i + 1), fill=_ACCENT, font=_font(max(16, im.width // 40)))
    return im


@lru_cache(maxsize=1)
def _templates():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("facial_search", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def html_page(
    results: Sequence[SearchResult], title: str = "facial-search results", skipped: dict[str, str] | None = None
) -> str:
    """A self-contained HTML page (images inlined as JPEG data URIs) showing each query image, its faces and
    their matches, then the ``skipped`` files (``{path: reason}``). Every text is escaped.

    Markup the tests and scripts rely on: one ``<div class=face ...>`` per query face, one
    ``<figure class=match>`` per match."""
    pages = []
    for r in results:
        rgb = r.rgb if r.rgb is not None else load_image(r.image)
        faces = []
        for i, fm in enumerate(r.faces):
            matches = [
                {
                    "rank": m.rank,
                    "title": displayable(m.title),
                    "distance": float(m.distance),
                    "src": _data_uri(_meme(m.source, m.box, m.t_frame)),
                    "span": _span(m).lstrip(" ·"),
                }
                for m in fm.matches
            ]
            faces.append({"number": i + 1, "src": _data_uri(crop_box(rgb, fm.box)), "matches": matches})
        pages.append(
            {"name": displayable(Path(r.image).name), "src": _data_uri(_annotated(rgb, r), 900), "faces": faces}
        )
    shown_skips = [(displayable(Path(s).name), displayable(why)) for s, why in (skipped or {}).items()]
    return (
        _templates().get_template("results.html").render(title=displayable(title), results=pages, skipped=shown_skips)
    )


def save_html(results: SearchResult | Sequence[SearchResult], path: str | os.PathLike, **kw) -> None:
    """Write :func:`html_page` (UTF-8) to ``path`` atomically; ``kw`` goes to :func:`html_page`.

    Raises:
        OutputError: ``path`` cannot be written (missing or read-only folder, full disk); no file is left at
            ``path`` then (an existing one is kept as it was).
    """
    results = [results] if isinstance(results, SearchResult) else list(results)
    data = html_page(results, **kw).encode("utf-8")
    _write_atomic(Path(path), lambda f: f.write(data))


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a new temporary file beside ``path``, flush it to disk, rename it over ``path``.

    The temporary file is made with mode 0666 less the umask, as any new file (``mkstemp``'s 0600 would hide a
    page from a web server); a file it replaces keeps its mode. On any failure the temporary file is removed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
