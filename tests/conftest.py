"""Shared fixtures: the real models and data in ../shared (tests never mock the pipeline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACIAL_SEARCH_SHARED", ROOT.parent / "shared")).resolve()
MODELS = SHARED / "models"
FACES = SHARED / "data" / "faces"
MEMES = SHARED / "data" / "memes" / "imgflip"
VIDEOS = SHARED / "data" / "videos"
FERPLUS = SHARED / "data" / "ferplus"

if not (MODELS / "face_landmarker.task").is_file():
    raise pytest.UsageError(f"the tests need ../shared beside the checkout (looked in {SHARED})")

# every test finds the landmarker model here, never downloads it (the download path has its own test)
os.environ["FACIAL_SEARCH_MODELS"] = str(MODELS)

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


@pytest.fixture(scope="session")
def shared() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def sample_memes() -> list[Path]:
    files = [MEMES / n for n in SAMPLE_MEMES if (MEMES / n).is_file()]
    assert len(files) >= 30, "the meme sample changed in ../shared"
    return files


@pytest.fixture(scope="session")
def meme_index(tmp_path_factory, sample_memes) -> Path:
    """A real index (default embedder) of the sample memes, built once per test session."""
    from facial_search.indexing import build_index

    out = tmp_path_factory.mktemp("index") / "memes.fsindex"
    index, report = build_index(sample_memes, out, titles=MEMES.parent / "imgflip.csv", workers=2, progress=False)
    assert len(index) >= 20
    return out
