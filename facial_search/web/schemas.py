"""The API's documents as pydantic models: what ``/openapi.json`` describes and what the routes return."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MatchOut(BaseModel):
    """One meme face near a query face."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=1, description="1 for the nearest")
    id: int = Field(ge=0, description="the meme face's id: its picture is `GET /api/memes/{id}/image`")
    source: str = Field(description="the meme's file on the server (undecodable bytes of its name shown as U+FFFD)")
    face: int = Field(ge=0, description="which face of that meme (0 = the leftmost)")
    title: str = Field(description="the meme's title")
    distance: float = Field(ge=0, description="Euclidean distance between unit-norm embeddings, [0, 2]")


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
