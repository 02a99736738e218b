"""Explain a match (facial_search.explain): the rule itself, then real memes through the real pipeline: the index
build stores every face's blendshapes, a meme searched against an index holding it explains with its own top
blendshapes, ``search --json --explain`` on the command line, and an index built before blendshapes were stored
(null)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import FACES, MEMES

from facial_search.explain import shared_blendshapes
from facial_search.index.store import MemeIndex
from facial_search.vision.faces import BLENDSHAPE_NAMES

CLI = [sys.executable, "-m", "facial_search.cli"]


def _at(**scores) -> np.ndarray:
    v = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
    for name, s in scores.items():
        v[BLENDSHAPE_NAMES.index(name)] = s
    return v


# -- the rule --------------------------------------------------------------------------------------------------
def test_ordered_by_the_lesser_score_neutral_and_weak_ones_left_out():
    q = _at(_neutral=0.9, jawOpen=0.71, browInnerUp=0.3, eyeBlinkLeft=0.95, mouthSmileLeft=0.5, cheekPuff=0.12)
    m = _at(_neutral=0.9, jawOpen=0.65, browInnerUp=0.8, eyeBlinkLeft=0.05, mouthSmileLeft=0.45, cheekPuff=0.09)
    assert shared_blendshapes(q, m) == [
        {"blendshape": "jawOpen", "query": 0.71, "match": 0.65},
        {"blendshape": "mouthSmileLeft", "query": 0.5, "match": 0.45},
        {"blendshape": "browInnerUp", "query": 0.3, "match": 0.8},
    ]  # eyeBlinkLeft: one face only (min 0.05); cheekPuff: min 0.09 < 0.1; _neutral never
    assert [s["blendshape"] for s in shared_blendshapes(q, m, top=5)] == ["jawOpen", "mouthSmileLeft", "browInnerUp"]
    assert shared_blendshapes(q, m, top=1) == shared_blendshapes(q, m)[:1]
    assert shared_blendshapes(q, m, floor=0.4) == shared_blendshapes(q, m)[:2]


def test_none_empty_ties_and_rounding():
    q = _at(jawOpen=0.5)
    assert shared_blendshapes(None, q) is None and shared_blendshapes(q, None) is None
    assert shared_blendshapes(q, _at(browInnerUp=0.9)) == []  # nothing on both: an empty list, not None
    tie = _at(jawOpen=0.4, browInnerUp=0.4, cheekPuff=0.4, eyeWideLeft=0.4)
    assert [s["blendshape"] for s in shared_blendshapes(tie, tie)] == ["browInnerUp", "cheekPuff", "eyeWideLeft"]
    assert shared_blendshapes(_at(jawOpen=0.123456), _at(jawOpen=0.98765)) == [
        {"blendshape": "jawOpen", "query": 0.123, "match": 0.988}
    ]
    assert shared_blendshapes(q.tolist(), tuple(q)) == shared_blendshapes(q, q)  # any sequence of 52


@pytest.mark.parametrize("bad", [np.zeros(51), np.zeros((2, 52)), np.r_[np.zeros(51), np.nan], "jawOpen"])
def test_bad_scores_are_a_value_error(bad):
    with pytest.raises(ValueError, match="blendshape"):
        shared_blendshapes(bad, np.zeros(52))


# -- real memes through the real pipeline --------------------------------------------------------------------------
def test_the_index_build_stores_every_face_s_blendshapes(meme_index):
    from facial_search.io.images import load_image
    from facial_search.pipeline import Pipeline

    index = MemeIndex.load(meme_index)
    entries = index.entries()
    assert entries and all(e.blendshapes is not None for e in entries)
    first = entries[0]
    with Pipeline() as p:
        faces = p.faces(load_image(first.source))
    stored = np.rint(first.blendshapes * 255)
    np.testing.assert_array_equal(stored, np.rint(np.clip(faces[first.face].blendshapes, 0, 1) * 255))


def test_a_meme_searched_against_itself_explains_with_its_own_top_blendshapes(meme_index):
    from facial_search.pipeline import FacialSearch

    with FacialSearch.open(meme_index) as fs:
        result = fs.search(MEMES / "Success-Kid.jpg", k=2)
    doc = result.to_json(explain=True)
    top = doc["faces"][0]["matches"][0]
    assert top["title"] == "Success Kid" and top["distance"] < 1e-3
    own = result.faces[0].face.blendshapes.astype(np.float64)
    own[BLENDSHAPE_NAMES.index("_neutral")] = -1
    third = np.sort(own)[-3]
    assert len(top["explain"]) == 3
    for s in top["explain"]:  # the same face: its scores, stored to 1/255, and its three highest
        assert abs(s["query"] - s["match"]) <= 0.5 / 255 + 1e-3
        assert own[BLENDSHAPE_NAMES.index(s["blendshape"])] >= third - 2 / 255
    assert doc["faces"][0]["matches"][1]["explain"] is not None
    assert "explain" not in result.to_json()["faces"][0]["matches"][0]  # only when asked


def _search(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, "search", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_the_cli_flag(meme_index):
    photo = FACES / "single_face.jpg"
    doc = json.loads(_search(photo, "--index", meme_index, "--json", "--explain", "-k", "2").stdout)
    matches = doc["faces"][0]["matches"]
    assert len(matches) == 2 and all(isinstance(m["explain"], list) for m in matches)
    assert all(set(s) == {"blendshape", "query", "match"} for m in matches for s in m["explain"])
    plain = json.loads(_search(photo, "--index", meme_index, "--json", "-k", "2").stdout)
    assert all("explain" not in m for m in plain["faces"][0]["matches"])
    text = _search(photo, "--index", meme_index, "--explain", "-k", "1").stdout
    first = matches[0]["explain"][0]["blendshape"] if matches[0]["explain"] else "no blendshape"
    assert "shares" in text and first in text


def test_an_index_built_before_blendshapes_explains_null(meme_index, tmp_path):
    index = MemeIndex.load(meme_index)
    old = MemeIndex(index.embedder)
    old.add(index.embeddings, [{"source": e.source, "face": e.face, "box": e.box, "title": e.title,
                                "picture_hash": e.picture_hash} for e in index.entries()])  # fmt: skip
    path = tmp_path / "old.fsindex"
    old.save(path)
    doc = json.loads(_search(FACES / "single_face.jpg", "--index", path, "--json", "--explain", "-k", "3").stdout)
    assert [m["explain"] for m in doc["faces"][0]["matches"]] == [None] * 3
    assert "shares: unknown" in _search(FACES / "single_face.jpg", "--index", path, "--explain", "-k", "1").stdout


def test_ray_results_carry_the_blendshapes():
    """The Arrow table Ray's actors return (facial_search.ray_executor) keeps each face's blendshapes."""
    pytest.importorskip("pyarrow")
    from facial_search import ray_executor
    from facial_search.indexing import _FileResult

    scores = np.linspace(0, 1, 52, dtype=np.float32)
    results = [
        _FileResult("/a.jpg", 1, 2, [(0, 0, 4, 4), (4, 0, 4, 4)], np.eye(2, 8, dtype=np.float32), None,
                    ["0" * 16, "1" * 16], blendshapes=[scores, None]),
        _FileResult("/b.jpg", 1, 2, [(0, 0, 4, 4)], np.eye(1, 8, dtype=np.float32), None, ["2" * 16]),
    ]  # fmt: skip
    back = list(ray_executor.decode(ray_executor.encode(results)))
    np.testing.assert_array_equal(back[0].blendshapes[0], scores)
    assert back[0].blendshapes[1] is None and back[1].blendshapes == []
