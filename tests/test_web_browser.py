"""The page in a real browser: Playwright driving Debian's Chromium, a fake camera fed from a real video.

The page runs with the server's pipeline (``/?pipeline=server``: frames and photos are sent); on-device mode,
the default, is tested in ``test_web_ondevice.py``. The server is the real app (real pipelines, a real meme
index) on a loopback port; Chromium's fake camera plays ``WolfgangLanger_Pexels.mp4``, converted at test time
to MJPEG. Screenshots go to ``$FACIAL_SEARCH_SCREENSHOTS`` (e.g. ``/tmp/web-shots``) when set, else to the
test's tmp folder.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import CHROMIUM, DESKTOP, PHONE, require_browser  # noqa: E402

sync_api = require_browser()
pytest.importorskip("fastapi", reason="the web extra (fastapi, uvicorn, python-multipart) is not installed")

import cv2  # noqa: E402

from facial_search.web import SearchPool, create_app  # noqa: E402

BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
]
TIMEOUT_MS = 90_000  # 2 busy cores: be patient


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("FACIAL_SEARCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def to_mjpeg(src: Path, out: Path) -> Path:
    """A video as an MJPEG file (concatenated JPEG frames), which Chromium's fake camera plays in a loop."""
    cap = cv2.VideoCapture(str(src))
    frames = 0
    with open(out, "wb") as f:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            assert ok
            f.write(jpg.tobytes())
            frames += 1
    cap.release()
    assert frames > 10, f"could not read {src}"
    return out


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory, shared) -> Path:
    out = tmp_path_factory.mktemp("camera") / "camera.mjpeg"
    return to_mjpeg(shared / "data" / "videos" / "WolfgangLanger_Pexels.mp4", out)


@pytest.fixture(scope="module")
def server(meme_index):
    """The app on a free loopback port, in a thread (uvicorn), over a pool of 2 pipelines."""
    import uvicorn

    pool = SearchPool(meme_index, 2)
    srv = uvicorn.Server(
        uvicorn.Config(create_app(pool=pool), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "pool": pool}
    srv.should_exit = True
    thread.join(10)
    pool.close()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


def launch(playwright, camera, *, grant: bool = True):
    """Debian's Chromium whose fake camera plays ``camera``; ``grant=False`` refuses camera access."""
    permission = "--use-fake-ui-for-media-stream" if grant else "--deny-permission-prompts"
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[*BASE_FLAGS, permission, f"--use-file-for-fake-video-capture={camera}"],
    )


@pytest.fixture(scope="module")
def browser(playwright, fake_camera):
    """Chromium whose camera is granted without a prompt and plays the video."""
    b = launch(playwright, fake_camera)
    yield b
    b.close()


class SearchLog:
    """The ``/api/search`` answers the page received (to check what it shows came from the server)."""

    def __init__(self, page):
        self.docs: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        page.on("response", self._on)
        page.on("request", self._sent)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._done)
        # record the size of every picture the page sends (Chromium does not expose multipart blob bodies)
        page.add_init_script(
            """(() => {
                window.__sent = [];
                const fetch0 = window.fetch;
                window.fetch = function (url, opts) {
                    const img = opts && opts.body instanceof FormData && opts.body.get('image');
                    if (img) createImageBitmap(img).then(b => window.__sent.push([b.width, b.height]), () => {});
                    return fetch0.apply(this, arguments);
                };
            })()"""
        )

    def _sent(self, request):
        if "/api/search" not in request.url:
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self, request):
        if "/api/search" in request.url:
            self.in_flight -= 1

    def _on(self, response):
        if "/api/search" in response.url and response.status == 200:
            try:
                self.docs.append(response.json())
            except Exception:  # the page navigated away mid-read
                pass


def shown_faces(page) -> list[list[dict]]:
    """The matches on the page, per face section: id, title, image src and load state."""
    return page.eval_on_selector_all(
        "#results .face",
        """secs => secs.map(s => [...s.querySelectorAll('.match')].map(f => ({
            id: Number(f.dataset.id),
            title: f.querySelector('.title').textContent,
            distance: Number(f.dataset.distance),
            src: f.querySelector('img').getAttribute('src'),
            loaded: f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0,
        })))""",
    )


def settled_faces(page) -> list[list[dict]]:
    """A snapshot of the matches taken when all their images are loaded (live updates swap them)."""
    for _ in range(100):
        faces = shown_faces(page)
        if faces and all(m["loaded"] for face in faces for m in face):
            return faces
        page.wait_for_timeout(100)
    return faces


def wait_images_loaded(page):
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .match img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=TIMEOUT_MS,
    )
    page.evaluate(
        "() => Promise.all([...document.querySelectorAll('#results .match img')].map(i => i.decode().catch(() => null)))"
    )


def caught_up(page, log, faces: list[list[dict]]) -> list[list[dict]]:
    """Matches shown, once the answers logged here include what the page shows: the page may draw an answer
    a moment before Playwright hands that response to this process (the assertion itself is unchanged)."""
    for _ in range(50):
        answers = [[(m["id"], m["title"]) for m in f["matches"]] for d in log.docs for f in d["faces"]]
        if all([(m["id"], m["title"]) for m in face] in answers for face in faces):
            break
        page.wait_for_timeout(100)
        faces = settled_faces(page)
    return faces


def assert_from_server(faces_shown: list[list[dict]], docs: list[dict], pool) -> None:
    """Every face shown is one face of an answer of the server, its top 3 in order, with titles and images."""
    assert docs, "the page showed matches but no /api/search answer was seen"
    answers = [[(m["id"], m["title"]) for m in f["matches"]] for d in docs for f in d["faces"]]
    for face in faces_shown:
        assert [(m["id"], m["title"]) for m in face] in answers
        for m in face:
            assert m["src"] == f"/api/memes/{m['id']}/image"
            assert m["loaded"], m
            assert m["title"] == pool.index.entry(m["id"]).title


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_camera_shows_three_memes_live(browser, server, shots, size):
    context = browser.new_context(**(PHONE if size == "phone" else DESKTOP))
    try:
        page = context.new_page()
        log = SearchLog(page)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"] + "/?pipeline=server")
        page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)
        wait_images_loaded(page)
        page.wait_for_timeout(1500)  # live: a few more frames go by
        faces = caught_up(page, log, settled_faces(page))
        assert len(faces) == 1 and len(faces[0]) == 3, faces
        assert_from_server(faces, log.docs, server["pool"])
        assert len(log.docs) >= 3, "frames are sent several times a second"
        assert all(len(d["faces"]) == 1 for d in log.docs[-3:])
        # downscaled frames, one request in flight at most
        sent = page.evaluate("window.__sent")
        assert sent and all(max(wh) <= 320 for wh in sent), sent[:3]
        assert log.max_in_flight == 1
        assert "face" in page.inner_text("#status").lower()
        # the preview is the camera, mirrored; the distances are on the cards
        transform = page.eval_on_selector("#video", "v => getComputedStyle(v).transform")
        assert transform.startswith("matrix(-1"), transform
        assert page.eval_on_selector("#video", "v => v.videoWidth") > 0
        metas = page.eval_on_selector_all("#results .match .meta", "ms => ms.map(m => m.textContent)")
        assert all("distance" in m for m in metas)
        # the page fits a phone: no sideways scrolling
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shots / f"camera-{size}.png"), full_page=size == "phone")
        assert not errors, errors
    finally:
        context.close()


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_upload_group_photo_shows_matches_for_each_face(browser, server, shared, shots, size):
    context = browser.new_context(**(PHONE if size == "phone" else DESKTOP))
    try:
        page = context.new_page()
        log = SearchLog(page)
        page.goto(server["url"] + "/?pipeline=server")
        page.wait_for_function("() => document.body.dataset.camera === 'on'", timeout=TIMEOUT_MS)
        page.set_input_files("#file", str(shared / "data" / "faces" / "multi_face.jpg"))
        page.wait_for_function(
            "() => document.body.dataset.camera === 'off' && document.querySelector('#photo').src.startsWith('blob:')",
            timeout=TIMEOUT_MS,
        )
        page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('found in the photo')", timeout=TIMEOUT_MS
        )
        wait_images_loaded(page)
        doc = next(d for d in reversed(log.docs) if d["image"] == "multi_face.jpg")
        assert len(doc["faces"]) >= 2
        faces = settled_faces(page)
        assert len(faces) == len(doc["faces"])
        assert all(len(f) == 3 for f in faces)
        assert [[m["id"] for m in f] for f in faces] == [[m["id"] for m in f["matches"]] for f in doc["faces"]]
        assert_from_server(faces, [doc], server["pool"])
        headings = page.eval_on_selector_all("#results .face h2", "hs => hs.map(h => h.textContent)")
        assert headings[:2] == ["Face 1: your memes", "Face 2: your memes"]
        assert "frame mirrored" not in page.eval_on_selector("#frame", "f => f.className")
        page.screenshot(path=str(shots / f"upload-{size}.png"), full_page=size == "phone")
    finally:
        context.close()


def test_dropped_photo_without_a_face_says_so(browser, server, shared, shots):
    context = browser.new_context(**PHONE)
    try:
        page = context.new_page()
        page.goto(server["url"] + "/?pipeline=server")
        data = base64.b64encode((shared / "data" / "faces" / "free-mountain-vector-01.jpg").read_bytes()).decode()
        page.evaluate(
            """b64 => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'mountain.jpg', {type: 'image/jpeg'}));
                window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            data,
        )
        page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('No face seen')", timeout=TIMEOUT_MS
        )
        assert page.eval_on_selector("#status", "s => s.dataset.kind") == "warn"
        assert page.eval_on_selector_all("#results .match", "ms => ms.length") == 0
        page.screenshot(path=str(shots / "no-face-phone.png"))
    finally:
        context.close()


def test_refused_camera_is_said_plainly(playwright, fake_camera, server, shots):
    b = launch(playwright, fake_camera, grant=False)
    try:
        page = b.new_context(**PHONE).new_page()
        page.goto(server["url"] + "/?pipeline=server")
        page.wait_for_function("() => document.body.dataset.camera === 'refused'", timeout=TIMEOUT_MS)
        text = page.inner_text("#status")
        assert "Camera refused" in text and "pick a photo" in text
        page.screenshot(path=str(shots / "camera-refused-phone.png"))
    finally:
        b.close()


def test_camera_without_a_face_says_so(playwright, shared, server, shots, tmp_path):
    camera = to_mjpeg(shared / "data" / "videos" / "no_face.mp4", tmp_path / "no_face.mjpeg")
    b = launch(playwright, camera)
    try:
        page = b.new_context(**DESKTOP).new_page()
        log = SearchLog(page)
        page.goto(server["url"] + "/?pipeline=server")
        page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('No face seen')", timeout=TIMEOUT_MS
        )
        assert "Face the camera" in page.inner_text("#status")
        assert log.docs and all(d["faces"] == [] for d in log.docs)
        assert page.eval_on_selector_all("#results .match", "ms => ms.length") == 0 or len(log.docs) < 3
        page.screenshot(path=str(shots / "camera-no-face-desktop.png"))
    finally:
        b.close()


def test_api_docs_render_offline(browser, server, shots):
    """Swagger UI at /docs renders and runs a request with every host but ours blocked, under our CSP."""
    context = browser.new_context(**DESKTOP)
    outside: list[str] = []

    def only_ours(route):
        if route.request.url.startswith(server["url"] + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_ours)
    try:
        page = context.new_page()
        console: list[str] = []
        errors: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server["url"] + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS)
        assert "facial-search" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path", timeout=TIMEOUT_MS)
        paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent.trim())")
        assert {"/api/search", "/healthz", "/api/memes/{meme_id}/image"} <= {p.replace("\u200b", "") for p in paths}
        # run GET /healthz from the page: connect-src 'self' lets it through
        block = ".opblock-get:has-text('/healthz')"
        page.click(f"{block} .opblock-summary")
        page.click(f"{block} button.try-out__btn")
        page.click(f"{block} button.execute")
        cell = f"{block} .live-responses-table tr.response .response-col_status"
        page.wait_for_selector(cell, timeout=TIMEOUT_MS)
        status = page.inner_text(cell)
        assert status.strip().startswith("200"), status
        page.screenshot(path=str(shots / "api-docs-desktop.png"))
        assert not outside, outside
        assert not [m for m in console if "Content Security Policy" in m or "Refused to" in m], console
        assert not errors, errors
    finally:
        context.close()
