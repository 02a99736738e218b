"""The API's routes (one :class:`fastapi.APIRouter`); the pool and settings come in by ``Depends``."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from facial_search.web.config import MAX_K, ServeConfig
from facial_search.web.pool import SearchPool
from facial_search.web.schemas import ErrorDetail, Health, SearchDocument
from facial_search.web.uploads import read_image_field, safe_name, search_upload

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()


def get_pool(request: Request) -> SearchPool:
    """The app's :class:`SearchPool` (made by the app's lifespan)."""
    return request.state.pool


def get_config(request: Request) -> ServeConfig:
    """The app's :class:`ServeConfig` (limits)."""
    return request.app.state.config


Pool = Annotated[SearchPool, Depends(get_pool)]
Config = Annotated[ServeConfig, Depends(get_config)]


class SearchForm(BaseModel):
    """The ``multipart/form-data`` body of ``POST /api/search``."""

    image: bytes = Field(description="a photo or camera frame (JPEG, PNG, WebP, GIF, ...), at most 10 MB")


def _err(description: str) -> dict:
    return {"model": ErrorDetail, "description": description}


@router.post(
    "/api/search",
    response_model=SearchDocument,
    summary="Top-k memes for every face in a photo",
    description=(
        "The `facial-search search --json` document; `faces` is empty when no face is seen. Nothing is stored: "
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
def meme_image(pool: Pool, meme_id: Annotated[int, PathParam(ge=0, le=2**62, description="a match's `id`")]):
    try:
        entry = pool.index.entry(meme_id)
    except KeyError:
        raise HTTPException(404, f"no meme with id {meme_id}") from None
    path = Path(entry.source)  # only files recorded in the index are ever served
    if not path.is_file():
        raise HTTPException(404, f"meme {meme_id}: image file missing on the server")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not media_type.startswith("image/"):
        raise HTTPException(404, f"meme {meme_id}: not an image file")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/healthz", summary="Liveness and what is loaded", response_model=Health)
def healthz(pool: Pool) -> Health:
    return Health(status="ok", faces=len(pool.index), embedder=pool.embedder, workers=pool.size)


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
