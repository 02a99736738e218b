"""Paths of the project's data and helpers the test modules share (import them from here, never from another
test module). Importing this changes nothing: no environment variable, no check that the data exists."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The project's data folder: ``$FACIAL_SEARCH_SHARED``, default ``../shared`` beside the checkout.
SHARED = Path(os.environ.get("FACIAL_SEARCH_SHARED", ROOT.parent / "shared")).resolve()
MODELS = SHARED / "models"
FACES = SHARED / "data" / "faces"
MEMES = SHARED / "data" / "memes" / "imgflip"
VIDEOS = SHARED / "data" / "videos"
FERPLUS = SHARED / "data" / "ferplus"

#: Set to 1 (CI does) to make a missing data folder fail the tests that need it instead of skipping them.
REQUIRE_SHARED = "FACIAL_SEARCH_REQUIRE_SHARED"

#: A fixed sample of meme templates for the session index: popular ones, most with a face.
SAMPLE_MEMES = [
    "Success-Kid.jpg", "Disaster-Girl.jpg", "Roll-Safe-Think-About-It.jpg", "Hide-the-Pain-Harold.jpg",
    "Ancient-Aliens.jpg", "Bad-Luck-Brian.jpg", "Overly-Attached-Girlfriend.jpg", "Grumpy-Cat.jpg",
    "Futurama-Fry.jpg", "Third-World-Skeptical-Kid.jpg", "Creepy-Condescending-Wonka.jpg",
    "Leonardo-Dicaprio-Cheers.jpg", "First-World-Problems.jpg", "Laughing-Men-In-Suits.jpg",
    "Drake-Hotline-Bling.jpg", "Distracted-Boyfriend.jpg", "Two-Buttons.jpg", "Evil-Kermit.jpg",
    "Surprised-Pikachu.jpg", "Mocking-Spongebob.jpg", "Sad-Pablo-Escobar.jpg", "Matrix-Morpheus.jpg",
    "One-Does-Not-Simply.jpg", "Yo-Dawg-Heard-You.jpg", "Y-U-No.jpg", "Scumbag-Steve.jpg",
    "Good-Guy-Greg.jpg", "Ridiculously-Photogenic-Guy.jpg", "Oblivious-Hot-Girl.jpg", "Chef-Gordon-Ramsay.jpg",
    "Confession-Bear.jpg", "Skeptical-Baby.jpg", "Awkward-Moment-Sealion.jpg", "Unsettled-Tom.jpg",
    "Blank-Nut-Button.jpg", "Change-My-Mind.jpg", "Waiting-Skeleton.jpg", "Left-Exit-12-Off-Ramp.jpg",
    "Matt-Damon-gets-older.jpg", "Is-Four-A-Lot.jpg", "Blinking-guy.jpg",  # several faces of one person
    "Hide-the-pain-harold.jpg",  # the same picture as Hide-the-Pain-Harold.jpg under another name
    "Leonardo-DiCaprio-Pointing.jpg", "Leonardo-Dicaprio-pointing-at-tv.jpg",  # one picture, two crops and sizes
    "Sue-Sylvester.jpg",  # another woman, whose face's hash is 7 bits from Distracted-Boyfriend.jpg's girlfriend
]  # fmt: skip


def have_shared() -> bool:
    """Whether the data folder holds what the data tests need (the landmarker model and the data)."""
    return (MODELS / "face_landmarker.task").is_file() and (SHARED / "data").is_dir()


def require_shared() -> Path:
    """:data:`SHARED`, or skip the calling test (fail it when ``$FACIAL_SEARCH_REQUIRE_SHARED`` is 1)."""
    if not have_shared():
        why = (
            f"needs the project's data folder with models/face_landmarker.task (looked in {SHARED}; "
            "set FACIAL_SEARCH_SHARED)"
        )
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{why}; {REQUIRE_SHARED}=1", pytrace=False)
        pytest.skip(why)
    return SHARED


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request to stderr."""

    def log_message(self, *args):
        pass


@contextmanager
def serve_folder(folder: str | os.PathLike) -> Iterator[str]:
    """Serve ``folder`` over real HTTP on 127.0.0.1 (a free port) while the block runs; yields the base URL
    (``http://127.0.0.1:PORT``, no trailing slash)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port() -> str:
    """A base URL on 127.0.0.1 where nothing listens (a port bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


#: Mark for test modules whose tests read ../shared directly (not through a fixture): skipped when it is missing,
#: except with ``$FACIAL_SEARCH_REQUIRE_SHARED=1`` (CI), where they run and fail.
needs_shared = pytest.mark.skipif(
    not have_shared() and os.environ.get(REQUIRE_SHARED) != "1",
    reason=f"needs the project's data folder (looked in {SHARED}; set FACIAL_SEARCH_SHARED)",
)


def write_mjpeg(video: str | os.PathLike, out: str | os.PathLike, quality: int = 85) -> Path:
    """``video``'s frames as concatenated JPEGs at ``out`` (MJPEG: what Chromium's fake camera,
    ``--use-file-for-fake-video-capture``, plays in a loop); returns ``out``."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    with open(out, "wb") as f:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            f.write(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    cap.release()
    return Path(out)


class LiveServer:
    """The web app on 127.0.0.1 served by uvicorn in a thread, over a :class:`~facial_search.web.SearchPool` the
    caller owns. :meth:`stop` shuts it down (a browser then finds nothing listening); :meth:`start` serves again
    on the same port, so the page's origin (its service worker, its caches) is the same after a restart."""

    def __init__(self, pool):
        self.pool = pool
        self.port = 0
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        import time

        import uvicorn

        from facial_search.web import create_app

        if self._server is not None:
            return self
        config = uvicorn.Config(
            create_app(pool=self.pool),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,  # a browser's open requests do not hold the shutdown up
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Shut the server down (open connections closed) and wait for it; idempotent."""
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._server = self._thread = None


# -- the browser tests' Chromium (Debian's, headless, fake camera) ------------------------------------------
CHROMIUM = os.environ.get("FACIAL_SEARCH_CHROMIUM", "/usr/bin/chromium")
#: Playwright context options of a phone and of a desktop window.
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


def require_browser(*, vendor: bool = False):
    """Skip the calling test module unless Debian's Chromium (:data:`CHROMIUM`) and Playwright are here, and
    with ``vendor`` the page's npm packages (``npm ci``); returns ``playwright.sync_api``."""
    import pytest

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium; .ci/run installs it)", allow_module_level=True)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is absent (pip install playwright)")
    if vendor:
        from facial_search.web.ondevice import VENDOR_FILES, vendor_file

        if any(vendor_file(n) is None for n in VENDOR_FILES):
            pytest.skip("the browser packages are not installed (npm ci; make test runs it)", allow_module_level=True)
    return sync_api


#: Chromium's flags for the page tests that use the camera (a fake one) and no network beyond the server.
CAMERA_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
