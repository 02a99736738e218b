"""The page as a phone app: installable, offline, and each match ready to post.

Against the real app (real pipelines, a real meme index) in Debian's Chromium driven by Playwright, with a
profile on disk (an incognito context cannot install an app or keep a service worker), Chromium's fake camera
playing ``WolfgangLanger_Pexels.mp4``:

- the manifest, the icons and the service worker pass Chromium's installability check (CDP
  ``Page.getInstallabilityErrors``);
- offline: loaded once, the server stopped, the page reloads from the service worker's cache and private mode
  still finds memes from the camera;
- Download gives the meme's own bytes, Copy image puts a PNG of it on the clipboard, Share is hidden where the
  browser has no Web Share (headless Chromium on Linux) or falls back to Download;
- a tap on the preview holds the matches, a second lets them go.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import CAMERA_FLAGS as FLAGS  # noqa: E402
from helpers import CHROMIUM, PHONE, require_browser  # noqa: E402

sync_api = require_browser(vendor=True)

import httpx  # noqa: E402
from helpers import VIDEOS, LiveServer, write_mjpeg  # noqa: E402
from PIL import Image  # noqa: E402

from facial_search.io.images import load_image  # noqa: E402
from facial_search.web.pwa import ICONS, MANIFEST  # noqa: E402

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def server(pool):
    """The app on a free loopback port; a test may stop it (and must start it again)."""
    srv = LiveServer(pool).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def app(tmp_path_factory, shared, server):
    """One Chromium with a profile on disk, the page open on the server (one page for the module)."""
    camera = write_mjpeg(VIDEOS / "WolfgangLanger_Pexels.mp4", tmp_path_factory.mktemp("camera") / "camera.mjpeg")
    profile = tmp_path_factory.mktemp("profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=[*FLAGS, f"--use-file-for-fake-video-capture={camera}"],
            permissions=["clipboard-read", "clipboard-write"],
            accept_downloads=True,
            **PHONE,
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(server.url + "/")
        assert page.evaluate("window.facialSearch.ready") == "device", page.inner_text("#mode")
        assert page.evaluate("window.facialSearch.offlineReady") == "ready"
        yield {"context": context, "page": page}
        context.close()


def live_matches(page) -> None:
    """Wait for the camera's matches, held (a tap on the preview) so that the cards stay put."""
    page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)
    if page.eval_on_selector("body", "b => b.dataset.frozen") != "1":
        page.click("#frame")
    assert page.eval_on_selector("body", "b => b.dataset.frozen") == "1"


# ---- installable ---------------------------------------------------------------------------------------------
def test_manifest_icons_and_service_worker_are_served(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        m = http.get("/manifest.webmanifest")
        assert m.status_code == 200 and m.headers["content-type"].startswith("application/manifest+json")
        doc = m.json()
        assert doc == MANIFEST and doc["display"] == "standalone" and doc["start_url"] == "/"
        for icon in doc["icons"]:
            r = http.get(icon["src"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            img = Image.open(io.BytesIO(r.content))
            assert f"{img.size[0]}x{img.size[1]}" == icon["sizes"] and img.format == "PNG"
        assert {i["sizes"] for i in doc["icons"]} >= {"192x192", "512x512"} and len(doc["icons"]) == len(ICONS)
        assert http.get("/icons/nope.png").status_code == 404
        sw = http.get("/sw.js")
        assert sw.status_code == 200 and sw.headers["content-type"].startswith("text/javascript")
        assert "connect-src 'self'" in sw.headers["content-security-policy"]
        page = http.get("/").text
        assert '<link rel="manifest" href="/manifest.webmanifest">' in page


def test_chromium_finds_the_app_installable(app):
    page = app["page"]
    assert page.evaluate("navigator.serviceWorker.ready.then(r => r.active.scriptURL)").endswith("/sw.js")
    page.wait_for_function("() => !!navigator.serviceWorker.controller", timeout=TIMEOUT_MS)
    cdp = app["context"].new_cdp_session(page)
    try:
        manifest = cdp.send("Page.getAppManifest")
        assert not manifest.get("errors"), manifest["errors"]
        errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
    finally:
        cdp.detach()
    assert errors == [], errors


# ---- offline -----------------------------------------------------------------------------------------------------
def test_offline_the_page_opens_and_private_mode_answers(app, server):
    page = app["page"]
    page.check("#private-toggle")
    page.wait_for_function("() => window.facialSearch.private === 'on'", timeout=TIMEOUT_MS)
    page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)
    server.stop()
    try:
        page.reload()
        assert page.evaluate("fetch('/healthz').then(() => 'up', () => 'down')") == "down"
        assert page.title() == "facial-search: find your meme"
        assert page.evaluate("window.facialSearch.ready") == "device", page.inner_text("#mode")
        assert page.evaluate("window.facialSearch.privateReady") == "on", page.inner_text("#mode")
        assert page.is_checked("#private-toggle")
        page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)
        page.wait_for_function(
            "() => Number(document.querySelector('#results').dataset.updates || 0) > 5", timeout=TIMEOUT_MS
        )
        imgs = page.eval_on_selector_all("#results .match img", "a => a.map(i => i.complete && i.naturalWidth > 0)")
        assert imgs and all(imgs)
        assert page.inner_text("#mode").startswith("Private: nothing but static files goes over the network")
    finally:
        server.start()
        page.uncheck("#private-toggle")  # the next tests use the server's search again
        page.wait_for_function("() => window.facialSearch.private === 'off'")


# ---- post the meme -------------------------------------------------------------------------------------------
def first_match(page, pool):
    fig = page.query_selector("#results .face .match")
    return fig, pool.index.entry(int(fig.get_attribute("data-id")))


def test_download_gives_the_meme_s_own_bytes(app, pool):
    page = app["page"]
    live_matches(page)
    fig, entry = first_match(page, pool)
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        fig.query_selector("a.download").click()
    download = info.value
    assert download.suggested_filename == Path(entry.source).name
    got = hashlib.sha256(Path(download.path()).read_bytes()).hexdigest()
    assert got == hashlib.sha256(Path(entry.source).read_bytes()).hexdigest()


def test_copy_puts_a_png_of_the_meme_on_the_clipboard(app, pool):
    page = app["page"]
    live_matches(page)
    fig, entry = first_match(page, pool)
    page.bring_to_front()
    fig.query_selector("button.copy").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Copied')")
    got = page.evaluate(
        """async () => {
            const items = await navigator.clipboard.read();
            const blob = await items[0].getType('image/png');
            const bytes = new Uint8Array(await blob.arrayBuffer());
            let s = ''; for (const b of bytes) s += String.fromCharCode(b);
            return { types: items[0].types, type: blob.type, data: btoa(s) };
        }"""
    )
    assert got["type"] == "image/png" and "image/png" in got["types"]
    png = Image.open(io.BytesIO(base64.b64decode(got["data"])))
    assert png.format == "PNG"
    want = load_image(entry.source)  # the meme itself: same size, same pixels (within JPEG decoders' rounding)
    rgb = np.asarray(png.convert("RGB"), dtype=float)
    assert rgb.shape == want.shape
    assert np.abs(rgb - want).mean() < 2


def test_share_is_hidden_or_falls_back_to_download(app, pool):
    page = app["page"]
    live_matches(page)
    fig, entry = first_match(page, pool)
    has_share = page.evaluate("typeof navigator.share === 'function' && typeof navigator.canShare === 'function'")
    share = fig.query_selector("button.share")
    if not has_share:  # headless Chromium on Linux: no Web Share
        assert share.is_hidden() and fig.query_selector("a.download").is_visible()
        return
    file_ok = page.evaluate(
        "navigator.canShare({files: [new File([new Uint8Array(4)], 'm.jpg', {type: 'image/jpeg'})]})"
    )
    if file_ok:
        pytest.skip("this browser shares files: its share sheet cannot be driven headless")
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        share.click()
    assert (
        hashlib.sha256(Path(info.value.path()).read_bytes()).digest()
        == hashlib.sha256(Path(entry.source).read_bytes()).digest()
    )


def test_a_tap_on_the_preview_holds_the_matches_and_a_second_lets_them_go(app):
    page = app["page"]
    live_matches(page)
    assert page.is_visible("#frozen") and page.get_attribute("#frame", "aria-pressed") == "true"
    held = page.eval_on_selector("#results", "r => [r.dataset.updates, r.innerHTML]")
    frames = page.evaluate("window.facialSearch.frames")
    page.wait_for_function(f"() => window.facialSearch.frames > {frames + 10}", timeout=TIMEOUT_MS)
    assert page.eval_on_selector("#results", "r => [r.dataset.updates, r.innerHTML]") == held  # camera on, memes held
    page.click("#frame")
    assert page.eval_on_selector("body", "b => b.dataset.frozen") == "0" and page.is_hidden("#frozen")
    page.wait_for_function(
        f"() => Number(document.querySelector('#results').dataset.updates) > {int(held[0]) + 3}", timeout=TIMEOUT_MS
    )
