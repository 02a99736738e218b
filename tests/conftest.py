"""Shared fixtures: the real models and data in ../shared (tests never mock the pipeline).

Importing this changes nothing (the environment is set by a session fixture), and a checkout without
../shared runs the pure unit tests: the data fixtures skip (fail with ``FACIAL_SEARCH_REQUIRE_SHARED=1``).
Paths and shared helpers live in ``helpers.py``; the names are re-exported here for the modules that still
import them from conftest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (  # noqa: F401  (re-exported)
    FACES,
    FERPLUS,
    MEMES,
    MODELS,
    ROOT,
    SAMPLE_MEMES,
    SHARED,
    VIDEOS,
    have_shared,
    require_shared,
)


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    """For the whole session: every test finds the landmarker model in ../shared/models, never downloads it
    (the download path has its own tests), and the user cache is a temporary folder, never the real one."""
    with pytest.MonkeyPatch.context() as mp:
        if have_shared():
            mp.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
        mp.setenv("FACIAL_SEARCH_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(scope="session")
def shared() -> Path:
    """The data folder; skips the test where there is none (see :func:`helpers.require_shared`)."""
    return require_shared()


@pytest.fixture(scope="session")
def sample_memes(shared) -> list[Path]:
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
