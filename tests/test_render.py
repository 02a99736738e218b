"""Result pages and pictures: escaped text, names that are not UTF-8, atomic writes (real index, real memes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import FACES, MEMES
from PIL import Image

from facial_search import render
from facial_search.errors import OutputError

#: A Latin-1 file name: not valid UTF-8 (Linux allows any bytes); Python holds it as "caf\udce9.jpg".
ODD_NAME = os.fsdecode(b"caf\xe9.jpg")
SCRIPT_NAME = "<script>alert(1).jpg"


@pytest.fixture(scope="module")
def odd(shared, tmp_path_factory):
    """A real index of three real memes, one under a non-UTF-8 name and one whose name holds markup, and the
    search result of a real face photo against it (k=3: every meme)."""
    from facial_search.indexing import build_index
    from facial_search.pipeline import FacialSearch

    d = tmp_path_factory.mktemp("odd")
    memes = d / "memes"
    memes.mkdir()
    shutil.copy(MEMES / "Success-Kid.jpg", memes / ODD_NAME)
    shutil.copy(MEMES / "Disaster-Girl.jpg", memes / SCRIPT_NAME)
    shutil.copy(MEMES / "Grumpy-Cat.jpg", memes / "Grumpy-Cat.jpg")
    index_path = d / "memes.fsindex"
    index, _ = build_index([memes], index_path, workers=1, progress=False)
    assert len(index) == 3
    with FacialSearch.open(index_path) as fs:
        result = fs.search(FACES / "0-f1-su-ph.jpg", k=3)
    assert {os.path.basename(m.source) for m in result.faces[0].matches} == {ODD_NAME, SCRIPT_NAME, "Grumpy-Cat.jpg"}
    return d, index_path, result


def test_displayable():
    assert render.displayable(ODD_NAME) == "caf\ufffd.jpg"
    assert render.displayable("Café ☕") == "Café ☕"


def test_page_shows_a_non_utf8_name_and_escapes_markup(odd, tmp_path):
    _, _, result = odd
    page = tmp_path / "page.html"
    render.save_html(result, page, title="<script>alert('title')</script>", skipped={"<b>x.jpg": "no face"})
    text = page.read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert "caf\ufffd" in text  # the title made from the undecodable name, U+FFFD for the byte
    assert "<script" not in text.lower() and "<b>x.jpg" not in text
    assert "&lt;script&gt;alert(1)" in text and "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in text
    assert "&lt;b&gt;x.jpg: no face" in text
    assert text.count("class=match") == 3 and text.count("class=face ") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_picture_captions_with_a_non_utf8_name(odd, tmp_path):
    _, _, result = odd
    out = tmp_path / "r.png"
    render.save_picture(result, out)
    with Image.open(out) as im:
        assert im.width > 3 * render.THUMB and im.height >= render.THUMB + 58
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]


def test_search_out_page_with_a_non_utf8_meme_name(odd, tmp_path):
    """``facial-search search --out page.html``, the command line's path, end to end."""
    _, index_path, _ = odd
    page = tmp_path / "page.html"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    r = subprocess.run(
        [sys.executable, "-m", "facial_search", "search", str(FACES / "0-f1-su-ph.jpg"), "--index", str(index_path)]
        + ["--out", str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    text = page.read_text(encoding="utf-8")
    assert "caf\ufffd" in text and text.count("class=match") == 3


def test_unknown_picture_extension_or_missing_folder_is_an_output_error(odd, tmp_path):
    _, _, result = odd
    with pytest.raises(OutputError, match="unknown picture extension '.xyz'"):
        render.save_picture(result, tmp_path / "r.xyz")
    with pytest.raises(OutputError, match="cannot write"):
        render.save_html(result, tmp_path / "missing" / "r.html")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ: POSIX, tried on Linux")
@pytest.mark.parametrize("name", ["r.png", "r.html"])
def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_partial_one(name, odd, tmp_path):
    """A file size limit (as a full disk) stops the write after a few KB: the old file stays as it was."""
    import resource
    import signal

    _, _, result = odd
    out = tmp_path / name
    out.write_bytes(b"the previous result")
    write = render.save_html if name.endswith(".html") else render.save_picture
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        with pytest.raises(OutputError, match="cannot write"):
            write(result, out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert out.read_bytes() == b"the previous result"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    write(result, out)  # without the limit it is replaced
    assert out.stat().st_size > 4096
