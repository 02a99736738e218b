"""The index file: format 3 (an append-only log of CRC-framed commits) and formats 1 and 2 (ZIP archives, still
read): every damaged kind refused on load (one line on the command line), a torn last commit ignored, an old
file converted at its first commit, file names that are not UTF-8, and the writer lock (two runs into one
index, a killed writer)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import FACES, MEMES, SAMPLE_MEMES, needs_shared

from facial_search.errors import IndexFormatError, IndexLockedError, IndexVersionError
from facial_search.index.store import EmbedderInfo, FileRecord, MemeIndex

CLI = [sys.executable, "-m", "facial_search.cli"]
INFO = EmbedderInfo("test", "1", 8)


def _cli(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# -- format 2: damaged ZIP archives -------------------------------------------------------------------------
def _v2_members(index_path: Path) -> dict:
    """The members a format-2 file of the same index holds: ``meta.json`` as a dict, the ``.npy`` as arrays."""
    index = MemeIndex.load(index_path)
    entries = [
        {"id": e.id, "source": e.source, "face": e.face, "box": list(e.box), "title": e.title,
         "picture_hash": e.picture_hash}
        for e in index.entries()
    ]  # fmt: skip
    files = {s: {"size": r.size, "mtime_ns": r.mtime_ns, "faces": r.faces, "skipped": r.skipped, "finder": r.finder}
             for s, r in index.files.items()}  # fmt: skip
    meta = {"format": "facial-search-index", "version": 2, "embedder": vars(index.embedder), "next_id": index.next_id,
            "entries": entries, "files": files}  # fmt: skip
    return {"meta.json": meta, "embeddings.npy": np.array(index.embeddings), "ids.npy": np.array(index.ids)}


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
    "version 3 in a ZIP": (_meta(lambda d: _set(d, "version", 3)), "a ZIP archive that claims format version 3"),
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


@pytest.fixture(scope="module")
def v2_members(meme_index) -> dict:
    return _v2_members(meme_index)


def _damaged_v2(members: dict, tmp_path: Path, kind: str) -> Path:
    members = json.loads(json.dumps({"meta.json": members["meta.json"]})) | {
        k: v for k, v in members.items() if k != "meta.json"
    }
    change, _ = DAMAGED[kind]
    change(members)
    out = tmp_path / "bad.fsindex"
    _write(out, members)
    return out


def test_a_v2_file_reads_as_the_v3_one_and_converts_at_its_first_commit(meme_index, v2_members, tmp_path):
    """The control: undamaged, a format-2 file loads as the same index; its first commit rewrites it as format 3
    (once: the next commit appends)."""
    out = tmp_path / "same.fsindex"
    _write(out, v2_members)
    a, b = MemeIndex.load(meme_index), MemeIndex.load(out)
    assert all(e.blendshapes is not None for e in a.entries()) and all(e.blendshapes is None for e in b.entries())
    expected = [dataclasses.replace(e, blendshapes=None) for e in a.entries()]  # format 2 held no blendshapes
    assert len(a) > 20 and expected == b.entries() and a.files == b.files
    assert np.array_equal(a.embeddings, b.embeddings) and a.next_id == b.next_id
    np.testing.assert_array_equal(a.source_groups(), b.source_groups())  # the groups found at load, as stored
    b.commit()
    assert out.read_bytes()[:8] == b"FSINDEX\x00"
    size = out.stat().st_size
    b.record_file("/x.jpg", FileRecord(1, 2, 0, "no face", "whole"))
    b.commit()
    assert out.stat().st_size > size and out.read_bytes()[:size] == out.read_bytes()[:size]
    c = MemeIndex.load(out)
    assert c.entries() == expected and c.files["/x.jpg"].skipped == "no face" and len(c.files) == len(a.files) + 1


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_v2_index_is_refused_on_load(v2_members, tmp_path, kind):
    bad = _damaged_v2(v2_members, tmp_path, kind)
    with pytest.raises(IndexFormatError, match=DAMAGED[kind][1]) as e:
        MemeIndex.load(bad)
    assert not isinstance(e.value, IndexVersionError)
    assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_damaged_archives_are_refused(v2_members, tmp_path):
    stored = tmp_path / "crc.fsindex"
    _write(stored, v2_members, zipfile.ZIP_STORED)
    data = bytearray(stored.read_bytes())
    at = data.find(v2_members["embeddings.npy"][0].tobytes())
    assert at > 0
    data[at + 1] ^= 0xFF  # one flipped byte in a member: its CRC no longer matches
    stored.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="CRC"):
        MemeIndex.load(stored)
    whole = tmp_path / "whole.fsindex"
    _write(whole, v2_members)
    cut = tmp_path / "cut.fsindex"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a copy that stopped half-way
    with pytest.raises(IndexFormatError, match="not a facial-search index"):
        MemeIndex.load(cut)


def test_newer_version_is_its_own_error(v2_members, tmp_path):
    members = dict(v2_members, **{"meta.json": dict(v2_members["meta.json"], version=4)})
    members["meta.json"]["entries"] = "a layout this release does not know"  # not looked at
    out = tmp_path / "v4.fsindex"
    _write(out, members)
    with pytest.raises(IndexVersionError, match="version 4 is newer"):
        MemeIndex.load(out)


def test_version_1_files_still_read(v2_members, tmp_path):
    members = json.loads(json.dumps({"meta.json": v2_members["meta.json"]}))
    members |= {k: v for k, v in v2_members.items() if k != "meta.json"}
    members["meta.json"]["version"] = 1
    for e in members["meta.json"]["entries"]:
        del e["picture_hash"]
    for r in members["meta.json"]["files"].values():
        del r["finder"]
    out = tmp_path / "v1.fsindex"
    _write(out, members)
    old = MemeIndex.load(out)
    assert [e.picture_hash for e in old.entries()] == [None] * len(old)
    assert [e.box for e in old.entries()] == [tuple(e["box"]) for e in v2_members["meta.json"]["entries"]]
    assert {r.finder for r in old.files.values()} == {None}
    assert set(old.files) == set(v2_members["meta.json"]["files"])
    members["meta.json"]["version"] = 2  # the same content claimed as version 2 lacks what 2 requires
    _write(out, members)
    with pytest.raises(IndexFormatError, match="has no 'picture_hash'"):
        MemeIndex.load(out)


# -- format 3: the log of commits -------------------------------------------------------------------------
def _parse(path: Path) -> tuple[bytes, list[tuple[dict, dict]]]:
    """The file header and every whole record's ``(head, {section: array})``, read by the module docstring's
    layout (independently of the reader under test)."""
    data = path.read_bytes()
    pos, records = 16, []
    while pos + 20 <= len(data):
        kind, flags, length, _crc = struct.unpack_from("<4sIQI", data, pos)
        if pos + 20 + length + 4 > len(data):
            break
        payload = data[pos + 20 : pos + 20 + length]
        (hlen,) = struct.unpack_from("<I", payload)
        head = json.loads(payload[4 : 4 + hlen])
        sections, at = {}, 4 + hlen
        for name, dtype, shape in head.pop("sections"):
            size = np.dtype(dtype).itemsize * int(np.prod(shape))
            sections.setdefault(name, []).append(np.frombuffer(payload, dtype, size // np.dtype(dtype).itemsize, at)
                                                 .reshape(shape).copy())  # fmt: skip
            at += size
        records.append((head, {k: v[0] if len(v) == 1 else v for k, v in sections.items()}))
        pos += 20 + length + 4
    return data[:16], records


def _encode(head: dict, sections: dict) -> bytes:
    """One record, framed and CRC'd as the module docstring says."""
    items = [(k, a) for k, v in sections.items() for a in (v if isinstance(v, list) else [v])]
    head = dict(head, sections=[[k, a.dtype.str, list(a.shape)] for k, a in items])
    raw = json.dumps(head, separators=(",", ":")).encode()
    payload = struct.pack("<I", len(raw)) + raw + b"".join(np.ascontiguousarray(a).tobytes() for _, a in items)
    frame = struct.pack("<4sIQ", b"CMIT", 0, len(payload))
    return frame + struct.pack("<I", zlib.crc32(frame)) + payload + struct.pack("<I", zlib.crc32(payload))


def _unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faces(n, source="m.jpg", first=0):
    return [{"source": source, "face": i, "box": (i, 0, 10, 10), "title": f"{source} {i}",
             "picture_hash": f"{(first + i) * 7919:016x}"} for i in range(n)]  # fmt: skip


@pytest.fixture
def three_commits(tmp_path) -> Path:
    """An index of three commits: 5 faces and a file record; 3 more, a removal, a file dropped; 2 more."""
    p = tmp_path / "log.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(5), _faces(5, "a.jpg"))
    idx.record_file("a.jpg", FileRecord(10, 20, 5, None, "whole"))
    idx.record_file("gone.jpg", FileRecord(1, 2, 0, "no face", "whole"))
    idx.commit()
    idx.add(_unit(3, seed=1), _faces(3, "b.jpg", 5))
    idx.remove_ids([1])
    idx.remove_source("gone.jpg")
    idx.commit()
    idx.add(_unit(2, seed=2), _faces(2, "c.jpg", 8))
    idx.commit()
    assert len(_parse(p)[1]) == 3
    return p


def _edit(path: Path, out: Path, record: int, change) -> Path:
    """Rewrite ``path`` into ``out`` with ``change(head, sections)`` applied to one record (CRCs made valid)."""
    header, records = _parse(path)
    head, sections = records[record]
    change(head, sections)
    out.write_bytes(header + b"".join(_encode(h, s) for h, s in records))
    return out


def _sec(name, f):
    def change(head, sections):
        sections[name] = f(sections[name].copy())

    return change


def _hd(f):
    return lambda head, sections: f(head)


#: kind -> (record, change(head, sections), what the message must say): edits with valid CRCs, so that only the
#: checks of what the record says can find them
DAMAGED3 = {
    "seq skips": (1, _hd(lambda h: _set(h, "seq", 5)), "follows commit 1"),
    "a second base": (2, _hd(lambda h: _set(h, "base", True)), "only the first commit is a base"),
    "no base": (0, _hd(lambda h: _set(h, "base", False)), "only the first commit is a base"),
    "meta missing in the base": (0, _hd(lambda h: h.pop("meta")), "'meta' is not an object"),
    "another format": (0, _hd(lambda h: _set(h["meta"], "format", "cats")), "meta 'format'"),
    "the embedder changes": (
        1,
        _hd(
            lambda h: _set(
                h,
                "meta",
                {"format": "facial-search-index", "ann": None, "embedder": {"name": "other", "version": "1", "dim": 8}},
            )
        ),
        "the embedder changed",
    ),  # fmt: skip
    "bad ANN parameters": (0, _hd(lambda h: _set(h["meta"], "ann", {"M": 0})), "meta 'ann' is not HNSW"),
    "next_id goes back": (2, _hd(lambda h: _set(h, "next_id", 3)), "'next_id' is not an integer >= 8"),
    "rows start wrong": (1, _hd(lambda h: _set(h, "rows", [4, 3])), "'rows' start at 4, but 5 came before"),
    "sources not 3 numbers": (1, _hd(lambda h: _set(h, "sources", [1, 2])), "'sources' is not 3 integers"),
    "wider embeddings": (1, _sec("embeddings", lambda a: np.pad(a, ((0, 0), (0, 1)))), "expected \\['embeddings'"),
    "embeddings of float64": (1, _sec("embeddings", lambda a: a.astype(np.float64)), "expected \\['embeddings'"),
    "a section missing": (1, lambda h, s: s.pop("merges"), "expected 22 of them"),
    "a count that lies": (1, _hd(lambda h: _set(h, "removed", 2)), "expected \\['removed'"),
    "NaN vector": (1, _sec("embeddings", lambda a: _at(a, (1, 3), np.nan)), "row 6 .* NaN or infinite"),
    "vector not unit-norm": (2, _sec("embeddings", lambda a: a * 2), "row 8 \\(id 8\\) has norm 2"),
    "ids not ascending": (1, _sec("ids", lambda a: _at(a, 0, 2)), "an id not above the one before"),
    "id not below next_id": (2, _hd(lambda h: _set(h, "next_id", 9)), "not below its commit's next_id"),
    "face negative": (0, _sec("face", lambda a: _at(a, 2, -1)), "row 2 .* has face -1"),
    "source no string": (1, _sec("source", lambda a: _at(a, 0, 99)), "has source 99, no such string"),
    "title no string": (0, _sec("title", lambda a: _at(a, 0, -3)), "has title -3, no such string"),
    "group label too big": (2, _sec("group", lambda a: _at(a, 0, 10**6)), "group label not below next_group"),
    "unknown flags": (0, _sec("flags", lambda a: _at(a, 0, 6)), "unknown flags"),
    "a hash without its flag": (0, _sec("flags", lambda a: _at(a, 1, 0)), "picture hash its flags say"),
    "removes no row": (1, _sec("removed", lambda a: a + 100), "removes id 101, which is no row"),
    "removes a row twice": (
        2,
        lambda h, s: (_set(s, "removed", np.array([1])), _set(h, "removed", 1)),
        "removes id 1, which was removed before",
    ),  # fmt: skip
    "string lengths that lie": (0, _sec("source_lengths", lambda a: a + 1), "lengths add up to"),
    "a string not UTF-8": (0, _sec("text_bytes", lambda a: _at(a, 0, 0xFF)), "text string 0 is not UTF-8"),
    "a file record of no source": (0, _sec("file_source", lambda a: _at(a, 0, 50)), "which is no source string"),
    "a file record with faces -1": (0, _sec("file_faces", lambda a: _at(a, 0, -1)), "with faces -1"),
    "drops a record that is not there": (1, _sec("files_removed", lambda a: a + 1), "drops the file record"),
    "a merge of no label": (
        2,
        lambda h, s: (_set(s, "merges", np.array([[0, 99]])), _set(h, "merges", 1)),
        "a merge of group labels outside",
    ),  # fmt: skip
    "a segment without ANN": (2, _hd(lambda h: _set(h, "segments", [[0, 2, 0]])), "segments in an index without"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED3))
def test_damaged_v3_index_is_refused_on_load(three_commits, tmp_path, kind):
    record, change, message = DAMAGED3[kind]
    bad = _edit(three_commits, tmp_path / "bad.fsindex", record, change)
    with pytest.raises(IndexFormatError, match=message) as e:
        MemeIndex.load(bad)
    assert not isinstance(e.value, IndexVersionError)
    assert str(e.value).startswith(f"{bad}: damaged index: ") and "\n" not in str(e.value)


def test_the_v3_rewriting_itself_keeps_a_valid_index(three_commits, tmp_path):
    """The control of the edits above: rewritten unchanged, the file is the same bytes and loads the same."""
    same = _edit(three_commits, tmp_path / "same.fsindex", 1, lambda h, s: None)
    assert same.read_bytes() == three_commits.read_bytes()
    a = MemeIndex.load(same)
    assert a.ids.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9] and set(a.files) == {"a.jpg"}
    assert a.entry(6).source == "b.jpg" and a.entry(6).picture_hash == f"{6 * 7919:016x}"


def test_flipped_bytes_anywhere_are_refused(three_commits):
    """Every byte is covered by a CRC (the file header's, a record frame's, its payload's; a frame's length
    too, so a flipped length never passes for a record cut short): flip one bit at a spread of offsets, and
    each load fails with a one-line message."""
    data = three_commits.read_bytes()
    for at in np.linspace(0, len(data) - 1, 80).astype(int).tolist():
        bad = bytearray(data)
        bad[at] ^= 0x10
        three_commits.write_bytes(bytes(bad))
        with pytest.raises(IndexFormatError) as e:
            MemeIndex.load(three_commits)
        assert "\n" not in str(e.value) and ("damaged index" in str(e.value) or "not a facial-search" in str(e.value))


def test_a_torn_last_commit_is_ignored_and_cut_off_by_the_next_writer(three_commits):
    """A commit cut short (its writer killed while it wrote) does not count: the file reads as of the commit
    before; the next commit writes over the torn bytes."""
    data = three_commits.read_bytes()
    whole = MemeIndex.load(three_commits)
    header, records = _parse(three_commits)
    last = len(_encode(*records[2]))
    for cut in (1, 7, 20, last // 2, last - 1):
        three_commits.write_bytes(data[: len(data) - cut])
        got = MemeIndex.load(three_commits)
        assert got.ids.tolist() == [0, 2, 3, 4, 5, 6, 7] and got.next_id == 8
    got.add(_unit(1, seed=9), _faces(1, "d.jpg", 20))
    got.commit()
    again = MemeIndex.load(three_commits)
    assert again.ids.tolist() == [0, 2, 3, 4, 5, 6, 7, 8] and again.entry(8).source == "d.jpg"
    assert len(_parse(three_commits)[1]) == 3 and whole.ntotal == 9
    three_commits.write_bytes(data[:16] + data[16:40])  # not one whole commit
    with pytest.raises(IndexFormatError, match="no whole commit"):
        MemeIndex.load(three_commits)


def test_the_file_header_is_checked(three_commits):
    data = three_commits.read_bytes()
    for bad, message, kind in (
        (b"GARBAGE!" + data[8:], "not a facial-search index", IndexFormatError),
        (data[:12] + b"\0\0\0\0" + data[16:], "header's CRC", IndexFormatError),
        (b"", "not a facial-search index", IndexFormatError),
    ):
        three_commits.write_bytes(bad)
        with pytest.raises(kind, match=message):
            MemeIndex.load(three_commits)
    newer = bytearray(data)
    newer[8:12] = struct.pack("<I", 4)
    newer[12:16] = struct.pack("<I", zlib.crc32(bytes(newer[:12])))
    three_commits.write_bytes(bytes(newer))
    with pytest.raises(IndexVersionError, match="version 4 is newer"):
        MemeIndex.load(three_commits)
    kind = bytearray(data)
    kind[16:20] = b"WHAT"
    kind[32:36] = struct.pack("<I", zlib.crc32(bytes(kind[16:32])))
    three_commits.write_bytes(bytes(kind))
    with pytest.raises(IndexFormatError, match="not a commit record"):
        MemeIndex.load(three_commits)


@pytest.mark.parametrize("kind", ["NaN vector", "ids not ascending", "a string not UTF-8", "title no string"])
def test_damaged_index_is_one_line_in_info(meme_index, tmp_path, kind):
    bad = _edit(meme_index, tmp_path / "bad.fsindex", 0, DAMAGED3[kind][1])  # the real index's first commit
    r = _cli("info", bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"facial-search: error: {bad}: damaged index: ")


@pytest.mark.parametrize("kind", ["vector not unit-norm", "source no string"])
def test_damaged_index_is_one_line_in_search(meme_index, tmp_path, kind):
    bad = _edit(meme_index, tmp_path / "bad.fsindex", 0, DAMAGED3[kind][1])
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
    assert "caf\udce9.jpg".encode("utf-8", "surrogatepass") in out.read_bytes()  # stored as itself
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
