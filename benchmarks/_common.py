"""Shared bits of the benchmarks: where ../shared is, the model env, quiet native logs."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACIAL_SEARCH_SHARED", ROOT.parent / "shared")).resolve()
MODELS = SHARED / "models"
MEMES = SHARED / "data" / "memes" / "imgflip"
FACES = SHARED / "data" / "faces"
VIDEOS = SHARED / "data" / "videos"
os.environ.setdefault("FACIAL_SEARCH_MODELS", str(MODELS))

from facial_search.io.native_log import silence_native_stderr  # noqa: E402

silence_native_stderr()
