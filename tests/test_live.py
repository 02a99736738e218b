"""``facial-search live``: tracks, stable matches, and the real model on real videos (no mocks)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from facial_search.cli import main
from facial_search.errors import OptionError
from facial_search.live import LiveConfig, LiveOptions, OneEuroParams, run_live
from facial_search.live.overlay import TRACK_COLOURS
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
    assert set(face["matches"][0]) == {"id", "title", "distance"}
    # a real face against real meme faces: the top-1 is nearer than the 3rd, all in the near half of [0, 2]
    top = np.array([[m["distance"] for m in f["matches"]] for x in lines for f in x["faces"]])
    assert np.median(top[:, 0]) < np.median(top[:, 2]) and top.max() < 1.0, (top.min(), top.max())
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


# ---------------------------------------------------------------------------------------------------------
# The typed run configuration, and option values a user can get wrong
# ---------------------------------------------------------------------------------------------------------


def test_run_live_takes_typed_options(tmp_path, meme_index, shared):
    """The library call, without argparse: a short video to its end, headless, k=2 matches per face."""
    video = shared / "data" / "videos" / "single_face.mp4"
    log = tmp_path / "run.jsonl"
    stats = run_live(LiveOptions(meme_index, video=video, window=False, log=log, session=LiveConfig(k=2)))
    lines = read_log(log)
    assert stats.frames == len(lines) == frames_in(video) and not stats.stopped
    assert stats.source == str(video) and stats.frames_with_faces == sum(bool(x["faces"]) for x in lines) > 0
    assert {len(f["matches"]) for x in lines for f in x["faces"]} == {2}
    assert set(stats.stages) >= {"landmarks", "track", "embed", "search", "decode", "write_log"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: LiveConfig(k=0),
        lambda: LiveConfig(embed_every=0),
        lambda: LiveConfig(hysteresis=(-0.1, 4)),
        lambda: LiveConfig(hysteresis=(0.05, 0)),
        lambda: LiveConfig(max_missing=-1),
        lambda: OneEuroParams(min_cutoff=0.0),
        lambda: OneEuroParams(d_cutoff=float("nan")),
        lambda: OneEuroParams(beta=float("inf")),
        lambda: LiveOptions("x.fsindex", video="a.mp4", camera=0),
        lambda: LiveOptions("x.fsindex", camera=-1),
    ],
)
def test_bad_config_values_raise_option_error(make):
    with pytest.raises(OptionError):
        make()


@pytest.mark.parametrize(
    "flag, value, names",
    [
        ("-k", "0", "k = 0"),
        ("--embed-every", "0", "embed_every = 0"),
        ("--min-cutoff", "-1", "min_cutoff = -1.0"),
        ("--d-cutoff", "0", "d_cutoff = 0.0"),
        ("--beta", "-0.5", "beta = -0.5"),
        ("--min-cutoff", "nan", "min_cutoff = nan"),
    ],
)
def test_bad_option_values_are_one_line_before_any_work(flag, value, names, tmp_path, meme_index, shared, capsys):
    video = shared / "data" / "videos" / "single_face.mp4"
    log = tmp_path / "out.jsonl"
    rc = main(
        ["live", "--video", str(video), "--index", str(meme_index), "--no-window", "--log", str(log), flag, value]
    )
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("facial-search: error: ") and names in err[0], err
    assert not log.exists() and captured.out == ""  # refused before the video or the model was opened


@pytest.mark.parametrize("where", ["unknown extension", "missing folder", "log in a missing folder", "folder"])
def test_bad_output_paths_are_one_line_before_any_work(where, tmp_path, meme_index, shared, capsys):
    video = shared / "data" / "videos" / "single_face.mp4"
    log = tmp_path / "out.jsonl"
    extra = {
        "unknown extension": ["--output", str(tmp_path / "out.xyz")],
        "missing folder": ["--output", str(tmp_path / "nowhere" / "out.mp4")],
        "log in a missing folder": [],
        "folder": ["--output", str(tmp_path)],
    }[where]
    if where == "log in a missing folder":
        log = tmp_path / "nowhere" / "out.jsonl"
    rc = main(["live", "--video", str(video), "--index", str(meme_index), "--no-window", "--log", str(log), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("facial-search: error: "), err
    named = str(log) if where == "log in a missing folder" else extra[1]
    assert named in err[0] and not log.exists()


# ---------------------------------------------------------------------------------------------------------
# The desktop window, on a real X server (Xvfb)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def x_display(tmp_path):
    """A fresh Xvfb server on a display number it picks itself (``-displayfd``); yields ``":N"``."""
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        pytest.skip("needs Debian's xvfb and xdotool (make test installs them: scripts/ensure-xvfb.sh)")
    read_fd, write_fd = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=log, stderr=log,
    )  # fmt: skip
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 30
    while not number.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
        if select.select([read_fd], [], [], 0.5)[0]:
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_fd)
    if not number.strip().isdigit():
        proc.kill()
        proc.wait()
        log.close()
        pytest.skip(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text(errors='replace')[-300:]}")
    try:
        yield f":{int(number)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def xdotool(display: str, *args: str, timeout: float = 30) -> str:
    env = dict(os.environ, DISPLAY=display)
    r = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_window_shows_the_annotated_video_and_a_key_ends_it(x_display, tmp_path, meme_index, shared):
    from PIL import ImageGrab

    video = shared / "data" / "videos" / "WolfgangLanger_Pexels.mp4"
    log = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "facial_search.cli", "live", "--video", str(video), "--index", str(meme_index)]
    env = {k: v for k, v in os.environ.items() if k not in ("FACIAL_SEARCH_DEBUG", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen(
        [*cmd, "--log", str(log)], env=dict(env, DISPLAY=x_display), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        found = xdotool(x_display, "search", "--sync", "--onlyvisible", "--name", "^facial-search live: ", timeout=120)
        window = found.split()[0]
        red = np.array(TRACK_COLOURS[0][::-1])  # the first track's colour, as RGB
        shot, is_red = None, None
        for _ in range(200):  # until the window has its size and the face's overlay is on the screen
            geometry = dict(
                line.split("=") for line in xdotool(x_display, "getwindowgeometry", "--shell", window).split()
            )
            x, y, w, h = (int(geometry[key]) for key in ("X", "Y", "WIDTH", "HEIGHT"))
            if (w, h) == (640, 360):  # the picture at its own size, nothing around it
                shot = np.asarray(ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=x_display).convert("RGB"))
                is_red = np.abs(shot.astype(int) - red).max(axis=2) <= 12
                if is_red.sum() > 300:
                    break
            time.sleep(0.1)
        assert shot is not None, f"the window stayed {w}x{h}"
        assert proc.poll() is None, proc.communicate()
        xdotool(x_display, "windowfocus", "--sync", window, "key", "q")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = read_log(log)
    assert 0 < len(lines) < frames_in(video) and "stopped by a key press" in out  # the key ended it early
    assert shot.shape == (360, 640, 3) and shot.std() > 20  # a picture, not an empty window
    # the face box, mesh and label are drawn in the first track's colour where the log puts the face
    ys, xs = np.nonzero(is_red)
    assert len(xs) > 300, len(xs)
    boxes = np.array([f["box"] for line in lines for f in line["faces"] if f["track"] == 0])
    x0, y0 = boxes[:, 0].min() - 30, boxes[:, 1].min() - 30
    x1, y1 = (boxes[:, 0] + boxes[:, 2]).max() + 90, (boxes[:, 1] + boxes[:, 3]).max() + 30
    assert np.mean((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)) > 0.95
    # and the rest of the window is the video itself: one of the frames shown, away from the overlay
    cap, frames = cv2.VideoCapture(str(video)), []
    for _ in range(len(lines)):
        ok, bgr = cap.read()
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    away = np.ones((h, w), bool)
    away[max(0, y0) : y1, max(0, x0) : x1] = False
    away[:30, :120] = False  # the frame rate label
    diffs = [np.median(np.abs(shot.astype(int) - f)[away]) for f in frames]
    assert min(diffs) < 6, min(diffs)
