"""Shared fixtures: the real models and data in ../shared (tests never mock the pipeline).

Importing this changes nothing (the environment is set by a session fixture), and a checkout without
../shared runs the pure unit tests: the data fixtures skip (fail with ``FACIAL_SEARCH_REQUIRE_SHARED=1``).
Paths and shared helpers live in ``helpers.py``; the names are re-exported here for the modules that still
import them from conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
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


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> str:
    """``"127.0.0.1:PORT"`` of a real Milvus standalone server for the session: the PyPI package ``milvus``
    (2.3.5) in its own environment (``scripts/ensure-milvus-server.sh`` makes ``.venv-milvus-server``), run by
    ``scripts/run-milvus-server.py`` as a subprocess on free ports, its data in a temporary folder; stopped at
    the end (and by itself should this process die: it watches its stdin). ``$FACIAL_SEARCH_MILVUS_SERVER``
    (``HOST:PORT``) names a server to use instead. Skips where the environment cannot be made."""
    if os.environ.get("FACIAL_SEARCH_MILVUS_SERVER"):
        yield os.environ["FACIAL_SEARCH_MILVUS_SERVER"]
        return
    venv = ROOT / ".venv-milvus-server"
    made = subprocess.run([str(ROOT / "scripts" / "ensure-milvus-server.sh"), str(venv)], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    if made.returncode != 0 or not (venv / "bin" / "python").is_file():
        pytest.skip(f"no Milvus server environment ({made.stderr.strip()[-500:]})")
    data = tmp_path_factory.mktemp("milvus-server")
    log = open(data / "launcher.log", "w")  # noqa: SIM115  (closed at the end of the session)
    proc = subprocess.Popen([str(venv / "bin" / "python"), str(ROOT / "scripts" / "run-milvus-server.py"),
                             str(data / "server")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            text=True, start_new_session=True)  # fmt: skip
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=180)
    try:
        if not ready or not ready[0].strip():
            proc.kill()
            log.flush()
            pytest.fail(f"the Milvus server did not start: {(data / 'launcher.log').read_text()[-3000:]}")
        yield f"127.0.0.1:{json.loads(ready[0])['port']}"
    finally:
        proc.stdin.close()  # the launcher stops the server and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own process group (start_new_session): the launcher and the server
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def pool(meme_index):
    """The web tests' search pool over :func:`meme_index` (2 pipelines), one per test module (a module that
    needs another defines its own ``pool``)."""
    from facial_search.web import SearchPool

    p = SearchPool(meme_index, 2)
    yield p
    p.close()
