"""The page as an installable web app: its manifest, its icons (drawn here with Pillow) and its service worker.

- ``GET /manifest.webmanifest``: :data:`MANIFEST` (name, icons, ``start_url``, ``display: standalone``, the
  theme colour), what Chromium's installability check reads;
- ``GET /icons/icon-192.png``, ``icon-512.png``, ``icon-maskable-512.png``: :func:`icon_png`, drawn on first
  request and kept (no binary file in the repository);
- ``GET /sw.js``: ``static/sw.js``, the service worker (scope ``/``). It keeps the app shell, the npm packages'
  files, the models, ``/api/ondevice`` and, once private mode fetched them, the index export and the
  thumbnails in the browser's Cache Storage: network first, the cache when the server cannot be reached, so
  the page opens and private mode searches offline. Answers about a face (``POST``) never go through it.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page's colours (``static/style.css``: ``--bg``, ``--accent``).
BACKGROUND = "#15171c"
ACCENT = "#ffcc33"
#: ``/icons/<name>`` -> (side in pixels, maskable: the face kept inside the 80 % safe zone).
ICONS: dict[str, tuple[int, bool]] = {
    "icon-192.png": (192, False),
    "icon-512.png": (512, False),
    "icon-maskable-512.png": (512, True),
}
MANIFEST = {
    "id": "/",
    "name": "facial-search: find your meme",
    "short_name": "facial-search",
    "description": "Make a face, find the meme: the faces are found and matched on this device.",
    "start_url": "/",
    "scope": "/",
    "display": "standalone",
    "background_color": BACKGROUND,
    "theme_color": BACKGROUND,
    "icons": [
        {"src": "/icons/" + name, "sizes": f"{side}x{side}", "type": "image/png", "purpose": "maskable" if m else "any"}
        for name, (side, m) in ICONS.items()
    ],
}

router = APIRouter()


@functools.lru_cache(maxsize=len(ICONS))
def icon_png(side: int, maskable: bool = False) -> bytes:
    """The app's icon, ``side`` x ``side`` pixels, as PNG bytes: a yellow face on the page's dark ground, drawn
    at 4x and downscaled (smooth edges). ``maskable``: a full-bleed square with the face within the central 80 %
    (what a launcher may crop to a circle); else a rounded square."""
    from PIL import Image, ImageDraw

    s = side * 4
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    if maskable:
        d.rectangle((0, 0, s, s), fill=BACKGROUND)
        r = s * 0.30
    else:
        d.rounded_rectangle((0, 0, s - 1, s - 1), radius=s * 0.22, fill=BACKGROUND)
        r = s * 0.38
    c = s / 2
    d.ellipse((c - r, c - r, c + r, c + r), fill=ACCENT)
    eye = r * 0.13
    for dx in (-0.36, 0.36):  # the eyes
        ex, ey = c + dx * r, c - 0.22 * r
        d.ellipse((ex - eye, ey - eye * 1.3, ex + eye, ey + eye * 1.3), fill=BACKGROUND)
    # a wide open grin, the expression the app is about
    d.chord((c - 0.58 * r, c - 0.25 * r, c + 0.58 * r, c + 0.62 * r), 0, 180, fill=BACKGROUND)
    img = img.resize((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


@router.get("/manifest.webmanifest", include_in_schema=False)
def manifest() -> JSONResponse:
    return JSONResponse(MANIFEST, media_type="application/manifest+json", headers={"Cache-Control": "no-cache"})


def _icon_route(side: int, maskable: bool):
    def icon() -> Response:
        return Response(
            icon_png(side, maskable), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"}
        )

    return icon


for _name, _spec in ICONS.items():  # one route an icon, no path parameter: nothing else under /icons/
    router.add_api_route("/icons/" + _name, _icon_route(*_spec), methods=["GET"], include_in_schema=False)


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> FileResponse:
    # no-cache: the browser checks for a new worker on every visit (ETag revalidates)
    return FileResponse(
        STATIC_DIR / "sw.js",
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"},
    )
