"""The web API against the real pipeline and a real index of memes from ../shared (nothing mocked)."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi, uvicorn, python-multipart) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from facial_search.web.app import MAX_UPLOAD_BYTES, SearchPool, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool(meme_index):
    p = SearchPool(meme_index, 2)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(pool):
    with TestClient(create_app(pool=pool)) as c:
        yield c


def post_image(client, data: bytes, name="photo.jpg", ctype="image/jpeg", **params):
    return client.post("/api/search", files={"image": (name, data, ctype)}, params=params)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


# ---- search ------------------------------------------------------------------------------------------------
def test_healthz(client, pool):
    r = client.get("/healthz")
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "ok"
    assert doc["faces"] == len(pool.index) >= 20
    assert doc["workers"] == 2


def test_search_returns_the_cli_json(client, shared, meme_index):
    photo = shared / "data" / "faces" / "single_face.jpg"
    r = post_image(client, photo.read_bytes(), name="single_face.jpg")
    assert r.status_code == 200, r.text
    doc = r.json()
    cli = subprocess.run(
        [sys.executable, "-m", "facial_search.cli", "search", str(photo), "--index", str(meme_index), "--json"],
        capture_output=True, text=True, timeout=120, check=True, env=os.environ.copy(),
    )  # fmt: skip
    expect = json.loads(cli.stdout)
    assert set(doc) == {"image", "faces"}
    assert doc["image"] == "single_face.jpg"
    assert doc["faces"] == expect["faces"]
    assert len(doc["faces"]) == 1
    face = doc["faces"][0]
    assert len(face["box"]) == 4
    assert [m["rank"] for m in face["matches"]] == [1, 2, 3]
    for m in face["matches"]:
        assert set(m) == {"rank", "id", "source", "face", "title", "distance"}
        assert 0.0 <= m["distance"] <= 2.0
    assert [m["distance"] for m in face["matches"]] == sorted(m["distance"] for m in face["matches"])


def test_search_every_face_of_a_group_photo(client, shared):
    r = post_image(client, (shared / "data" / "faces" / "multi_face.jpg").read_bytes(), name="multi_face.jpg")
    assert r.status_code == 200
    faces = r.json()["faces"]
    assert len(faces) >= 2
    assert len({tuple(f["box"]) for f in faces}) == len(faces)
    assert all(len(f["matches"]) == 3 for f in faces)


@pytest.mark.parametrize("name", ["Image_with_alpha.png", "0-f15-hao-ph.jpg", "astronaut.png"])
def test_search_other_formats(client, shared, name):
    r = post_image(client, (shared / "data" / "faces" / name).read_bytes(), name=name, ctype="application/octet-stream")
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) >= 1


def test_no_face_is_200_with_no_faces(client, shared):
    data = (shared / "data" / "faces" / "free-mountain-vector-01.jpg").read_bytes()
    r = post_image(client, data, name="mountain.jpg")
    assert r.status_code == 200
    assert r.json() == {"image": "mountain.jpg", "faces": []}


def test_k(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    assert [len(f["matches"]) for f in post_image(client, data, k=1).json()["faces"]] == [1]
    assert [len(f["matches"]) for f in post_image(client, data, k=5).json()["faces"]] == [5]
    for bad in (0, 11, "x"):
        assert post_image(client, data, k=bad).status_code == 422


def test_k_different_memes_unless_all_faces(client, shared):
    """The CLI's grouping: a meme of four faces of one man, searched with itself, fills the faces ranking."""
    data = (shared / "data" / "memes" / "imgflip" / "Matt-Damon-gets-older.jpg").read_bytes()
    grouped = post_image(client, data, k=4).json()["faces"]
    every = post_image(client, data, k=4, all_faces="true").json()["faces"]
    assert len(grouped) == len(every) >= 2
    assert all(len({m["source"] for m in f["matches"]}) == 4 for f in grouped)
    assert any(len({m["source"] for m in f["matches"]}) < 4 for f in every)
    assert post_image(client, data, all_faces="maybe").status_code == 422


def test_client_file_name_is_reduced_to_a_base_name(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    assert post_image(client, data, name="../../etc/passwd").json()["image"] == "passwd"
    assert post_image(client, data, name="C:\\Users\\me\\x.jpg").json()["image"] == "x.jpg"


# ---- refusals ----------------------------------------------------------------------------------------------
def test_not_an_image_is_415_with_a_message(client):
    r = post_image(client, b"hello, this is text, not a photo\n" * 10, name="notes.txt", ctype="text/plain")
    assert r.status_code == 415
    assert "not an image" in r.json()["detail"]


def test_truncated_image_is_422(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = post_image(client, data[: len(data) // 3])
    assert r.status_code == 422
    assert "truncated" in r.json()["detail"] or "decode" in r.json()["detail"]


def test_empty_image_is_422(client):
    r = post_image(client, b"")
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def test_decompression_bomb_is_refused(client):
    r = post_image(client, png_header_only(30000, 30000), name="bomb.png", ctype="image/png")
    assert r.status_code == 422
    assert "too large" in r.json()["detail"]


def test_not_multipart_is_415(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = client.post("/api/search", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 415
    assert "multipart" in r.json()["detail"]


def test_missing_image_field_is_422(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = client.post("/api/search", files={"photo": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 422
    assert "'image'" in r.json()["detail"]
    r = client.post("/api/search", data={"image": "not a file"}, files={"other": ("a", b"x")})
    assert r.status_code in (415, 422)


def test_upload_over_10_mb_is_413(client):
    r = post_image(client, b"\0" * (MAX_UPLOAD_BYTES + 1), name="big.jpg")
    assert r.status_code == 413
    assert "10 MB" in r.json()["detail"]


def test_upload_just_under_10_mb_is_not_413(client):
    r = post_image(client, b"x" * (MAX_UPLOAD_BYTES - 1), name="almost.bin")
    assert r.status_code == 415  # read in full, then refused as not an image


def test_limit_enforced_while_reading_without_content_length(client):
    boundary = "facialsearchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():  # chunked transfer: no Content-Length to trust
        yield head
        for _ in range(12):
            yield b"\xff" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/api/search", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413


def test_limit_enforced_on_a_real_socket(pool):
    """11 MB sent chunked (no Content-Length) to a real uvicorn gets 413, read and cut off as it streams."""
    with live_server(pool) as base:
        host, port = base.removeprefix("http://").split(":")
        boundary = b"b0undary"
        head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
        payload = head + b"\xff" * (11 * 1024 * 1024) + b"\r\n--b0undary--\r\n"
        req = (
            b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(req)
            reply = b""
            try:
                for i in range(0, len(payload), 256 * 1024):
                    part = payload[i : i + 256 * 1024]
                    s.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the whole body was sent
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


# ---- meme images ------------------------------------------------------------------------------------------
def test_meme_image_by_id(client, pool, shared):
    doc = post_image(client, (shared / "data" / "faces" / "single_face.jpg").read_bytes()).json()
    for m in doc["faces"][0]["matches"]:
        r = client.get(f"/api/memes/{m['id']}/image")
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/jpeg"
        assert r.content == Path(pool.index.entry(m["id"]).source).read_bytes()
        assert Path(m["source"]) == Path(pool.index.entry(m["id"]).source)


def test_meme_ids_are_validated(client, pool):
    unknown = max(pool.index.ids) + 1000
    assert client.get(f"/api/memes/{unknown}/image").status_code == 404
    for bad in ("abc", "-1", "1.5", "1e3", "%2e%2e", "0x10", "99999999999999999999999"):
        r = client.get(f"/api/memes/{bad}/image")
        assert r.status_code in (404, 422), bad
        assert r.status_code != 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/memes/../../../etc/passwd",
        "/api/memes/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/static/../__init__.py",
        "/static/%2e%2e/__init__.py",
        "/static/..%2f..%2fpipeline.py",
        "/etc/passwd",
    ],
)
def test_nothing_outside_the_index_is_reachable(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert b"import" not in r.content and b"root:" not in r.content


# ---- page and docs ----------------------------------------------------------------------------------------
def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<video" in r.text and 'id="file"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/api/search"]["post"]
    schema = search["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["image"]["format"] == "binary"
    assert {"200", "413", "415", "422"} <= set(search["responses"])
    assert "get" in spec["paths"]["/api/memes/{meme_id}/image"]
    assert "get" in spec["paths"]["/healthz"]
    assert client.get("/docs").status_code == 200


# ---- concurrency ------------------------------------------------------------------------------------------
def test_concurrent_requests_give_the_sequential_answers(client, shared):
    names = ["single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg", "astronaut.png", "free-mountain-vector-01.jpg"]
    photos = {n: (shared / "data" / "faces" / n).read_bytes() for n in names}
    expect = {n: post_image(client, d, name=n).json() for n, d in photos.items()}
    jobs = [names[i % len(names)] for i in range(30)]
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda n: (n, post_image(client, photos[n], name=n)), jobs))
    for n, r in got:
        assert r.status_code == 200
        assert r.json() == expect[n], n


# ---- the command ------------------------------------------------------------------------------------------
class live_server:
    """uvicorn on a free loopback port in a thread of this process (the app over ``pool``)."""

    def __init__(self, pool):
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(create_app(pool=pool), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_facial_search_serve_command(meme_index, shared):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facial_search.cli", "serve", "--index", str(meme_index), "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        line = proc.stdout.readline() + proc.stdout.readline()
        assert re.search(rf"http://localhost:{port}/", line), line
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        assert health.json()["workers"] == 1
        assert "<video" in httpx.get(base + "/", timeout=10).text
        photo = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
        r = httpx.post(f"{base}/api/search", files={"image": ("me.jpg", photo, "image/jpeg")}, timeout=60)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        # loopback only by default
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has("ss") else ""
        if listening:
            assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_reports_a_missing_index(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "facial_search.cli", "serve", "--index", str(tmp_path / "nope.fsindex")],
        capture_output=True, text=True, timeout=60, env=os.environ.copy(),
    )  # fmt: skip
    assert r.returncode == 1
    assert "facial-search: error:" in r.stderr and "Traceback" not in r.stderr


def _has(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None
