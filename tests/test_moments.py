"""Reaction moments (issue 18): videos indexed as moments, searched, drawn; bad videos; memory.

Real models on the shared videos; bad-input videos are made here with PyAV. Times in the assertions were
checked by looking at the frames (``WolfgangLanger_Pexels.mp4``: sad 0-2.5 s, crying 2.5-6 s, looking up with a
hand at the mouth 6-9.5 s, wide eyes and open mouth near 9 s, smiling 12.5-20 s).
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import FACES, FERPLUS, VIDEOS

from facial_search.errors import NotAnImageError
from facial_search.moments import (
    NoVideoStreamError,
    VideoError,
    format_span,
    frame_at,
    is_video,
    probe,
    sample_frames,
    split_runs,
    video_moments,
)

WOLF = VIDEOS / "WolfgangLanger_Pexels.mp4"
SMILE = VIDEOS / "single_face.mp4"


# ---------------------------------------------------------------------------------------------------------
# Making videos (PyAV)
# ---------------------------------------------------------------------------------------------------------


def write_video(path: Path, frames, *, fps: int = 8, pts_ms=None, codec: str = "libx264") -> Path:
    """Encode ``frames`` (``(H, W, 3) uint8`` RGB, even sizes) into ``path``; ``pts_ms``: each frame's time in
    milliseconds (a variable frame rate), else ``1/fps`` apart."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            s.options = {"preset": "ultrafast"}
        first = True
        for i, rgb in enumerate(frames):
            if first:
                s.height, s.width = rgb.shape[:2]
                first = False
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = int(pts_ms[i] if pts_ms is not None else round(i * 1000 / fps))
            f.time_base = Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def source_frames(path: Path, every_s: float, max_side: int = 0) -> list[np.ndarray]:
    return [f.rgb for f in sample_frames(path, every_s, max_side=max_side)]


def set_display_rotation(path: Path) -> None:
    """Write a 90-degree display matrix into the MP4's track header (as a phone does for a portrait video)."""
    b = bytearray(path.read_bytes())
    m = b.find(b"tkhd") + 4 + 40  # version 0 tkhd: the matrix follows 40 bytes of fields
    b[m : m + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(b))


def audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "mono"
        for i in range(20):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 44100, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def zero_frames(path: Path) -> Path:
    """A container with a video stream's header and no frame."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    return path


@pytest.fixture(scope="module")
def embedder():
    from facial_search import embedders

    return embedders.get_embedder(None)


@pytest.fixture(scope="module")
def smile_frames(shared) -> list[np.ndarray]:
    """``single_face.mp4`` (640x360, a smile) at 8 frames/s: 20 frames."""
    return source_frames(SMILE, 1 / 8)


# ---------------------------------------------------------------------------------------------------------
# The rule (pure)
# ---------------------------------------------------------------------------------------------------------


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_split_runs_cuts_at_a_change_and_merges_short_runs():
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=64)), _unit(rng.normal(size=64))
    noise = lambda n: 0.02 * rng.normal(size=(n, 64))  # noqa: E731
    emb = _unit(np.concatenate([a + noise(8), b + noise(8)]))
    t = np.arange(16) * 0.25
    assert split_runs(t, emb, every_s=0.25) == [(0, 8), (8, 16)]
    # one odd sample (a blink) starts a run of its own, which the merge folds back into a neighbour
    odd = emb.copy()
    odd[4] = b
    assert split_runs(t, odd, every_s=0.25) == [(0, 8), (8, 16)]
    # a still face is cut every max_s
    still = _unit(a + noise(60))
    runs = split_runs(np.arange(60) * 0.25, still, every_s=0.25, max_s=5.0)
    assert runs == [(0, 20), (20, 40), (40, 60)]
    assert split_runs(np.zeros(0), np.zeros((0, 64)), every_s=0.25) == []
    assert split_runs(t[:1], emb[:1], every_s=0.25) == [(0, 1)]


def test_format_span():
    assert format_span(3.2, 5.0) == "0:03.2-0:05.0"
    assert format_span(63.25, 3725.0) == "1:03.2-1:02:05.0"


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


def test_sample_frames_every_250_ms(shared):
    info = probe(WOLF)
    assert (info.width, info.height, info.rotation) == (640, 360, 0) and 19 < info.duration < 20.5
    frames = list(sample_frames(WOLF, 0.25))
    t = np.array([f.t for f in frames])
    assert len(frames) == int(info.duration / 0.25) + 1 == 79
    assert t[0] == 0 and np.all(np.diff(t) > 0.2) and np.all(np.diff(t) < 0.3)
    assert frames[0].rgb.shape == (360, 640, 3) and frames[0].scale == 1.0
    # frame_at gives the same frame as the sampling (seek, then decode forward)
    assert np.abs(frame_at(WOLF, frames[40].t).astype(int) - frames[40].rgb).mean() < 1.0


def test_rotation_metadata_gives_upright_frames(tmp_path, smile_frames, embedder):
    upright = smile_frames[:8]
    path = write_video(tmp_path / "portrait.mp4", [np.ascontiguousarray(np.rot90(f)) for f in upright])
    set_display_rotation(path)
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (640, 360, 270)
    got = source_frames(path, 1 / 8)
    assert got[0].shape == (360, 640, 3)
    assert np.abs(got[3].astype(int) - upright[3]).mean() < 8  # upright again (x264 loses a little)
    found = video_moments(path, embedder)
    assert found.moments, "the face is found in the upright frames"
    x, y, w, h = found.moments[0].box
    assert x + w <= 640 and y + h <= 360 and h > w * 0.9  # a face box of the upright frame


def test_variable_frame_rate_times_are_the_timestamps(tmp_path, smile_frames, embedder):
    pts = [0, 40, 80, 700, 740, 1500, 1540, 1580, 1620, 2400]  # ms: bursts and gaps
    path = write_video(tmp_path / "vfr.mkv", smile_frames[: len(pts)], pts_ms=pts)
    t = [round(f.t, 3) for f in sample_frames(path, 0.25)]
    assert t == [0.0, 0.7, 1.5, 2.4]  # the first frame at or after each 250 ms slot; gaps skip slots
    found = video_moments(path, embedder)
    assert found.moments and all(0 <= m.t_start <= m.t_frame <= m.t_end <= 2.65 for m in found.moments)


def test_4k_frames_are_scaled_for_the_landmarker_boxes_stay_full_size(tmp_path, smile_frames, embedder):
    from PIL import Image

    big = [np.asarray(Image.fromarray(f).resize((3840, 2160))) for f in smile_frames[:4]]
    path = write_video(tmp_path / "4k.mp4", big, fps=4)
    frames = list(sample_frames(path, 0.25))
    assert frames[0].rgb.shape == (720, 1280, 3) and frames[0].scale == 3.0
    found = video_moments(path, embedder)
    small = video_moments(write_video(tmp_path / "small.mp4", smile_frames[:4], fps=4), embedder)
    (m,), (s,) = found.moments, small.moments
    assert np.allclose(m.box, np.array(s.box) * 6, atol=40)  # the same face, in 4K pixels


def test_a_face_that_leaves_halfway(shared, embedder):
    gone = video_moments(VIDEOS / "face_noface.mov", embedder)
    assert gone.moments and max(m.t_end for m in gone.moments) < 3.2 and gone.seconds > 6
    comes = video_moments(VIDEOS / "noface_face.mov", embedder)
    assert comes.moments and min(m.t_start for m in comes.moments) > 3.5
    assert video_moments(VIDEOS / "no_face.mp4", embedder).moments == []


def test_moments_of_wolfgang_langer(shared, embedder):
    found = video_moments(WOLF, embedder)
    ms = found.moments
    assert 3 <= len(ms) <= 8
    assert ms[0].t_start == 0 and abs(ms[-1].t_end - probe(WOLF).duration) < 0.01
    for a, b in zip(ms, ms[1:], strict=False):  # one track, tiled without gaps or overlaps
        assert abs(a.t_end - b.t_start) < 0.01
    for m in ms:
        assert m.t_start <= m.t_frame <= m.t_end and abs(np.linalg.norm(m.embedding) - 1) < 1e-5
        assert m.blendshapes is not None and m.blendshapes.shape == (52,) and m.track == 0
    # the smiling phase (12.5-20 s) is one moment, apart from the sad/crying start
    smiling = [m for m in ms if m.t_start <= 15 <= m.t_end][0]
    assert smiling.t_start > 8 and smiling.t_end > 19
    assert np.linalg.norm(smiling.embedding - ms[0].embedding) > 0.7


@pytest.mark.parametrize("sample_ms", [0, -5, 2.5])
def test_bad_sample_ms(sample_ms, embedder, shared):
    with pytest.raises(ValueError, match="sample_ms"):
        video_moments(SMILE, embedder, sample_ms=sample_ms)


# ---------------------------------------------------------------------------------------------------------
# Bad input: typed errors, and a folder run that skips and goes on
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, shared, smile_frames) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-videos")
    (d / "random.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    (d / "empty.mkv").write_bytes(b"")
    data = WOLF.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])  # its index first: the first third decodes
    n = len(data)
    damaged = data[: int(n * 0.4)] + np.random.default_rng(2).bytes(n // 20) + data[int(n * 0.4) + n // 20 :]
    (d / "damaged.mp4").write_bytes(damaged)  # 5% of garbage in the middle
    streamed = write_video(d / "streamed.mkv", smile_frames * 2)  # 5 s of Matroska, cut at 40%
    (d / "truncated.mkv").write_bytes(streamed.read_bytes()[: int(streamed.stat().st_size * 0.4)])
    streamed.unlink()
    audio_only(d / "audio.mp4")
    zero_frames(d / "zero.mp4")  # FFmpeg writes no track for a stream without frames
    zero_frames(d / "zero.mkv")
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize(
    "name, error, text",
    [
        ("random.mp4", VideoError, "cannot be read as a video"),
        ("audio.mp4", NoVideoStreamError, "no video stream"),
        ("zero.mp4", NoVideoStreamError, "no video stream"),
        ("zero.mkv", VideoError, "cannot be read as a video|no frame could be decoded"),
        ("empty.mkv", NotAnImageError, "empty file"),
    ],
)
def test_bad_videos_raise_typed_errors(bad_videos, embedder, name, error, text):
    from facial_search.errors import ImageError

    with pytest.raises(error, match=text) as e:
        video_moments(bad_videos[name], embedder)
    assert isinstance(e.value, ImageError) and str(bad_videos[name]) in str(e.value)


def test_a_truncated_stream_gives_what_decodes(bad_videos, embedder):
    found = video_moments(bad_videos["truncated.mkv"], embedder)
    assert found.moments and 0.5 < found.seconds < 4.5  # what was left of the 5 s
    found = video_moments(bad_videos["truncated.mp4"], embedder)
    assert found.moments and 2 < found.seconds < 9  # a third of 19.7 s
    found = video_moments(bad_videos["damaged.mp4"], embedder)  # decoding goes on past the garbage
    assert found.seconds > 19 and 60 < found.samples < 79 and found.moments[-1].t_end > 19


def test_index_skips_bad_videos_and_indexes_the_rest(bad_videos, tmp_path):
    from facial_search.errors import SkipReason
    from facial_search.indexing import build_index

    folder = tmp_path / "in"
    folder.mkdir()
    for p in bad_videos.values():
        shutil.copy(p, folder / p.name)
    shutil.copy(SMILE, folder / "smile.mp4")
    shutil.copy(FACES / "no_time_for_that_tiny.gif", folder / "tiny.gif")  # an animated GIF: a (faceless) video
    store, report = build_index([folder], tmp_path / "v.fsindex", workers=2, progress=False)
    why = {Path(k).name: v for k, v in report.skipped_files.items()}
    assert set(why) == {"random.mp4", "empty.mkv", "audio.mp4", "zero.mp4", "zero.mkv", "tiny.gif"}
    assert SkipReason.parse(why["audio.mp4"]) is SkipReason.NOT_AN_IMAGE and "no video stream" in why["audio.mp4"]
    assert SkipReason.parse(why["random.mp4"]) is SkipReason.UNREADABLE
    assert SkipReason.parse(why["tiny.gif"]) is SkipReason.NO_FACE
    sources = {Path(e.source).name for e in store.entries()}
    assert sources == {"smile.mp4", "truncated.mkv", "truncated.mp4", "damaged.mp4"}
    assert all(e.t_start is not None and e.track == 0 for e in store.entries())
    assert report.videos == 10 and report.video_seconds > 2


def test_prefetched_hands_on_errors_and_stops_early():
    from facial_search.moments.extract import prefetched

    def failing():
        yield 1
        yield 2
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for x in prefetched(failing()):
            got.append(x)
    assert got == [1, 2]
    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    g = prefetched(endless(), size=2)
    assert [next(g), next(g)] == [0, 1]
    g.close()
    assert closed == [True]  # the producer saw the stop and closed its source


def test_is_video(tmp_path, smile_frames):
    from PIL import Image

    frames = [Image.fromarray(f).resize((160, 90)) for f in smile_frames[:4]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    frames[0].save(tmp_path / "still.gif")
    assert is_video(tmp_path / "anim.gif") and not is_video(tmp_path / "still.gif")
    assert is_video("x.MKV") and is_video("x.webm") and not is_video("x.jpg")
    assert [round(f.t, 2) for f in sample_frames(tmp_path / "anim.gif", 0.25)] == [0.0, 0.25, 0.5, 0.75]


# ---------------------------------------------------------------------------------------------------------
# Index, re-index, search, picture
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_index(tmp_path_factory, shared) -> Path:
    """WolfgangLanger's moments and one picture, in one index."""
    from facial_search.indexing import build_index

    out = tmp_path_factory.mktemp("video-index") / "v.fsindex"
    build_index([WOLF, FACES / "45-m7-di-ph.jpg"], out, workers=1, progress=False)
    return out


def _fer_faces(emotion: str, n: int = 12) -> list[Path]:
    names = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    j = names.index(emotion)
    folder = FERPLUS / "FER2013Valid"
    with open(folder / "label.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if int(r[2 + j]) >= 9]  # 9 or 10 of 10 annotators
    return [folder / r[0] for r in rows[:n]]


@pytest.mark.parametrize(
    "emotion, span, need",
    [
        ("happiness", (12.5, 19.0), 12),  # the smiling moment: every one of the 12
        ("surprise", (8.7, 9.6), 10),  # wide eyes, open mouth, hand at the mouth
        ("sadness", (0.0, 6.1), 8),  # sad or crying
    ],
)
def test_a_fer_face_finds_the_moment_of_its_expression(video_index, emotion, span, need):
    from facial_search import FacialSearch, load_image

    hits = []
    with FacialSearch.open(video_index) as fs:
        for p in _fer_faces(emotion):
            rgb = load_image(p)
            r = fs.search_faces(rgb, fs.pipeline.faces(rgb, cropped=True), k=1, group_by_source=False)
            m = r.faces[0].matches[0]
            if m.t_start is not None:  # the nearest is a moment, not the picture
                hits.append(m.t_start <= span[1] and m.t_end >= span[0] and span[0] <= m.t_frame <= span[1] + 0.5)
    assert sum(hits) >= need, hits


def test_search_json_carries_moment_times(video_index, capsys):
    from facial_search.cli import main

    assert main(["search", str(FACES / "0-f15-hao-ph.jpg"), "--index", str(video_index), "--json", "-k", "8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    matches = doc["faces"][0]["matches"]
    video = [m for m in matches if m["source"] == str(WOLF)]
    picture = [m for m in matches if m["source"].endswith("45-m7-di-ph.jpg")]
    assert len(video) >= 1 and len(picture) == 1
    spans = [(m["t_start"], m["t_end"]) for m in video]
    assert len(set(spans)) == len(spans)  # one result per moment (several moments of one video may come)
    v = min(video, key=lambda m: m["rank"])
    assert v["t_start"] <= 15 <= v["t_end"] and v["t_start"] <= v["t_frame"] <= v["t_end"] and v["track"] == 0
    assert all(round(v[k], 3) == v[k] for k in ("t_start", "t_end", "t_frame"))
    assert not {"t_start", "t_end", "t_frame", "track"} & set(picture[0])  # pictures: no moment keys


def test_result_picture_shows_the_moment_frame_and_time(video_index, tmp_path):
    from PIL import Image

    from facial_search import FacialSearch
    from facial_search.render import _meme, _span, html_page, save_picture

    with FacialSearch.open(video_index) as fs:
        r = fs.search(FACES / "0-f15-hao-ph.jpg", k=1, group_by_source=False)
    m = r.faces[0].matches[0]
    assert m.t_start is not None and _span(m) == f" · {format_span(m.t_start, m.t_end)}"
    tile = np.asarray(_meme(m.source, m.box, m.t_frame).convert("RGB")).astype(int)
    frame = frame_at(m.source, m.t_frame)
    assert tile.shape == frame.shape
    x, y, w, h = m.box
    inner = (slice(y + 10, y + h - 10), slice(x + 10, x + w - 10))  # inside the drawn box
    assert np.abs(tile[inner] - frame[inner]).mean() < 1
    save_picture(r, tmp_path / "r.png")
    assert Image.open(tmp_path / "r.png").width > 400
    assert format_span(m.t_start, m.t_end) in html_page([r])


def test_reindex_of_a_grown_folder_processes_only_new_videos(tmp_path, shared):
    from facial_search.indexing import build_index

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SMILE, folder / "smile.mp4")
    out = tmp_path / "v.fsindex"
    store, first = build_index([folder], out, workers=1, progress=False)
    before = {e.id: (e.source, e.t_start, e.t_end) for e in store.entries()}
    assert first.processed == 1 and before
    shutil.copy(VIDEOS / "noface_face.mov", folder / "arrives.mov")
    shutil.copy(FACES / "single_face.jpg", folder / "photo.jpg")
    store, second = build_index([folder], out, workers=1, progress=False)
    assert (second.processed, second.unchanged, second.videos) == (2, 1, 1)
    after = {e.id: (e.source, e.t_start, e.t_end) for e in store.entries()}
    assert {k: v for k, v in after.items() if k in before} == before  # the old moments kept as they were
    names = {Path(s).name for s, *_ in after.values()}
    assert names == {"smile.mp4", "arrives.mov", "photo.jpg"}
    (folder / "smile.mp4").unlink()
    store, third = build_index([folder], out, workers=1, progress=False)
    assert third.removed == 1 and third.processed == 0
    assert {Path(e.source).name for e in store.entries()} == {"arrives.mov", "photo.jpg"}


# ---------------------------------------------------------------------------------------------------------
# Memory: a long video streams
# ---------------------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_stays_flat_on_a_long_video(tmp_path, smile_frames, embedder):
    """A 4-minute video (the smile looped, 320x180 at 8 frames/s): RSS measured while it is indexed at
    the 25% mark and at the end; growth is the samples (~0.5 kB each), never frames."""
    from PIL import Image

    small = [np.asarray(Image.fromarray(f).resize((320, 180))) for f in smile_frames]
    loop = small + small[::-1]  # 5 s, no jump at the seam
    path = write_video(tmp_path / "long.mp4", (loop[i % len(loop)] for i in range(8 * 240)))
    rss = {}

    def note(t):
        rss.setdefault(int(t // 60), _rss_mb())
        rss["end"] = _rss_mb()

    found = video_moments(path, embedder, sample_ms=500, on_progress=note)
    assert found.seconds > 239 and found.samples == 480 and found.moments
    growth = rss["end"] - rss[1]
    print(f"RSS at 1 min {rss[1]:.0f} MB, 2 min {rss[2]:.0f}, 3 min {rss[3]:.0f}, end {rss['end']:.0f} MB")
    assert growth < 25, rss


def test_progress_shows_seconds_of_video(tmp_path, shared, capsys):
    from facial_search.indexing import build_index

    _store, report = build_index([SMILE], tmp_path / "v.fsindex", workers=1, progress=True)
    assert report.videos == 1 and 2.0 < report.video_seconds < 2.5
    assert "2 s of video" in capsys.readouterr().err


def test_each_moment_is_a_result_of_its_own(video_index):
    """Grouping folds one picture's faces into one result; a video's moments are each a result (issue 18)."""
    from facial_search import FacialSearch

    with FacialSearch.open(video_index) as fs:
        r = fs.search(FACES / "0-f15-hao-ph.jpg", k=8)
    video = [m for m in r.faces[0].matches if m.source == str(WOLF)]
    assert len(video) >= 2, [(m.source, m.t_start) for m in r.faces[0].matches]
    assert len({(m.t_start, m.t_end) for m in video}) == len(video)


def test_the_private_mode_export_carries_each_moment(video_index):
    """The phone's copy of the index (GET /api/index/export) holds the moments' times, so private mode shows them."""
    from facial_search.index.store import MemeIndex
    from facial_search.web.export import build_export
    from facial_search.web.schemas import IndexExport

    store = MemeIndex.load(video_index)
    doc = build_export(store, "expression v3")
    IndexExport.model_validate(doc)
    m = doc["moments"]
    moments = {e.id: e for e in store.entries() if e.t_start is not None}
    assert len(m["rows"]) == len(moments) >= 3 and len(doc["ids"]) == len(moments) + 1  # + the picture's face
    for j, r in enumerate(m["rows"]):
        e = moments[doc["ids"][r]]
        assert (m["t_start"][j], m["t_end"][j], m["t_frame"][j]) == (
            round(e.t_start, 3),
            round(e.t_end, 3),
            round(e.t_frame, 3),
        )
        assert m["track"][j] == e.track
    groups = [doc["groups"][r] for r in m["rows"]]
    assert len(set(groups)) == len(groups)  # each moment a result of its own, on the phone too
