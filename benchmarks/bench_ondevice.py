"""Frames per second of the page's in-browser pipeline (headless Chromium) beside the Python VIDEO-mode loop, on
the same frames of the same clip, in one run.

Both loops do the same work per frame: MediaPipe FaceLandmarker in VIDEO mode (tracking between frames), then
every face aligned (48x48 grey) and embedded by the expression model, all faces of a frame in one model run.

- Python: ``FaceFinder.detect_for_video`` + ``ExpressionEmbedder.embed`` on RGB frames, one thread.
- Browser: ``window.facialSearch.embedFrame`` (``static/ondevice.js``: tasks-vision WebAssembly, align.js,
  onnxruntime-web WebAssembly) on the same frames, decoded into ``ImageData`` before the clock starts (PNG: the
  same pixels), in the page served by ``facial-search serve``'s app.

Neither loop decodes video inside the clock. It prints both rates and browser / Python.

    python benchmarks/bench_ondevice.py --index demo-out/memes.fsindex [--frames 120] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import cv2
from _common import VIDEOS


def read_frames(video: Path, n: int) -> tuple[list, float]:
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames, fps


def python_loop(frames: list, fps: float) -> dict:
    from facial_search.embedders.expression import ExpressionEmbedder
    from facial_search.vision.faces import FaceFinder, FaceFinderOptions

    embedder = ExpressionEmbedder()
    with FaceFinder.create_from_options(FaceFinderOptions(running_mode="video")) as finder:
        finder.detect_for_video(frames[0], 0)  # warm-up frame, outside the clock (as the browser's)
        faces_seen = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for i, rgb in enumerate(frames, start=1):
            faces = finder.detect_for_video(rgb, int(round(i * 1000 / fps)))
            if faces:
                embedder.embed(rgb, faces)
            faces_seen += len(faces)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"fps": len(frames) / dt, "cpu_ms_per_frame": cpu / len(frames) * 1e3, "faces": faces_seen}


def browser_loop(index: str, frames: list, fps: float, chromium: str) -> dict:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from facial_search.web import SearchPool, create_app

    pngs = [cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in frames]
    pool = SearchPool(index, 1)
    srv = uvicorn.Server(uvicorn.Config(create_app(pool=pool), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            )
            context = browser.new_context()
            context.route(
                "**/bench/*",
                lambda r: r.fulfill(body=pngs[int(r.request.url.rsplit("/", 1)[1])], content_type="image/png"),
            )
            page = context.new_page()
            page.goto(base + "/")  # no camera here: the page's own loop does not run
            if page.evaluate("window.facialSearch.ready") != "device":
                raise SystemExit("on-device mode did not start: " + page.inner_text("#mode"))
            out = page.evaluate(
                """async ([base, n, fps]) => {
                    const { decodeImage } = await import('/static/ondevice.js');
                    const images = [];
                    for (let i = 0; i < n; i++) images.push(await decodeImage(base + '/bench/' + i));
                    const fs = window.facialSearch;
                    await fs.embedFrame(images[0], 0);  // warm-up frame, outside the clock
                    let faces = 0;
                    const t0 = performance.now();
                    for (let i = 0; i < n; i++) faces += (await fs.embedFrame(images[i], (i + 1) * 1000 / fps)).faces.length;
                    const dt = (performance.now() - t0) / 1000;
                    return { fps: n / dt, faces, backend: fs.backend, agent: navigator.userAgent };
                }""",
                [base, len(frames), fps],
            )
            browser.close()
    finally:
        srv.should_exit = True
        thread.join(10)
        pool.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="meme index the page's server opens (any; not searched)")
    ap.add_argument("--video", default=str(VIDEOS / "WolfgangLanger_Pexels.mp4"))
    ap.add_argument("--frames", type=int, default=120, help="first N frames of the clip")
    ap.add_argument("--chromium", default=os.environ.get("FACIAL_SEARCH_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    frames, fps = read_frames(Path(args.video), args.frames)
    py = python_loop(frames, fps)
    js = browser_loop(args.index, frames, fps, args.chromium)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    res = {
        "video": Path(args.video).name,
        "frames": len(frames),
        "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "cpu": model,
        "python": {k: round(v, 2) if isinstance(v, float) else v for k, v in py.items()},
        "browser": {k: round(v, 2) if isinstance(v, float) else v for k, v in js.items() if k != "agent"},
        "browser_over_python": round(js["fps"] / py["fps"], 3),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['video']}: {res['frames']} frames of {res['size']} ({res['cpu']})")
        print(f"  Python VIDEO-mode loop      {py['fps']:7.1f} frames/s  ({py['faces']} faces)")
        print(f"  in-browser ({js['backend']:6s})       {js['fps']:7.1f} frames/s  ({js['faces']} faces)")
        print(f"  browser / Python: {res['browser_over_python']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
