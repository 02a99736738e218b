"""The built-in default: memes indexed, sample photos matched, page + picture written."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from argparse import Namespace

from conftest import FACES, MEMES

from facial_search.demo import download_memes, meme_list, run_demo
from facial_search.index.store import MemeIndex


def test_demo_page_has_three_matches_per_face(sample_memes, tmp_path):
    memes = tmp_path / "memes"
    memes.mkdir()
    for p in sample_memes:
        shutil.copy(p, memes / p.name)
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("multi_face.jpg", "0-f1-su-ph.jpg", "free-mountain-vector-01.jpg"):
        shutil.copy(FACES / n, photos / n)
    out = tmp_path / "out"
    # an index left by another embedder (an older model) is the demo's own: rebuilt, not an error
    assert (
        run_demo(Namespace(memes=str(memes), photos=str(photos), out=str(out), k=3, embedder="blendshapes", model=None))
        == 0
    )
    assert run_demo(Namespace(memes=str(memes), photos=str(photos), out=str(out), k=3, embedder=None, model=None)) == 0
    assert MemeIndex.load(out / "memes.fsindex").embedder.name == "expression"
    page = (out / "index.html").read_text()
    faces = page.count("class=face ")
    assert faces >= 3  # multi_face (2+) and the surprised face
    assert page.count("class=match") == 3 * faces
    assert "free-mountain-vector-01.jpg" in page and "no face" in page  # reported, not fatal
    assert (out / "results.png").stat().st_size > 10_000


def test_shipped_meme_list():
    items = meme_list()
    assert len(items) == 359
    assert all(len(sha) == 64 and url.startswith("https://imgflip.com/") for sha, url in items)


def test_download_memes_checks_sha256(tmp_path):
    from test_assets import QuietHandler

    names = [p.name for p in sorted(MEMES.glob("*.jpg"))[:12]]
    items = [(hashlib.sha256((MEMES / n).read_bytes()).hexdigest(), f"https://imgflip.com/s/meme/{n}") for n in names]
    items.append(("0" * 64, f"https://imgflip.com/s/meme/{names[0]}-tampered.jpg"))  # wrong / missing
    items.append(("0" * 64, "https://imgflip.com/s/meme/" + names[1].replace(".jpg", ".png")))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(MEMES)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dest = tmp_path / "dest"
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        n, errors = download_memes(dest, items, base_url=base, progress=False)
        assert n == 12 and len(errors) == 2  # the bad ones are reported, never fatal
        for sha, url in items[:12]:
            assert hashlib.sha256((dest / url.rsplit("/", 1)[-1]).read_bytes()).hexdigest() == sha
        assert not list(dest.glob("*.part"))
        # a file with the wrong content is discarded, not kept
        (tmp_path / "fake").mkdir()
        (tmp_path / "fake" / names[2]).write_bytes(b"not the meme")
        httpd2 = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path / "fake"))
        )
        threading.Thread(target=httpd2.serve_forever, daemon=True).start()
        n2, errors2 = download_memes(
            tmp_path / "d2", [items[2]], base_url=f"http://127.0.0.1:{httpd2.server_address[1]}", progress=False
        )
        httpd2.shutdown()
        httpd2.server_close()
        assert n2 == 0 and "sha256 mismatch" in errors2[0] and not (tmp_path / "d2" / names[2]).exists()
    finally:
        httpd.shutdown()
        httpd.server_close()
