"""The API's routes (one :class:`fastapi.APIRouter`); the pool and settings come in by ``Depends``."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import weakref
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from facial_search.errors import EmbedderMismatchError, ImageError
from facial_search.explain import shared_blendshapes
from facial_search.web import export, ondevice
from facial_search.web.config import MAX_K, ServeConfig
from facial_search.web.pool import SearchPool
from facial_search.web.schemas import (
    MAX_VECTORS,
    NORM_TOLERANCE,
    ErrorDetail,
    Health,
    IndexExport,
    OnDeviceInfo,
    SearchDocument,
    VectorQuery,
)
from facial_search.web.uploads import read_image_field, safe_name, search_upload

try:  # optional: a faster JSON encoder for the vector API's answers, used where installed
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


# the two are ``async`` so that FastAPI calls them on the event loop: a sync dependency costs a trip through the
# thread pool on every request (measured: the vector API's largest cost after the search itself)
async def get_pool(request: Request) -> SearchPool:
    """The app's :class:`SearchPool` (made by the app's lifespan)."""
    return request.state.pool


async def get_config(request: Request) -> ServeConfig:
    """The app's :class:`ServeConfig` (limits)."""
    return request.app.state.config


def get_assets(request: Request) -> ondevice.OnDeviceAssets:
    """What the app can serve for on-device mode (:func:`facial_search.web.ondevice.find_assets`), found on the
    first request that asks and kept for the app's life."""
    state = request.app.state
    assets = getattr(state, "ondevice", None)
    if assets is None:
        assets = state.ondevice = ondevice.find_assets(request.state.pool.index.embedder, state.config.model_path)
    return assets


Pool = Annotated[SearchPool, Depends(get_pool)]
Config = Annotated[ServeConfig, Depends(get_config)]
Assets = Annotated[ondevice.OnDeviceAssets, Depends(get_assets)]
MemeId = Annotated[int, PathParam(ge=0, le=2**62, description="a match's `id`")]


class SearchForm(BaseModel):
    """The ``multipart/form-data`` body of ``POST /api/search``."""

    image: bytes = Field(description="a photo or camera frame (JPEG, PNG, WebP, GIF, ...), at most 10 MB")


def _err(description: str) -> dict:
    return {"model": ErrorDetail, "description": description}


@router.post(
    "/api/search",
    response_model=SearchDocument,
    response_model_exclude_unset=True,  # a picture's match has no moment keys (not null ones)
    summary="Top-k memes for every face in a photo",
    description=(
        "The `facial-search search --json --explain` document (each match's `explain`: the blendshapes both faces "
        "share most); `faces` is empty when no face is seen. Nothing is stored: "
        "the upload is read into memory, decoded, searched and dropped; the answer is sent `Cache-Control: "
        "no-store`."
    ),
    responses={
        408: _err("the body did not arrive within the body timeout (15 s by default)"),
        413: _err("upload over 10 MB, or an image of more pixels than the server decodes (16 Mpx; JPEGs up to "
                  "64 Mpx are decoded reduced)"),
        415: _err("not multipart/form-data, or the file is no image format"),
        422: _err("no `image` file, an empty, truncated or corrupt image, or a bad `k` / `all_faces`"),
        503: _err("every pipeline busy for 30 s"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": SearchForm.model_json_schema()}},
        }
    },
)  # fmt: skip
async def api_search(
    request: Request,
    pool: Pool,
    config: Config,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="matches per face")] = 3,
    all_faces: Annotated[
        bool, Query(description="the k nearest meme faces, even several of one meme (default: k different memes)")
    ] = False,
) -> dict:
    data, filename = await read_image_field(request, config.max_upload_bytes)
    try:
        return await run_in_threadpool(
            search_upload, pool, data, name=safe_name(filename), k=k, all_faces=all_faces, max_pixels=config.max_pixels
        )
    except TimeoutError:
        raise HTTPException(503, "server busy, try again") from None


def check_embedder_label(label: str, index_embedder) -> None:
    """Refuse vectors another embedder made than the index's (``label``: ``"<name> v<version>"``, optionally
    followed by ``" (<dim>-d)"``, the form of ``/healthz``).

    Raises:
        EmbedderMismatchError: another name, version or dimension (409).
    """
    ours = ondevice.embedder_label(index_embedder)
    if label.strip() not in (ours, str(index_embedder)):
        raise EmbedderMismatchError(
            f"vectors from embedder {label!r}, but the index was built with {ours!r}: embed with that model "
            "(GET /api/ondevice names it and /models/expression.onnx serves it), or send the photo to /api/search"
        )


def search_vectors(pool: SearchPool, query: VectorQuery) -> dict:
    """The search document of client-made embeddings (run in a worker thread); see :func:`api_search_vectors`.

    The document :meth:`facial_search.pipeline.SearchResult.to_json` makes, built directly: each match's file,
    face and title come from :meth:`SearchPool.match_fields` (read once per id), not a store lookup a match.

    Raises:
        HTTPException: 422 a vector of another dimension than the index's, or not unit-norm; ``boxes`` of
            another count than ``vectors``.
    """
    index = pool.index
    dim = int(index.embedder.dim)
    for i, v in enumerate(query.vectors):
        if len(v) != dim:
            raise HTTPException(422, f"vectors {i}: {len(v)} numbers; the index's embeddings have {dim}")
    q = np.asarray(query.vectors, dtype=np.float64)
    norms = np.linalg.norm(q, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise HTTPException(422, f"vectors {i}: L2 norm {norms[i]:.6g}, not unit-norm (within {NORM_TOLERANCE:g} of 1)")
    if query.boxes is not None and len(query.boxes) != len(query.vectors):
        raise HTTPException(422, f"boxes: {len(query.boxes)} boxes for {len(query.vectors)} vectors")
    if query.blendshapes is not None and len(query.blendshapes) != len(query.vectors):
        raise HTTPException(422, f"blendshapes: {len(query.blendshapes)} entries for {len(query.vectors)} vectors")
    q = (q / norms[:, None]).astype(np.float32)
    dist, ids = index.search(q, query.k, group_by_source=not query.all_faces)
    fields = pool.match_fields
    faces = []
    for f, (drow, irow) in enumerate(zip(dist.tolist(), ids.tolist(), strict=True)):
        matches = []
        mine = None if query.blendshapes is None or query.blendshapes[f] is None else np.asarray(query.blendshapes[f])
        for rank, (d, i) in enumerate(zip(drow, irow, strict=True), start=1):
            if i < 0:
                break
            source, face, title = fields(i)
            explain = None if mine is None else shared_blendshapes(mine, match_blendshapes(pool, i))
            matches.append({"rank": rank, "id": i, "source": source, "face": face, "title": title,
                            "distance": round(d, 6), "explain": explain} | match_moment(pool, i))  # fmt: skip
        box = list(query.boxes[f]) if query.boxes is not None else [0, 0, 0, 0]
        faces.append({"box": box, "matches": matches})
    return {"image": query.image, "faces": faces}


_BLENDSHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> {id: scores or None}
_MOMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> {id: moment keys}


def match_moment(pool: SearchPool, id: int) -> dict:
    """The moment keys of meme face ``id`` in a match (``t_start``, ``t_end``, ``t_frame``, ``track``: a video's
    moment, :meth:`facial_search.pipeline.Match.moment_json`; ``{}`` for a picture), read from the store on first
    use and kept per pool."""
    kept = _MOMENTS.setdefault(pool, {})
    got = kept.get(id)
    if got is None:
        e = pool.index.entry(id)
        t, t_frame, track = getattr(e, "t_start", None), getattr(e, "t_frame", None), getattr(e, "track", None)
        got = kept[id] = {} if t is None else {
            "t_start": round(float(t), 3), "t_end": round(float(e.t_end), 3),
            "t_frame": round(float(t if t_frame is None else t_frame), 3), "track": None if track is None else int(track),
        }  # fmt: skip
    return got


def match_blendshapes(pool: SearchPool, id: int) -> np.ndarray | None:
    """The stored ``(52,) float32`` blendshapes of meme face ``id`` (``None``: none stored), read from the store
    on first use and kept per pool (a served store only grows; ids are never reused)."""
    kept = _BLENDSHAPES.setdefault(pool, {})
    if id not in kept:
        kept[id] = pool.index.entry(id).blendshapes
    return kept[id]


def json_response(doc: dict) -> Response:
    """``doc`` as ``application/json``: encoded by orjson where it is installed (about 100x as fast as the
    standard library on a search document), else by :class:`JSONResponse`."""
    if orjson is None:
        return JSONResponse(doc)
    return Response(orjson.dumps(doc), media_type="application/json")


@router.post(
    "/api/search/vectors",
    response_model=SearchDocument,
    response_model_exclude_unset=True,  # a picture's match has no moment keys (not null ones)
    summary="Top-k memes for embeddings made on the client",
    description=(
        "The document of `POST /api/search` for faces the client found and embedded itself (the page's on-device "
        "mode: MediaPipe and the expression model in the browser), so that no picture leaves it. Each vector must "
        "come from the index's embedder (`GET /api/ondevice`: `embedder`, `model_url`), have the index's dimension "
        f"(64), be finite and unit-norm (L2 norm within {NORM_TOLERANCE:g} of 1); at most {MAX_VECTORS} a request. "
        "`box` is what `boxes` sent, else `[0, 0, 0, 0]`. With `blendshapes` (per vector, the face's 52 "
        "FaceLandmarker scores) each match's `explain` lists the blendshapes both faces share most, else it is "
        "null. Sent `Cache-Control: no-store`."
    ),
    responses={
        400: _err("a body that is not UTF-8 text"),
        409: _err("the vectors' embedder is not the index's (another model, version or dimension)"),
        422: _err(
            f"a vector of another dimension, NaN or infinite, not unit-norm; no vector or more than {MAX_VECTORS}; "
            "a bad `k` (1-10), `boxes` or `blendshapes` (not 52 finite scores in [0, 1], or another count than "
            "`vectors`); unknown fields; a body that is no JSON object"
        ),
    },
)
async def api_search_vectors(pool: Pool, query: VectorQuery) -> Response:
    check_embedder_label(query.embedder, pool.index.embedder)
    # the document is built as the CLI's: sent as it is, not validated a second time
    return json_response(await run_in_threadpool(search_vectors, pool, query))


@router.get(
    "/api/ondevice", summary="What the page needs to run the pipeline in the browser", response_model=OnDeviceInfo
)
def api_ondevice(assets: Assets) -> OnDeviceInfo:
    return OnDeviceInfo(
        available=assets.available,
        reason=assets.reason,
        embedder=assets.embedder,
        dim=assets.dim,
        input_size=48,
        landmarker_url=LANDMARKER_URL,
        model_url=EXPRESSION_URL,
        vendor_url=ondevice.VENDOR_URL,
        versions=assets.versions,
        max_vectors=MAX_VECTORS,
        max_k=MAX_K,
        norm_tolerance=NORM_TOLERANCE,
    )


#: Where the page loads the two models from.
LANDMARKER_URL = "/models/face_landmarker.task"
EXPRESSION_URL = "/models/expression.onnx"
MODEL_RESPONSES = {200: {"content": {"application/octet-stream": {}}}, 404: _err("not served by this server")}


@router.get(
    LANDMARKER_URL, summary="MediaPipe FaceLandmarker model", response_class=FileResponse, responses=MODEL_RESPONSES
)
def landmarker_model(assets: Assets):
    if assets.landmarker is None:
        raise HTTPException(404, "no landmarker model on this server")
    return FileResponse(assets.landmarker, media_type="application/octet-stream", headers={"Cache-Control": "no-cache"})


@router.get(
    EXPRESSION_URL,
    summary="The expression model of the index's embedder (ONNX)",
    response_class=FileResponse,
    responses=MODEL_RESPONSES,
)
def expression_model(assets: Assets):
    if assets.expression is None:
        raise HTTPException(404, f"no expression model for this index ({assets.reason})")
    return FileResponse(assets.expression, media_type="application/octet-stream", headers={"Cache-Control": "no-cache"})


def add_vendor_routes(app) -> int:
    """``GET /vendor/<name>`` for each installed file of :data:`facial_search.web.ondevice.VENDOR_FILES` (one
    route a file, no path parameter: nothing else under ``node_modules`` can be asked for); returns how many."""
    added = 0
    for name in ondevice.VENDOR_FILES:
        found = ondevice.vendor_file(name)
        if found is None:
            continue
        app.add_api_route(ondevice.VENDOR_URL + name, _file_route(*found), methods=["GET"], include_in_schema=False)
        added += 1
    return added


def _file_route(path: Path, media_type: str):
    def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})  # ETag revalidates

    return serve


def _meme_file(pool: SearchPool, meme_id: int) -> Path:
    """The image file of face ``meme_id`` (only files recorded in the index are ever served).

    Raises:
        HTTPException: 404 no such id, its file gone, or not an image file.
    """
    try:
        entry = pool.index.entry(meme_id)
    except KeyError:
        raise HTTPException(404, f"no meme with id {meme_id}") from None
    path = Path(entry.source)
    if not path.is_file():
        raise HTTPException(404, f"meme {meme_id}: image file missing on the server")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not media_type.startswith("image/"):
        raise HTTPException(404, f"meme {meme_id}: not an image file")
    return path


@router.get(
    "/api/memes/{meme_id}/image",
    summary="The image of an indexed meme face, by id",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/*": {}}, "description": "the meme's image file"},
        404: _err("no such id in the index, or its file is gone"),
        422: _err("the id is not an integer from 0 to 2**62"),
    },
)
def meme_image(pool: Pool, meme_id: MemeId):
    path = _meme_file(pool, meme_id)
    media_type = mimetypes.guess_type(path.name)[0]
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get(
    "/api/memes/{meme_id}/thumb",
    summary="A small JPEG of an indexed meme face's image, by id",
    description=(
        "The meme's image (a video moment's: its most typical frame), its longest side at most 256 px, JPEG; made "
        "once and kept. The page's private mode "
        "fetches every file's thumbnail (`GET /api/index/export`: `thumb_ids`) before it searches, so which "
        "meme matched is never asked for."
    ),
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"},
        404: _err("no such id in the index, or its file is gone or no longer an image"),
        422: _err("the id is not an integer from 0 to 2**62"),
    },
)
def meme_thumb(request: Request, pool: Pool, meme_id: MemeId) -> Response:
    still = moment_still(pool, meme_id)  # a video moment: its typical frame (private mode fetches every thumb)
    if still is not None:
        return _cached(request, still, "image/jpeg", "public, max-age=86400")
    path = _meme_file(pool, meme_id)
    try:
        data = export.thumbnail(path)
    except (OSError, ImageError):
        raise HTTPException(404, f"meme {meme_id}: its file can no longer be read as an image") from None
    return _cached(request, data, "image/jpeg", "public, max-age=86400")


def moment_still(pool: SearchPool, meme_id: int) -> bytes | None:
    """The thumbnail of a video moment: a JPEG of its ``t_frame``, at most 256 px (:func:`facial_search.clip.
    still_jpeg`); ``None`` when ``meme_id`` is a picture or no id.

    Raises:
        HTTPException: 404 the moment's video is gone or can no longer be decoded.
    """
    from facial_search import clip as clips
    from facial_search.errors import ClipError, InputNotFoundError, NotAMomentError, UnknownIdError

    try:
        moment = clips.moment_of(pool.index, meme_id)
    except (UnknownIdError, NotAMomentError):
        return None
    try:
        return clips.still_jpeg(moment.source, moment.t_frame, export.THUMB_SIDE, export.THUMB_QUALITY)
    except (InputNotFoundError, ClipError):
        raise HTTPException(404, f"meme {meme_id}: its video is missing or can no longer be read here") from None


#: Media types of the moment clips, by ``GET /api/memes/{id}/clip.<format>``.
CLIP_MEDIA_TYPES = {"gif": "image/gif", "mp4": "video/mp4"}


def moment_clip(pool: SearchPool, meme_id: int, fmt: str) -> Path:
    """The clip of moment ``meme_id`` (:func:`facial_search.clip.cached_clip`: cut on the first request, then
    kept in the user cache; run in a worker thread).

    Raises:
        HTTPException: 404 no such id, a picture (no moment), its video gone or no longer readable there.
    """
    from facial_search import clip as clips
    from facial_search.errors import ClipError, InputNotFoundError, NotAMomentError, UnknownIdError

    try:
        moment = clips.moment_of(pool.index, meme_id)
        return clips.cached_clip(moment.source, moment.t_start, moment.t_end, fmt)
    except UnknownIdError:
        raise HTTPException(404, f"no meme with id {meme_id}") from None
    except NotAMomentError:
        raise HTTPException(404, f"meme {meme_id}: a picture, not a video moment") from None
    except (InputNotFoundError, ClipError):
        raise HTTPException(404, f"meme {meme_id}: its video is missing or can no longer be cut here") from None


@router.get(
    "/api/memes/{meme_id}/clip.{fmt}",
    summary="A video moment as a GIF or an MP4 clip, by id",
    description=(
        "The moment of a video match (`t_start`..`t_end`, 0.3 s added either side) cut from its video: `clip.gif` "
        "a looping GIF (one palette, at most 480 px wide and 5 MB), `clip.mp4` H.264 (`facial-search clip`). Cut "
        "on the first request (about a second for a few seconds of 640x360), then kept in the user cache."
    ),
    response_class=FileResponse,
    responses={
        200: {"content": {"image/gif": {}, "video/mp4": {}}, "description": "the clip"},
        404: _err("no such id, a picture (no moment), or its video is gone or can no longer be cut"),
        422: _err("the id is not an integer from 0 to 2**62, or the format is not gif or mp4"),
    },
)
async def meme_clip(pool: Pool, meme_id: MemeId, fmt: Annotated[Literal["gif", "mp4"], PathParam()]):
    path = await run_in_threadpool(moment_clip, pool, meme_id, fmt)
    return FileResponse(path, media_type=CLIP_MEDIA_TYPES[fmt], headers={"Cache-Control": "public, max-age=86400"})


def _cached(
    request: Request, body: bytes, media_type: str, cache_control: str, encoding: str | None = None
) -> Response:
    """``body`` with a strong ETag (its sha256), or 304 when the request's ``If-None-Match`` has it.

    ``encoding``: the content coding ``body`` is in (``"gzip"``: sent as ``Content-Encoding``; each coding its
    own ETag, as the bytes differ), for a route that answers by ``Accept-Encoding`` (``Vary``)."""
    tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": tag, "Cache-Control": cache_control}
    if encoding is not None:
        headers["Vary"] = "Accept-Encoding"
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def accepts_gzip(request: Request) -> bool:
    """Whether the request's ``Accept-Encoding`` takes gzip: ``gzip`` (or ``x-gzip``), else ``*``, at a q above 0."""
    found: dict[str, bool] = {}
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = params.strip().lower().removeprefix("q=").strip()
        try:
            found[coding] = not q or float(q) > 0
        except ValueError:
            found[coding] = False
    return found.get("gzip", found.get("x-gzip", found.get("*", False)))


def export_body(request: Request, pool: SearchPool) -> tuple[bytes, bytes]:
    """The encoded export document of the app's index and its gzip (level 9, no timestamp: the same bytes each
    time), built on the first request (in a worker thread) and kept while the index has as many faces (the
    server serves it read-only)."""
    state = request.app.state
    kept = getattr(state, "export", None)
    if kept is None or kept[0] != pool.index.ntotal:
        label = ondevice.embedder_label(pool.index.embedder)
        body = export.encode(export.build_export(pool.index, label))
        kept = state.export = (pool.index.ntotal, body, gzip.compress(body, compresslevel=9, mtime=0))
    return kept[1], kept[2]


@router.get(
    "/api/index/export",
    response_model=IndexExport,
    summary="The whole index, for the page's private mode",
    description=(
        "Every face's embedding (base64 float32), id, picture group, face number, file and title, columnar: "
        "the page fetches it once and then searches on the device itself (exact Euclidean top-k, one answer per "
        "picture: the answers of `POST /api/search/vectors`), so no embedding leaves it. About 0.6 MB for the "
        "1,365 faces of the imgflip templates. Thumbnails: `thumb_url` with each of `thumb_ids`. Sent with an "
        "ETag (`If-None-Match` gets 304) and `Cache-Control: no-cache`; gzip-compressed (`Content-Encoding: gzip`, "
        "compressed once and kept) where `Accept-Encoding` takes it: about a third smaller."
    ),
    responses={
        304: {"description": "the copy the client holds (its `If-None-Match`) is current"},
        501: _err("this index cannot be exported: a backend that gives out no embeddings, or over 100,000 faces"),
    },
)
async def api_index_export(request: Request, pool: Pool) -> Response:
    body, gz = await run_in_threadpool(export_body, request, pool)
    if accepts_gzip(request):
        return _cached(request, gz, "application/json", "no-cache", encoding="gzip")
    return _cached(request, body, "application/json", "no-cache", encoding="identity")


@router.get("/healthz", summary="Liveness and what is loaded", response_model=Health)
def healthz(pool: Pool) -> Health:
    return Health(status="ok", faces=len(pool.index), embedder=pool.embedder, workers=pool.size)


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
