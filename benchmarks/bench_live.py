"""Benchmarks of ``facial-search live``: landmark jitter and lag, match flicker, speed.

    FACIAL_SEARCH_MODELS=../shared/models .venv/bin/python benchmarks/bench_live.py --index /tmp/memes.fsindex

Build the index first (``facial-search index ../shared/data/memes/imgflip --titles
../shared/data/memes/imgflip.csv --out /tmp/memes.fsindex``). Everything is measured in one process and
reported as ratios against a reference run in the same process (timings on a shared machine are noisy):

- **Jitter**: on the stillest 2 s of the video (least movement of the 1 s moving-average face centre), the
  frame-to-frame landmark movement (pixels, x-y, median over the 478 landmarks, then median over frames),
  raw and One Euro filtered; the filter runs over the whole video, as live does (it is a pure function of
  the landmark stream and its timestamps, so filtering the recorded stream equals filtering live).
- **Lag**: on the fastest 2 s, the delay L (frames, 0.05 steps) that best aligns the filtered landmarks
  with the raw ones shifted by L (least mean distance, linear interpolation).
- **Flicker**: top-1 changes per second (summed over tracks): default (embedding smoothing + hysteresis),
  hysteresis alone, smoothing alone, neither (``--no-hysteresis``), and neither nor the landmark filter;
  and what steadiness costs: how often the default's shown top-1 is outside the top-3 of the run without
  hysteresis (no hysteresis at all would flicker most and never be stale).
- **Speed**: frames/s of the live path (decode, landmarks, tracking + filter, embedding, search, overlay,
  encode ``--output``, ``--log``) against a bare loop (decode + RGB + VIDEO-mode ``FaceLandmarker``) over the
  same frames, alternated ``--repeat`` times; and where the live path's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACIAL_SEARCH_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("FACIAL_SEARCH_MODELS", str(SHARED / "models"))
sys.path.insert(0, str(ROOT))

from facial_search.io.video import FrameSource, next_timestamp  # noqa: E402
from facial_search.live.one_euro import OneEuroFilter, OneEuroParams  # noqa: E402
from facial_search.live.run import run_stream  # noqa: E402
from facial_search.live.session import LiveConfig, LiveSession  # noqa: E402
from facial_search.pipeline import FacialSearch  # noqa: E402
from facial_search.vision.faces import FaceFinder, FaceFinderOptions  # noqa: E402

VIDEO = SHARED / "data" / "videos" / "WolfgangLanger_Pexels.mp4"


# ---------------------------------------------------------------------------------------------------------
# Jitter and lag
# ---------------------------------------------------------------------------------------------------------


def landmark_stream(video: Path, mode: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """Raw landmarks of the first face of every frame: ``(T, 478, 3)`` pixels and ``(T,)`` seconds (video
    timestamps). ``mode="image"`` runs the landmarker on each frame alone (no tracking, no MediaPipe
    smoothing). Frames without a face repeat the previous landmarks (there are none on this video)."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    pts, ts, t = [], [], None
    with FaceFinder.create_from_options(FaceFinderOptions(running_mode=mode, max_faces=1)) as finder:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            t = next_timestamp(cap.get(cv2.CAP_PROP_POS_MSEC), i, fps, t)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            faces = finder.detect_for_video(rgb, int(round(t * 1000))) if mode == "video" else finder.detect(rgb)
            pts.append(faces[0].landmarks_px() if faces else pts[-1])
            ts.append(t)
            i += 1
    cap.release()
    return np.asarray(pts, np.float64), np.asarray(ts)


def smooth(pts: np.ndarray, ts: np.ndarray, params: OneEuroParams) -> np.ndarray:
    f = OneEuroFilter(params)
    return np.stack([f(p, t) for p, t in zip(pts, ts, strict=True)])


def frame_motion(pts: np.ndarray) -> np.ndarray:
    """``(T-1,)`` median over landmarks of the x-y movement from the previous frame, pixels."""
    return np.median(np.linalg.norm(np.diff(pts[:, :, :2], axis=0), axis=2), axis=1)


def frame_jerk(pts: np.ndarray) -> np.ndarray:
    """``(T-2,)`` median over landmarks of the x-y second difference ``|p[t+1] - 2 p[t] + p[t-1]|``, pixels:
    the part of the frame-to-frame movement that steady motion (drift) does not explain."""
    return np.median(np.linalg.norm(np.diff(pts[:, :, :2], n=2, axis=0), axis=2), axis=1)


def stretches(pts: np.ndarray, fps: float, seconds: float = 2.0) -> tuple[slice, slice]:
    """(stillest, fastest) windows of ``seconds``: by the path length of the 1 s moving-average face centre."""
    c = pts[:, :, :2].mean(1)
    w = max(1, int(round(fps)))
    kernel = np.ones(w) / w
    cs = np.stack([np.convolve(c[:, j], kernel, mode="same") for j in range(2)], 1)
    step = np.r_[0.0, np.linalg.norm(np.diff(cs, axis=0), axis=1)]
    n = int(round(seconds * fps))
    run = np.convolve(step, np.ones(n), mode="valid")  # run[i] = path length over frames i..i+n-1
    lo = np.arange(w, len(run) - w)  # keep off the edges, where the moving average is one-sided
    still = int(lo[np.argmin(run[lo])])
    fast = int(lo[np.argmax(run[lo])])
    return slice(still, still + n), slice(fast, fast + n)


def lag_frames(raw: np.ndarray, filt: np.ndarray, window: slice, max_lag: float = 8.0) -> float:
    """Delay (frames) that best aligns ``filt`` with ``raw`` delayed: argmin_L mean |filt(t) - raw(t - L)|."""
    idx = np.arange(window.start, window.stop)
    best, best_err = 0.0, np.inf
    for lag in np.arange(0.0, max_lag + 1e-9, 0.05):
        src = idx - lag
        if src[0] < 0:
            break
        i0 = np.floor(src).astype(int)
        a = (src - i0)[:, None, None]
        shifted = raw[i0] * (1 - a) + raw[np.minimum(i0 + 1, len(raw) - 1)] * a
        err = np.linalg.norm(filt[idx, :, :2] - shifted[:, :, :2], axis=2).mean()
        if err < best_err:
            best, best_err = float(lag), err
    return best


def bench_filter(video: Path) -> dict:
    out = {}
    defaults = OneEuroParams()
    grid = [(0.5, 0.05), (1.0, 0.0), (1.0, 0.02), (1.0, 0.05), (1.0, 0.1), (2.0, 0.05)]
    for mode in ("video", "image"):
        pts, ts = landmark_stream(video, mode)
        fps = (len(ts) - 1) / (ts[-1] - ts[0])
        still, fast = stretches(pts, fps)
        raw_j = float(np.median(frame_motion(pts[still])))
        raw_k = float(np.median(frame_jerk(pts[still])))
        print(
            f"\n== jitter and lag: {video.name}, {len(ts)} frames, {fps:.2f} frames/s, landmarker in {mode.upper()} mode"
        )
        print(
            f"still stretch: frames {still.start}-{still.stop - 1}; moving stretch: frames {fast.start}-{fast.stop - 1}"
        )
        speed = np.median(frame_motion(pts[fast]))
        print(
            f"raw: frame-to-frame movement {raw_j:.3f} px, second difference {raw_k:.3f} px (still); "
            f"movement {speed:.2f} px/frame (moving)"
        )
        print(
            f"{'min_cutoff':>10} {'beta':>6} {'d_cutoff':>8} | {'move px':>7} {'lower':>6} | "
            f"{'2nd diff px':>11} {'lower':>6} | {'lag frames':>10}"
        )
        for mc, beta in grid:
            p = OneEuroParams(min_cutoff=mc, beta=beta, d_cutoff=defaults.d_cutoff)
            f = smooth(pts, ts, p)
            j = float(np.median(frame_motion(f[still])))
            k = float(np.median(frame_jerk(f[still])))
            lag = lag_frames(pts, f, fast)
            mark = "  <- default" if p == defaults else ""
            print(
                f"{mc:>10.2f} {beta:>6.3f} {p.d_cutoff:>8.2f} | {j:>7.3f} {1 - j / raw_j:>6.0%} | "
                f"{k:>11.3f} {1 - k / raw_k:>6.0%} | {lag:>10.2f}{mark}"
            )
            if p == defaults:
                out[mode] = {
                    "raw_move_px": raw_j, "filtered_move_px": j, "move_reduction": 1 - j / raw_j,
                    "raw_second_diff_px": raw_k, "filtered_second_diff_px": k, "second_diff_reduction": 1 - k / raw_k,
                    "lag_frames": lag,
                }  # fmt: skip
    return out


def bench_still_clip(photo: Path, seconds: float = 4.0, fps: float = 24.0, noise: float = 4.0, seed: int = 0) -> dict:
    """Jitter where the true motion is zero: a still photo held for ``seconds`` at ``fps`` with fresh camera
    sensor noise (Gaussian, ``noise`` grey levels) in every frame, VIDEO mode. All frame-to-frame landmark
    movement here is jitter, so the filter's reduction is measured without the slow head drift of a real
    video's "still" stretch."""
    import cv2 as _cv2

    rng = np.random.default_rng(seed)
    rgb = _cv2.cvtColor(_cv2.imread(str(photo)), _cv2.COLOR_BGR2RGB).astype(np.float32)
    n = int(seconds * fps)
    pts, ts = [], []
    with FaceFinder.create_from_options(FaceFinderOptions(running_mode="video", max_faces=1)) as finder:
        for i in range(n):
            frame = np.clip(rgb + rng.normal(0, noise, rgb.shape), 0, 255).astype(np.uint8)
            t = i / fps
            faces = finder.detect_for_video(frame, int(round(t * 1000)))
            pts.append(faces[0].landmarks_px() if faces else pts[-1])
            ts.append(t)
    pts, ts = np.asarray(pts, np.float64), np.asarray(ts)
    f = smooth(pts, ts, OneEuroParams())
    settle = int(fps)  # leave out the first second, where the filter starts
    raw = float(np.median(frame_motion(pts[settle:])))
    filt = float(np.median(frame_motion(f[settle:])))
    print(
        f"\n== jitter on a truly still clip: {photo.name} held {seconds:.0f} s at {fps:.0f} frames/s, sensor noise sigma {noise}"
    )
    print(f"frame-to-frame movement: raw {raw:.3f} px, One Euro (defaults) {filt:.3f} px: {1 - filt / raw:.0%} lower")
    return {"photo": photo.name, "raw_move_px": raw, "filtered_move_px": filt, "move_reduction": 1 - filt / raw}


# ---------------------------------------------------------------------------------------------------------
# Flicker and speed
# ---------------------------------------------------------------------------------------------------------


def top1_changes_per_second(lines: list[dict]) -> float:
    """Top-1 changes per second of video, summed over tracks (a track's first top-1 is not a change)."""
    last: dict[int, int] = {}
    changes = 0
    for line in lines:
        for f in line["faces"]:
            if not f["matches"]:
                continue
            top = f["matches"][0]["id"]
            if f["track"] in last and last[f["track"]] != top:
                changes += 1
            last[f["track"]] = top
    duration = lines[-1]["t"] - lines[0]["t"] if len(lines) > 1 else 0
    return changes / duration if duration > 0 else 0.0


def outside_raw_topk(lines: list[dict], raw_lines: list[dict], k: int = 3) -> float:
    """Share of (frame, track) pairs whose shown top-1 is not among the raw top-``k`` of the same frame and
    track in ``raw_lines`` (a run without hysteresis, same video): the price of steadier matches. Tracks
    are matched by id, frames by line order (the same video gives the same tracks)."""
    n = out = 0
    for line, raw in zip(lines, raw_lines, strict=False):
        ref = {f["track"]: [m["id"] for m in f["matches"]] for f in raw["faces"] if f["matches"]}
        for f in line["faces"]:
            if f["matches"] and f["track"] in ref:
                n += 1
                out += f["matches"][0]["id"] not in ref[f["track"]][:k]
    return out / n if n else 0.0


def bare_loop(video: Path) -> tuple[float, float]:
    """Decode + BGR->RGB + ``FaceFinder.detect_for_video`` (VIDEO mode), one thread: (frames/s, CPU ms/frame)."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    with FaceFinder.create_from_options(FaceFinderOptions(running_mode="video", max_faces=4)) as finder:
        t0, c0 = time.perf_counter(), time.process_time()
        n, t = 0, None
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            t = next_timestamp(cap.get(cv2.CAP_PROP_POS_MSEC), n, fps, t)
            finder.detect_for_video(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), int(round(t * 1000)))
            n += 1
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    cap.release()
    return n / dt, cpu / n * 1e3


def live_run(fs, video: Path, config: LiveConfig, output: Path | None, log: Path) -> tuple[float, dict, list[dict]]:
    """One live run (the ``facial-search live --no-window`` path): frames/s, stage seconds (and ``cpu``,
    CPU seconds of the whole process, every thread), log lines."""
    c0 = time.process_time()
    with FrameSource.video(video) as source, LiveSession(fs, config) as session:
        stats = run_stream(source, session, output=output, log=log, window=False, draw=output is not None)
    cpu = time.process_time() - c0
    lines = [json.loads(s) for s in log.read_text(encoding="utf-8").splitlines()]
    return stats.fps, dict(stats.stages, total=stats.seconds, frames=stats.frames, cpu=cpu), lines


def bench_speed_and_flicker(video: Path, index: Path, repeat: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    out, log = tmp / "out.mp4", tmp / "out.jsonl"
    with FacialSearch.open(index) as fs:
        print(f"\n== speed: {video.name}, index {index} ({len(fs.index)} faces, embedder {fs.index.embedder})")
        live_run(fs, video, LiveConfig(), out, log)  # warm-up: thumbnails, caches, page cache
        bare, bare_cpu, live, live_cpu, stages = [], [], [], [], []
        for i in range(repeat):  # alternate the order, so that a drift in the machine's load hits both
            for which in ("bare", "live") if i % 2 == 0 else ("live", "bare"):
                if which == "bare":
                    fps, cpu = bare_loop(video)
                    bare.append(fps)
                    bare_cpu.append(cpu)
                else:
                    fps, st, lines_on = live_run(fs, video, LiveConfig(), out, log)
                    live.append(fps)
                    live_cpu.append(st["cpu"] / st["frames"] * 1e3)
                    stages.append(st)
        ratios = [lv / b for lv, b in zip(live, bare, strict=True)]
        cpu_ratio = statistics.median(bare_cpu) / statistics.median(live_cpu)
        print("bare landmarker loop, frames/s: " + ", ".join(f"{x:.1f}" for x in bare))
        print("live --no-window --output --log, frames/s: " + ", ".join(f"{x:.1f}" for x in live))
        print(
            f"CPU ms/frame (all threads), median: bare {statistics.median(bare_cpu):.2f}, live "
            f"{statistics.median(live_cpu):.2f}: CPU-time ratio bare/live {cpu_ratio:.2f}"
        )
        print(
            f"ratio live / bare (per pair): {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}"
        )
        st = stages[int(np.argmax(live))]
        n = st["frames"]
        print(f"where the time goes (fastest live run, {n} frames, {st['total'] / n * 1e3:.2f} ms/frame wall):")
        for key in ("decode", "landmarks", "track", "embed", "search", "overlay", "write_log", "encode"):
            if key in st:
                thread = " (background thread)" if key in ("decode", "encode") else ""
                print(f"  {key:<10} {st[key] / n * 1e3:6.2f} ms/frame{thread}")
        cap = cv2.VideoCapture(str(out))
        out_frames = 0
        while cap.grab():
            out_frames += 1
        cap.release()
        faces_share = sum(bool(x["faces"]) for x in lines_on) / len(lines_on)
        print(f"output: {out_frames} frames (input {n}); log: {len(lines_on)} lines, a face in {faces_share:.0%}")

        print(f"\n== flicker: top-1 changes per second on {video.name}")
        _, _, lines_h = live_run(fs, video, LiveConfig(embedding_filter=None), None, log)
        _, _, lines_s = live_run(fs, video, LiveConfig(hysteresis=None), None, log)
        _, _, lines_off = live_run(fs, video, LiveConfig(hysteresis=None, embedding_filter=None), None, log)
        _, _, lines_raw = live_run(
            fs, video, LiveConfig(hysteresis=None, embedding_filter=None, filter=None), None, log
        )
        on, h_only, s_only, off, raw = (
            top1_changes_per_second(x) for x in (lines_on, lines_h, lines_s, lines_off, lines_raw)
        )
        stale = outside_raw_topk(lines_on, lines_s)
        h = LiveConfig().hysteresis
        print(f"  default (embedding smoothing + hysteresis margin {h[0]}, hold {h[1]} updates): {on:.2f}/s")
        print(f"    its shown top-1 is outside the top-3 of the run without hysteresis in {stale:.0%} of face-frames")
        print(f"  hysteresis only (no embedding smoothing):                           {h_only:.2f}/s")
        print(f"  embedding smoothing only (no hysteresis):                           {s_only:.2f}/s")
        print(f"  neither (--no-hysteresis: raw top-k each frame):                    {off:.2f}/s")
        print(f"  neither, and no landmark filter (--no-hysteresis --no-filter):      {raw:.2f}/s")
    return {
        "bare_fps": bare,
        "live_fps": live,
        "ratio_median": statistics.median(ratios),
        "cpu_ms_per_frame": {"bare": statistics.median(bare_cpu), "live": statistics.median(live_cpu)},
        "flicker_per_s": {
            "default": on,
            "hysteresis_only": h_only,
            "smoothing_only": s_only,
            "no_hysteresis": off,
            "no_hysteresis_no_filter": raw,
        },
        "default_top1_outside_raw_top3": stale,
        "output_frames": out_frames,
        "faces_share": faces_share,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="/tmp/memes.fsindex", help="meme index (default /tmp/memes.fsindex)")
    ap.add_argument("--video", default=str(VIDEO))
    ap.add_argument("--repeat", type=int, default=3, help="bare/live pairs for the speed ratio")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    from facial_search.io.native_log import silence_native_stderr

    silence_native_stderr()
    figures = {"filter": bench_filter(Path(args.video))}
    figures["filter"]["still_clip"] = bench_still_clip(SHARED / "data" / "faces" / "single_face.jpg")
    if not args.skip_speed:
        figures.update(bench_speed_and_flicker(Path(args.video), Path(args.index), args.repeat))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
