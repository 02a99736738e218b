"""The command line, run as a user runs it (subprocesses), on real memes and photos."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import FACES, MEMES, needs_shared
from PIL import Image

from facial_search.errors import SkipReason
from facial_search.index.store import MemeIndex
from facial_search.pipeline import FacialSearch

pytestmark = needs_shared

CLI = [sys.executable, "-m", "facial_search.cli"]


def run(*args, check=False, timeout=600):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "empty": d / "empty.jpg",
        "text": d / "text.jpg",
        "truncated": d / "truncated.jpg",
        "huge": d / "huge.png",
        "grey": d / "grey.png",
        "rgba": d / "rgba.png",
        "gif": d / "anim.gif",
        "noface": d / "free-mountain-vector-01.jpg",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello, I am text\n")
    data = (FACES / "single_face.jpg").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    Image.new("1", (20000, 20000)).save(files["huge"])
    Image.open(FACES / "single_face.jpg").convert("L").save(files["grey"])
    shutil.copy(FACES / "Image_with_alpha.png", files["rgba"])
    shutil.copy(FACES / "no_time_for_that_tiny.gif", files["gif"])
    shutil.copy(FACES / "free-mountain-vector-01.jpg", files["noface"])
    return files


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "huge", "gif", "noface"])
def test_search_bad_input_is_one_clear_line(kind, bad_files, meme_index):
    path = bad_files[kind]
    r = run("search", path, "--index", meme_index)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("facial-search: error: ") and str(path) in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("kind", ["grey", "rgba"])
def test_search_grey_and_rgba_photos_work(kind, bad_files, meme_index):
    r = run("search", bad_files[kind], "--index", meme_index, "--json", check=True)
    doc = json.loads(r.stdout)
    assert len(doc["faces"]) == 1 and len(doc["faces"][0]["matches"]) == 3


def test_search_json_multi_face(meme_index):
    r = run("search", FACES / "multi_face.jpg", "--index", meme_index, "--json", "-k", "3", check=True)
    doc = json.loads(r.stdout)
    assert set(doc) == {"image", "faces"} and doc["image"].endswith("multi_face.jpg")
    assert len(doc["faces"]) >= 2
    for face in doc["faces"]:
        assert set(face) == {"box", "matches"} and len(face["box"]) == 4
        ms = face["matches"]
        assert [m["rank"] for m in ms] == [1, 2, 3]
        assert all(set(m) == {"rank", "id", "source", "face", "title", "distance"} for m in ms)
        d = [m["distance"] for m in ms]
        assert d == sorted(d)
        assert all(Path(m["source"]).is_file() for m in ms)
    assert r.stderr == ""  # MediaPipe's native log lines stay out of the terminal
    with FacialSearch.open(meme_index) as fs:  # each distance is the Euclidean one, query face to meme face
        query = [fm.embedding for fm in fs.search(FACES / "multi_face.jpg", k=3)]
        ids = fs.index.ids.tolist()
        assert len(query) == len(doc["faces"])
        for q, face in zip(query, doc["faces"], strict=True):
            ms = face["matches"]
            assert all(fs.index.entry(m["id"]).source == m["source"] for m in ms)
            meme = np.stack([fs.index.embeddings[ids.index(m["id"])] for m in ms])
            assert np.allclose(np.linalg.norm(meme - q, axis=1), [m["distance"] for m in ms], atol=1e-4)


def test_search_writes_picture_and_page(meme_index, tmp_path):
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    run("search", FACES / "multi_face.jpg", "--index", meme_index, "--out", png, check=True)
    run("search", FACES / "multi_face.jpg", "--index", meme_index, "--out", page, check=True)
    with Image.open(png) as im:
        assert im.width > 400 and im.height > 400
    assert page.read_text().count("class=match") >= 6


def test_info_json(meme_index):
    doc = json.loads(run("info", meme_index, "--json", check=True).stdout)
    index = MemeIndex.load(meme_index)
    assert {k: doc[k] for k in ("embedder", "dim", "images", "faces", "skipped")} == {
        "embedder": index.embedder.name, "dim": index.embedder.dim, "images": len(index.files),
        "faces": len(index), "skipped": len(index.skipped)}  # fmt: skip
    assert doc["backend"] == "file (exact)" and doc["uri"] == str(meme_index)
    assert doc["pictures"] == len(set(index.source_groups().tolist()))
    assert doc["faces"] > 0 and doc["skipped"] > 0


def test_index_reports_and_skips_bad_files_then_adds_only_new(bad_files, sample_memes, tmp_path):
    folder = tmp_path / "memes"
    (folder / "sub").mkdir(parents=True)
    for p in sample_memes[:4]:
        shutil.copy(p, folder / "sub" / p.name)
    for p in bad_files.values():
        shutil.copy(p, folder / p.name)
    out = tmp_path / "x.fsindex"
    r = run("index", folder, "--out", out, "--no-progress", "--titles", MEMES.parent / "imgflip.csv", check=True)
    index = MemeIndex.load(out)
    assert len(index.files) == 12
    skipped = index.skipped
    expect = {"empty": SkipReason.NOT_AN_IMAGE, "text": SkipReason.NOT_AN_IMAGE, "truncated": SkipReason.UNREADABLE,
              "huge": SkipReason.TOO_LARGE}  # fmt: skip
    for kind, reason in expect.items():
        assert SkipReason.parse(skipped[str((folder / bad_files[kind].name).resolve())]) is reason, kind
    assert skipped[str((folder / "free-mountain-vector-01.jpg").resolve())] == "no face"
    assert "skipped this run" in r.stdout and "no face" in r.stdout
    titles = {Path(e.source).name: e.title for e in index.entries()}
    with open(MEMES.parent / "imgflip.csv", newline="") as f:
        csv_titles = {row["file"]: row["title"] for row in csv.DictReader(f)}
    assert {n: csv_titles[n] for n in titles if n in csv_titles} == {
        p.name: csv_titles[p.name] for p in sample_memes[:4]
    }
    assert titles["grey.png"] == "grey" and titles["rgba.png"] == "rgba"  # not in the CSV: from the file name
    faces_before = len(index)
    assert faces_before >= 5  # 4 memes + grey + rgba photos

    shutil.copy(sample_memes[4], folder / sample_memes[4].name)  # grow the folder
    r = run("index", folder, "--out", out, "--no-progress", check=True)
    assert "1 processed, 12 unchanged" in r.stdout
    assert len(MemeIndex.load(out).files) == 13

    other = tmp_path / "elsewhere"  # a file indexed from another folder stays
    other.mkdir()
    shutil.copy(sample_memes[5], other / sample_memes[5].name)
    run("index", other, "--out", out, "--no-progress", check=True)
    before = MemeIndex.load(out)
    gone = (folder / "sub" / sample_memes[0].name).resolve()  # a meme deleted from the folder leaves the index
    gone_faces = sum(e.source == str(gone) for e in before.entries())
    gone.unlink()
    r = run("index", folder, "--out", out, "--no-progress", check=True)
    assert "0 processed, 12 unchanged, 1 gone from the folder removed" in r.stdout
    after = MemeIndex.load(out)
    assert gone_faces >= 1 and len(after) == len(before) - gone_faces
    assert set(after.files) == set(before.files) - {str(gone)} and len(after.files) == 13
    assert all(e.source != str(gone) for e in after.entries())


def test_index_finds_small_faces_in_tiles_unless_no_tiles(tmp_path):
    meme = MEMES / "Friends-Joey-teached-french.jpg"  # four small panel faces
    run("index", meme, "--out", tmp_path / "plain.fsindex", "--no-progress", "--no-tiles", check=True)
    run("index", meme, "--out", tmp_path / "tiled.fsindex", "--no-progress", check=True)
    assert len(MemeIndex.load(tmp_path / "plain.fsindex")) == 0
    assert len(MemeIndex.load(tmp_path / "tiled.fsindex")) == 4


def test_index_update_retries_faceless_files_with_tiles_and_upgrades_format_1(sample_memes, tmp_path):
    folder = tmp_path / "memes"
    folder.mkdir()
    panels = folder / "Friends-Joey-teached-french.jpg"  # four small faces: found only in tiles
    for p in [MEMES / panels.name, *sample_memes[:2]]:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "x.fsindex"
    run("index", folder, "--out", out, "--no-progress", "--no-tiles", check=True)
    assert MemeIndex.load(out).skipped == {str(panels.resolve()): "no face"}
    r = run("index", folder, "--out", out, "--no-progress", check=True)
    assert "1 processed, 2 unchanged" in r.stdout  # only the faceless file is looked at again
    index = MemeIndex.load(out)
    assert index.files[str(panels.resolve())].faces == 4 and not index.skipped
    assert "0 processed, 3 unchanged" in run("index", folder, "--out", out, "--no-progress", check=True).stdout
    faces = len(index)

    entries = [{"id": e.id, "source": e.source, "face": e.face, "box": list(e.box), "title": e.title}
               for e in index.entries()]  # fmt: skip
    recs = {s: {"size": r.size, "mtime_ns": r.mtime_ns, "faces": r.faces, "skipped": r.skipped}
            for s, r in index.files.items()}  # fmt: skip
    meta = {"format": "facial-search-index", "version": 1, "embedder": vars(index.embedder),
            "next_id": index.next_id, "entries": entries, "files": recs}  # fmt: skip
    with zipfile.ZipFile(out, "w") as z:  # the same index as format 1 wrote it: no picture hashes, no finder
        z.writestr("meta.json", json.dumps(meta))
        for name, a in (("embeddings.npy", index.embeddings), ("ids.npy", index.ids)):
            buf = io.BytesIO()
            np.save(buf, np.array(a))
            z.writestr(name, buf.getvalue())
    assert MemeIndex.load(out).entries()[0].picture_hash is None
    r = run("index", folder, "--out", out, "--no-progress", check=True)
    assert "3 processed, 0 unchanged" in r.stdout
    index = MemeIndex.load(out)
    assert len(index) == faces and all(e.picture_hash for e in index.entries())


def test_index_survives_sigkill(sample_memes, tmp_path):
    out = tmp_path / "k.fsindex"
    run("index", *sample_memes[:3], "--out", out, "--no-progress", check=True)
    before = MemeIndex.load(out)
    folder = tmp_path / "many"
    folder.mkdir()
    for p in sorted(MEMES.glob("*.jpg"))[:400]:
        os.symlink(p, folder / p.name)
    for delay in (2.5, 4.0):
        proc = subprocess.Popen(
            [*CLI, "index", str(folder), "--out", str(out), "--no-progress", "--checkpoint-seconds", "0.2", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = MemeIndex.load(out)  # loadable: never torn
        for e in before.entries():  # the previous content is intact
            assert after.entry(e.id) == e
    # a kill in the middle of a save may leave its temporary file; the next save removes it
    after.save(out)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
