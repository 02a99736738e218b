"""``facial-search live``: tracks, stable matches, and the real model on real videos (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from facial_search.cli import main
from facial_search.live.tracking import MatchHysteresis, Tracker, box_iou, match_boxes
from facial_search.vision.faces import Face


@pytest.fixture(autouse=True)
def _python_stderr(monkeypatch):
    """Keep fd 2 as it is (the CLI would point it at /dev/null) so that capsys sees the messages."""
    monkeypatch.setenv("FACIAL_SEARCH_DEBUG", "1")


def frames_in(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def read_log(path) -> list[dict]:
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines()]


def live(tmp_path, video, index, *extra) -> tuple[int, list[dict]]:
    log = tmp_path / "out.jsonl"
    rc = main(["live", "--video", str(video), "--index", str(index), "--no-window", "--log", str(log), *extra])
    return rc, read_log(log) if log.exists() else []


# ---------------------------------------------------------------------------------------------------------
# Pure parts: association, tracks, hysteresis
# ---------------------------------------------------------------------------------------------------------


def fake_face(x: float, y: float, size: float = 100, image=(640, 360)) -> Face:
    """A face whose 478 landmarks fill the square (x, y, size) of an image (pixels)."""
    rng = np.random.default_rng(int(x * 7 + y))
    lm = np.c_[rng.uniform(x, x + size, 478) / image[0], rng.uniform(y, y + size, 478) / image[1], np.zeros(478)]
    lm[0, :2], lm[1, :2] = (x / image[0], y / image[1]), ((x + size) / image[0], (y + size) / image[1])
    return Face((int(x), int(y), int(size), int(size)), lm.astype(np.float32), None, None, image)


def test_match_boxes_pairs_by_overlap():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0
    prev = [(0, 0, 100, 100), (300, 0, 100, 100)]
    cur = [(305, 5, 100, 100), (500, 200, 50, 50), (4, 2, 100, 100)]
    assert match_boxes(prev, cur) == [(0, 2), (1, 0)]
    assert match_boxes([], cur) == [] and match_boxes(prev, []) == []


def test_tracks_keep_ids_end_and_start_cleanly():
    tr = Tracker(max_missing=2)
    ids = [[t.id for t in tr.update([fake_face(100 + i, 50), fake_face(400 - i, 50)], i / 30, i)] for i in range(5)]
    assert ids == [[0, 1]] * 5  # two faces, two stable ids (left to right)
    for i in range(5, 8):  # the right face leaves; its track ends after 2 missing frames
        assert [t.id for t in tr.update([fake_face(100 + i, 50)], i / 30, i)] == [0]
    assert [t.id for t in tr.tracks] == [0]
    back = tr.update([fake_face(108, 50), fake_face(395, 50)], 8 / 30, 8)
    assert [t.id for t in back] == [0, 2]  # it comes back as a new track, with a fresh filter
    assert back[1].filter is not back[0].filter and back[1].first_frame == 8


def test_tracker_smooths_landmarks():
    rng = np.random.default_rng(1)
    smooth, raw = Tracker(), Tracker(filter_params=None)
    base = fake_face(200, 100)
    moves_s, moves_r, last_s, last_r = [], [], None, None
    for i in range(60):
        lm = base.landmarks + rng.normal(0, 1.5 / 640, base.landmarks.shape).astype(np.float32)
        f = Face(base.box, lm, None, None, base.image_size)
        s, r = smooth.update([f], i / 30, i)[0].face.landmarks_px(), raw.update([f], i / 30, i)[0].face.landmarks_px()
        if i > 10:
            moves_s.append(np.median(np.linalg.norm(s[:, :2] - last_s[:, :2], axis=1)))
            moves_r.append(np.median(np.linalg.norm(r[:, :2] - last_r[:, :2], axis=1)))
        last_s, last_r = s, r
    assert np.median(moves_s) < 0.5 * np.median(moves_r)


def test_hysteresis_holds_against_noise_and_yields_to_clear_or_lasting_wins():
    base = np.array([0.50, 0.51, 0.60, 0.70, 0.80], np.float32)
    h, raw = MatchHysteresis(k=2, margin=0.05, hold=4), MatchHysteresis(k=2, margin=0.0, hold=1)
    tops, raw_tops = [], []
    for i in range(20):  # rows 0 and 1 swap places every other frame, by 0.02
        d = base.copy()
        if i % 2:
            d[0], d[1] = 0.52, 0.50
        tops.append(int(h.update(d)[0][0]))
        raw_tops.append(int(raw.update(d)[0][0]))
    assert len(set(tops)) == 1 and len(set(raw_tops)) == 2
    rows, dist = h.update(np.array([0.50, 0.51, 0.30, 0.70, 0.80], np.float32))  # a clear win: at once
    assert rows[0] == 2 and dist[0] == pytest.approx(0.30)
    lasting = np.array([0.50, 0.49, 0.52, 0.70, 0.80], np.float32)  # row 1 slightly ahead, for `hold` frames
    seen = [int(h.update(lasting)[0][0]) for _ in range(5)]
    assert seen[0] == 2 and seen[-1] == 1


# ---------------------------------------------------------------------------------------------------------
# The real thing
# ---------------------------------------------------------------------------------------------------------


def test_wolfgang_full_run_writes_video_and_log(tmp_path, meme_index, shared):
    video = shared / "data" / "videos" / "WolfgangLanger_Pexels.mp4"
    out = tmp_path / "out.mp4"
    rc, lines = live(tmp_path, video, meme_index, "--output", str(out), "-k", "3")
    assert rc == 0
    n = frames_in(video)
    assert frames_in(out) == n and len(lines) == n
    cap_in, cap_out = cv2.VideoCapture(str(video)), cv2.VideoCapture(str(out))
    assert (cap_out.get(3), cap_out.get(4)) == (cap_in.get(3), cap_in.get(4))
    assert cap_out.get(cv2.CAP_PROP_FPS) == pytest.approx(cap_in.get(cv2.CAP_PROP_FPS), rel=1e-3)
    ok_in, first_in = cap_in.read()
    ok_out, first_out = cap_out.read()
    assert ok_in and ok_out and np.abs(first_out.astype(int) - first_in).mean() > 2  # something is drawn
    cap_in.release(), cap_out.release()
    assert [x["frame"] for x in lines] == list(range(n))
    assert all(b["t"] > a["t"] for a, b in zip(lines, lines[1:], strict=False))
    assert sum(bool(x["faces"]) for x in lines) >= 0.9 * n
    face = next(f for x in lines for f in x["faces"])
    assert set(face) == {"track", "box", "matches"} and len(face["box"]) == 4 and len(face["matches"]) == 3
    assert set(face["matches"][0]) == {"id", "title", "distance"} and 0 <= face["matches"][0]["distance"] <= 2
    assert len({f["track"] for x in lines for f in x["faces"]}) <= 2  # one person: one track (two at most)
    assert all(len({m["title"] for m in f["matches"]}) == 3 for x in lines for f in x["faces"])  # 3 memes


@pytest.mark.parametrize(
    "name, faces", [("no_face.mp4", "none"), ("face_noface.mov", "first"), ("noface_face.mov", "last")]
)
def test_videos_that_lose_or_lack_the_face_run_to_the_end(name, faces, tmp_path, meme_index, shared, capsys):
    video = shared / "data" / "videos" / name
    rc, lines = live(tmp_path, video, meme_index)
    assert rc == 0 and len(lines) == frames_in(video)
    has = [bool(x["faces"]) for x in lines]
    if faces == "none":
        assert not any(has)
    else:
        third = len(has) // 3
        head, tail = np.mean(has[:third]), np.mean(has[-third:])
        ok = head > 0.8 and tail < 0.2 if faces == "first" else head < 0.2 and tail > 0.8
        assert ok, (head, tail)
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "folder"])
def test_unreadable_video_is_one_clear_line(kind, tmp_path, meme_index, capsys):
    path = tmp_path / "bad.mp4"
    if kind == "text":
        path.write_text("not a video\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    rc = main(["live", "--video", str(path), "--index", str(meme_index), "--no-window"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("facial-search: error: ") and "bad.mp4" in err[0]


def test_missing_camera_is_one_clear_line(meme_index):
    """As a user runs it: native OpenCV warnings must not reach the terminal either."""
    r = subprocess.run(
        [sys.executable, "-m", "facial_search.cli", "live", "--camera", "97", "--index", str(meme_index), "--no-window"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "FACIAL_SEARCH_DEBUG"},
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "camera 97" in lines[0], r.stderr


def test_window_without_display_is_one_clear_line(meme_index, shared, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    video = shared / "data" / "videos" / "single_face.mp4"
    rc = main(["live", "--video", str(video), "--index", str(meme_index)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--no-window" in err[0]
