"""The built-in default: memes indexed, sample photos matched, page + picture written."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from helpers import FACES, MEMES, closed_port, serve_folder

from facial_search.demo import DemoConfig, download_memes, meme_list, run_demo
from facial_search.errors import InputNotFoundError, OptionError
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
    assert run_demo(DemoConfig(memes=memes, photos=photos, out=out, k=3, embedder="blendshapes")) == 0
    assert MemeIndex.load(out / "memes.fsindex").embedder.name == "blendshapes"
    assert run_demo(DemoConfig(memes=str(memes), photos=str(photos), out=str(out), k=3)) == 0
    assert MemeIndex.load(out / "memes.fsindex").embedder.name == "expression"
    page = (out / "index.html").read_text()
    faces = page.count("class=face ")
    assert faces >= 3  # multi_face (2+) and the surprised face
    assert page.count("class=match") == 3 * faces
    assert "free-mountain-vector-01.jpg" in page and "no face" in page  # reported, not fatal
    assert (out / "results.png").stat().st_size > 10_000
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "memes.fsindex", "results.png"} <= names and not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "config, error, text",
    [
        (DemoConfig(photos="no-such-folder", memes="."), InputNotFoundError, "no-such-folder: no such photo folder"),
        (DemoConfig(photos=".", memes="no-such-memes"), InputNotFoundError, "no-such-memes: no such meme folder"),
        (DemoConfig(photos=".", memes=".", k=0), OptionError, "-k: must be from 1"),
    ],
)
def test_demo_checks_its_inputs_before_any_work(config, error, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=text):
        run_demo(DemoConfig(**{**config.__dict__, "out": tmp_path / "out"}))
    assert not (tmp_path / "out").exists()


def test_shipped_meme_list():
    items = meme_list()
    assert len(items) == 359
    assert all(len(sha) == 64 and url.startswith("https://imgflip.com/") for sha, url in items)
    assert len({sha for sha, _ in items}) > 350  # real digests, not a placeholder repeated


def test_download_memes_checks_sha256(shared, tmp_path):
    names = [p.name for p in sorted(MEMES.glob("*.jpg"))[:12]]
    items = [(hashlib.sha256((MEMES / n).read_bytes()).hexdigest(), f"https://imgflip.com/s/meme/{n}") for n in names]
    items.append(("0" * 64, f"https://imgflip.com/s/meme/{names[0]}-tampered.jpg"))  # missing: HTTP 404
    items.append(("0" * 64, "https://imgflip.com/s/meme/" + names[1].replace(".jpg", ".png")))
    dest = tmp_path / "dest"
    with serve_folder(MEMES) as base:
        n, errors = download_memes(dest, items, base_url=base, progress=False)
    assert n == 12 and len(errors) == 2  # the bad ones are reported, never fatal
    assert all(e.startswith(base) and "HTTP 404" in e and "\n" not in e for e in errors)
    for sha, url in items[:12]:
        assert hashlib.sha256((dest / url.rsplit("/", 1)[-1]).read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)  # no temporary or failed file left

    # a file with the wrong content is discarded, not kept
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / names[2]).write_bytes(b"not the meme")
    with serve_folder(tmp_path / "fake") as fake:
        n2, errors2 = download_memes(tmp_path / "d2", [items[2]], base_url=fake, progress=False)
    assert n2 == 0 and len(errors2) == 1 and "sha256 mismatch" in errors2[0]
    assert list((tmp_path / "d2").iterdir()) == []


def test_download_memes_keeps_good_files_and_survives_a_dead_server(shared, tmp_path):
    name = sorted(MEMES.glob("*.jpg"))[0].name
    sha = hashlib.sha256((MEMES / name).read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copy(MEMES / name, dest / name)
    other = sorted(MEMES.glob("*.jpg"))[1].name
    items = [(sha, f"https://imgflip.com/s/meme/{name}"), ("1" * 64, f"https://imgflip.com/s/meme/{other}")]
    n, errors = download_memes(dest, items, base_url=closed_port(), progress=False, timeout=5)
    assert n == 1  # the file already there with its sha256 needs no server
    assert len(errors) == 1 and "Connection refused" in errors[0] and other in errors[0]
    assert sorted(p.name for p in dest.iterdir()) == [name]


def test_demo_indexes_videos_and_shows_their_moments(sample_memes, tmp_path):
    """Videos beside the memes (issue 18): indexed as moments; the page shows each photo's nearest moments
    with their times, and a video without a face is reported by the index, never fatal."""
    from helpers import VIDEOS

    memes, photos, videos = tmp_path / "memes", tmp_path / "photos", tmp_path / "videos"
    for d in (memes, photos, videos):
        d.mkdir()
    for p in sample_memes[:6]:
        shutil.copy(p, memes / p.name)
    shutil.copy(FACES / "0-f15-hao-ph.jpg", photos / "happy.jpg")
    for n in ("single_face.mp4", "no_face.mp4"):
        shutil.copy(VIDEOS / n, videos / n)
    out = tmp_path / "out"
    assert run_demo(DemoConfig(memes=memes, photos=photos, out=out, k=2, videos=videos)) == 0
    index = MemeIndex.load(out / "memes.fsindex")
    moments = [e for e in index.entries() if e.t_start is not None]
    assert moments and {e.source for e in moments} == {str(videos / "single_face.mp4")}
    page = (out / "index.html").read_text()
    assert "happy.jpg · moments" in page
    assert page.count("class=match") == 2 * page.count("class=face ")
    assert "0:00." in page  # a moment's time span, e.g. 0:00.8-0:02.4
    with pytest.raises(InputNotFoundError, match="no such video folder"):
        run_demo(DemoConfig(memes=memes, photos=photos, out=out, videos=tmp_path / "nope"))
