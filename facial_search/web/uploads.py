"""An upload, from the multipart body to the search document: parsed by Starlette (python-multipart) with
limits, decoded within a pixel bound, searched by a pipeline of the pool."""

from __future__ import annotations

from fastapi import HTTPException, Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from facial_search.io.images import load_image_reduced
from facial_search.web.pool import SearchPool

#: The form's field of the photo.
FIELD = "image"
#: Most form fields besides the file, and bytes of each (browsers send the file alone).
MAX_FIELDS = 8
MAX_FIELD_BYTES = 16 * 1024


async def read_image_field(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and client file name of the multipart field ``image``, kept in memory (never spooled to disk).

    Raises:
        HTTPException: 415 not ``multipart/form-data``; 413 a file over ``max_bytes``; 422 a malformed form,
        more than one file, or no (or an empty) ``image`` file.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(415, f"send the photo as multipart/form-data, in the field '{FIELD}'")
    parser = MultiPartParser(
        request.headers, request.stream(), max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
    )
    parser.spool_max_size = max_bytes + 1  # this parser's files stay in memory: nothing of an upload is stored
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise HTTPException(422, f"malformed multipart form: {e}") from None
    try:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"no '{FIELD}' file in the form: send the photo as multipart field '{FIELD}'")
        if upload.size is not None and upload.size > max_bytes:
            raise HTTPException(413, f"upload too large: over {max_bytes // (1024 * 1024)} MB")
        data = await upload.read()
        if not data:
            raise HTTPException(422, f"the '{FIELD}' file is empty")
        return data, upload.filename
    finally:
        await form.close()


def safe_name(filename: str | None) -> str:
    """The client's file name reduced to a printable base name of at most 200 characters (``<upload>``)."""
    if not filename:
        return "<upload>"
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:200] or "<upload>"


def search_upload(pool: SearchPool, data: bytes, *, name: str, k: int, all_faces: bool, max_pixels: int) -> dict:
    """The search document of an upload (run in a worker thread): decoded inside the pipeline's checkout, so
    at most ``pool.size`` decoded images (each at most ``max_pixels``) exist at once; a JPEG over
    ``max_pixels`` is decoded reduced, and its face boxes scaled back to the upload's pixels.

    Raises:
        ImageError (NotAnImageError, ImageTooLargeError, ImageDecodeError): the upload cannot be used.
        TimeoutError: no pipeline freed up in time.
    """
    with pool.checkout() as fs:
        rgb, factor = load_image_reduced(data, max_pixels=max_pixels, shrink=True, name=name)
        faces = fs.pipeline.faces(rgb)
        doc = fs.search_faces(rgb, faces, k=k, name=name, group_by_source=not all_faces).to_json(explain=True)
    if factor != 1:
        for face in doc["faces"]:
            face["box"] = [v * factor for v in face["box"]]
    return doc
