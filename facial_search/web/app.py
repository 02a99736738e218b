"""The web app: a phone-ready page that finds your meme from the browser camera or a photo, and its API.

``facial-search serve --index memes.fsindex`` (:func:`facial_search.web.serve`) runs it with uvicorn,
loopback by default. :func:`create_app` builds it: the routes are one ``APIRouter``
(:mod:`facial_search.web.routes`), the :class:`~facial_search.web.pool.SearchPool` is made in the app's
``lifespan`` and handed to the routes by ``Depends``; every answer is a pydantic model
(:mod:`facial_search.web.schemas`), so ``/openapi.json`` is generated.

Routes (every GET route answers HEAD too):

- ``GET /``: the page (``static/``: plain HTML, CSS and JS, no build step). On-device mode (the default where
  WebAssembly and the models load: ``static/ondevice.js``) finds and embeds the faces in the browser and sends
  only their embeddings and blendshape scores (which explain each match: ``static/explain.js``) to
  ``POST /api/search/vectors``; otherwise the camera's frames, downscaled to about
  320 px JPEG, go to ``POST /api/search`` several times a second, one request in flight at most.
- ``POST /api/search`` (multipart field ``image``; query ``k``, 1-10, default 3, and ``all_faces``, default
  false: k different memes): the ``facial-search search --json`` document (face boxes in the upload's
  pixels). A photo with no face is not an error here: 200 with ``"faces": []``.
- ``POST /api/search/vectors`` (JSON ``{"vectors": [[64 floats], ...], "k": 3, "embedder": "expression v3+..."}``):
  the same document for faces found and embedded in the browser (on-device mode): no picture is sent. 409 an
  embedder that is not the index's; 422 a vector of another dimension, NaN or infinite, not unit-norm (norm
  within 1e-3 of 1), more than 16 vectors, a bad ``k``.
- ``GET /api/ondevice``: whether the page can run the pipeline in the browser, and the embedder and URLs it
  needs; ``GET /models/face_landmarker.task``, ``GET /models/expression.onnx``: the two models;
  ``GET /vendor/...``: the npm packages' files (``@mediapipe/tasks-vision``, ``onnxruntime-web``; see
  :mod:`facial_search.web.ondevice`), never a CDN.
- ``GET /api/memes/{id}/image``: the image of an indexed meme face, by its id only (404 unknown id, 422 not
  an int): only files recorded in the index are ever served; ``GET /api/memes/{id}/thumb``: a JPEG of it, at
  most 256 px (:func:`facial_search.web.export.thumbnail`, made once, kept).
- ``GET /api/index/export``: the whole index for the page's private mode, which then searches on the device
  (:mod:`facial_search.web.export`), gzip-compressed where the client takes it (compressed once, kept); 501 for
  a backend that gives out no embeddings.
- ``GET /manifest.webmanifest``, ``GET /icons/...``, ``GET /sw.js``: the installable web app and its service
  worker, which keeps the page, the models and (private mode) the index for offline use (:mod:`facial_search.web.pwa`).
- ``GET /healthz``; ``GET /docs`` (Swagger UI, its files served by us from the ``swagger-ui-bundle``
  package under ``/docs-assets/``: it works offline); ``GET /openapi.json``.

Status codes follow from the error's type (:data:`ERROR_STATUS`), never its message:

- 413 a body over :data:`~facial_search.web.config.MAX_UPLOAD_BYTES` (10 MB, counted as it streams in,
  whatever ``Content-Length`` says), or an image of more than ``max_pixels`` (16 Mpx) once decoded
  (:class:`~facial_search.errors.ImageTooLargeError`): a JPEG up to 64 Mpx is decoded at 1/2..1/8 scale
  instead, any other format is refused from its header;
- 415 not ``multipart/form-data``, or no image format (:class:`~facial_search.errors.NotAnImageError`);
- 409 vectors from another embedder than the index's (:class:`~facial_search.errors.EmbedderMismatchError`);
- 501 an index that cannot be exported for private mode (:class:`~facial_search.errors.IndexExportError`);
- 422 an empty, truncated or corrupt image (:class:`~facial_search.errors.ImageDecodeError`), a missing
  ``image`` file, a malformed form, a bad query parameter;
- 408 a body not in within ``body_timeout`` (15 s) of the request's start (the connection is closed);
- 503 every pipeline busy for 30 s.

Every error is ``{"detail": "<one line>"}``. Every answer has ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy (the page's and the docs' allow only our own
files, and ``'wasm-unsafe-eval'`` for the page's WebAssembly); answers of ``POST /api/search`` and
``POST /api/search/vectors``, errors included, are ``Cache-Control: no-store``.

Memory: a body is at most 10 MB; an upload is decoded inside a pipeline's checkout, so at most ``workers``
decoded images (each at most 16 Mpx, 48 MB as RGB) exist at once. Neither frames nor uploads are stored: the
body is read into memory, decoded, searched and dropped.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from contextlib import asynccontextmanager
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from facial_search import __version__
from facial_search.errors import (
    EmbedderMismatchError,
    FacialSearchError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    IndexExportError,
    NoFaceError,
    NotAnImageError,
    OptionError,
)
from facial_search.web import pwa
from facial_search.web.config import ENVELOPE_BYTES, ServeConfig
from facial_search.web.middleware import BodyGuard, HeadAsGet, SecurityHeaders, docs_csp, security_headers
from facial_search.web.pool import SearchPool
from facial_search.web.routes import STATIC_DIR, add_vendor_routes, router

#: HTTP status of each error class a request can raise (the nearest class in the error's MRO wins).
ERROR_STATUS: dict[type[Exception], int] = {
    NotAnImageError: 415,
    ImageTooLargeError: 413,
    ImageDecodeError: 422,
    ImageError: 422,
    NoFaceError: 422,
    OptionError: 422,
    EmbedderMismatchError: 409,
    IndexExportError: 501,
}

#: Swagger UI's files, from the ``swagger-ui-bundle`` package: the only ones ``/docs-assets/`` serves.
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
}
DOCS_ASSETS = "/docs-assets"


def status_for(exc: BaseException) -> int:
    """The HTTP status of ``exc`` from its type (:data:`ERROR_STATUS`); 500 for any other."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def create_app(config: ServeConfig | str | os.PathLike | None = None, *, pool: SearchPool | None = None) -> FastAPI:
    """The FastAPI app.

    Args:
        config: a :class:`ServeConfig`, or just the index's path (every other setting at its default).
        pool: serve this already-built pool (its owner closes it) instead of making one from ``config`` in
            the app's lifespan (and closing it at shutdown). One of ``config`` and ``pool`` is needed.

    The pool is built when the app starts (``with TestClient(app)``, or uvicorn's lifespan), not here.
    """
    if config is None:
        if pool is None:
            raise ValueError("create_app needs a config (or an index path) or a pool")
        config = ServeConfig(index=pool.index_path)
    elif not isinstance(config, ServeConfig):
        config = ServeConfig(index=config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if pool is not None:
            yield {"pool": pool}
            return
        made = await run_in_threadpool(
            SearchPool, config.index, config.workers, embedder=config.embedder, model_path=config.model_path
        )
        try:
            yield {"pool": made}
        finally:
            made.close()

    app = FastAPI(
        title="facial-search",
        version=__version__,
        description=(
            "Find the memes whose facial expression matches yours. The page at `/` finds and embeds faces in the "
            "browser and sends the embeddings to `POST /api/search/vectors` (or, where it cannot, camera frames "
            "and photos to `POST /api/search`); meme images come from `GET /api/memes/{id}/image`. Errors are "
            '`{"detail": "<one line>"}`.'
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # swagger-ui-bundle ships Swagger UI 4, which renders OpenAPI 3.0 only; our models use nothing of 3.1's
    app.openapi_version = "3.0.3"
    app.state.config = config
    app.include_router(router)
    app.include_router(pwa.router)  # the manifest, the icons, the service worker
    add_vendor_routes(app)  # the npm packages' files the on-device page loads, where installed
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    docs_html = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title="facial-search API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    ).body
    inline = re.findall(rb"<script>(.*?)</script>", docs_html, flags=re.S)
    policy = docs_csp(" ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline))

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Cache-Control": "no-cache"})

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        if name not in SWAGGER_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(
            SWAGGER_DIR / name, media_type=SWAGGER_FILES[name], headers={"Cache-Control": "public, max-age=86400"}
        )

    @app.exception_handler(FacialSearchError)
    async def facial_search_error(request: Request, exc: FacialSearchError) -> JSONResponse:
        status = status_for(exc)
        return JSONResponse({"detail": str(exc) if status != 500 else "internal error"}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        lines = []
        errors = exc.errors()
        for e in errors[:3]:  # one line: a vector of 64 NaNs is 64 errors
            where = " ".join(str(p) for p in e.get("loc", ()))
            lines.append(f"{where}: {e.get('msg', 'invalid')}")
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return JSONResponse({"detail": ("; ".join(lines) or "invalid request") + more}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # sent by Starlette's outermost middleware, past ours: the security headers are set here
        headers = security_headers(request.url.path, policy)
        return JSONResponse({"detail": "internal error"}, status_code=500, headers=headers)

    app.add_middleware(BodyGuard, max_bytes=config.max_upload_bytes + ENVELOPE_BYTES, timeout=config.body_timeout)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders, docs_policy=policy)
    return app
