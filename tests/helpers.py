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
