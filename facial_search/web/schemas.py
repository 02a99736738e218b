"""The API's documents as pydantic models: what ``/openapi.json`` describes and what the routes return."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from facial_search.web.config import MAX_K


class SharedBlendshape(BaseModel):
    """A blendshape both faces show (:func:`facial_search.explain.shared_blendshapes`)."""

    model_config = ConfigDict(extra="forbid")

    blendshape: str = Field(description="its MediaPipe name, e.g. `jawOpen`")
    query: float = Field(ge=0, le=1, description="its score on the query face, 3 decimals")
    match: float = Field(ge=0, le=1, description="its score on the meme face, 3 decimals")


class MatchOut(BaseModel):
    """One meme face near a query face."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=1, description="1 for the nearest")
    id: int = Field(ge=0, description="the meme face's id: its picture is `GET /api/memes/{id}/image`")
    source: str = Field(description="the meme's file on the server (undecodable bytes of its name shown as U+FFFD)")
    face: int = Field(ge=0, description="which face of that meme (0 = the leftmost)")
    title: str = Field(description="the meme's title")
    distance: float = Field(ge=0, description="Euclidean distance between unit-norm embeddings, [0, 2]")
    explain: list[SharedBlendshape] | None = Field(
        None,
        max_length=3,
        description="why it matches: up to 3 blendshapes both faces show most, by the lesser of the two scores, "
        "descending (`_neutral` left out, only those >= 0.1 on both; may be empty); null when either face has no "
        "blendshapes (an index built before they were stored; vectors sent without `blendshapes`)",
    )
    t_start: float | None = Field(
        None, ge=0, description="a video's moment only (absent for a picture): where it starts, seconds into the video"
    )
    t_end: float | None = Field(None, ge=0, description="a video's moment only: where it ends, seconds")
    t_frame: float | None = Field(
        None,
        ge=0,
        description="a video's moment only: the time of its most typical frame (the one `box` is in), seconds",
    )
    track: int | None = Field(None, ge=0, description="a video's moment only: the face track within the video")


class FaceOut(BaseModel):
    """A face found in the uploaded photo and its matches, nearest first."""

    model_config = ConfigDict(extra="forbid")

    box: list[int] = Field(min_length=4, max_length=4, description="[x, y, w, h], pixels of the uploaded image")
    matches: list[MatchOut]


#: The search document's example in ``/openapi.json``.
SEARCH_EXAMPLE = {
    "image": "me.jpg",
    "faces": [
        {
            "box": [120, 80, 200, 210],
            "matches": [
                {"rank": 1, "id": 17, "source": "/memes/Success-Kid.jpg", "face": 0, "title": "Success Kid",
                 "distance": 0.21},
            ],
        }
    ],
}  # fmt: skip


class SearchDocument(BaseModel):
    """The ``facial-search search --json`` document: every face of the photo, left to right."""

    # OpenAPI 3.0's `example` (the Swagger UI we serve reads 3.0)
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": SEARCH_EXAMPLE})

    image: str = Field(description="the uploaded file's base name")
    faces: list[FaceOut] = Field(description="empty when no face is seen (not an error here)")


class Health(BaseModel):
    """What ``GET /healthz`` says: the server is up, and what it serves."""

    status: Literal["ok"] = Field(json_schema_extra={"enum": ["ok"]})
    faces: int = Field(ge=0, description="meme faces in the index")
    embedder: str = Field(description="the index's embedder, name@version")
    workers: int = Field(ge=1, description="pipelines searching in parallel")


class ErrorDetail(BaseModel):
    """Every error answer: one line saying what was wrong."""

    detail: str = Field(json_schema_extra={"example": "photo.jpg: not an image (unrecognised format)"})


#: Most vectors (faces) one ``POST /api/search/vectors`` may carry (the page sends at most 8 a frame).
MAX_VECTORS = 16
#: Most components of a vector the parser accepts (the index's dimension is then checked: 64).
MAX_DIM = 1024
#: A vector counts as unit-norm when its L2 norm is within this of 1 (float32 rounding in a browser is ~1e-7).
NORM_TOLERANCE = 1e-3

#: A finite number (JSON has no NaN or infinity; Python's parser reads ``NaN`` and ``1e999``: both refused).
Finite = Annotated[float, Field(allow_inf_nan=False)]

VECTORS_EXAMPLE = {"vectors": [[0.125] * 64], "k": 3, "embedder": "expression v3+0123456789ab", "all_faces": False}
#: Blendshape scores per face (MediaPipe FaceLandmarker v1: ``_neutral`` and 51 ARKit blendshapes).
NUM_BLENDSHAPES = 52
#: One face's blendshape scores, as the client's FaceLandmarker gives them (model order).
Blendshapes = Annotated[
    list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]],
    Field(min_length=NUM_BLENDSHAPES, max_length=NUM_BLENDSHAPES),
]


class VectorQuery(BaseModel):
    """The JSON body of ``POST /api/search/vectors``: embeddings made on the client (the page's on-device mode)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": VECTORS_EXAMPLE})

    vectors: list[Annotated[list[Finite], Field(min_length=1, max_length=MAX_DIM)]] = Field(
        min_length=1,
        max_length=MAX_VECTORS,
        description=(
            f"one embedding per face, 1 to {MAX_VECTORS}: each the index's dimension (64), finite, unit-norm "
            f"(L2 norm within {NORM_TOLERANCE:g} of 1; renormalised before the search)"
        ),
    )
    k: int = Field(3, ge=1, le=MAX_K, description="matches per face")
    embedder: str = Field(
        max_length=200,
        description=(
            'the embedder that made the vectors, as `/api/ondevice` names the index\'s: `"<name> v<version>"` '
            '(e.g. `"expression v3+1a2b3c4d5e6f"`; the `" (64-d)"` of `/healthz` may follow); another than '
            "the index's gets 409"
        ),
    )
    all_faces: bool = Field(False, description="the k nearest meme faces, even several of one meme")
    boxes: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)]] | None = Field(
        None, description="each face's [x, y, w, h] in the client's pixels, echoed in the answer (else [0, 0, 0, 0])"
    )
    image: str = Field("<vectors>", max_length=200, description="a name for the answer's `image` field")
    blendshapes: list[Blendshapes | None] | None = Field(
        None,
        max_length=MAX_VECTORS,
        description=f"per vector, its face's {NUM_BLENDSHAPES} blendshape scores in [0, 1] (FaceLandmarker order; "
        "`null` for a face without), one entry per vector: each match's `explain` is then computed (else null)",
    )


class OnDeviceInfo(BaseModel):
    """What ``GET /api/ondevice`` says: whether the page can run the pipeline in the browser, and with what."""

    model_config = ConfigDict(extra="forbid")

    available: bool = Field(description="the models and the browser packages are all served")
    reason: str | None = Field(description="why not, when `available` is false")
    embedder: str = Field(description="the index's embedder, as `POST /api/search/vectors` takes it")
    dim: int = Field(ge=1, description="dimension of the index's embeddings")
    input_size: int = Field(ge=1, description="side of the aligned grey face the model takes, pixels (48)")
    landmarker_url: str = Field(description="MediaPipe FaceLandmarker model (`face_landmarker.task`)")
    model_url: str = Field(description="the expression model (ONNX)")
    vendor_url: str = Field(description="where the npm packages' files are served")
    versions: dict[str, str] = Field(description="versions of the npm packages served")
    max_vectors: int = Field(ge=1, description="most vectors a `POST /api/search/vectors` may carry")
    max_k: int = Field(ge=1, description="largest k")
    norm_tolerance: float = Field(gt=0, description="how far from 1 a vector's L2 norm may be")


class ExportMoments(BaseModel):
    """The rows of the export that are moments of a video, and their times (seconds into the video), as the search
    document's `t_start`, `t_end`, `t_frame`, `track` (3 decimals); a moment's own thumbnail is its typical frame."""

    model_config = ConfigDict(extra="forbid")

    rows: list[int] = Field(description="rows (0-based, as `embeddings`) that are moments")
    t_start: list[float] = Field(description="per row of `rows`: where the moment starts, seconds")
    t_end: list[float] = Field(description="per row of `rows`: where it ends, seconds")
    t_frame: list[float] = Field(description="per row of `rows`: its most typical frame, seconds")
    track: list[int] = Field(description="per row of `rows`: the face track within the video")


class IndexExport(BaseModel):
    """What ``GET /api/index/export`` gives: the whole index, for the page's private mode to search itself.

    Columnar: ``ids``, ``groups``, ``faces``, ``source`` and ``title`` hold one number per face, rows in the order
    of ``embeddings``; ``source`` and ``title`` index ``sources`` and ``titles``; ``thumb_ids`` one face id per
    source file. Searching it as the server does (exact Euclidean distance, the nearest face of each picture
    group, nearest first, lower row first on a tie) gives the answers of ``POST /api/search/vectors``.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["facial-search-export/1"] = Field(
        json_schema_extra={"enum": ["facial-search-export/1"]}, description="this document's layout"
    )
    embedder: str = Field(description="the index's embedder, as `POST /api/search/vectors` and `/api/ondevice` name it")
    dim: int = Field(ge=0, description="D, the embeddings' dimension (64)")
    count: int = Field(ge=0, description="N, faces in the index")
    digest: str = Field(description="16 hex digits of the embeddings', ids' and groups' sha256 (changes with them)")
    embeddings: str = Field(
        description="base64 of the (N, D) float32 embeddings, little-endian, row after row (unit-norm rows)"
    )
    ids: list[int] = Field(description="N face ids (a match's `id`)")
    groups: list[int] = Field(description="N picture groups, 0 to G-1: a meme's faces, and one picture saved "
                                          "under two names, share one; a search gives one answer per group")  # fmt: skip
    faces: list[int] = Field(description="N face numbers within their file (0 = the leftmost)")
    source: list[int] = Field(description="N indexes into `sources`")
    title: list[int] = Field(description="N indexes into `titles`")
    sources: list[str] = Field(description="the meme files, as the search document's `source` shows them")
    titles: list[str] = Field(description="the distinct titles")
    thumb_ids: list[int] = Field(description="per entry of `sources`, a face id whose `thumb_url` shows that file")
    thumb_url: str = Field(description="a face's thumbnail (JPEG, longest side 256 px), `{id}` replaced by its id")
    image_url: str = Field(description="a face's full image file, `{id}` replaced by its id")
    blendshapes: str | None = Field(
        None,
        description="base64 of the (N, 52) uint8 blendshape scores times 255 (round(255 * score)), row after row "
        "as `embeddings`, FaceLandmarker order (a zero row for a face in `blendshapes_missing`); null when no face "
        "has them (an index built before they were stored). The page explains its matches with them",
    )
    blendshapes_missing: list[int] = Field(
        default_factory=list, description="rows (0-based, as `embeddings`) of the faces without blendshapes"
    )
    moments: ExportMoments | None = Field(
        None, description="the rows that are a video's moments (issue 18) and their times; null when none is"
    )
