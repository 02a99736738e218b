"""Mistakes a careless or hostile user makes, through the real command line (subprocesses) and the library:
each ends in one line ``facial-search: error: <file>: <problem>``, exit status 1, no traceback, nothing lost;
a bad file among many stays a skip."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import FACES, FERPLUS, MEMES, MODELS, needs_shared

from facial_search.errors import SkipReason
from facial_search.index.store import MemeIndex

pytestmark = needs_shared

CLI = [sys.executable, "-m", "facial_search.cli"]
#: Run as root without the capabilities that let root ignore file permissions (chmod 000 then applies).
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def run(*args, timeout=120, prefix=()):
    """The CLI as a user runs it; a hang fails the test (``TimeoutExpired``) instead of hanging the suite."""
    return subprocess.run([*prefix, *CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_error_line(r, *must_contain) -> str:
    """Assert ``r`` failed as a user's mistake must: status 1, one stderr line, no traceback; return the line."""
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("facial-search: error: "), lines[0]
    for text in must_contain:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def _no_dac_works() -> bool:
    try:
        r = subprocess.run([*NO_DAC, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_no_dac = pytest.mark.skipif(not _no_dac_works(), reason="setpriv cannot drop capabilities here")


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    rng = __import__("random").Random(15)
    random_bytes = d / "random.task"
    random_bytes.write_bytes(bytes(rng.randrange(256) for _ in range(20000)))
    truncated = d / "truncated.task"
    data = (MODELS / "face_landmarker.task").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"random": random_bytes, "truncated": truncated}


@pytest.fixture(scope="module")
def small_triplets(tmp_path_factory) -> Path:
    """A triplet file of six real FER+ triplets."""
    lines = (FERPLUS / "triplets_valid.csv").read_text().splitlines()[:7]
    p = tmp_path_factory.mktemp("trip") / "t.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


# -- workers that cannot start ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("command", ["index", "eval"])
@pytest.mark.parametrize("mistake", ["random", "truncated", "embedder"])
def test_a_worker_that_cannot_start_fails_at_once_with_one_line(
    mistake, command, workers, bad_models, small_triplets, tmp_path
):
    """A model file that is no model, or an unknown embedder: one line naming it, with one worker and with the
    pool (which once respawned its dying workers forever); the timeout turns a hang into a failure."""
    opts = ["--embedder", "no-such-embedder"] if mistake == "embedder" else ["--model", bad_models[mistake]]
    out = tmp_path / "x.fsindex"
    if command == "index":
        r = run("index", MEMES / "Success-Kid.jpg", MEMES / "Grumpy-Cat.jpg", FACES / "single_face.jpg",
                "--out", out, "--workers", workers, *opts)  # fmt: skip
    else:
        r = run("eval", small_triplets, "--images", FERPLUS / "FER2013Valid", "--cropped", "--workers", workers, *opts)
    if mistake == "embedder":
        line = one_error_line(r, "no-such-embedder", "available: ")
        assert "expression" in line
    else:
        one_error_line(r, bad_models[mistake], "not a MediaPipe FaceLandmarker model")
    assert not out.exists()  # no empty index left behind


def test_library_raises_the_workers_reason_by_type(bad_models, tmp_path):
    from facial_search.errors import ModelLoadError, UnknownEmbedderError
    from facial_search.indexing import build_index

    files = [MEMES / "Success-Kid.jpg", MEMES / "Grumpy-Cat.jpg", FACES / "single_face.jpg"]
    for workers in (1, 2):
        with pytest.raises(ModelLoadError, match="random.task"):
            build_index(files, tmp_path / "a.fsindex", model_path=bad_models["random"], workers=workers, progress=False)
        with pytest.raises(UnknownEmbedderError):
            build_index(files, tmp_path / "a.fsindex", embedder="nope", workers=workers, progress=False)
    assert not (tmp_path / "a.fsindex").exists()


def test_a_bad_onnx_model_is_a_model_load_error(bad_models, tmp_path):
    from facial_search.embedders.expression import ExpressionEmbedder
    from facial_search.errors import AssetError, ModelLoadError

    onnx = (Path(__file__).parent.parent / "facial_search" / "models" / "expression-v3.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(onnx[: len(onnx) // 2])
    for bad in (bad_models["random"], tmp_path / "half.onnx", MODELS / "face_landmarker.task"):
        with pytest.raises(ModelLoadError, match=str(bad)):
            ExpressionEmbedder(bad)
    with pytest.raises(AssetError, match="not found"):
        ExpressionEmbedder(tmp_path / "missing.onnx")


# -- the host program's process is its own ------------------------------------------------------------------
def test_build_index_in_one_process_leaves_the_hosts_stderr_alone(tmp_path):
    program = textwrap.dedent(f"""
        import os, sys
        before_fd = os.fstat(2)
        before = sys.stderr
        from facial_search.indexing import build_index
        index, report = build_index([{str(MEMES / "Success-Kid.jpg")!r}, {str(FACES / "single_face.jpg")!r}],
                                    {str(tmp_path / "h.fsindex")!r}, workers=1, progress=False)
        after_fd = os.fstat(2)
        assert sys.stderr is before, "sys.stderr replaced"
        assert (after_fd.st_ino, after_fd.st_dev) == (before_fd.st_ino, before_fd.st_dev), "fd 2 redirected"
        assert len(index) == 2
        print("host ok", file=sys.stderr)
    """)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        r = subprocess.run([sys.executable, "-c", program], stderr=f, stdout=subprocess.PIPE, text=True, timeout=120)
    text = err.read_text()
    assert r.returncode == 0, text
    assert text.strip().endswith("host ok")


# -- one bad file is a skip; folders that cannot be read are reported --------------------------------------
def test_bad_files_in_a_folder_are_skips_by_type(tmp_path):
    folder = tmp_path / "memes"
    folder.mkdir()
    shutil.copy(MEMES / "Success-Kid.jpg", folder / "good.jpg")
    (folder / "text.jpg").write_text("I am not a picture\n")
    data = (FACES / "single_face.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "x.fsindex"
    r = run("index", folder, "--out", out, "--no-progress", "--workers", "2")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    index = MemeIndex.load(out)
    reasons = {Path(s).name: SkipReason.parse(why) for s, why in index.skipped.items()}
    assert reasons == {"text.jpg": SkipReason.NOT_AN_IMAGE, "truncated.jpg": SkipReason.UNREADABLE,
                       "empty.jpg": SkipReason.NOT_AN_IMAGE}  # fmt: skip
    assert [Path(e.source).name for e in index.entries()] == ["good.jpg"]
    assert "skipped this run: 2 not an image, 1 unreadable" in r.stdout


def test_a_file_gone_before_it_is_read_is_an_io_skip(tmp_path):
    from facial_search.indexing import _index_one

    r = _index_one(str(tmp_path / "deleted-meanwhile.jpg"))
    assert r.reason is SkipReason.IO_ERROR and SkipReason.parse(r.skipped) is SkipReason.IO_ERROR
    assert r.size == -1 and r.embeddings is None  # recorded so that the next run looks at it again


@needs_no_dac
def test_an_unreadable_subfolder_is_reported_and_its_images_kept(tmp_path):
    folder = tmp_path / "memes"
    (folder / "locked").mkdir(parents=True)
    shutil.copy(MEMES / "Success-Kid.jpg", folder / "good.jpg")
    shutil.copy(MEMES / "Grumpy-Cat.jpg", folder / "locked" / "inside.jpg")
    out = tmp_path / "x.fsindex"
    assert run("index", folder, "--out", out, "--no-progress", "--workers", "1").returncode == 0
    assert len(MemeIndex.load(out).files) == 2
    shutil.copy(MEMES / "Bad-Luck-Brian.jpg", folder / "new.jpg")
    (folder / "locked").chmod(0)
    try:
        r = run("index", folder, "--out", out, "--no-progress", "--workers", "1", prefix=NO_DAC)
    finally:
        (folder / "locked").chmod(0o755)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "not read: 1 folder could not be listed" in r.stdout
    assert f"{(folder / 'locked').resolve()}: Permission denied" in r.stdout
    assert "gone from the folder removed" not in r.stdout
    files = {Path(s).name for s in MemeIndex.load(out).files}
    assert files == {"good.jpg", "inside.jpg", "new.jpg"}  # the unlisted folder's image is not dropped


@needs_no_dac
def test_an_unreadable_triplet_file_is_one_line(small_triplets, tmp_path):
    p = tmp_path / "locked.csv"
    shutil.copy(small_triplets, p)
    p.chmod(0)
    r = run("eval", p, "--images", FERPLUS / "FER2013Valid", prefix=NO_DAC)
    one_error_line(r, p, "Permission denied")


# -- outputs checked before the work -------------------------------------------------------------------------
def _tmpfs(folder: Path, options: str) -> None:
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", str(m)], capture_output=True)


@pytest.mark.parametrize("where", ["no-folder", "parent-is-file", "is-folder", "read-only"])
def test_index_out_that_cannot_be_written_fails_before_any_work(where, tmp_path, mounts):
    (tmp_path / "file").write_text("x")
    out = {"no-folder": tmp_path / "missing" / "x.fsindex", "parent-is-file": tmp_path / "file" / "x.fsindex",
           "is-folder": tmp_path, "read-only": tmp_path / "ro" / "x.fsindex"}[where]  # fmt: skip
    if where == "read-only":
        _tmpfs(tmp_path / "ro", "ro,size=64k")
        mounts.append(tmp_path / "ro")
    r = run("index", MEMES, "--out", out, timeout=60)  # 2,105 memes: only a check made first ends this quickly
    one_error_line(r, out)
    assert r.stdout == "" and "indexing" not in r.stderr  # no summary, no progress: nothing was processed
    assert where == "is-folder" or not out.exists()


def test_index_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, mounts):
    _tmpfs(tmp_path / "full", "size=4k")  # one page: less than the index of 40 memes
    mounts.append(tmp_path / "full")
    out = tmp_path / "full" / "x.fsindex"
    r = run("index", *sorted(MEMES.glob("S*.jpg"))[:40], "--out", out, "--no-progress", "--workers", "1")
    one_error_line(r, "No space left on device")
    left = [p.name for p in (tmp_path / "full").iterdir() if p.name != "x.fsindex.lock"]  # the writers' lock
    assert left == []  # neither the index nor a temporary file


@pytest.mark.parametrize("name", ["result.xyz", "result", "missing/result.png"])
def test_search_out_unknown_or_unwritable_fails_before_searching(name, meme_index, tmp_path):
    out = tmp_path / name
    r = run("search", FACES / "single_face.jpg", "--index", meme_index, "--out", out)
    line = one_error_line(r, out)
    if "." in name and "/" not in name:
        assert "unknown extension '.xyz'" in line and ".png" in line and ".html" in line
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("name", ["r.png", "r.html"])
def test_search_out_on_a_full_disk_is_one_line_and_no_partial_file(name, meme_index, tmp_path, mounts):
    _tmpfs(tmp_path / "full", "size=64k")
    mounts.append(tmp_path / "full")
    out = tmp_path / "full" / name
    r = run("search", FACES / "multi_face.jpg", "--index", meme_index, "--out", out)
    one_error_line(r, "No space left on device")
    assert list((tmp_path / "full").iterdir()) == []


# -- options ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, option",
    [
        (["search", FACES / "single_face.jpg", "--index", "X", "-k", "0"], "-k"),
        (["index", FACES / "single_face.jpg", "--out", "X", "--workers", "0"], "--workers"),
        (["index", FACES / "single_face.jpg", "--out", "X", "--checkpoint-seconds", "0"], "--checkpoint-seconds"),
        (["eval", "X", "--images", "Y", "--workers", "-2"], "--workers"),
    ],
)
def test_option_out_of_range_is_one_line(args, option, tmp_path):
    r = run(*[tmp_path / a if a in ("X", "Y") else a for a in args])
    one_error_line(r, f"error: {option}: must be")


@pytest.mark.parametrize("command", ["search", "live", "library"])
def test_a_k_too_large_to_answer_is_one_line_not_a_memory_error(command, meme_index):
    """-k 99999999999 asked numpy for a (1, k) answer: 373 GiB, a MemoryError traceback after the model loaded."""
    from facial_search.errors import OptionError
    from facial_search.index.store import MAX_K

    huge = "99999999999"
    if command == "library":
        index = MemeIndex.load(meme_index)
        with pytest.raises(OptionError, match="k: must be"):
            index.search(index.embeddings[:1], k=int(huge))
        assert index.search(index.embeddings[:1], k=MAX_K)[1].shape == (1, MAX_K)  # the bound itself answers
        return
    if command == "search":
        r = run("search", FACES / "single_face.jpg", "--index", meme_index, "-k", huge)
    else:
        video = FACES.parent / "videos" / "single_face.mp4"
        r = run("live", "--video", video, "--index", meme_index, "--no-window", "-k", huge)
    one_error_line(r, "k", "must be at most")


@pytest.mark.parametrize(
    "args, expect",
    [
        (["search", "MISSING.jpg", "--index", "INDEX"], "MISSING.jpg: no such file"),
        (["search", "DIR", "--index", "INDEX"], "DIR: is a folder"),
        (["search", FACES / "single_face.jpg", "--index", "MISSING.fsindex"], "MISSING.fsindex: "),
        (["info", "DIR"], "DIR: "),
        (["index", "MISSING", "--out", "DIR/x.fsindex"], "MISSING: no such file or folder"),
        (["eval", "MISSING.csv", "--images", "DIR"], "MISSING.csv: no such file"),
        (["eval", FERPLUS / "triplets_valid.csv", "--images", "MISSING"], "MISSING: no such folder"),
    ],
)
def test_missing_path_or_folder_for_a_file_is_one_line(args, expect, meme_index, tmp_path):
    def real(a):
        a = str(a)
        return (
            a.replace("MISSING", str(tmp_path / "missing"))
            .replace("DIR", str(tmp_path))
            .replace("INDEX", str(meme_index))
        )

    one_error_line(run(*map(real, args)), real(expect))


def test_user_error_message_follows_the_type():
    from facial_search.cli import user_error_message
    from facial_search.errors import OptionError, TripletFileError

    assert user_error_message(TripletFileError("t.csv:3: bad\nrow")) == "t.csv:3: bad row"
    assert user_error_message(OptionError("-k: must be at least 1 (got 0)")) == "-k: must be at least 1 (got 0)"
    assert user_error_message(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == (
        "/d/x: No space left on device"
    )
    assert user_error_message(IsADirectoryError(errno.EISDIR, "Is a directory", "/d")) == "/d: Is a directory"
    assert user_error_message(PermissionError(errno.EACCES, "Permission denied", "/d/y")) == "/d/y: Permission denied"
    assert user_error_message(FileNotFoundError("me.jpg: no such file")) == "me.jpg: no such file"  # no errno
    assert user_error_message(OSError(errno.EBADF, "Bad file descriptor")) is None  # a bug, not the user
    assert user_error_message(RuntimeError("boom")) is None
    assert user_error_message(KeyError("x")) is None


# -- triplet and titles files ------------------------------------------------------------------------------------
HEADER = "image_a,image_b,image_c,most_similar,type\n"
#: kind -> (file content, text the error line must hold besides the file name)
BAD_TRIPLETS = {
    "empty": (b"", "empty file"),
    "blank": (b"\n  \n", "empty file"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
    "latin-1": (HEADER.encode() + "caf\xe9.png,b.png,c.png,ab,ONE_CLASS\n".encode("latin-1"), ":2: not UTF-8"),
    "missing-column": (b"image_a,image_b,most_similar\na.png,b.png,ab\n", "missing column image_c"),
    "header-only": (HEADER.encode(), "no triplets"),
    "short-row": (HEADER.encode() + b"fer0028638.png,fer0028639.png,ab,ONE_CLASS\n", ":2: 4 fields"),
    "bad-label": (HEADER.encode() + b"fer0028638.png,fer0028639.png,fer0028640.png,xy,ONE_CLASS\n", ":2: most_similar"),
    "unclosed-quote": (HEADER.encode() + b'"fer0028638.png,fer0028639.png,fer0028640.png,ab,ONE_CLASS\n', "malformed"),
    "no-such-image": (HEADER.encode() + b"fer0028638.png,fer0028639.png,nope.png,ab,ONE_CLASS\n", ":2: image 'nope.png'"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_TRIPLETS))
def test_bad_triplet_file_is_one_line_naming_it(kind, tmp_path):
    content, expect = BAD_TRIPLETS[kind]
    p = tmp_path / f"{kind}.csv"
    p.write_bytes(content)
    r = run("eval", p, "--images", FERPLUS / "FER2013Valid", "--workers", "1")
    one_error_line(r, p, expect)
    assert "nan" not in r.stdout and "triplet_accuracy" not in r.stdout


def test_triplet_file_that_is_missing_or_a_folder(tmp_path):
    one_error_line(run("eval", tmp_path / "none.csv", "--images", FERPLUS / "FER2013Valid"), "none.csv", "no such file")
    one_error_line(run("eval", tmp_path, "--images", FERPLUS / "FER2013Valid"), tmp_path, "is a folder")


def test_eval_of_an_unreadable_triplet_image_is_one_line(small_triplets, tmp_path):
    """Every triplet counts: an image that is no image stops eval with its name (also from the pool)."""
    images = tmp_path / "images"
    images.mkdir()
    rows = [line.split(",") for line in small_triplets.read_text().splitlines()[1:]]
    for name in {n for row in rows for n in row[:3]}:
        shutil.copy(FERPLUS / "FER2013Valid" / name, images / name)
    victim = rows[2][1]
    (images / victim).write_text("not a png")
    r = run("eval", small_triplets, "--images", images, "--workers", "2", "--no-progress")
    one_error_line(r, victim, "not an image")


BAD_TITLES = {
    "empty": (b"", "empty file"),
    "binary": (b"PK\x03\x04\x00\x00\x00", "binary data"),
    "latin-1": ("file,title\nSuccess-Kid.jpg,Gar\xe7on\n".encode("latin-1"), ":2: not UTF-8"),
    "missing-column": (b"file,name\nSuccess-Kid.jpg,Kid\n", "missing column title"),
    "header-only": (b"file,title\n", "no titles"),
    "long-row": (b"file,title\nSuccess-Kid.jpg,Kid,extra\n", ":2: 3 fields"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_TITLES))
def test_bad_titles_file_is_one_line_before_any_work(kind, tmp_path):
    content, expect = BAD_TITLES[kind]
    p = tmp_path / f"{kind}.csv"
    p.write_bytes(content)
    out = tmp_path / "x.fsindex"
    r = run("index", MEMES / "Success-Kid.jpg", "--out", out, "--titles", p, "--workers", "1")
    one_error_line(r, p, expect)
    assert not out.exists() and r.stdout == ""
