"""The web app: a phone-ready page that finds your meme from the browser camera or a photo, and its API.

``facial-search serve --index memes.fsindex`` starts it (FastAPI + uvicorn, loopback by default):

- ``GET /``: the page (``static/``: plain HTML, CSS and JS, no build step). The camera's frames, downscaled
  to about 320 px JPEG, go to ``POST /api/search`` several times a second, one request in flight at most.
- ``POST /api/search`` (multipart field ``image``; query ``k``, default 3, and ``all_faces``, default false:
  k different memes): the ``facial-search search --json`` document. A photo
  with no face is not an error here: 200 with ``"faces": []`` (the page says "no face seen"), unlike the CLI,
  which exits 1. Uploads over :data:`MAX_UPLOAD_BYTES` get 413 (counted while reading, whatever
  ``Content-Length`` says); a request that is not ``multipart/form-data`` or a file that is not an image
  gets 415; a truncated image, a decompression bomb or a missing ``image`` field get 422, with a message.
- ``GET /api/memes/{id}/image``: the image of an indexed meme face, by its id only (404 unknown id, 422 not
  an int): only files recorded in the index are ever served.
- ``GET /healthz``; ``GET /docs`` (OpenAPI).

Neither frames nor uploads are stored: the body is read into memory, decoded, searched and dropped.

Concurrency: a MediaPipe landmarker (and an embedder) must not be used by two threads at once, so the app
holds a :class:`SearchPool` of ``workers`` pipelines sharing one loaded :class:`~facial_search.index.MemeIndex`
(read-only while serving); each request checks one out in FastAPI's thread pool and gives it back.
"""

from __future__ import annotations

import contextlib
import mimetypes
import queue
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from facial_search import __version__
from facial_search.errors import ImageError
from facial_search.io.images import load_image

#: Largest upload accepted by ``POST /api/search``, bytes (10 MB).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Room for the multipart envelope (boundaries, part headers) on top of the image itself.
_ENVELOPE_BYTES = 64 * 1024
#: Most matches per face a client can ask for.
MAX_K = 10
#: Seconds a request waits for a free pipeline before it gets 503.
CHECKOUT_TIMEOUT = 30.0

STATIC_DIR = Path(__file__).resolve().parent / "static"


class SearchPool:
    """``size`` :class:`~facial_search.pipeline.FacialSearch` objects sharing one loaded index.

    Each owns its own landmarker and embedder; :meth:`checkout` lends one to a single thread at a time.
    """

    def __init__(self, index_path, size: int | None = None, *, embedder=None, model_path=None):
        from facial_search.parallel import default_workers
        from facial_search.pipeline import FacialSearch, Pipeline

        self._closed = False
        size = max(1, int(size or default_workers()))
        first = FacialSearch.open(index_path, embedder=embedder, model_path=model_path)
        self.index = first.index
        self.index.source_groups()  # the picture groups every search uses: found once, here, not in a request
        self.index_path = str(index_path)
        self.size = size
        self._all = [first]
        try:
            for _ in range(size - 1):
                pipe = Pipeline(embedder=first.pipeline.embedder.name, model_path=model_path)
                self._all.append(FacialSearch(self.index, pipe, self.index_path))
        except BaseException:
            self.close()
            raise
        self._free: queue.Queue = queue.Queue()
        for fs in self._all:
            self._free.put(fs)

    @property
    def embedder(self) -> str:
        return str(self.index.embedder)

    @contextlib.contextmanager
    def checkout(self, timeout: float | None = CHECKOUT_TIMEOUT) -> Iterator:
        """A free pipeline for this thread; ``TimeoutError`` if none frees up within ``timeout`` seconds."""
        try:
            fs = self._free.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("all pipelines busy") from None
        try:
            yield fs
        finally:
            self._free.put(fs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fs in self._all:
            with contextlib.suppress(Exception):
                fs.close()


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _read_image_part(request, limit: int = MAX_UPLOAD_BYTES) -> tuple[bytes, str | None]:
    """The bytes and file name of the multipart field ``image``, parsed in memory while the body streams in;
    the image (and the whole body) are capped while reading, not from ``Content-Length``."""
    from python_multipart import MultipartParser
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise _HTTPError(415, "send the photo as multipart/form-data, in the field 'image'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _ENVELOPE_BYTES:
        raise _HTTPError(413, f"upload too large: over {limit // (1024 * 1024)} MB")

    parts: list[dict] = []
    state = {"field": b"", "value": b"", "headers": {}, "data": None, "too_big": False}

    def on_part_begin():
        state["headers"] = {}
        state["data"] = bytearray()

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        buf = state["data"]
        if len(buf) + (end - start) > limit:
            state["too_big"] = True
            return
        buf += data[start:end]

    def on_part_end():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        parts.append(
            {
                "name": name,
                "filename": filename.decode("utf-8", "replace") if filename is not None else None,
                "data": bytes(state["data"]) if name == "image" else b"",
            }
        )
        state["data"] = bytearray()

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + _ENVELOPE_BYTES or state["too_big"]:
                raise _HTTPError(413, f"upload too large: over {limit // (1024 * 1024)} MB")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise _HTTPError(422, f"malformed multipart body: {e}") from None
    if state["too_big"]:
        raise _HTTPError(413, f"upload too large: over {limit // (1024 * 1024)} MB")
    for p in parts:
        if p["name"] == "image":
            return p["data"], p["filename"]
    raise _HTTPError(422, "no 'image' field in the form: send the photo as multipart field 'image'")


def _image_error(e: ImageError) -> _HTTPError:
    """415 for data that is not an image at all, 422 for an image we refuse or cannot decode."""
    msg = str(e).split(": ", 1)[-1]
    if "not an image" in msg:
        return _HTTPError(415, msg)
    return _HTTPError(422, msg)


def _safe_name(filename: str | None) -> str:
    if not filename:
        return "<upload>"
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:200] or "<upload>"


def create_app(index_path=None, *, pool: SearchPool | None = None, workers: int | None = None, embedder=None,
               model_path=None):  # fmt: skip
    """The FastAPI app over ``pool`` (or a new :class:`SearchPool` on ``index_path``); the pool is closed
    when the app shuts down."""
    if pool is None:
        if index_path is None:
            raise ValueError("create_app needs index_path or pool")
        pool = SearchPool(index_path, workers, embedder=embedder, model_path=model_path)

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(
        title="facial-search",
        version=__version__,
        description=(
            "Find the memes whose facial expression matches yours. The page at `/` sends camera frames or a "
            "photo to `POST /api/search`; meme images come from `GET /api/memes/{id}/image`."
        ),
        lifespan=lifespan,
    )
    app.state.pool = pool

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path == "/" or request.url.path.startswith("/static/"):
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
                "base-uri 'none'; frame-ancestors 'none'",
            )
            response.headers.setdefault("Permissions-Policy", "camera=(self), microphone=()")
        return response

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    def run_search(data: bytes, k: int, name: str, all_faces: bool) -> dict:
        with pool.checkout() as fs:  # decode inside the checkout too: at most `workers` decodes in memory
            rgb = load_image(data)
            faces = fs.pipeline.faces(rgb)
            return fs.search_faces(rgb, faces, k=k, name=name, group_by_source=not all_faces).to_json()

    search_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {
                                "type": "string",
                                "format": "binary",
                                "description": f"a photo or camera frame (JPEG, PNG, WebP, GIF, ...), at most "
                                f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB",
                            }
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "the `facial-search search --json` document; `faces` is empty when no face is seen",
                "content": {
                    "application/json": {
                        "example": {
                            "image": "me.jpg",
                            "faces": [
                                {
                                    "box": [120, 80, 200, 210],
                                    "matches": [
                                        {
                                            "rank": 1,
                                            "id": 17,
                                            "source": "/memes/Success-Kid.jpg",
                                            "face": 0,
                                            "title": "Success Kid",
                                            "distance": 0.21,
                                        },  # fmt: skip
                                    ],
                                }
                            ],
                        }
                    }
                },
            },
            "413": {"description": "upload over 10 MB"},
            "415": {"description": "not multipart/form-data, or the file is not an image"},
            "422": {"description": "no `image` field, a truncated image, or a decompression bomb"},
            "503": {"description": "every pipeline busy for 30 s"},
        },
    }

    @app.post("/api/search", openapi_extra=search_doc, summary="Top-k memes for every face in a photo")
    async def api_search(
        request: Request,
        k: int = Query(3, ge=1, le=MAX_K, description="matches per face"),
        all_faces: bool = Query(
            False, description="the k nearest meme faces, even several of one meme (default: k different memes)"
        ),
    ):
        try:
            data, filename = await _read_image_part(request)
            if not data:
                raise _HTTPError(422, "the 'image' field is empty")
            try:
                return await run_in_threadpool(run_search, data, k, _safe_name(filename), all_faces)
            except ImageError as e:
                raise _image_error(e) from None
            except TimeoutError:
                raise _HTTPError(503, "server busy, try again") from None
        except _HTTPError as e:
            return error(e.status, e.detail)

    @app.get(
        "/api/memes/{meme_id}/image",
        summary="The image of an indexed meme face, by id",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such id in the index"}},
    )
    def meme_image(meme_id: int = PathParam(..., ge=0, le=2**62, description="a match's `id`")):
        try:
            entry = pool.index.entry(meme_id)
        except KeyError:
            return error(404, f"no meme with id {meme_id}")
        path = Path(entry.source)
        if not path.is_file():
            return error(404, f"meme {meme_id}: image file missing on the server")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not media_type.startswith("image/"):
            return error(404, f"meme {meme_id}: not an image file")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/healthz", summary="Liveness and what is loaded")
    def healthz():
        return {"status": "ok", "faces": len(pool.index), "embedder": pool.embedder, "workers": pool.size}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(args) -> int:
    """``facial-search serve``: build the pool, print the URL, run uvicorn until interrupted."""
    import uvicorn

    if args.workers is not None and args.workers < 1:
        raise SystemExit("facial-search: error: --workers must be >= 1")
    pool = SearchPool(args.index, args.workers, embedder=args.embedder, model_path=args.model)
    app = create_app(pool=pool)
    host, port = args.host, args.port
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(
        f"facial-search {__version__}: {len(pool.index)} meme faces from {args.index}, {pool.size} pipelines\n"
        f"open http://{shown}:{port}/  (API docs: http://{shown}:{port}/docs)  - Ctrl+C to stop",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"listening on {host}: other machines can reach it; phones need HTTPS (or localhost) for the camera",
            file=sys.stderr,
        )
    kwargs = {}
    certfile, keyfile = getattr(args, "certfile", None), getattr(args, "keyfile", None)
    if certfile:
        kwargs.update(ssl_certfile=certfile, ssl_keyfile=keyfile)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", **kwargs)
    finally:
        pool.close()
    return 0
