"""``POST /api/search/vectors`` and what the on-device page loads (``/api/ondevice``, ``/models/``, ``/vendor/``),
against the real app over a real index of memes from ../shared (nothing mocked): the vectors are the real
pipeline's embeddings of real photos."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi, uvicorn, python-multipart) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from facial_search.embedders import expression  # noqa: E402
from facial_search.io.assets import FACE_LANDMARKER  # noqa: E402
from facial_search.io.images import load_image  # noqa: E402
from facial_search.web import SearchPool, create_app  # noqa: E402
from facial_search.web import ondevice as od  # noqa: E402
from facial_search.web.schemas import MAX_VECTORS, NORM_TOLERANCE  # noqa: E402


@pytest.fixture(scope="module")
def pool(meme_index):
    p = SearchPool(meme_index, 1)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(pool):
    with TestClient(create_app(pool=pool)) as c:
        yield c


@pytest.fixture(scope="module")
def label(pool) -> str:
    info = pool.index.embedder
    return f"{info.name} v{info.version}"


def embed(pool, path) -> tuple[np.ndarray, list[list[int]]]:
    """The real pipeline's embeddings ``(N, 64)`` and boxes of every face of a photo."""
    rgb = load_image(path)
    with pool.checkout() as fs:
        faces = fs.pipeline.faces(rgb)
        return fs.pipeline.embed(rgb, faces), [list(f.box) for f in faces]


def post(client, **body):
    return client.post("/api/search/vectors", json=body)


# ---- the same document as /api/search ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["single_face.jpg", "multi_face.jpg"])
def test_vectors_of_a_photo_give_the_photo_s_document(client, pool, label, shared, name):
    photo = shared / "data" / "faces" / name
    by_image = client.post("/api/search", files={"image": (name, photo.read_bytes(), "image/jpeg")}).json()
    emb, boxes = embed(pool, photo)
    r = post(client, vectors=emb.tolist(), boxes=boxes, k=3, embedder=label, image=name)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["image"] == name and len(doc["faces"]) == len(by_image["faces"]) >= 1
    for got, want in zip(doc["faces"], by_image["faces"], strict=True):
        assert got["box"] == want["box"]
        assert [(m["id"], m["title"], m["source"], m["face"], m["rank"]) for m in got["matches"]] == [
            (m["id"], m["title"], m["source"], m["face"], m["rank"]) for m in want["matches"]
        ]
        assert [m["distance"] for m in got["matches"]] == pytest.approx(
            [m["distance"] for m in want["matches"]], abs=1e-5
        )


def test_k_all_faces_and_defaults(client, pool, label, shared):
    emb, _ = embed(pool, shared / "data" / "memes" / "imgflip" / "Matt-Damon-gets-older.jpg")
    assert len(emb) >= 2
    grouped = post(client, vectors=emb.tolist(), k=4, embedder=label).json()
    every = post(client, vectors=emb.tolist(), k=4, embedder=label, all_faces=True).json()
    assert all(len({m["source"] for m in f["matches"]}) == 4 for f in grouped["faces"])
    assert any(len({m["source"] for m in f["matches"]}) < 4 for f in every["faces"])
    default = post(client, vectors=emb[:1].tolist(), embedder=label).json()
    assert default["image"] == "<vectors>"
    assert default["faces"][0]["box"] == [0, 0, 0, 0] and len(default["faces"][0]["matches"]) == 3
    ten = post(client, vectors=emb[:1].tolist(), embedder=label, k=10).json()
    assert len(ten["faces"][0]["matches"]) == 10


def test_embedder_as_healthz_shows_it(client, pool, shared):
    emb, _ = embed(pool, shared / "data" / "faces" / "single_face.jpg")
    health = client.get("/healthz").json()["embedder"]
    assert health.endswith("(64-d)")
    assert post(client, vectors=emb.tolist(), embedder=health).status_code == 200


def test_vectors_within_the_norm_tolerance_are_renormalised(client, pool, label, shared):
    emb, _ = embed(pool, shared / "data" / "faces" / "single_face.jpg")
    exact = post(client, vectors=emb.tolist(), embedder=label).json()
    scaled = post(client, vectors=(emb * (1 + 0.9 * NORM_TOLERANCE)).tolist(), embedder=label).json()
    assert scaled == exact
    r = post(client, vectors=(emb * (1 + 1.1 * NORM_TOLERANCE)).tolist(), embedder=label)
    assert r.status_code == 422 and "unit-norm" in r.json()["detail"]


# ---- refusals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "embedder",
    [
        "expression v3",
        "expression",
        "blendshapes v1 (52-d)",
        "expression v3+000000000000",
        "",
        "expression v3+x (63-d)",
    ],
)
def test_another_embedder_is_409(client, pool, shared, embedder):
    emb, _ = embed(pool, shared / "data" / "faces" / "single_face.jpg")
    r = post(client, vectors=emb.tolist(), embedder=embedder)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert pool.index.embedder.version in detail and "/api/ondevice" in detail
    assert r.headers["cache-control"] == "no-store"


def unit(dim: int, seed: int = 0) -> list[float]:
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).tolist()


BAD_BODIES = {
    "63 numbers": lambda lab: {"vectors": [unit(63)], "embedder": lab},
    "65 numbers": lambda lab: {"vectors": [unit(65)], "embedder": lab},
    "one vector short": lambda lab: {"vectors": [unit(64), unit(63)], "embedder": lab},
    "no vector": lambda lab: {"vectors": [], "embedder": lab},
    "an empty vector": lambda lab: {"vectors": [[]], "embedder": lab},
    "not a list of lists": lambda lab: {"vectors": unit(64), "embedder": lab},
    "a string in a vector": lambda lab: {"vectors": [unit(63) + ["x"]], "embedder": lab},
    "too many vectors": lambda lab: {"vectors": [unit(64, i) for i in range(MAX_VECTORS + 1)], "embedder": lab},
    "norm 0.9": lambda lab: {"vectors": [[x * 0.9 for x in unit(64)]], "embedder": lab},
    "norm 2": lambda lab: {"vectors": [[x * 2 for x in unit(64)]], "embedder": lab},
    "zero vector": lambda lab: {"vectors": [[0.0] * 64], "embedder": lab},
    "k 0": lambda lab: {"vectors": [unit(64)], "embedder": lab, "k": 0},
    "k 11": lambda lab: {"vectors": [unit(64)], "embedder": lab, "k": 11},
    "k text": lambda lab: {"vectors": [unit(64)], "embedder": lab, "k": "three"},
    "boxes of another count": lambda lab: {"vectors": [unit(64)], "embedder": lab, "boxes": [[0, 0, 1, 1]] * 2},
    "a box of 3 numbers": lambda lab: {"vectors": [unit(64)], "embedder": lab, "boxes": [[0, 0, 1]]},
    "a negative box": lambda lab: {"vectors": [unit(64)], "embedder": lab, "boxes": [[-1, 0, 1, 1]]},
    "no embedder": lambda lab: {"vectors": [unit(64)]},
    "an unknown field": lambda lab: {"vectors": [unit(64)], "embedder": lab, "top": 3},
    "a list body": lambda lab: [unit(64)],
}


@pytest.mark.parametrize("what", list(BAD_BODIES))
def test_bad_bodies_are_422(client, label, what):
    r = client.post("/api/search/vectors", json=BAD_BODIES[what](label))
    assert r.status_code == 422, (what, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 600
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_422(client, label, token):
    """JSON has neither, but Python's parser reads ``NaN``, ``Infinity`` and ``1e999`` (inf): all refused."""
    numbers = [json.dumps(x) for x in unit(64)]
    numbers[5] = token
    body = '{"vectors": [[' + ", ".join(numbers) + ']], "embedder": ' + json.dumps(label) + "}"
    r = client.post("/api/search/vectors", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "finite" in r.json()["detail"]


def test_a_body_that_is_not_json(client):
    json_type = {"content-type": "application/json"}
    r = client.post("/api/search/vectors", content=b'{"vectors": [[0.1, ', headers=json_type)
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/api/search/vectors", files={"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")})  # a picture
    assert r.status_code == 422
    r = client.post("/api/search/vectors", content=b"\xff\xd8\xff\xe0 not text", headers=json_type)
    assert r.status_code == 400 and r.json()["detail"]  # not even UTF-8


# ---- OpenAPI ------------------------------------------------------------------------------------------------
def test_openapi_describes_the_vector_api(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/search/vectors"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/VectorQuery")
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchDocument")
    assert {"409", "422"} <= set(op["responses"])
    query = spec["components"]["schemas"]["VectorQuery"]
    assert set(query["required"]) == {"vectors", "embedder"}
    assert query["properties"]["vectors"]["maxItems"] == MAX_VECTORS
    assert query["properties"]["k"]["maximum"] == 10
    assert "/api/ondevice" in spec["paths"]
    assert {"/models/face_landmarker.task", "/models/expression.onnx"} <= set(spec["paths"])


# ---- what the on-device page loads ---------------------------------------------------------------------------
def test_ondevice_info_and_the_models_it_names(client, pool, label):
    info = client.get("/api/ondevice").json()
    assert info["available"] is True and info["reason"] is None
    assert info["embedder"] == label and info["dim"] == 64 and info["input_size"] == 48
    assert info["max_vectors"] == MAX_VECTORS and math.isclose(info["norm_tolerance"], NORM_TOLERANCE)
    assert set(info["versions"]) == {"@mediapipe/tasks-vision", "onnxruntime-web"}
    package = json.loads((od.CHECKOUT_NODE_MODULES.parent / "package.json").read_text())
    assert info["versions"] == package["dependencies"]  # exactly the pinned versions are served
    model = client.get(info["model_url"])
    assert model.status_code == 200 and model.headers["content-type"] == "application/octet-stream"
    # the bytes are the index's weights: the version the index records is their digest
    assert f"{expression.GENERATION}+{hashlib.sha256(model.content).hexdigest()[:12]}" == pool.index.embedder.version
    task = client.get(info["landmarker_url"])
    assert task.status_code == 200 and hashlib.sha256(task.content).hexdigest() == FACE_LANDMARKER.sha256
    assert client.head(info["landmarker_url"]).headers["content-length"] == str(len(task.content))


@pytest.mark.parametrize("name", sorted(od.VENDOR_FILES))
def test_vendor_files_are_served_with_their_types(client, name):
    r = client.head(f"/vendor/{name}")
    assert r.status_code == 200, name
    media_type = od.VENDOR_FILES[name][1]
    assert r.headers["content-type"].split(";")[0] == media_type
    path, _ = od.vendor_file(name)
    assert int(r.headers["content-length"]) == path.stat().st_size > 1000


@pytest.mark.parametrize(
    "name",
    ["onnxruntime-web/ort.min.mjs", "../package.json", "..%2Fpackage.json", "tasks-vision/vision.d.ts", "", "x"],
)
def test_only_the_listed_vendor_files_are_served(client, name):
    assert client.get(f"/vendor/{name}").status_code == 404


def test_without_the_npm_packages_the_page_is_told_why(pool, tmp_path, monkeypatch):
    monkeypatch.setenv(od.ENV_NODE_MODULES, str(tmp_path))
    with TestClient(create_app(pool=pool)) as c:
        info = c.get("/api/ondevice").json()
        assert info["available"] is False and "npm ci" in info["reason"]
        assert c.get("/vendor/tasks-vision/vision_bundle.mjs").status_code == 404
        assert c.get("/models/expression.onnx").status_code == 200  # the models are still there


def test_an_index_of_another_embedder_gets_no_model(tmp_path, shared, sample_memes):
    from facial_search.indexing import build_index

    out = tmp_path / "blend.fsindex"
    build_index(sample_memes[:3], out, embedder="blendshapes", workers=1, progress=False)
    with SearchPool(out, 1) as p, TestClient(create_app(pool=p)) as c:
        info = c.get("/api/ondevice").json()
        assert info["available"] is False and "blendshapes" in info["reason"]
        assert info["embedder"].startswith("blendshapes v") and info["dim"] == 52
        assert c.get("/models/expression.onnx").status_code == 404
        # the vector API still serves this index's own embedder
        v = np.abs(np.random.default_rng(0).normal(size=52))
        r = c.post(
            "/api/search/vectors", json={"vectors": [(v / np.linalg.norm(v)).tolist()], "embedder": info["embedder"]}
        )
        assert r.status_code == 200 and len(r.json()["faces"][0]["matches"]) >= 1
        r = c.post("/api/search/vectors", json={"vectors": [unit(64)], "embedder": info["embedder"]})
        assert r.status_code == 422 and "52" in r.json()["detail"]


# ---- explain a match: the blendshapes both faces share most ----------------------------------------------------
def faces_of(pool, path) -> tuple[np.ndarray, list]:
    """The real pipeline's embeddings and faces (with their blendshapes) of a photo."""
    rgb = load_image(path)
    with pool.checkout() as fs:
        faces = fs.pipeline.faces(rgb)
        return fs.pipeline.embed(rgb, faces), faces


def test_vectors_with_blendshapes_explain_as_the_photo_search_does(client, pool, label, shared):
    photo = shared / "data" / "faces" / "multi_face.jpg"
    by_image = client.post("/api/search", files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")}).json()
    emb, faces = faces_of(pool, photo)
    shapes = [f.blendshapes.tolist() for f in faces]
    doc = post(client, vectors=emb.tolist(), blendshapes=shapes, embedder=label).json()
    explained = [[m["explain"] for m in f["matches"]] for f in doc["faces"]]
    assert explained == [[m["explain"] for m in f["matches"]] for f in by_image["faces"]]
    flat = [e for f in explained for e in f]
    assert all(isinstance(e, list) and len(e) <= 3 for e in flat) and any(flat), "real faces share blendshapes"
    for e in (x for f in flat for x in f):
        assert set(e) == {"blendshape", "query", "match"} and min(e["query"], e["match"]) >= 0.1
        assert e["blendshape"] != "_neutral"
    plain = post(client, vectors=emb.tolist(), embedder=label).json()  # without blendshapes: null, key present
    assert all(m["explain"] is None for f in plain["faces"] for m in f["matches"])
    some = post(client, vectors=emb[:2].tolist(), blendshapes=[shapes[0], None], embedder=label).json()
    assert [m["explain"] is None for m in some["faces"][1]["matches"]] == [True] * 3
    assert some["faces"][0]["matches"][0]["explain"] == explained[0][0]


BAD_BLENDSHAPES = {
    "51 scores": lambda v: {"blendshapes": [[0.5] * 51]},
    "53 scores": lambda v: {"blendshapes": [[0.5] * 53]},
    "a score above 1": lambda v: {"blendshapes": [[0.5] * 51 + [1.5]]},
    "a negative score": lambda v: {"blendshapes": [[-0.1] + [0.5] * 51]},
    "a string": lambda v: {"blendshapes": [["x"] * 52]},
    "another count": lambda v: {"blendshapes": [[0.5] * 52] * 2},
    "not a list of lists": lambda v: {"blendshapes": [0.5] * 52},
}


@pytest.mark.parametrize("what", list(BAD_BLENDSHAPES))
def test_bad_blendshapes_are_422(client, label, what):
    r = post(client, vectors=[unit(64)], embedder=label, **BAD_BLENDSHAPES[what](None))
    assert r.status_code == 422, (what, r.text)
    assert "\n" not in r.json()["detail"]


def test_nan_blendshapes_are_422(client, label):
    scores = ["0.5"] * 52
    scores[3] = "NaN"
    body = '{"vectors": [' + json.dumps(unit(64)) + '], "embedder": ' + json.dumps(label)
    body += ', "blendshapes": [[' + ", ".join(scores) + "]]}"
    r = client.post("/api/search/vectors", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["detail"]


def test_the_export_carries_the_stored_blendshapes(client, pool):
    import base64

    doc = client.get("/api/index/export").json()
    rows = np.frombuffer(base64.b64decode(doc["blendshapes"]), np.uint8).reshape(doc["count"], 52)
    want = np.stack([np.rint(pool.index.entry(i).blendshapes * 255) for i in doc["ids"]])
    np.testing.assert_array_equal(rows, want)
    assert doc["blendshapes_missing"] == [] and len(doc["blendshapes"]) < 100 * doc["count"]


def test_openapi_describes_explain(client):
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert "blendshapes" in spec["VectorQuery"]["properties"] and "explain" in spec["MatchOut"]["properties"]
    assert set(spec["SharedBlendshape"]["properties"]) == {"blendshape", "query", "match"}
    assert {"blendshapes", "blendshapes_missing"} <= set(spec["IndexExport"]["properties"])
