"""The index file: every damaged kind refused on load (one line on the command line), file names that are not
UTF-8, and the writer lock (two runs into one index, a killed writer)."""

from __future__ import annotations

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
from helpers import FACES, MEMES, SAMPLE_MEMES, needs_shared

from facial_search.errors import IndexFormatError, IndexLockedError, IndexVersionError
from facial_search.index.store import EmbedderInfo, MemeIndex

CLI = [sys.executable, "-m", "facial_search.cli"]
INFO = EmbedderInfo("test", "1", 8)


def _cli(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# -- damaged files ------------------------------------------------------------------------------------------
def _members(path: Path) -> dict:
    """The members of an index file, parsed: ``meta.json`` as a dict, the ``.npy`` as arrays."""
    with zipfile.ZipFile(path) as z:
        return {
            "meta.json": json.loads(z.read("meta.json")),
            "embeddings.npy": np.load(io.BytesIO(z.read("embeddings.npy"))),
            "ids.npy": np.load(io.BytesIO(z.read("ids.npy"))),
        }


def _write(path: Path, members: dict, compression=zipfile.ZIP_DEFLATED) -> None:
    """Write ``members`` (dicts as JSON, arrays as .npy, bytes as they are) as an index archive."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=True)
                value = buf.getvalue()
            elif not isinstance(value, bytes):
                value = json.dumps(value).encode()
            z.writestr(name, value)


def _meta(f):
    return lambda m: f(m["meta.json"])


def _entry(f):
    return lambda m: f(m["meta.json"]["entries"][0])


def _record(f):
    return lambda m: f(next(iter(m["meta.json"]["files"].values())))


def _set(d, key, value):
    d[key] = value


def _arr(name, f):
    def change(m):
        m[name] = f(m[name].copy())

    return change


def _at(a, index, value):
    a[index] = value
    return a


def _duplicate_id(m):
    ids = m["ids.npy"].copy()
    ids[1] = ids[0]
    m["ids.npy"] = ids
    m["meta.json"]["entries"][1]["id"] = int(ids[0])


def _negative_id(m):
    m["ids.npy"] = _at(m["ids.npy"].copy(), 0, -1)
    m["meta.json"]["entries"][0]["id"] = -1


def _stray_entry_id(m):
    m["meta.json"]["entries"][0]["id"] = 10**6


def _id_at_next_id(m):
    m["meta.json"]["next_id"] = int(m["ids.npy"].max())


def _scaled_row(m):
    e = m["embeddings.npy"].copy()
    e[3] *= 2.0
    m["embeddings.npy"] = e


def _wider(m):
    e = m["embeddings.npy"]
    m["embeddings.npy"] = np.concatenate([e, np.zeros((len(e), 1), e.dtype)], axis=1)  # still unit-norm rows


#: kind -> (how to damage the parsed members, what the message must say)
DAMAGED = {
    "no meta.json": (lambda m: m.pop("meta.json"), "no meta.json"),
    "no embeddings.npy": (lambda m: m.pop("embeddings.npy"), "no embeddings.npy"),
    "no ids.npy": (lambda m: m.pop("ids.npy"), "no ids.npy"),
    "meta not JSON": (lambda m: _set(m, "meta.json", b'{"format": '), "meta.json is not JSON"),
    "meta not UTF-8": (lambda m: _set(m, "meta.json", b'{"format": "\xff"}'), "not UTF-8"),
    "meta a list": (lambda m: _set(m, "meta.json", [1, 2]), "not a JSON object"),
    "another format": (_meta(lambda d: _set(d, "format", "zip-of-cats")), "not a facial-search index"),
    "version a string": (_meta(lambda d: _set(d, "version", "2")), "'version' is not a positive integer"),
    "version 0": (_meta(lambda d: _set(d, "version", 0)), "'version' is not a positive integer"),
    "no embedder": (_meta(lambda d: d.pop("embedder")), "has no 'embedder'"),
    "dim a string": (_meta(lambda d: _set(d["embedder"], "dim", "64")), "'dim' is not an integer"),
    "embedder version a number": (_meta(lambda d: _set(d["embedder"], "version", 3)), "'version' is not a string"),
    "no next_id": (_meta(lambda d: d.pop("next_id")), "has no 'next_id'"),
    "entries not a list": (_meta(lambda d: _set(d, "entries", {})), "'entries' is not a list"),
    "files not an object": (_meta(lambda d: _set(d, "files", [])), "'files' is not an object"),
    "entry not an object": (_meta(lambda d: _set(d["entries"], 0, "face")), r"entries\[0\] is not an object"),
    "entry without box": (_entry(lambda e: e.pop("box")), r"entries\[0\] has no 'box'"),
    "box of 3": (_entry(lambda e: _set(e, "box", [1, 2, 3])), "'box' is not 4 integers"),
    "box with a string": (_entry(lambda e: _set(e, "box", [1, 2, "3", 4])), "'box' is not 4 integers"),
    "box of floats": (_entry(lambda e: _set(e, "box", [1.5, 2, 3, 4])), "'box' is not 4 integers"),
    "face a string": (_entry(lambda e: _set(e, "face", "0")), "'face' is not an integer"),
    "face a bool": (_entry(lambda e: _set(e, "face", True)), "'face' is not an integer"),
    "face negative": (_entry(lambda e: _set(e, "face", -1)), "'face' is not an integer >= 0"),
    "source a number": (_entry(lambda e: _set(e, "source", 7)), "'source' is not a string"),
    "no title": (_entry(lambda e: e.pop("title")), "has no 'title'"),
    "id a float": (_entry(lambda e: _set(e, "id", 0.0)), "'id' is not an integer"),
    "picture_hash a number": (_entry(lambda e: _set(e, "picture_hash", 5)), "'picture_hash' is neither"),
    "picture_hash not hex": (_entry(lambda e: _set(e, "picture_hash", "xyz")), "not 16 hex digits"),
    "file without size": (_record(lambda r: r.pop("size")), "has no 'size'"),
    "file skipped a number": (_record(lambda r: _set(r, "skipped", 1)), "'skipped' is neither"),
    "file faces negative": (_record(lambda r: _set(r, "faces", -2)), "'faces' is not an integer >= 0"),
    "embeddings 1-D": (_arr("embeddings.npy", np.ravel), "embeddings.npy is not a 2-D float array"),
    "embeddings of ints": (_arr("embeddings.npy", lambda a: a.astype(np.int32)), "not a 2-D float array"),
    "embeddings of objects": (_arr("embeddings.npy", lambda a: a.astype(object)), "Python objects"),
    "embeddings not npy": (lambda m: _set(m, "embeddings.npy", b"garbage"), "not a NumPy array file"),
    "one row short": (_arr("embeddings.npy", lambda a: a[:-1]), "embeddings.npy has shape"),
    "dim not the embedder's": (_wider, "embeddings.npy has shape"),
    "ids 2-D": (_arr("ids.npy", lambda a: a[:, None]), "ids.npy is not a 1-D integer array"),
    "ids floats": (_arr("ids.npy", lambda a: a.astype(np.float64)), "ids.npy is not a 1-D integer array"),
    "ids short": (_arr("ids.npy", lambda a: a[:-1]), "ids for"),
    "duplicate ids": (_duplicate_id, "twice"),
    "negative id": (_negative_id, "outside"),
    "id not below next_id": (_id_at_next_id, "outside"),
    "entry id not in ids": (_stray_entry_id, "in entries but not in ids.npy"),
    "NaN vector": (_arr("embeddings.npy", lambda a: _at(a, (2, 5), np.nan)), "NaN or infinite"),
    "inf vector": (_arr("embeddings.npy", lambda a: _at(a, (0, 0), np.inf)), "NaN or infinite"),
    "vector not unit-norm": (_scaled_row, "row 3 .* has norm 2"),
}


def _damaged(meme_index: Path, tmp_path: Path, kind: str) -> Path:
    members = _members(meme_index)
    change, _ = DAMAGED[kind]
    change(members)
    out = tmp_path / "bad.fsindex"
    _write(out, members)
    return out


def test_the_rewriting_itself_keeps_a_valid_index(meme_index, tmp_path):
    """The control: rewritten undamaged, the index loads and is the same (the damage is what gets refused)."""
    out = tmp_path / "same.fsindex"
    _write(out, _members(meme_index))
    a, b = MemeIndex.load(meme_index), MemeIndex.load(out)
    assert len(a) > 20 and a.entries() == b.entries() and a.files == b.files
    assert np.array_equal(a.embeddings, b.embeddings) and a.next_id == b.next_id


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_index_is_refused_on_load(meme_index, tmp_path, kind):
    bad = _damaged(meme_index, tmp_path, kind)
    with pytest.raises(IndexFormatError, match=DAMAGED[kind][1]) as e:
        MemeIndex.load(bad)
    assert not isinstance(e.value, IndexVersionError)
    assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_damaged_archives_are_refused(meme_index, tmp_path):
    stored = tmp_path / "crc.fsindex"
    members = _members(meme_index)
    _write(stored, members, zipfile.ZIP_STORED)
    data = bytearray(stored.read_bytes())
    at = data.find(members["embeddings.npy"][0].tobytes())
    assert at > 0
    data[at + 1] ^= 0xFF  # one flipped byte in a member: its CRC no longer matches
    stored.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="CRC"):
        MemeIndex.load(stored)
    cut = tmp_path / "cut.fsindex"
    cut.write_bytes(meme_index.read_bytes()[: meme_index.stat().st_size // 2])  # a copy that stopped half-way
    with pytest.raises(IndexFormatError, match="not a facial-search index"):
        MemeIndex.load(cut)


def test_newer_version_is_its_own_error(meme_index, tmp_path):
    members = _members(meme_index)
    members["meta.json"]["version"] = 3
    members["meta.json"]["entries"] = "a layout this release does not know"  # not looked at
    out = tmp_path / "v3.fsindex"
    _write(out, members)
    with pytest.raises(IndexVersionError, match="version 3 is newer"):
        MemeIndex.load(out)


def test_version_1_files_still_read(meme_index, tmp_path):
    members = _members(meme_index)
    members["meta.json"]["version"] = 1
    for e in members["meta.json"]["entries"]:
        del e["picture_hash"]
    for r in members["meta.json"]["files"].values():
        del r["finder"]
    out = tmp_path / "v1.fsindex"
    _write(out, members)
    old, new = MemeIndex.load(out), MemeIndex.load(meme_index)
    assert [e.picture_hash for e in old.entries()] == [None] * len(new)
    assert [e.box for e in old.entries()] == [e.box for e in new.entries()]
    assert {r.finder for r in old.files.values()} == {None} and old.files.keys() == new.files.keys()
    members["meta.json"]["version"] = 2  # the same content claimed as version 2 lacks what 2 requires
    _write(out, members)
    with pytest.raises(IndexFormatError, match="has no 'picture_hash'"):
        MemeIndex.load(out)


@pytest.mark.parametrize("kind", ["NaN vector", "duplicate ids", "embeddings of objects", "box of 3", "no ids.npy"])
def test_damaged_index_is_one_line_in_info(meme_index, tmp_path, kind):
    bad = _damaged(meme_index, tmp_path, kind)
    r = _cli("info", bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"facial-search: error: {bad}: damaged index: ")


@pytest.mark.parametrize("kind", ["vector not unit-norm", "entry id not in ids"])
def test_damaged_index_is_one_line_in_search(meme_index, tmp_path, kind):
    bad = _damaged(meme_index, tmp_path, kind)
    r = _cli("search", FACES / "single_face.jpg", "--index", bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"facial-search: error: {bad}: damaged index: ")


# -- file names that are not UTF-8 ------------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_round_trips(tmp_path):
    """Linux allows any bytes in a name; Python holds b"caf\\xe9.jpg" as "caf\\udce9.jpg" (os.fsdecode)."""
    from facial_search.indexing import build_index

    folder = tmp_path / "memes"
    folder.mkdir()
    odd = folder / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(MEMES / "Success-Kid.jpg", odd)
    out = tmp_path / os.fsdecode(b"\xff.fsindex")  # the index's own name too
    index, _ = build_index([folder], out, workers=1, progress=False)
    assert len(index) >= 1
    back = MemeIndex.load(out)
    source = back.entries()[0].source
    assert os.fsencode(source) == os.fsencode(str(odd.resolve()))  # the very bytes of the name
    assert back.entries() == index.entries() and list(back.files) == [source]
    assert back.entries()[0].title == os.fsdecode(b"caf\xe9")
    with zipfile.ZipFile(out) as z:
        raw = z.read("meta.json")
    assert raw.isascii() and b"\\udce9" in raw
    again = tmp_path / "again.fsindex"
    back.save(again)
    assert MemeIndex.load(again).entries() == back.entries() and MemeIndex.load(again).files == back.files


# -- the writer lock ----------------------------------------------------------------------------------------
HOLD = (
    "import sys; from facial_search.index.lock import IndexWriter; w = IndexWriter(sys.argv[1]).acquire(); "
    "print('held', flush=True); sys.stdin.read()"
)

pytestmark = needs_shared


def _holder(path: Path) -> subprocess.Popen:
    """Another process that holds the writer lock of ``path`` until its stdin closes."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline() == "held\n"
    return p


def _unit(n, d=8):
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _small_index(n=3) -> MemeIndex:
    idx = MemeIndex(INFO)
    idx.add(_unit(n), [{"source": "m.jpg", "face": i, "box": (0, 0, 1, 1), "title": "m"} for i in range(n)])
    return idx


def test_save_does_not_clobber_an_index_another_process_writes(tmp_path):
    p = tmp_path / "x.fsindex"
    _small_index(2).save(p)
    before = p.read_bytes()
    holder = _holder(p)
    try:
        with pytest.raises(IndexLockedError, match=f"writing this index \\(pid {holder.pid}\\)"):
            _small_index(5).save(p)
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            MemeIndex.writer(p).acquire()
        assert p.read_bytes() == before
    finally:
        holder.stdin.close()
        holder.wait()
    _small_index(5).save(p)  # released when it ends
    assert len(MemeIndex.load(p)) == 5


def test_a_writer_is_held_once_in_a_process_too(tmp_path):
    p = tmp_path / "x.fsindex"
    with MemeIndex.writer(p) as lock:
        with pytest.raises(IndexLockedError, match="this process"):
            MemeIndex.writer(p).acquire()
        _small_index(2).save(p)  # this process holds it: saves go ahead, with or without the lock in hand
        _small_index(3).save(p, lock=lock)
        with pytest.raises(ValueError, match="not a held writer lock"):
            _small_index(3).save(tmp_path / "other.fsindex", lock=lock)
    assert not lock.held and len(MemeIndex.load(p)) == 3
    with pytest.raises(ValueError, match="not a held writer lock"):
        _small_index(1).save(p, lock=lock)
    with MemeIndex.writer(p):  # free again
        pass


def test_a_killed_writer_does_not_block_the_next(tmp_path):
    p = tmp_path / "x.fsindex"
    holder = _holder(p)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / "x.fsindex.lock"
    assert lock_file.read_text().strip() == str(holder.pid)  # what it left behind: its pid
    with MemeIndex.writer(p):
        assert lock_file.read_text().strip() == str(os.getpid())
    lock_file.write_bytes(b"\x00garbage, not a pid\n" * 100)  # a garbled lock file is harmless too
    _small_index(2).save(p)
    assert len(MemeIndex.load(p)) == 2 and lock_file.read_text().strip() == str(os.getpid())


def _wait_until_locked_by(lock_file: Path, proc: subprocess.Popen) -> None:
    for _ in range(2400):  # a bound on the wait, not a timing assertion
        if lock_file.exists() and lock_file.read_text().strip() == str(proc.pid):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before it was seen holding the lock")
        time.sleep(0.05)
    raise AssertionError("the run never took the writer lock")


def test_two_index_runs_into_one_out_exclude_each_other(meme_index, sample_memes, tmp_path):
    """The second run refuses with one line while the first holds the lock (stopped with SIGSTOP while it
    holds it, so the overlap does not depend on timing); the first then finishes with all its faces."""
    out = tmp_path / "both.fsindex"
    others = [MEMES / n for n in sorted(os.listdir(MEMES)) if n.endswith(".jpg") and n not in SAMPLE_MEMES][:2]
    first = subprocess.Popen(
        [*CLI, "index", *map(str, sample_memes), "--out", str(out), "--workers", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_until_locked_by(tmp_path / "both.fsindex.lock", first)
        os.kill(first.pid, signal.SIGSTOP)
        second = _cli("index", *others, "--out", out, "--no-progress")
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == (
        f"facial-search: error: {out}: another facial-search index run is writing this index (pid {first.pid}); "
        "wait for it or use another --out\n"
    )
    assert first.returncode == 0, stderr
    final, alone = MemeIndex.load(out), MemeIndex.load(meme_index)
    assert set(final.files) == {str(p.resolve()) for p in sample_memes}  # the first run's files, none of the second's
    assert {(e.source, e.face, e.box) for e in final.entries()} == {(e.source, e.face, e.box) for e in alone.entries()}


def test_an_index_run_after_a_killed_one_proceeds(sample_memes, tmp_path):
    out = tmp_path / "k.fsindex"
    killed = subprocess.Popen(
        [*CLI, "index", *map(str, sample_memes[:10]), "--out", str(out), "--workers", "1", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_until_locked_by(tmp_path / "k.fsindex.lock", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    r = _cli("index", *sample_memes[10:12], "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert {str(p.resolve()) for p in sample_memes[10:12]} <= set(MemeIndex.load(out).files)
