"""Cutting a video moment as a GIF or an MP4 (``facial_search.clip``, ``facial-search clip``, the web page's
``/api/memes/{id}/clip.gif|mp4``), on the shared videos; every clip is decoded back with PyAV and looked at:
its frame count, duration, size, and that its first frame is the source's frame where the cut starts."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import FACES, VIDEOS
from PIL import Image

from facial_search import clip as clips
from facial_search.errors import (
    ClipRangeError,
    ClipSourceError,
    ClipTooLargeError,
    InputNotFoundError,
    NotAMomentError,
    OutputError,
    UnknownIdError,
)

WOLF = VIDEOS / "WolfgangLanger_Pexels.mp4"  # 640x360, 23.976 frames/s, 19.7 s
SMILE = VIDEOS / "single_face.mp4"  # 640x360, 30 frames/s, 2.4 s


def decode(path: Path) -> tuple[list[np.ndarray], float, str]:
    """Every frame of ``path`` as ``(H, W, 3) uint8`` RGB, its duration (seconds, the container's) and codec."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, c.duration / av.time_base, s.codec_context.name


def source_frame(path: Path, t: float, size: tuple[int, int]) -> np.ndarray:
    """The source's first frame at or after ``t`` seconds, resized to ``size`` (w, h), RGB."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        c.seek(int(t / s.time_base), stream=s)  # the keyframe before t, then forward
        for f in c.decode(s):
            if f.time >= t - 1e-6:
                return np.asarray(f.to_image().resize(size), dtype=np.float32)
    raise AssertionError(f"no frame at {t} s")


def resembles(frame: np.ndarray, path: Path, t: float, other_t: float) -> tuple[float, float]:
    """Mean absolute difference of ``frame`` to the source frame at ``t`` and to the one at ``other_t``."""
    size = (frame.shape[1], frame.shape[0])
    f = frame.astype(np.float32)
    return float(np.abs(f - source_frame(path, t, size)).mean()), float(
        np.abs(f - source_frame(path, other_t, size)).mean()
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- GIF and MP4 from the shared videos ------------------------------------------------------------------------
def test_gif_of_a_moment_plays(shared, tmp_path):
    out = tmp_path / "moment.gif"
    clip = clips.cut_clip(WOLF, 5.0, 8.0, out)
    assert (clip.t_start, clip.t_end) == pytest.approx((4.7, 8.3))  # 0.3 s padding either side
    assert clip.format == "gif" and clip.codec == "gif" and clip.bytes == out.stat().st_size <= 5_000_000
    frames, duration, codec = decode(out)
    assert codec == "gif" and len(frames) == clip.frames
    assert clip.frames == pytest.approx(3.6 * clip.fps, abs=1.5)
    assert duration == pytest.approx(3.6, abs=0.15) and clip.duration == pytest.approx(3.6, abs=0.1)
    assert all(f.shape == (clip.height, clip.width, 3) for f in frames) and clip.width <= 480
    assert clip.width / clip.height == pytest.approx(640 / 360, rel=0.02)
    near, far = resembles(frames[0], WOLF, 4.7, 15.0)
    assert near < 10 and near < far / 2, (near, far)  # the frame at t_start - pad, not any frame of the video
    assert leftovers(tmp_path) == []


def test_mp4_of_a_moment_plays(shared, tmp_path):
    out = tmp_path / "moment.mp4"
    clip = clips.cut_clip(WOLF, 5.0, 8.0, out, max_width=320)
    expected = "h264" if "libx264" in av.codecs_available else "mpeg4"
    assert clip.codec == clips.mp4_codec() and clip.format == "mp4"
    frames, duration, codec = decode(out)
    assert codec == expected and len(frames) == clip.frames
    assert Fraction(clip.fps).limit_denominator(1001) == Fraction(24000, 1001)  # the source's own rate
    assert duration == pytest.approx(3.6, abs=0.15) and clip.frames == pytest.approx(3.6 * clip.fps, abs=1.5)
    assert (clip.width, clip.height) == (320, 180) and frames[0].shape == (180, 320, 3)
    near, far = resembles(frames[0], WOLF, 4.7, 15.0)
    assert near < 10 and near < far / 2, (near, far)
    with av.open(str(out)) as c:  # +faststart: the index (moov) before the data, so a browser plays it at once
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    head = out.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_mp4_without_libx264_is_mpeg4(shared, tmp_path, monkeypatch):
    monkeypatch.setattr(clips, "mp4_codec", lambda: "mpeg4")  # a PyAV whose FFmpeg has no libx264
    clip = clips.cut_clip(SMILE, 0.5, 1.5, tmp_path / "m.mp4", pad_s=0)
    frames, duration, codec = decode(tmp_path / "m.mp4")
    assert (
        clip.codec == codec == "mpeg4" and len(frames) == clip.frames == 30 and duration == pytest.approx(1.0, abs=0.05)
    )
    assert resembles(frames[0], SMILE, 0.5, 2.2)[0] < 10


def test_padding_stays_inside_the_video(shared, tmp_path):
    clip = clips.cut_clip(SMILE, 0.1, 2.4, tmp_path / "all.gif", pad_s=0.3)
    assert clip.t_start == 0.0 and clip.t_end == pytest.approx(2.4, abs=0.03)
    frames, duration, _ = decode(tmp_path / "all.gif")
    assert duration == pytest.approx(clip.t_end, abs=0.15)
    assert resembles(frames[0], SMILE, 0.0, 2.0)[0] < 10


def test_a_gif_over_budget_is_cut_smaller_until_it_fits(shared, tmp_path):
    out = tmp_path / "small.gif"
    clip = clips.cut_clip(WOLF, 5.0, 8.0, out, max_bytes=800_000)
    assert clip.tries >= 2 and out.stat().st_size == clip.bytes <= 800_000
    assert clip.fps < clips.GIF_FPS or clip.width < 480
    frames, duration, _ = decode(out)
    assert len(frames) == clip.frames and duration == pytest.approx(3.6, abs=0.25)
    assert leftovers(tmp_path) == []


def test_a_clip_that_cannot_fit_is_refused_and_leaves_the_old_file(shared, tmp_path):
    out = tmp_path / "tiny.gif"
    out.write_bytes(b"the old file")
    with pytest.raises(ClipTooLargeError, match="at 6 frames/s and 120 px wide, over the 3,000 allowed"):
        clips.cut_clip(SMILE, 0.5, 1.0, out, pad_s=0, max_bytes=3_000)
    assert out.read_bytes() == b"the old file" and leftovers(tmp_path) == []


def rotated_video(path: Path, degrees: int) -> Path:
    """A 64x32 video (10 frames, 10 frames/s) whose left quarter is white, with a display rotation of
    ``degrees`` counter-clockwise in its container (as a phone records a portrait video)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(degrees)
        a = np.zeros((32, 64, 3), np.uint8)
        a[:, :16] = 255
        for _ in range(10):
            out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(s.encode(None))
    return path


@pytest.mark.parametrize(
    ("degrees", "white"),
    [(90, "bottom"), (-90, "top"), (180, "right"), (0, "left")],
)
def test_rotation_metadata_is_applied(tmp_path, degrees, white):
    src = rotated_video(tmp_path / f"rot{degrees}.mp4", degrees)
    for suffix in (".gif", ".mp4"):
        clip = clips.cut_clip(src, 0.0, 0.9, tmp_path / f"out{suffix}", pad_s=0)
        frame = decode(tmp_path / f"out{suffix}")[0][0].mean(axis=2)
        assert (clip.width, clip.height) == ((32, 64) if degrees in (90, -90) else (64, 32))
        h, w = frame.shape
        side = {"bottom": frame[-h // 8 :], "top": frame[: h // 8], "right": frame[:, -w // 8 :],
                "left": frame[:, : w // 8]}[white]  # fmt: skip
        assert side.mean() > 200 and frame.mean() < 100, (suffix, side.mean(), frame.mean())


def test_variable_frame_rate_comes_out_constant(tmp_path):
    """A video whose frames come at uneven times (a phone's variable frame rate): the clip is resampled to one
    rate, each frame the source's frame shown at that time."""
    src = tmp_path / "vfr.mp4"
    times = [0.0, 0.04, 0.5, 0.54, 0.58, 1.2, 1.6, 1.64, 1.88, 2.0]  # seconds: 50 frames/s at most, 5 on average
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 25 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    clip = clips.cut_clip(src, 0.0, 1.9, tmp_path / "vfr.gif", pad_s=0)
    assert clip.fps == clips.GIF_FPS  # not the average rate
    frames, duration, _ = decode(tmp_path / "vfr.gif")
    assert len(frames) == clip.frames == pytest.approx(1.9 * clip.fps, abs=1.5)
    assert duration == pytest.approx(1.9, abs=0.15)
    levels = [int(round(f.mean() / 25)) for f in frames]  # which source frame each output frame shows
    at = [min(int(i / clip.fps * 1000 + 1e-6), 1899) / 1000 for i in range(len(frames))]
    want = [max(j for j, t in enumerate(times) if t <= x + 1 / clip.fps / 2) for x in at]
    assert sum(a != b for a, b in zip(levels, want, strict=True)) <= 2, (levels, want)


# -- bad input -------------------------------------------------------------------------------------------------
def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(20):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def test_bad_sources_get_typed_errors(shared, tmp_path):
    with pytest.raises(InputNotFoundError, match="no such file"):
        clips.cut_clip(tmp_path / "gone.mp4", 0, 1, tmp_path / "a.gif")
    with pytest.raises(ClipSourceError, match="is a folder"):
        clips.cut_clip(tmp_path, 0, 1, tmp_path / "a.gif")
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    with pytest.raises(ClipSourceError, match="cannot be read as a video"):
        clips.cut_clip(tmp_path / "notes.mp4", 0, 1, tmp_path / "a.gif")
    with pytest.raises(ClipSourceError, match="no video stream"):
        clips.cut_clip(audio_only(tmp_path / "sound.m4a"), 0, 1, tmp_path / "a.gif")
    (tmp_path / "cut.mp4").write_bytes(SMILE.read_bytes()[:3000])  # the header and no frame
    with pytest.raises(ClipSourceError):
        clips.cut_clip(tmp_path / "cut.mp4", 0, 1, tmp_path / "a.gif")
    assert not (tmp_path / "a.gif").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("t_start", "t_end", "message"),
    [(1.0, 5.0, "t_end 5 s is past the video's end"), (3.0, 4.0, "t_start 3 s is past"),
     (1.5, 1.0, "is not after t_start"), (1.0, 1.0, "is not after"), (-0.5, 1.0, "before the video's start"),
     (float("nan"), 1.0, "must be finite")],
)  # fmt: skip
def test_times_outside_the_video_are_refused(shared, tmp_path, t_start, t_end, message):
    with pytest.raises(ClipRangeError, match=message):
        clips.cut_clip(SMILE, t_start, t_end, tmp_path / "a.gif")
    assert list(tmp_path.iterdir()) == []


def test_bad_outputs_fail_before_any_work(tmp_path):
    missing = tmp_path / "no-such-video.mp4"  # the output is checked first: its error, not the source's
    with pytest.raises(OutputError, match="unknown extension '.webm'"):
        clips.cut_clip(missing, 0, 1, tmp_path / "a.webm")
    with pytest.raises(OutputError, match="no extension"):
        clips.cut_clip(missing, 0, 1, tmp_path / "a")
    with pytest.raises(OutputError, match="does not exist"):
        clips.cut_clip(missing, 0, 1, tmp_path / "no" / "a.gif")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        clips.cut_clip(missing, 0, 1, tmp_path / "file" / "a.mp4")
    with pytest.raises(OutputError, match="is a folder"):
        (tmp_path / "d.gif").mkdir()
        clips.cut_clip(missing, 0, 1, tmp_path / "d.gif")
    with pytest.raises(ValueError, match="pad_s"):
        clips.cut_clip(missing, 0, 1, tmp_path / "a.gif", pad_s=-1)


# -- the clip cache of the web page -------------------------------------------------------------------------
def test_cached_clip_is_cut_once_per_video_version(shared, tmp_path):
    video = tmp_path / "smile.mp4"
    video.write_bytes(SMILE.read_bytes())
    cache = tmp_path / "cache"
    a = clips.cached_clip(video, 0.5, 1.5, "mp4", folder=cache)
    inode = a.stat().st_ino
    assert clips.cached_clip(video, 0.5, 1.5, "mp4", folder=cache) == a and a.stat().st_ino == inode  # not cut again
    assert decode(a)[0] and a.suffix == ".mp4"
    other = clips.cached_clip(video, 0.5, 1.2, "mp4", folder=cache)  # other times: another clip
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # the video changed
    newer = clips.cached_clip(video, 0.5, 1.5, "mp4", folder=cache)
    assert len({a, other, newer}) == 3
    total = sum(p.stat().st_size for p in cache.iterdir())
    kept = clips.cached_clip(video, 0.6, 1.5, "mp4", folder=cache, max_cache_bytes=total)  # over: the oldest go
    assert kept.exists() and newer.exists() and not a.exists()
    assert sum(p.stat().st_size for p in cache.iterdir()) <= total and leftovers(cache) == []


# -- an index with moments: the command line and the web page ---------------------------------------------------
@pytest.fixture(scope="module")
def moment_index(tmp_path_factory, shared) -> tuple[Path, list, int]:
    """An index of a photo and a video (indexed as a user would: moments by ``facial_search.moments``):
    ``(path, the video's moment entries, the photo's id)``."""
    from facial_search.indexing import build_index

    out = tmp_path_factory.mktemp("moments") / "moments.fsindex"
    index, _ = build_index([FACES / "single_face.jpg", SMILE], out, workers=1, progress=False)
    moments = [e for e in index.entries() if e.t_start is not None]
    picture = next(e.id for e in index.entries() if e.t_start is None)
    assert moments and all(Path(e.source) == SMILE for e in moments)
    return out, moments, picture


def test_moment_of_an_index_entry(moment_index):
    from facial_search import index as fsi

    path, moments, picture = moment_index
    with fsi.open(path) as store:
        m = clips.moment_of(store, moments[0].id)
        assert (m.source, m.t_start, m.t_end) == (SMILE, moments[0].t_start, moments[0].t_end)
        with pytest.raises(NotAMomentError, match="a picture"):
            clips.moment_of(store, picture)
        with pytest.raises(UnknownIdError, match="not in the index"):
            clips.moment_of(store, 10**6)


def cli(*args) -> subprocess.CompletedProcess:
    """``facial-search ARGS...`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "facial_search.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_cli_clip_writes_a_gif_and_an_mp4(moment_index, tmp_path):
    path, moments, _ = moment_index
    m = max(moments, key=lambda e: e.t_end - e.t_start)
    r = cli("clip", path, m.id, "--out", tmp_path / "m.gif")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'm.gif'}: GIF (gif)") and "single_face.mp4" in r.stdout
    frames, duration, _ = decode(tmp_path / "m.gif")
    a, b = max(0.0, m.t_start - 0.3), min(2.4, m.t_end + 0.3)
    assert duration == pytest.approx(b - a, abs=0.15) and frames[0].shape[1] <= 480
    assert resembles(frames[0], SMILE, a, 2.3 if a < 1.2 else 0.0)[0] < 10
    r = cli("clip", path, m.id, "--out", tmp_path / "m.mp4", "--pad-s", "0", "--max-width", "320")
    assert r.returncode == 0, r.stderr
    frames, duration, _ = decode(tmp_path / "m.mp4")
    assert duration == pytest.approx(min(m.t_end, 2.4) - m.t_start, abs=0.15) and frames[0].shape[1] == 320


@pytest.mark.parametrize(
    ("which", "out", "message"),
    [("picture", "a.gif", r"id \d+: a picture \(single_face.jpg\), not a video moment"),
     ("unknown", "a.gif", "id 999999: not in the index"),
     ("moment", "a.webm", "unknown extension '.webm'"),
     ("moment", "no/a.gif", "does not exist")],
)  # fmt: skip
def test_cli_clip_errors_are_one_line(moment_index, tmp_path, which, out, message):
    path, moments, picture = moment_index
    id = {"picture": picture, "unknown": 999999, "moment": moments[0].id}[which]
    r = cli("clip", path, id, "--out", tmp_path / out)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("facial-search: error: "), r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_web_serves_a_moment_as_gif_and_mp4(moment_index):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from facial_search.web import SearchPool, create_app

    path, moments, picture = moment_index
    m = moments[0]
    pool = SearchPool(path, 1)
    try:
        with TestClient(create_app(pool=pool)) as c:
            r = c.get(f"/api/memes/{m.id}/clip.gif")
            assert r.status_code == 200 and r.headers["content-type"] == "image/gif", r.text
            assert r.content[:6] == b"GIF89a" and len(r.content) <= 5_000_000
            again = c.get(f"/api/memes/{m.id}/clip.gif")  # kept: the same file
            assert again.content == r.content and "max-age" in again.headers["cache-control"]
            v = c.get(f"/api/memes/{m.id}/clip.mp4")
            assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
            head = c.head(f"/api/memes/{m.id}/clip.mp4")
            assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "video/mp4"
            assert head.headers["content-length"] == str(len(v.content))
            part = c.get(f"/api/memes/{m.id}/clip.mp4", headers={"Range": "bytes=0-99"})  # what <video> asks
            assert part.status_code == 206 and part.content == v.content[:100]
            # a moment's thumbnail (the video's poster; private mode fetches every file's): its typical frame
            thumb = c.get(f"/api/memes/{m.id}/thumb")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            still = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"))
            assert (
                max(still.shape[:2]) == 256
                and resembles(still, SMILE, m.t_frame, 2.3 if m.t_frame < 1.2 else 0)[0] < 10
            )
            # the page's on-device mode asks with embeddings: its video matches carry the moment too
            label = c.get("/api/ondevice").json()["embedder"]
            q = np.full(64, 1 / 8.0).tolist()
            doc = c.post("/api/search/vectors", json={"vectors": [q], "k": 10, "all_faces": True, "embedder": label})
            got = {x["id"]: x for x in doc.json()["faces"][0]["matches"]}
            assert set(got) == {e.id for e in moments} | {picture}, doc.text
            assert "t_start" not in got[picture]
            for e in moments:
                assert (got[e.id]["t_start"], got[e.id]["t_end"]) == (round(e.t_start, 3), round(e.t_end, 3))
                assert got[e.id]["track"] == e.track and got[e.id]["t_frame"] == round(e.t_frame, 3)
            for url, status, detail in [
                (f"/api/memes/{picture}/clip.gif", 404, "a picture, not a video moment"),
                ("/api/memes/999999/clip.mp4", 404, "no meme with id 999999"),
                (f"/api/memes/{m.id}/clip.webm", 422, "fmt"),
                ("/api/memes/x/clip.gif", 422, "meme_id"),
            ]:
                r = c.get(url)
                assert r.status_code == status and detail in r.json()["detail"], (url, r.text)
    finally:
        pool.close()
    with av.open(io.BytesIO(v.content)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) >= 5 and frames[0].width <= 480


@pytest.mark.slow
def test_page_plays_a_video_match_and_offers_its_gif(moment_index, tmp_path):
    """The phone page (on-device mode, Debian's Chromium): a photo whose match is a video moment shows that
    moment playing in its card (muted, looping) with "Download GIF"; the picture match keeps its image."""
    import threading
    import time

    from helpers import CHROMIUM, DESKTOP

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    import httpx
    import uvicorn

    from facial_search.web import SearchPool, create_app
    from facial_search.web.ondevice import embedder_label

    path, moments, picture = moment_index
    pool = SearchPool(path, 1)
    srv = uvicorn.Server(uvicorn.Config(create_app(pool=pool), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    shots = Path(os.environ.get("FACIAL_SEARCH_SCREENSHOTS") or tmp_path)
    try:
        while not srv.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])  # fmt: skip
            page = browser.new_page(**DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("() => window.facialSearch && window.facialSearch.ready", timeout=240_000)
            page.set_input_files("#file", str(FACES / "single_face.jpg"))
            page.wait_for_function(
                "() => [...document.querySelectorAll('video.moment')].some(v => !v.paused && v.currentTime > 0.3)",
                timeout=120_000,
            )
            cards = page.evaluate(
                """() => [...document.querySelectorAll('.match')].map(f => ({
                    id: Number(f.dataset.id), img: f.querySelector('img') && f.querySelector('img').getAttribute('src'),
                    video: f.querySelector('video') && [f.querySelector('video').getAttribute('src'),
                             f.querySelector('video').muted, f.querySelector('video').loop,
                             f.querySelector('video').videoWidth],
                    gif: [...f.querySelectorAll('a.gif')].map(a => [a.getAttribute('href'), a.download, a.textContent]),
                    meta: f.querySelector('.meta').textContent}))"""
            )
            page.screenshot(path=str(shots / "clip-moment-desktop.png"))
            # private mode: the phone's copy of the index answers with the same moments, times and ids as the
            # server's vector API (no clip is fetched: the card shows the moment's own frame and its times)
            page.check("#private-toggle")
            page.wait_for_function("() => window.facialSearch.private === 'on'", timeout=240_000)
            vectors = [list(map(float, v)) for v in pool.index.embeddings]
            label = embedder_label(pool.index.embedder)
            want = httpx.post(url + "api/search/vectors", timeout=60,
                              json={"vectors": vectors[:16], "k": 5, "embedder": label, "image": "q"}).json()  # fmt: skip
            got = page.evaluate("(v) => window.facialSearch.privateSearch(v, {k: 5, image: 'q'})", vectors[:16])
            drop = ("distance", "explain")
            strip = [[{k: m[k] for k in m if k not in drop} for m in f["matches"]] for f in want["faces"]]
            assert [[{k: m[k] for k in m if k not in drop} for m in f["matches"]] for f in got["faces"]] == strip
            assert any("t_start" in m for f in got["faces"] for m in f["matches"])
            page.set_input_files("#file", str(FACES / "single_face.jpg"))
            page.wait_for_function(
                f"() => [...document.querySelectorAll('.match img')].some(i => i.getAttribute('src') && "
                f"i.getAttribute('src').endsWith('/api/memes/{moments[0].id}/thumb') || "
                "[...document.querySelectorAll('.match')].some(f => f.querySelector('.meta').textContent.includes('–')))",
                timeout=120_000,
            )
            private_meta = page.evaluate("() => [...document.querySelectorAll('.match .meta')].map(m => m.textContent)")
            assert any("–" in t for t in private_meta), private_meta
            page.screenshot(path=str(shots / "clip-moment-private-desktop.png"))
            browser.close()
        by_id = {c["id"]: c for c in cards}
        shown = [e for e in moments if e.id in by_id]
        assert picture in by_id and shown, cards
        assert by_id[picture]["img"] == f"/api/memes/{picture}/image" and by_id[picture]["video"] is None
        assert by_id[picture]["gif"] == []
        for e in shown:
            card = by_id[e.id]
            assert card["img"] is None and card["video"][:3] == [f"/api/memes/{e.id}/clip.mp4", True, True]
            assert 0 < card["video"][3] <= 480  # it decoded: the clip's width
            assert card["gif"] == [[f"/api/memes/{e.id}/clip.gif", f"single_face-{e.t_start:.1f}s.gif", "Download GIF"]]
            assert "–" in card["meta"]
        assert not errors, errors
    finally:
        srv.should_exit = True
        thread.join(10)
        pool.close()
