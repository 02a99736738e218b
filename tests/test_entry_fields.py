"""The optional entry fields (blendshapes; a video moment's t_start, t_end, t_frame, track) in the file store:
each one through add, commit, open, compaction and a whole save; a store without them writes the format-3
file of before (no ``columns``, no extra sections) and reads as ``None``; edited files (valid CRCs) and bad
entries refused with a typed error."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from facial_search.errors import IndexFormatError
from facial_search.index.store import EmbedderInfo, Entry, FileRecord, MemeIndex
from facial_search.vision.faces import BLENDSHAPE_NAMES, NUM_BLENDSHAPES

INFO = EmbedderInfo("test", "1", 8)
OLD_SECTIONS = 22  # the sections of a format-3 commit without optional columns and graphs


def _unit(n, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scores(seed=0):
    return np.random.default_rng(seed).uniform(size=NUM_BLENDSHAPES).astype(np.float32)


def _faces(n, source="a.jpg", **extra):
    return [{"source": source, "face": i, "box": (i, 0, 10, 10), "title": f"{source} {i}", **extra} for i in range(n)]


def _moment(t0, t1, tf, track):
    return {"t_start": t0, "t_end": t1, "t_frame": tf, "track": track}


def _parse(path: Path) -> tuple[bytes, list[tuple[dict, dict]]]:
    """The header and every record's ``(head, {section: array})``, read by fileformat's docstring layout
    (independently of the reader under test; graphs are not used here)."""
    data = path.read_bytes()
    pos, records = 16, []
    while pos + 20 <= len(data):
        _kind, _flags, length, _crc = struct.unpack_from("<4sIQI", data, pos)
        payload = data[pos + 20 : pos + 20 + length]
        (hlen,) = struct.unpack_from("<I", payload)
        head = json.loads(payload[4 : 4 + hlen])
        sections, at = {}, 4 + hlen
        for name, dtype, shape in head.pop("sections"):
            count = int(np.prod(shape))
            sections[name] = np.frombuffer(payload, dtype, count, at).reshape(shape).copy()
            at += np.dtype(dtype).itemsize * count
        records.append((head, sections))
        pos += 20 + length + 4
    return data[:16], records


def _encode(head: dict, sections: dict) -> bytes:
    head = dict(head, sections=[[k, a.dtype.str, list(a.shape)] for k, a in sections.items()])
    raw = json.dumps(head, separators=(",", ":")).encode()
    payload = struct.pack("<I", len(raw)) + raw + b"".join(np.ascontiguousarray(a).tobytes() for a in sections.values())
    frame = struct.pack("<4sIQ", b"CMIT", 0, len(payload))
    return frame + struct.pack("<I", zlib.crc32(frame)) + payload + struct.pack("<I", zlib.crc32(payload))


def _edit(path: Path, out: Path, record: int, change) -> Path:
    header, records = _parse(path)
    change(*records[record])
    out.write_bytes(header + b"".join(_encode(h, s) for h, s in records))
    return out


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Three commits: 3 pictures without fields; 2 faces with blendshapes (one without) and a video moment;
    2 more pictures without fields (a commit that lists the columns, its rows filled with none)."""
    p = tmp_path / "mixed.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(3), _faces(3))
    idx.record_file("a.jpg", FileRecord(10, 20, 3, None, "whole"))
    idx.commit()
    idx.add(_unit(3, 1), [
        {**_faces(1, "b.jpg")[0], "blendshapes": _scores(1)},
        {**_faces(1, "v.mp4")[0], "blendshapes": _scores(2).tolist(), **_moment(1.25, 3.5, 2.0, 0)},
        {**_faces(1, "v.mp4")[0], "face": 1, **_moment(4.0, 4.0, None, 7)},
    ])  # fmt: skip
    idx.commit()
    idx.add(_unit(2, 2), _faces(2, "c.jpg"))
    idx.commit()
    return p


def test_each_field_round_trips_through_commits_and_open(mixed):
    idx = MemeIndex.load(mixed)
    e = {x.id: x for x in idx.entries()}
    for i in (0, 1, 2, 6, 7):  # pictures of commits with and without the columns
        assert e[i].blendshapes is None and (e[i].t_start, e[i].t_end, e[i].t_frame, e[i].track) == (None,) * 4
    for i, seed in ((3, 1), (4, 2)):
        bs = e[i].blendshapes
        assert bs.dtype == np.float32 and bs.shape == (len(BLENDSHAPE_NAMES),) and not bs.flags.writeable
        np.testing.assert_allclose(bs, _scores(seed), atol=0.5 / 255 + 1e-7)  # 1/255 steps, rounded
        np.testing.assert_array_equal(np.rint(bs * 255), np.rint(_scores(seed) * 255))
    assert (e[3].t_start, e[3].track) == (None, None)
    assert (e[4].t_start, e[4].t_end, e[4].t_frame, e[4].track) == (1.25, 3.5, 2.0, 0)
    assert (e[5].blendshapes, e[5].t_start, e[5].t_end, e[5].t_frame, e[5].track) == (None, 4.0, 4.0, None, 7)
    assert idx.entry(4) == e[4] and idx.entry(0) == e[0]
    header, records = _parse(mixed)
    assert "columns" not in records[0][0] and len(records[0][1]) == OLD_SECTIONS  # the file of before
    assert records[1][0]["columns"] == ["blendshapes", "t_start", "t_end", "t_frame", "track"]
    flags = records[1][1]["flags"]
    assert flags.tolist() == [2, 2, 0]  # bit 1: has blendshapes (bit 0, a picture hash: none here)
    assert not records[1][1]["blendshapes"][2].any() and np.isnan(records[2][1]["t_start"]).all()


def test_fields_survive_compaction_and_a_whole_save(tmp_path):
    p = tmp_path / "many.fsindex"
    idx = MemeIndex(INFO, path=p)
    n = 200
    faces = [{**f, "blendshapes": _scores(i), **_moment(float(i), i + 0.5, i + 0.25, i)}
             for i, f in enumerate(_faces(n, "v.mp4"))]  # fmt: skip
    idx.add(_unit(n), faces)
    idx.add(_unit(2, 1), _faces(2, "p.jpg"))  # pictures among them
    idx.commit()
    keep = {*range(150, n), n, n + 1}
    want = [e for e in idx.entries() if e.id in keep]
    idx.remove_ids([i for i in range(n) if i not in keep])  # most of the file dead: this commit rewrites it
    idx.commit()
    _, records = _parse(p)
    assert len(records) == 1 and records[0][0]["rows"] == [0, len(keep)]
    back = MemeIndex.load(p)
    assert back.entries() == want and back.entry(150).track == 150 and back.entry(n).track is None
    np.testing.assert_allclose(back.entry(199).blendshapes, _scores(199), atol=0.5 / 255 + 1e-7)
    copy = tmp_path / "copy.fsindex"
    back.save(copy)
    assert MemeIndex.load(copy).entries() == want
    back.add(_unit(1, 5), [{**_faces(1, "d.jpg")[0], "blendshapes": np.ones(NUM_BLENDSHAPES)}])  # an append
    back.commit()
    again = MemeIndex.load(p)
    assert again.entry(n + 2).blendshapes.min() == 1.0 and again.entry(n + 2).t_start is None


def test_a_store_without_the_fields_writes_the_file_of_before(tmp_path):
    p = tmp_path / "old.fsindex"
    idx = MemeIndex(INFO, path=p)
    idx.add(_unit(4), _faces(4, picture_hash=None))
    idx.commit()
    _, records = _parse(p)
    assert "columns" not in records[0][0] and len(records[0][1]) == OLD_SECTIONS
    back = MemeIndex.load(p)
    assert all(e.blendshapes is None and e.t_start is None and e.track is None for e in back.entries())
    back.add(_unit(1, 3), [{**_faces(1, "v.mp4")[0], **_moment(0.0, 1.0, 0.5, 2)}])  # first values: an append
    back.commit()
    _, records = _parse(p)
    assert [r[0].get("columns") for r in records] == [None, ["t_start", "t_end", "t_frame", "track"]]
    assert MemeIndex.load(p).entry(4).t_frame == 0.5 and MemeIndex.load(p).entry(0).t_frame is None


def _col(name, f):
    def change(head, sections):
        sections[name] = f(sections[name].copy())

    return change


def _at(a, index, value):
    a[index] = value
    return a


def _drop_column(name):
    def change(head, sections):
        head["columns"].remove(name)
        sections.pop(name)

    return change


def _rename(head, sections):
    head["columns"][0] = "smile"
    sections["smile"] = sections.pop("blendshapes")


def _reorder(head, sections):
    head["columns"] = head["columns"][::-1]


#: kind -> (change(head, sections) of commit 2, what the message says): edits with valid CRCs
DAMAGED = {
    "blendshapes of 51": (_col("blendshapes", lambda a: a[:, :51]), "expected \\['blendshapes', '\\|u1', \\[3, 52\\]"),
    "blendshapes as float": (_col("blendshapes", lambda a: a.astype("<f4")), "expected \\['blendshapes'"),
    "t_start too short": (_col("t_start", lambda a: a[:2]), "expected \\['t_start', '<f4', \\[3\\]"),
    "a column not listed": (lambda h, s: h["columns"].remove("track"), "expected 26 of them"),
    "an unknown column": (_rename, "unknown row column 'smile'"),
    "columns out of order": (_reorder, "not in the order"),
    "columns not a list": (lambda h, s: h.__setitem__("columns", "track"), "'columns' is not a list"),
    "scores without the flag": (_col("flags", lambda a: a & 1), "row 3 .* blendshape scores its flags say"),
    "the flag without scores": (_drop_column("blendshapes"), "row 3 .* in a commit without blendshapes"),
    "negative t_start": (_col("t_start", lambda a: _at(a, 1, -1)), "row 4 .* has t_start -1.0, not a time"),
    "infinite t_end": (_col("t_end", lambda a: _at(a, 1, np.inf)), "row 4 .* has t_end inf"),
    "t_end before t_start": (_col("t_end", lambda a: _at(a, 1, 1.0)), "row 4 .* not a moment"),
    "one end only": (_col("t_end", lambda a: _at(a, 1, np.nan)), "row 4 .* not a moment"),
    "t_frame outside": (_col("t_frame", lambda a: _at(a, 1, 9.0)), "row 4 .* not a moment"),
    "track -2": (_col("track", lambda a: _at(a, 2, -2)), "row 5 .* has track -2"),
    "unknown flag bit": (_col("flags", lambda a: _at(a, 0, 7)), "row 3 .* unknown flags"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_edited_fields_are_refused_on_load(mixed, tmp_path, kind):
    change, message = DAMAGED[kind]
    bad = _edit(mixed, tmp_path / "bad.fsindex", 1, change)
    with pytest.raises(IndexFormatError, match=message) as e:
        MemeIndex.load(bad)
    assert str(e.value).startswith(f"{bad}: damaged index: commit 2") and "\n" not in str(e.value)


def test_the_edit_helper_changes_nothing_by_itself(mixed, tmp_path):
    """The control of the edits above: rewritten unchanged, the file is the same bytes."""
    same = _edit(mixed, tmp_path / "same.fsindex", 1, lambda h, s: None)
    assert same.read_bytes() == mixed.read_bytes()


BAD_ENTRIES = {
    "NaN blendshapes": ({"blendshapes": np.r_[np.full(51, 0.5), np.nan]}, "NaN or infinite"),
    "51 blendshapes": ({"blendshapes": [0.5] * 51}, "52 scores"),
    "a score above 1": ({"blendshapes": [1.5] * 52}, "in \\[0, 1\\]"),
    "blendshapes not numbers": ({"blendshapes": "jawOpen"}, "52 scores"),
    "negative time": (_moment(-1.0, 2.0, None, None), "t_start must be a finite number"),
    "infinite time": (_moment(0.0, float("inf"), None, None), "t_end must be a finite number"),
    "a time as text": (_moment("1", 2.0, None, None), "t_start must be a finite number"),
    "one end": ({"t_start": 1.0}, "both or neither"),
    "ends reversed": (_moment(2.0, 1.0, None, None), "t_start <= t_end"),
    "t_frame outside": (_moment(1.0, 2.0, 3.0, None), "t_frame 3.0 lies outside"),
    "track -1": ({"track": -1}, "track must be an integer >= 0"),
    "track a float": ({"track": 1.0}, "track must be an integer"),
    "track a bool": ({"track": True}, "track must be an integer"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_bad_fields_are_refused_by_add_and_nothing_is_added(kind):
    extra, message = BAD_ENTRIES[kind]
    idx = MemeIndex(INFO)
    idx.add(_unit(1), _faces(1))
    with pytest.raises(ValueError, match=message):
        idx.add(_unit(2, 1), [_faces(1, "ok.jpg")[0], {**_faces(1, "bad.jpg")[0], **extra}])
    assert len(idx) == 1 and idx.entries() == [Entry(0, "a.jpg", 0, (0, 0, 10, 10), "a.jpg 0")]
    idx.add(_unit(1, 2), _faces(1, "c.jpg"))  # still usable, columns consistent
    assert len(idx.entries()) == 2


def test_entries_compare_by_value():
    a = Entry(1, "s", 0, (0, 0, 1, 1), "t", None, np.full(52, 0.5, np.float32), 1.0, 2.0, 1.5, 3)
    b = Entry.from_dict(1, {"source": "s", "face": 0, "box": [0, 0, 1, 1], "title": "t",
                            "blendshapes": [0.5] * 52, "t_start": 1, "t_end": 2, "t_frame": 1.5, "track": 3})  # fmt: skip
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Entry(1, "s", 0, (0, 0, 1, 1), "t", None, np.full(52, 0.25, np.float32), 1.0, 2.0, 1.5, 3)
    assert a != Entry(1, "s", 0, (0, 0, 1, 1), "t")
