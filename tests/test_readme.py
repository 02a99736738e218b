"""The README's Python examples and the public docstrings' examples run as written, and exit cleanly.

Each ```python block of README.md runs as a script in a fresh interpreter, in a folder holding a real
``memes.fsindex`` (the session's sample index) and a real face photo as ``me.jpg``; so do the doctests of the
public modules. A FaceLandmarker left open (the README's first example never closes it) must not print
``Exception ignored in ... __del__ ... TypeError`` at interpreter exit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FACES, ROOT

from facial_search.index.store import MemeIndex

README = ROOT / "README.md"
#: What a clean run never prints on stderr (MediaPipe's own INFO/W lines are allowed).
FORBIDDEN = ("Exception ignored", "Traceback", "TypeError", "Error:")
PACKAGE = Path(__file__).resolve().parent.parent / "facial_search"


def _modules_with_examples() -> tuple[str, ...]:
    """Every module of the package whose source holds a ``>>>`` example: all are doctests, none is left to rot."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return tuple(names)


#: Modules whose docstring examples are doctests (run in the folder, output matched with ELLIPSIS).
DOCTEST_MODULES = _modules_with_examples()


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def test_python_blocks_are_found():
    blocks = python_blocks("intro\n```python\nprint(1)\n```\n```sh\nls\n```\n```python\nx = 2\n```\n")
    assert blocks == ["print(1)\n", "x = 2\n"]
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 2  # the README has its examples


@pytest.fixture(scope="module")
def folder(meme_index, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    shutil.copy(meme_index, d / "memes.fsindex")
    shutil.copy(FACES / "0-f1-su-ph.jpg", d / "me.jpg")  # one face, surprised
    shutil.copy(FACES.parent / "videos" / "single_face.mp4", d / "clip.mp4")  # 2.4 s smile (live's example)
    return d


@pytest.fixture(scope="module")
def nearest(folder) -> tuple[str, set[str]]:
    """The title of the meme nearest the face of me.jpg, and every title in the index."""
    from facial_search.pipeline import FacialSearch

    with FacialSearch.open(folder / "memes.fsindex") as fs:
        result = fs.search(folder / "me.jpg", k=1)
    titles = {e.title for e in MemeIndex.load(folder / "memes.fsindex").entries()}
    return result.faces[0].matches[0].title, titles


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _clean(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr[-3000:]
    bad = [line for line in r.stderr.splitlines() if any(f in line for f in FORBIDDEN)]
    assert not bad, r.stderr[-3000:]


@pytest.mark.parametrize("number", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_example_runs_and_prints_the_matches(number, folder, nearest):
    code = python_blocks(README.read_text(encoding="utf-8"))[number]
    script = folder / f"readme_{number}.py"
    script.write_text(code, encoding="utf-8")
    r = _run(folder, script.name)
    _clean(r)
    first, titles = nearest
    pairs = [(t, float(d)) for _, t, d in re.findall(r"\((['\"])(.*?)\1, ([0-9.]+)\)", r.stdout)]
    assert len(pairs) >= 3, r.stdout  # the matches, printed as (title, distance): k=3 / k=5
    assert pairs[0][0] == first and all(t in titles for t, _ in pairs)  # nearest first, titles of the index
    distances = [d for _, d in pairs]
    assert distances == sorted(distances) and 0 < distances[0] < 2


def test_docstring_examples_run_as_doctests(folder):
    code = (
        "import doctest, importlib, sys\n"
        f"for name in {DOCTEST_MODULES!r}:\n"
        "    r = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)\n"
        "    print(name, r.attempted, r.failed)\n"
    )
    r = _run(folder, "-c", code)
    _clean(r)
    counts = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in r.stdout.splitlines() if line}
    assert set(counts) == set(DOCTEST_MODULES), r.stdout
    assert {"facial_search", "facial_search.pipeline", "facial_search.live.one_euro"} <= set(counts)
    for name, (attempted, failed) in counts.items():
        assert attempted >= 2 and failed == 0, (name, r.stdout)


def test_an_open_landmarker_is_closed_at_exit_without_noise(folder, shared):
    """The defect itself, without the README: a FaceFinder never closed, the interpreter exits."""
    code = (
        "from facial_search.vision.faces import FaceFinder, FaceFinderOptions\n"
        "finders = [FaceFinder.create_from_options(FaceFinderOptions()) for _ in range(2)]\n"
        "print('open', len(finders))\n"
    )
    r = _run(folder, "-c", code)
    _clean(r)
    assert r.stdout.strip() == "open 2"
