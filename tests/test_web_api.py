"""The web API against the real pipeline and a real index of memes from ../shared (nothing mocked).

Most tests talk to the app in process (Starlette's TestClient, lifespan run); where the network matters (slow
bodies, chunked uploads, HEAD, memory) they talk to ``facial-search serve`` itself, a real uvicorn in a
subprocess on a loopback port (the ``served`` fixture).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
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
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra (fastapi, uvicorn, python-multipart) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from facial_search import errors  # noqa: E402
from facial_search.web import SearchPool, ServeConfig, create_app  # noqa: E402
from facial_search.web.app import ERROR_STATUS, status_for  # noqa: E402
from facial_search.web.config import MAX_UPLOAD_BYTES, WEB_MAX_PIXELS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "facial_search.cli"]
#: The body timeout of the served server (short: the slow-body test waits for it).
BODY_TIMEOUT_S = 3.0


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


def encoded(size: tuple[int, int], fmt: str, **kw) -> bytes:
    """A solid picture of ``size`` pixels, encoded: a few hundred kB for tens of megapixels."""
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 180, 160)).save(buf, fmt, **kw)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120, **kw) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"{base}/healthz", timeout=5, **kw)
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)


def vm_hwm_kb(pid: int) -> int:
    """Peak resident memory of process ``pid`` (``VmHWM``), kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, flags=re.M).group(1))


@pytest.fixture(scope="module")
def served(meme_index):
    """``facial-search serve`` in a subprocess: 2 pipelines, a 3 s body timeout, on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--index", str(meme_index), "--port", str(port), "--workers", "2",
         "--body-timeout", str(BODY_TIMEOUT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        printed = proc.stdout.readline() + proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        health = wait_healthy(base, proc)
        yield {"base": base, "port": port, "proc": proc, "printed": printed, "health": health.json()}
    finally:
        proc.terminate()
        proc.wait(20)


def raw_exchange(port: int, request: bytes, body_parts: list[bytes] = (), timeout: float = 60) -> bytes:
    """Send ``request`` then each of ``body_parts`` on a raw socket; everything the server sends until it
    closes (or ``timeout`` passes with nothing more)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return reply


# ---- search ------------------------------------------------------------------------------------------------
def test_healthz(client, pool):
    r = client.get("/healthz")
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "ok"
    assert doc["faces"] == len(pool.index) >= 20
    assert doc["workers"] == 2
    assert doc["embedder"] == pool.embedder


def test_search_returns_the_cli_json(client, shared, meme_index):
    photo = shared / "data" / "faces" / "single_face.jpg"
    r = post_image(client, photo.read_bytes(), name="single_face.jpg")
    assert r.status_code == 200, r.text
    doc = r.json()
    cli = subprocess.run(
        [*CLI, "search", str(photo), "--index", str(meme_index), "--json", "--explain"],
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
        assert set(m) == {"rank", "id", "source", "face", "title", "distance", "explain"}
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
        r = post_image(client, data, k=bad)
        assert r.status_code == 422
        assert isinstance(r.json()["detail"], str) and "k" in r.json()["detail"]


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


def test_a_big_jpeg_is_searched_reduced_with_boxes_in_its_own_pixels(client, shared):
    """A photo over the decoded-pixel bound is decoded at 1/2 (JPEG DCT scaling): same face, boxes scaled back."""
    photo = Image.open(shared / "data" / "faces" / "single_face.jpg").convert("RGB")
    s = int((WEB_MAX_PIXELS / (photo.width * photo.height)) ** 0.5) + 1  # just over the bound
    big = photo.resize((photo.width * s, photo.height * s), Image.Resampling.LANCZOS)
    assert WEB_MAX_PIXELS < big.width * big.height <= 4 * WEB_MAX_PIXELS
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    small = post_image(client, (shared / "data" / "faces" / "single_face.jpg").read_bytes()).json()["faces"]
    r = post_image(client, buf.getvalue(), name="big.jpg")
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == len(small) == 1
    (x, y, w, h), (x0, y0, w0, _h0) = faces[0]["box"], small[0]["box"]
    assert abs(x - x0 * s) < 0.1 * w and abs(y - y0 * s) < 0.1 * h and abs(w - w0 * s) < 0.2 * w


# ---- refusals: the status follows from the error's type ----------------------------------------------------
def test_status_follows_the_error_type_not_its_text():
    assert status_for(errors.NotAnImageError("x: not an image")) == 415
    assert status_for(errors.ImageTooLargeError("x: too large")) == 413
    assert status_for(errors.ImageDecodeError("x: cannot decode")) == 422

    class OddBomb(errors.ImageTooLargeError):
        pass

    # a message that reads like another kind changes nothing: the class decides
    assert status_for(OddBomb("x: not an image (unrecognised format)")) == 413
    assert status_for(errors.ImageDecodeError("x: not an image")) == 422
    assert status_for(RuntimeError("not an image")) == 500
    assert all(issubclass(c, errors.FacialSearchError) for c in ERROR_STATUS)


def test_not_an_image_is_415_with_a_message(client):
    r = post_image(client, b"hello, this is text, not a photo\n" * 10, name="notes.txt", ctype="text/plain")
    assert r.status_code == 415
    assert r.json()["detail"] == "notes.txt: not an image (unrecognised format)"


def test_truncated_image_is_422(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = post_image(client, data[: len(data) // 3])
    assert r.status_code == 422
    assert "truncated" in r.json()["detail"] or "decode" in r.json()["detail"]


def test_empty_image_is_422(client):
    r = post_image(client, b"")
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def test_decompression_bomb_is_413(client):
    r = post_image(client, png_header_only(30000, 30000), name="bomb.png", ctype="image/png")
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_web_pixel_bound_is_under_the_cli_one(client, tmp_path):
    """A 20 Mpx PNG is fine for the CLI (64 Mpx) but over the web's decoded bound: 413, not decoded."""
    data = encoded((5000, 4000), "PNG")
    from facial_search.io.images import MAX_PIXELS, load_image

    assert WEB_MAX_PIXELS < 5000 * 4000 <= MAX_PIXELS
    assert load_image(data).shape == (4000, 5000, 3)
    r = post_image(client, data, name="wide.png", ctype="image/png")
    assert r.status_code == 413
    assert "5000x4000" in r.json()["detail"]


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
    assert r.status_code == 422
    assert "'image'" in r.json()["detail"]


def test_more_than_one_file_is_422(client, shared):
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = client.post("/api/search", files=[("image", ("a.jpg", data, "image/jpeg")), ("image", ("b.jpg", data))])
    assert r.status_code == 422
    assert "Too many files" in r.json()["detail"]


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


# ---- hostile clients, on a real socket ---------------------------------------------------------------------
def test_limit_enforced_on_a_real_socket(served):
    """11 MB sent chunked (no Content-Length) to a real uvicorn gets 413, read and cut off as it streams."""
    head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
    payload = head + b"\xff" * (11 * 1024 * 1024) + b"\r\n--b0undary--\r\n"
    req = (
        b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b0undary\r\nConnection: close\r\n\r\n"
    )
    step = 256 * 1024
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]
    parts = [b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces]
    reply = raw_exchange(served["port"], req, [*parts, b"0\r\n\r\n"])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"cache-control: no-store" in reply.lower()


def test_a_body_that_stops_half_way_is_cut_off(served, shared):
    """Headers and half the declared body, then silence: 408 at the body deadline and the connection closed,
    while other clients are served meanwhile."""
    data = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
        + data
        + b"\r\n--b0undary--\r\n"
    )
    req = (
        b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with ThreadPoolExecutor(1) as ex:
        stalled = ex.submit(raw_exchange, served["port"], req, [body[: len(body) // 2]], 120)
        assert httpx.get(served["base"] + "/healthz", timeout=30).status_code == 200
        reply = stalled.result(timeout=180)  # raw_exchange returns only once the server closed the socket
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert f"did not arrive within {BODY_TIMEOUT_S:g} s".encode() in payload


def test_a_body_that_stops_half_way_is_cut_off_by_the_configured_deadline(pool, shared):
    """The body deadline is the app's setting (ServeConfig.body_timeout), not uvicorn's."""
    import threading

    import uvicorn

    app = create_app(ServeConfig(index=pool.index_path, body_timeout=0.5), pool=pool)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        req = b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        reply = raw_exchange(port, req + b"Content-Length: 1000\r\n\r\n", [b"x" * 10])
        assert reply.startswith(b"HTTP/1.1 408") and b"within 0.5 s" in reply, reply[:300]
    finally:
        server.should_exit = True
        thread.join(10)


def test_decoded_size_and_memory_are_bounded(served):
    """Six concurrent 63 Mpx solid JPEGs (under 1 MB each) are decoded at 1/2 scale (16 Mpx bound: 200, no
    face) and six 63 Mpx PNGs refused from their header (413); the server's peak memory stays bounded."""
    jpeg = encoded((9000, 7000), "JPEG", quality=50)
    png = encoded((9000, 7000), "PNG")
    assert len(jpeg) < 1_500_000 and len(png) < 1_500_000
    pid = served["proc"].pid
    before = vm_hwm_kb(pid)

    def post(item):
        data, name, ctype = item
        with httpx.Client(base_url=served["base"], timeout=300) as http:
            return http.post("/api/search", files={"image": (name, data, ctype)})

    jobs = [(jpeg, f"bomb{i}.jpg", "image/jpeg") for i in range(6)]
    jobs += [(png, f"bomb{i}.png", "image/png") for i in range(6)]
    with ThreadPoolExecutor(12) as ex:
        answers = list(ex.map(post, jobs))
    for (_, name, _), r in zip(jobs, answers, strict=True):
        if name.endswith(".jpg"):
            assert r.status_code == 200, r.text
            assert r.json() == {"image": name, "faces": []}
        else:
            assert r.status_code == 413, r.text
            assert "9000x7000" in r.json()["detail"]
    peak = vm_hwm_kb(pid)
    print(f"server VmHWM: {before / 1024:.0f} MB before, {peak / 1024:.0f} MB after 12 concurrent bombs")
    assert peak < 1.5 * 1024 * 1024, f"peak RSS {peak / 1024:.0f} MB"
    assert httpx.get(served["base"] + "/healthz", timeout=30).status_code == 200


def get_paths(app, pool) -> list[str]:
    """A concrete URL for every GET route of ``app`` (path parameters filled in, each static file)."""
    from starlette.routing import Mount

    fill = {"meme_id": str(min(pool.index.ids)), "name": "swagger-ui.css", "fmt": "mp4"}
    paths = []

    def walk(routes):
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:  # FastAPI's included router
                walk(inner.routes)
            elif isinstance(route, Mount):
                root = Path(route.app.directory)
                paths.extend(f"{route.path}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file())
            elif "GET" in (getattr(route, "methods", None) or ()) and "/clip." not in route.path:
                # (a moment's clip: this index holds pictures only; tests/test_clip.py covers GET/HEAD of a real one)
                paths.append(re.sub(r"\{(\w+)(:\w+)?\}", lambda m: fill[m.group(1)], route.path))

    walk(app.routes)
    return paths


def test_head_works_wherever_get_does(served, pool):
    paths = get_paths(create_app(pool=pool), pool)
    expected = {"/", "/healthz", "/openapi.json", "/docs", "/static/app.js", "/static/style.css"}
    assert expected <= set(paths) and any(p.startswith("/api/memes/") for p in paths), paths
    with httpx.Client(base_url=served["base"], timeout=60) as http:
        for path in paths:
            got = http.get(path)
            head = http.head(path)
            assert got.status_code == 200, path
            assert head.status_code == 200, (path, head.status_code)
            assert head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"], path
            sent = len(got.content) if "content-encoding" not in got.headers else got.num_bytes_downloaded
            assert head.headers["content-length"] == str(sent), path  # (the export is sent gzip-compressed)
        assert http.head("/api/search").status_code == 405  # POST only: HEAD is no GET there


# ---- headers ----------------------------------------------------------------------------------------------
def test_security_headers_on_every_answer(client, shared):
    photo = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    answers = {
        "page": client.get("/"),
        "static": client.get("/static/app.js"),
        "health": client.get("/healthz"),
        "docs": client.get("/docs"),
        "openapi": client.get("/openapi.json"),
        "search": post_image(client, photo),
        "415": post_image(client, b"text, not a photo", name="a.txt"),
        "422": post_image(client, photo, k=0),
        "413": post_image(client, b"\0" * (MAX_UPLOAD_BYTES + 1)),
        "404": client.get("/nope"),
        "meme 404": client.get("/api/memes/999999999/image"),
    }
    for what, r in answers.items():
        assert r.headers["x-content-type-options"] == "nosniff", what
        assert r.headers["referrer-policy"] == "no-referrer", what
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], what
    for what in ("search", "415", "422", "413"):  # answers about a person's face: never cached
        assert answers[what].headers["cache-control"] == "no-store", what
    assert answers["search"].status_code == 200 and answers["413"].status_code == 413
    assert "no-store" not in answers["health"].headers.get("cache-control", "")
    page_csp = answers["page"].headers["content-security-policy"]
    # our own scripts, and compiling our WebAssembly (on-device mode): no eval, no inline script
    assert "default-src 'self'" in page_csp and "script-src 'self' 'wasm-unsafe-eval';" in page_csp
    assert "unsafe" not in page_csp.replace("'wasm-unsafe-eval'", "")
    assert answers["page"].headers["permissions-policy"].startswith("camera=(self)")
    assert answers["health"].headers["content-security-policy"].startswith("default-src 'none'")


# ---- non-UTF-8 file names ---------------------------------------------------------------------------------
def test_a_meme_whose_file_name_is_not_utf8(tmp_path, shared):
    """A meme saved as b"caf\\xe9.jpg" (Latin-1 bytes, allowed by Linux) is searched and served."""
    from facial_search.indexing import build_index

    folder = tmp_path / "memes"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"
    src = shared / "data" / "memes" / "imgflip" / "Success-Kid.jpg"
    with open(raw, "wb") as f:
        f.write(src.read_bytes())
    shutil.copy(shared / "data" / "memes" / "imgflip" / "Bad-Luck-Brian.jpg", folder / "Bad-Luck-Brian.jpg")
    out = tmp_path / "odd.fsindex"
    build_index([folder], out, workers=1, progress=False)
    odd_pool = SearchPool(out, 1)
    try:
        with TestClient(create_app(pool=odd_pool)) as c:
            r = post_image(c, src.read_bytes(), name="kid.jpg", k=2)
            assert r.status_code == 200, r.text
            matches = r.json()["faces"][0]["matches"]
            top = matches[0]
            assert top["source"].endswith("/caf\ufffd.jpg")
            assert top["title"] == "caf\ufffd"
            img = c.get(f"/api/memes/{top['id']}/image")
            assert img.status_code == 200
            assert img.content == src.read_bytes()
            assert img.headers["content-type"] == "image/jpeg"
    finally:
        odd_pool.close()


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
    r = client.get(f"/api/memes/{unknown}/image")
    assert r.status_code == 404 and r.json() == {"detail": f"no meme with id {unknown}"}
    for bad in ("abc", "-1", "1.5", "1e3", "%2e%2e", "0x10", "99999999999999999999999"):
        r = client.get(f"/api/memes/{bad}/image")
        assert r.status_code in (404, 422), bad


@pytest.mark.parametrize(
    "path",
    [
        "/api/memes/../../../etc/passwd",
        "/api/memes/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        "/static/../__init__.py",
        "/static/%2e%2e/__init__.py",
        "/static/..%2f..%2fpipeline.py",
        "/docs-assets/index.html",  # Swagger UI's demo page (it points at petstore.swagger.io): not served
        "/docs-assets/..%2f..%2f__init__.py",
        "/etc/passwd",
    ],
)
def test_nothing_outside_the_index_is_reachable(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422)
    assert b"import" not in r.content and b"root:" not in r.content and b"petstore" not in r.content


# ---- page and docs ----------------------------------------------------------------------------------------
def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<video" in r.text and 'id="file"' in r.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_openapi_is_generated_from_the_models(client):
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/api/search"]["post"]
    schema = search["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["image"]["format"] == "binary" and schema["required"] == ["image"]
    assert {"200", "408", "413", "415", "422", "503"} <= set(search["responses"])
    ok = search["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SearchDocument"}
    for code in ("413", "415", "422"):
        assert search["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
    models = spec["components"]["schemas"]
    assert set(models["MatchOut"]["properties"]) >= {"rank", "id", "source", "face", "title", "distance", "explain"}
    assert models["FaceOut"]["properties"]["box"]["minItems"] == 4
    assert set(models["Health"]["properties"]) == {"status", "faces", "embedder", "workers"}
    health = spec["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health["$ref"].endswith("/Health")
    assert "get" in spec["paths"]["/api/memes/{meme_id}/image"]
    assert "/docs" not in spec["paths"] and "/" not in spec["paths"]


def test_docs_page_loads_only_our_files(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
    assert len(refs) >= 3, refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        got = client.get(ref)
        assert got.status_code == 200, ref
        assert got.headers["content-type"].split(";")[0] in {"text/javascript", "text/css", "image/png"}
    assert "'validatorUrl': null" in r.text.replace('"', "'")  # no badge from validator.swagger.io
    # the inline script runs under the page's CSP by its hash, nothing else inline
    import base64
    import hashlib

    csp = r.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", r.text, flags=re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]


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


# ---- the app's own pool, from its lifespan ----------------------------------------------------------------
def test_create_app_builds_and_closes_its_pool_in_the_lifespan(meme_index, shared):
    app = create_app(ServeConfig(index=meme_index, workers=1))
    with TestClient(app) as c:
        assert c.get("/healthz").json()["workers"] == 1
        r = post_image(c, (shared / "data" / "faces" / "single_face.jpg").read_bytes())
        assert r.status_code == 200 and len(r.json()["faces"]) == 1


# ---- the command ------------------------------------------------------------------------------------------
def test_facial_search_serve_command(served, shared):
    port, base = served["port"], served["base"]
    assert re.search(rf"http://localhost:{port}/", served["printed"]), served["printed"]
    assert served["health"]["workers"] == 2
    assert "<video" in httpx.get(base + "/", timeout=10).text
    photo = (shared / "data" / "faces" / "single_face.jpg").read_bytes()
    r = httpx.post(f"{base}/api/search", files={"image": ("me.jpg", photo, "image/jpeg")}, timeout=60)
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    # loopback only by default
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    if listening:
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening


def run_serve(*args: str, env: dict | None = None, pre: str | None = None) -> subprocess.CompletedProcess:
    """``facial-search serve ARGS`` to its end (it must fail: every case here is a mistake)."""
    cmd = [*CLI, "serve", *args]
    if pre is not None:  # run the CLI after some Python (e.g. hiding an installed package)
        code = f"{pre}; import sys; from facial_search.cli import main; sys.exit(main())"
        cmd = [sys.executable, "-c", code, "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env or os.environ.copy())


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facial-search: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "http://" not in r.stdout and "https://" not in r.stdout, r.stdout  # no URL before failing
    return lines[0]


def test_serve_reports_a_missing_index(tmp_path):
    r = run_serve("--index", str(tmp_path / "nope.fsindex"), "--port", str(free_port()))
    assert_one_line_error(r, "nope.fsindex")


@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_serve_refuses_an_out_of_range_port(meme_index, port):
    assert_one_line_error(run_serve("--index", str(meme_index), "--port", port), f"--port {port}", "1 to 65535")


def test_serve_refuses_a_port_in_use(meme_index):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_serve("--index", str(meme_index), "--port", str(port))
    assert_one_line_error(r, f"port {port} is in use")
    assert r.stdout == ""


def test_serve_refuses_a_bad_body_timeout(meme_index):
    assert_one_line_error(run_serve("--index", str(meme_index), "--body-timeout", "0"), "--body-timeout")


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A real self-signed certificate and its key (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is absent")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_serve_names_a_missing_certificate_or_key(meme_index, tmp_path, tls_pair):
    cert, key = tls_pair
    missing = tmp_path / "missing-cert.pem"
    r = run_serve("--index", str(meme_index), "--certfile", str(missing), "--keyfile", str(key))
    assert_one_line_error(r, str(missing), "no such certificate")
    r = run_serve("--index", str(meme_index), "--certfile", str(cert), "--keyfile", str(tmp_path / "gone-key.pem"))
    assert_one_line_error(r, "gone-key.pem", "no such private key")


def test_serve_names_a_garbage_certificate_or_key(meme_index, tmp_path, tls_pair):
    cert, key = tls_pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    r = run_serve("--index", str(meme_index), "--certfile", str(garbage), "--keyfile", str(key))
    assert_one_line_error(r, f"{garbage}: not a PEM certificate")
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
    r = run_serve("--index", str(meme_index), "--certfile", str(cert), "--keyfile", str(bad_key))
    assert_one_line_error(r, f"{bad_key}: not a PEM private key for {cert}")
    r = run_serve("--index", str(meme_index), "--certfile", str(cert), "--keyfile", str(cert))  # a cert as key
    assert_one_line_error(r, f"{cert}: not a PEM private key")
    r = run_serve("--index", str(meme_index), "--keyfile", str(key))
    assert_one_line_error(r, "--keyfile", "needs --certfile")


def test_serve_https_with_a_real_certificate(meme_index, shared, tls_pair):
    cert, key = tls_pair
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--index", str(meme_index), "--port", str(port), "--workers", "1", "--certfile", str(cert),
         "--keyfile", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        printed = proc.stdout.readline() + proc.stdout.readline()
        assert f"https://localhost:{port}/" in printed, printed
        base = f"https://127.0.0.1:{port}"
        health = wait_healthy(base, proc, verify=False)
        assert health.status_code == 200 and health.json()["workers"] == 1
        with pytest.raises(httpx.TransportError):  # it is TLS: plain HTTP is not answered as HTTP
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).raise_for_status()
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_without_fastapi_says_what_to_install(meme_index):
    """With fastapi not importable, one line with the pip command (not a ModuleNotFoundError traceback)."""
    r = run_serve("--index", str(meme_index), pre="import sys; sys.modules['fastapi'] = None")
    line = assert_one_line_error(r, "fastapi", "pip install fastapi uvicorn python-multipart")
    assert "ModuleNotFoundError" not in line
