"""Private mode: the page holds the whole index (``GET /api/index/export``) and searches it itself.

Against the real app (real pipelines, a real meme index) in a real browser (Debian's Chromium driven by
Playwright, MediaPipe and ONNX Runtime as WebAssembly, Chromium's fake camera playing
``WolfgangLanger_Pexels.mp4``):

- the export document holds the index's own embeddings, ids, picture groups and titles (and answers 304 to
  its ETag); thumbnails are small JPEGs, cached;
- the page's search of it gives the answers of ``POST /api/search/vectors`` for the same vectors;
- once private mode is on, the page asks the server for nothing but static files, and it still finds memes from
  the camera after the server is stopped.

Screenshots (phone and desktop, private mode) go to ``$FACIAL_SEARCH_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import CAMERA_FLAGS as FLAGS  # noqa: E402
from helpers import CHROMIUM, DESKTOP, PHONE, require_browser  # noqa: E402

sync_api = require_browser(vendor=True)

import httpx  # noqa: E402
from helpers import FACES, VIDEOS, LiveServer, write_mjpeg  # noqa: E402
from PIL import Image  # noqa: E402

from facial_search.io.images import load_image  # noqa: E402
from facial_search.web import export as ex  # noqa: E402
from facial_search.web.ondevice import embedder_label  # noqa: E402

TIMEOUT_MS = 120_000
#: Paths private mode may ask for once it is on: static files, the models, the index, the thumbnails.
STATIC = re.compile(
    r"^/($|static/|vendor/|models/|icons/|manifest\.webmanifest$|sw\.js$|api/ondevice$|api/index/export$"
    r"|api/memes/\d+/thumb$)"
)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("FACIAL_SEARCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(pool):
    """The app on a free loopback port; a test may stop it (and must start it again)."""
    srv = LiveServer(pool).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, shared):
    camera = write_mjpeg(VIDEOS / "WolfgangLanger_Pexels.mp4", tmp_path_factory.mktemp("camera") / "camera.mjpeg")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"]
        )
        yield b
        b.close()


def go_private(page, base: str) -> None:
    """Open the page, wait for the on-device pipeline, switch private mode on and wait for it."""
    page.goto(base + "/")
    assert page.evaluate("window.facialSearch.ready") == "device", page.inner_text("#mode")
    page.check("#private-toggle")
    page.wait_for_function("() => window.facialSearch.private === 'on'", timeout=TIMEOUT_MS)
    assert page.inner_text("#mode").startswith("Private: nothing but static files goes over the network")
    assert page.eval_on_selector("body", "b => b.dataset.private") == "on"


def wait_for_matches(page, at_least_updates: int = 0) -> None:
    page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)
    page.wait_for_function(
        f"() => Number(document.querySelector('#results').dataset.updates || 0) > {at_least_updates}",
        timeout=TIMEOUT_MS,
    )


# ---- the export document ------------------------------------------------------------------------------------
def test_export_holds_the_index(server, pool):
    index = pool.index
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.get("/api/index/export")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-cache"
        doc = r.json()
        assert http.get("/api/index/export", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        # sent gzip-compressed (httpx asks for it and decodes it): HEAD has the compressed length too
        assert http.head("/api/index/export").headers["content-length"] == str(r.num_bytes_downloaded)
        schema = http.get("/openapi.json").json()
    assert "/api/index/export" in schema["paths"] and "IndexExport" in schema["components"]["schemas"]
    assert doc["format"] == "facial-search-export/1" and doc["embedder"] == embedder_label(index.embedder)
    n, d = index.ntotal, index.embedder.dim
    assert doc["count"] == n and doc["dim"] == d == 64
    emb = np.frombuffer(base64.b64decode(doc["embeddings"]), dtype="<f4").reshape(n, d)
    assert np.array_equal(emb, index.embeddings) and doc["ids"] == index.ids.tolist()
    assert doc["groups"] == index.source_groups().tolist()
    entries = {e.id: e for e in index.entries()}
    for row, i in enumerate(doc["ids"]):
        e = entries[i]
        assert doc["sources"][doc["source"][row]] == e.source and doc["titles"][doc["title"][row]] == e.title
        assert doc["faces"][row] == e.face
    assert len(doc["thumb_ids"]) == len(doc["sources"]) == len({e.source for e in entries.values()})
    # a meme with several faces (Matt-Damon-gets-older.jpg) is one source, one thumbnail, one group
    assert len(doc["sources"]) < n and max(doc["groups"]) + 1 <= len(doc["sources"])
    print(f"export: {len(r.content):,} bytes for {n} faces ({len(doc['sources'])} files)")


def test_thumbnails_are_small_cached_jpegs(server, pool):
    entry = next(e for e in pool.index.entries() if e.title == "Success Kid")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.get(f"/api/memes/{entry.id}/thumb")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"] == "public, max-age=86400"
        assert http.get(f"/api/memes/{entry.id}/thumb", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        assert http.get("/api/memes/999999999/thumb").status_code == 404
        assert http.get("/api/memes/x/thumb").status_code == 422
    thumb = Image.open(io.BytesIO(r.content))
    full = load_image(entry.source)
    assert thumb.format == "JPEG" and max(thumb.size) == min(ex.THUMB_SIDE, max(full.shape[:2]))
    assert abs(thumb.size[0] / thumb.size[1] - full.shape[1] / full.shape[0]) < 0.02
    small = np.asarray(Image.fromarray(full).resize(thumb.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(thumb, dtype=float) - small).mean() < 8  # the meme's picture, not another's
    assert len(r.content) < 40_000


def test_an_index_too_large_for_a_phone_gets_501(pool, monkeypatch):
    from fastapi.testclient import TestClient

    from facial_search.web import create_app

    monkeypatch.setattr(ex, "MAX_EXPORT_FACES", pool.index.ntotal - 1)
    with TestClient(create_app(pool=pool)) as client:
        r = client.get("/api/index/export")
    assert r.status_code == 501 and "private mode holds at most" in r.json()["detail"]


# ---- the page's search is the server's ----------------------------------------------------------------------
def query_vectors(pool) -> np.ndarray:
    """Real faces (the Python pipeline's embeddings of sample photos), the index's own embeddings (distance 0,
    duplicates of one picture) and random unit vectors."""
    rows = []
    with pool.checkout() as fs:
        for name in ("single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg"):
            rgb = load_image(FACES / name)
            rows.append(fs.pipeline.embed(rgb, fs.pipeline.faces(rgb)))
    rows.append(np.asarray(pool.index.embeddings[::4][:12]))
    rng = np.random.default_rng(7)
    rand = rng.normal(size=(12, 64))
    rows.append(rand / np.linalg.norm(rand, axis=1, keepdims=True))
    return np.concatenate(rows).astype(np.float32)


def test_private_search_gives_the_server_s_answers(browser, server, pool, shots):
    vectors = query_vectors(pool)
    label = embedder_label(pool.index.embedder)
    context = browser.new_context(**DESKTOP)
    try:
        page = context.new_page()
        go_private(page, server.url)
        compared = 0
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for k, all_faces in ((3, False), (10, False), (1, False), (5, True)):
                for start in range(0, len(vectors), 16):
                    chunk = vectors[start : start + 16].tolist()
                    want = http.post(
                        "/api/search/vectors",
                        json={"vectors": chunk, "k": k, "all_faces": all_faces, "embedder": label, "image": "q"},
                    ).json()
                    got = page.evaluate(
                        "([v, k, a]) => window.facialSearch.privateSearch(v, {k, allFaces: a, image: 'q'})",
                        [chunk, k, all_faces],
                    )
                    assert got["image"] == want["image"] and len(got["faces"]) == len(want["faces"]) == len(chunk)
                    for g, w in zip(got["faces"], want["faces"], strict=True):
                        strip = [{key: m[key] for key in m if key != "distance"} for m in w["matches"]]
                        assert [{key: m[key] for key in m if key != "distance"} for m in g["matches"]] == strip
                        assert [m["distance"] for m in g["matches"]] == pytest.approx(
                            [m["distance"] for m in w["matches"]], abs=2e-6
                        )
                        compared += len(w["matches"])
        assert compared > 500
        wait_for_matches(page)  # and the camera's faces are matched here too
        page.screenshot(path=str(shots / "private-camera-desktop.png"))
    finally:
        context.close()


# ---- nothing but static files, and no server needed ---------------------------------------------------------
def test_private_mode_sends_nothing_and_outlives_the_server(browser, server, shots):
    """A visit with private mode on (as the last one left it): from the first request to the last, the page asks
    for static files only, never sends an embedding, and finds memes with the server stopped."""
    context = browser.new_context(**PHONE)
    context.add_init_script("localStorage.setItem('facial-search.private', '1')")  # switched on in an earlier visit
    requests: list[tuple[str, str]] = []
    try:
        page = context.new_page()
        page.on("request", lambda r: requests.append((r.method, r.url)))
        page.goto(server.url + "/")
        assert page.evaluate("window.facialSearch.ready") == "device", page.inner_text("#mode")
        assert page.evaluate("window.facialSearch.privateReady") == "on", page.inner_text("#mode")
        assert page.is_checked("#private-toggle")
        assert page.inner_text("#mode").startswith("Private: nothing but static files goes over the network")
        wait_for_matches(page)
        updates = int(page.eval_on_selector("#results", "r => r.dataset.updates"))
        frames = page.evaluate("window.facialSearch.frames")
        page.screenshot(path=str(shots / "private-camera-phone.png"), full_page=True)
        server.stop()
        try:
            assert page.evaluate("fetch('/healthz').then(() => 'up', () => 'down')") == "down"
            wait_for_matches(page, updates + 10)  # the camera's faces matched with no server
            assert page.evaluate("window.facialSearch.frames") > frames
            shown = page.eval_on_selector_all(
                "#results .match img", "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.src])"
            )
            assert len(shown) >= 3 and all(ok for ok, _ in shown), shown
            assert all("/thumb" in src for _, src in shown)
            assert page.inner_text("#mode").startswith("Private: nothing but static files goes over the network")
        finally:
            server.start()
    finally:
        context.close()
    asked = [(m, u) for m, u in requests if not u.startswith("blob:")]
    assert any(u.endswith("/api/index/export") for _, u in asked) and any("/thumb" in u for _, u in asked)
    for method, url in asked:
        assert method == "GET", (method, url)
        path = url.removeprefix(server.url)
        assert path.startswith("/") and (STATIC.match(path) or path == "/healthz"), url
    assert not any("/api/search" in u for _, u in asked)
    print(
        f"{len(asked)} requests, all GET of:",
        sorted({re.sub(r"/\d+/", "/N/", u.removeprefix(server.url)) for _, u in asked}),
    )


def test_switching_private_off_sends_embeddings_again(browser, server):
    context = browser.new_context(**DESKTOP)
    posts: list[str] = []
    try:
        page = context.new_page()
        go_private(page, server.url)
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        wait_for_matches(page)
        assert not posts
        page.uncheck("#private-toggle")
        assert page.evaluate("window.facialSearch.private") == "off"
        assert page.evaluate("localStorage.getItem('facial-search.private')") is None
        assert "only their embeddings and blendshape scores are sent" in page.inner_text("#mode")
        page.wait_for_function("() => document.querySelectorAll('#results .match img[src$=\"/image\"]').length >= 3",
                               timeout=TIMEOUT_MS)  # fmt: skip
        assert posts and all(u.endswith("/api/search/vectors") for u in posts)
    finally:
        context.close()
