"""Index builds on Ray (``--executor ray``, facial_search.ray_executor) on a real local Ray, started once for the
module, on real memes: the same index as the process pool, through the API and the command line, typed errors,
and a driver killed mid-run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import MEMES, SAMPLE_MEMES, needs_shared

from facial_search.errors import MissingDependencyError, ModelLoadError, OptionError, SkipReason
from facial_search.index.store import MemeIndex

pytestmark = [needs_shared, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'facial-search[ray]' (the test extra has it)")

CLI = [sys.executable, "-m", "facial_search.cli"]
TITLES = MEMES.parent / "imgflip.csv"


@pytest.fixture(scope="module")
def ray_address():
    """A real local Ray (2 CPUs, no dashboard) for the whole module; its GCS address, for other processes."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 real memes (one without a face) and two files that are skipped for other reasons."""
    d = tmp_path_factory.mktemp("memes")
    names = SAMPLE_MEMES[:12]
    assert "Futurama-Fry.jpg" in names  # no face found in it: a skip
    for n in names:
        os.symlink(MEMES / n, d / n)
    (d / "notes.jpg").write_text("not an image\n")
    (d / "cut.jpg").write_bytes((MEMES / names[0]).read_bytes()[:2000])  # a truncated JPEG
    return d


@pytest.fixture(scope="module")
def process_index(folder, tmp_path_factory) -> MemeIndex:
    """The reference: the folder indexed by the process pool (2 workers)."""
    from facial_search.indexing import build_index

    out = tmp_path_factory.mktemp("process") / "p.fsindex"
    build_index([folder], out, titles=TITLES, workers=2, progress=False)
    return MemeIndex.load(out)


def _entries(index: MemeIndex) -> list[tuple]:
    return [(e.id, e.source, e.face, tuple(e.box), e.title, e.picture_hash) for e in index.entries()]


def assert_same_index(got: MemeIndex, want: MemeIndex) -> None:
    """Same entries (ids, sources, faces, boxes, titles, picture hashes), embeddings within 1e-5, same skips."""
    assert _entries(got) == _entries(want)
    g, w = np.asarray(got.embeddings), np.asarray(want.embeddings)
    assert g.shape == w.shape and g.dtype == np.float32 and g.shape[0] >= 10
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    assert got.skipped == want.skipped
    assert {s: (r.size, r.mtime_ns, r.faces) for s, r in got.files.items()} == {
        s: (r.size, r.mtime_ns, r.faces) for s, r in want.files.items()
    }


def test_ray_builds_the_same_index_as_the_process_pool(ray_address, folder, process_index, tmp_path):
    from facial_search.indexing import build_index

    out = tmp_path / "r.fsindex"
    _store, report = build_index([folder], out, titles=TITLES, workers=2, progress=False, executor="ray")
    assert ray.is_initialized()  # a Ray this process was already connected to is used and left running
    got = MemeIndex.load(out)
    assert_same_index(got, process_index)
    reasons = {Path(s).name: SkipReason.parse(why) for s, why in got.skipped.items()}
    assert reasons == {
        "Futurama-Fry.jpg": SkipReason.NO_FACE,
        "notes.jpg": SkipReason.NOT_AN_IMAGE,
        "cut.jpg": SkipReason.UNREADABLE,
    }
    assert report.processed == 14 and report.added_faces == len(got)


def test_results_cross_arrow_with_their_shapes():
    from facial_search.indexing import _FileResult
    from facial_search.ray_executor import decode, encode

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 64)).astype(np.float32)
    results = [
        _FileResult("/a.jpg", 10, 20, [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)], emb, None, ["0f", "1e", "2d"]),
        _FileResult("/b.jpg", 11, 21, [], None, "no face", [], SkipReason.NO_FACE),
        _FileResult("/c.jpg", 12, 22, [(0, 0, 5, 5)], emb[:1] * 2, None, ["ff"]),
    ]
    back = list(decode(encode(results)))
    assert [r.source for r in back] == ["/a.jpg", "/b.jpg", "/c.jpg"]
    assert back[0].embeddings.shape == (3, 64) and back[0].embeddings.dtype == np.float32
    np.testing.assert_array_equal(back[0].embeddings, emb)
    np.testing.assert_array_equal(back[2].embeddings, emb[:1] * 2)
    assert back[0].boxes == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)] and back[2].boxes == [(0, 0, 5, 5)]
    assert back[1].embeddings is None and back[1].reason is SkipReason.NO_FACE and back[1].skipped == "no face"
    assert [r.hashes for r in back] == [["0f", "1e", "2d"], [], ["ff"]]
    assert [(r.size, r.mtime_ns) for r in back] == [(10, 20), (11, 21), (12, 22)]
    # a failed task's rows carry its exception, which the driver raises with its type
    with pytest.raises(ModelLoadError, match="bad.task"):
        list(decode(encode([], ["/a.jpg"], ModelLoadError("bad.task: not a model"))))


def test_a_bad_model_gives_the_process_pools_typed_error(ray_address, folder, tmp_path):
    from facial_search.indexing import build_index

    bad = tmp_path / "bad.task"
    bad.write_bytes(b"this is no model bundle" * 100)
    with pytest.raises(ModelLoadError) as process_error:
        build_index([folder], tmp_path / "p.fsindex", model_path=bad, workers=1, progress=False)
    with pytest.raises(ModelLoadError) as ray_error:
        build_index([folder], tmp_path / "r.fsindex", model_path=bad, workers=2, progress=False, executor="ray")
    assert str(ray_error.value) == str(process_error.value)
    assert not (tmp_path / "r.fsindex").exists()  # nothing written by a run that could not start
    # through the command line: one line, no Ray traceback
    r = _cli("index", folder, "--out", tmp_path / "c.fsindex", "--model", bad, "--executor", "ray",
             "--ray-address", ray_address, "--no-progress")  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"facial-search: error: {process_error.value}"]


def test_cli_index_on_ray(ray_address, folder, process_index, tmp_path):
    out = tmp_path / "c.fsindex"
    args = ["index", folder, "--out", out, "--titles", TITLES, "--executor", "ray", "--ray-address", ray_address]
    r = _cli(*args, "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "14 processed, 0 unchanged" in r.stdout and "Traceback" not in r.stderr
    assert_same_index(MemeIndex.load(out), process_index)
    r = _cli(*args, "--no-progress")  # nothing new: no Ray work at all
    assert r.returncode == 0 and "0 processed, 14 unchanged" in r.stdout, r.stderr


@pytest.mark.slow
def test_cli_starts_and_stops_a_local_ray(ray_address, folder, process_index, tmp_path):
    """Without --ray-address the command starts its own local Ray (--workers CPUs) and shuts it down."""
    out = tmp_path / "l.fsindex"
    r = _cli("index", folder, "--out", out, "--titles", TITLES, "--executor", "ray", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "14 processed" in r.stdout and "Traceback" not in r.stderr and "WARNING" not in r.stderr
    assert_same_index(MemeIndex.load(out), process_index)
    assert len(ray.nodes()) == 1  # its own Ray, not the module's cluster, which it left alone


def test_option_and_dependency_errors(tmp_path, folder, monkeypatch):
    from facial_search.indexing import build_index
    from facial_search.ray_executor import PIP_COMMAND, import_ray

    r = _cli("index", folder, "--out", tmp_path / "x.fsindex", "--ray-address", "auto")
    assert r.returncode == 1 and "--ray-address: needs --executor ray" in r.stderr
    r = _cli("index", folder, "--out", tmp_path / "x.fsindex", "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "facial-search: error: the Ray cluster at 127.0.0.1:1 cannot be reached: Connection refused"
    ]
    with pytest.raises(OptionError, match="executor"):
        build_index([folder], tmp_path / "x.fsindex", executor="dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError, match=PIP_COMMAND.replace("[", r"\[").replace("]", r"\]")):
        import_ray()
    with pytest.raises(MissingDependencyError):
        build_index([folder], tmp_path / "x.fsindex", executor="ray")
    assert not (tmp_path / "x.fsindex").exists()


def test_a_killed_driver_keeps_what_it_committed(ray_address, tmp_path):
    """SIGKILL of the driver mid-run (a commit every 0.05 s): the index loads with what was committed, every
    face of a recorded file is there, and a rerun processes only the rest."""
    from facial_search.indexing import build_index

    folder = tmp_path / "many"
    folder.mkdir()
    files = sorted(MEMES.glob("*.jpg"))[:40]
    for p in files:
        os.symlink(p, folder / p.name)
    out = tmp_path / "k.fsindex"
    proc = subprocess.Popen(
        [*CLI, "index", str(folder), "--out", str(out), "--executor", "ray", "--ray-address", ray_address,
         "--workers", "2", "--checkpoint-seconds", "0.05", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    recorded = 0
    while recorded < 4:  # wait for a few committed files, then kill the driver
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no commit within 300 s"
        time.sleep(0.05)
        if out.exists():
            recorded = len(MemeIndex.load(out).files)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed = MemeIndex.load(out)  # loadable: never torn
    done = set(killed.files)
    assert 4 <= len(done) < len(files), "killed before the end"
    for e in killed.entries():  # every face of what was committed, none of a file not recorded
        assert e.source in done
    for source, record in killed.files.items():
        assert record.faces == sum(1 for e in killed.entries() if e.source == source)
    before = {(e.source, e.face): e for e in killed.entries()}

    _store, report = build_index([folder], out, workers=2, progress=False, executor="ray", checkpoint_seconds=0.05)
    assert report.unchanged == len(done) and report.processed == len(files) - len(done)
    final = MemeIndex.load(out)
    assert set(final.files) == {str(p.resolve()) for p in files}
    for e in final.entries():
        if (e.source, e.face) in before:
            assert e == before[(e.source, e.face)]
    assert len(final) == sum(r.faces for r in final.files.values()) > len(killed)


def _cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
