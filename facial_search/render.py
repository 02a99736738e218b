"""Pictures of results: a PNG sheet (each query face beside its k memes) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from facial_search.io.images import load_image
from facial_search.pipeline import SearchResult

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
def _meme(source: str, box: tuple[int, int, int, int]) -> Image.Image:
    """A meme image with the matched face's box drawn on it."""
    try:
        im = Image.fromarray(load_image(source))
    except Exception:
        im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        ImageDraw.Draw(im).text((10, 10), "image missing", fill=(0, 0, 0), font=_font(16))
        return im
    d = ImageDraw.Draw(im)
    x, y, w, h = box
    d.rectangle([x, y, x + w, y + h], outline=_ACCENT, width=max(2, im.width // 150))
    return im


def result_sheet(result: SearchResult, *, redact: bool = False) -> Image.Image:
    """One row per query face: the face crop, then its matches (meme with the face boxed, title, distance).

    ``redact=True`` blurs the meme images (for pictures published where third-party images may not go)."""
    rgb = result.rgb if result.rgb is not None else load_image(result.image)
    rows = []
    for i, fm in enumerate(result.faces):
        tiles = [(_fit(crop_box(rgb, fm.box), THUMB), f"face {i + 1}", "query")]
        for m in fm.matches:
            tile = _fit(_meme(m.source, m.box), THUMB, max_width=THUMB * 2)
            if redact:
                tile = tile.filter(ImageFilter.GaussianBlur(radius=9))
            tiles.append((tile, f"#{m.rank} {m.title}", f"distance {m.distance:.3f}"))
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
    ImageDraw.Draw(sheet).text((_PAD, 8), Path(result.image).name, fill=(0, 0, 0), font=_font(20))
    y = title_h
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


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
    """Write the result sheet(s) as PNG or JPEG (stacked vertically for several query images)."""
    results = [results] if isinstance(results, SearchResult) else list(results)
    sheets = [result_sheet(r, redact=redact) for r in results]
    out = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)), _BG)
    y = 0
    for s in sheets:
        out.paste(s, (0, y))
        y += s.height
    out.save(path)


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


def html_page(
    results: Sequence[SearchResult], title: str = "facial-search results", skipped: dict[str, str] | None = None
) -> str:
    """A self-contained HTML page (images inlined) showing each query image, its faces and their matches."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}",
        "section{background:#fff;border-radius:12px;padding:1rem;margin:0 0 1.5rem;box-shadow:0 1px 4px #0002}",
        ".face{display:flex;gap:1rem;align-items:flex-start;flex-wrap:wrap;margin:1rem 0}",
        "figure{margin:0;max-width:260px}figure img{max-width:260px;max-height:220px;border-radius:8px;display:block}",
        "figure.q img{outline:3px solid #e63946}figcaption{font-size:.9rem;margin-top:.3rem}",
        ".d{color:#666}.query{max-width:100%;max-height:360px;border-radius:8px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for r in results:
        rgb = r.rgb if r.rgb is not None else load_image(r.image)
        parts.append(f"<section class=result><h2>{html.escape(Path(r.image).name)}</h2>")
        parts.append(f"<img class=query alt='query' src='{_data_uri(_annotated(rgb, r), 900)}'>")
        for i, fm in enumerate(r.faces):
            parts.append(
                f"<div class=face data-face={i + 1}><figure class=q><img alt='face {i + 1}' src='{_data_uri(crop_box(rgb, fm.box))}'>"
            )
            parts.append(f"<figcaption>face {i + 1}</figcaption></figure>")
            for m in fm.matches:
                parts.append(
                    f"<figure class=match><img alt='{html.escape(m.title)}' src='{_data_uri(_meme(m.source, m.box))}'>"
                    f"<figcaption>#{m.rank} <b>{html.escape(m.title)}</b><br><span class=d>distance {m.distance:.3f}</span>"
                    "</figcaption></figure>"
                )
            parts.append("</div>")
        parts.append("</section>")
    if skipped:
        parts.append("<section><h2>Skipped</h2><ul>")
        parts += [f"<li>{html.escape(Path(s).name)}: {html.escape(why)}</li>" for s, why in skipped.items()]
        parts.append("</ul></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def save_html(results: SearchResult | Sequence[SearchResult], path: str | os.PathLike, **kw) -> None:
    """Write :func:`html_page` to ``path``."""
    results = [results] if isinstance(results, SearchResult) else list(results)
    Path(path).write_text(html_page(results, **kw), encoding="utf-8")
