"""Model lookup and download: the download path runs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from conftest import MODELS

from facial_search.errors import AssetError
from facial_search.io.assets import FACE_LANDMARKER, Asset, download_asset, find_asset, sha256_file


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def model_server():
    handler = functools.partial(QuietHandler, directory=str(MODELS))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_shared_copy_matches_pinned_sha256():
    assert sha256_file(MODELS / FACE_LANDMARKER.filename) == FACE_LANDMARKER.sha256


def test_download_checks_sha256_and_writes_atomically(model_server, tmp_path):
    dest = tmp_path / "cache" / FACE_LANDMARKER.filename
    got = download_asset(FACE_LANDMARKER, dest, url=f"{model_server}/{FACE_LANDMARKER.filename}")
    assert got == dest and sha256_file(dest) == FACE_LANDMARKER.sha256
    assert [p.name for p in dest.parent.iterdir()] == [FACE_LANDMARKER.filename]


def test_download_with_wrong_checksum_leaves_nothing(model_server, tmp_path):
    bad = Asset(FACE_LANDMARKER.filename, FACE_LANDMARKER.url, "0" * 64)
    dest = tmp_path / bad.filename
    with pytest.raises(AssetError, match="sha256"):
        download_asset(bad, dest, url=f"{model_server}/{bad.filename}")
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / FACE_LANDMARKER.filename
    with pytest.raises(AssetError) as e:
        download_asset(FACE_LANDMARKER, dest, url="http://127.0.0.1:9/face_landmarker.task", timeout=5)
    assert str(dest) in str(e.value) and "FACIAL_SEARCH_MODELS" in str(e.value)
    assert not dest.exists()


def test_lookup_order(tmp_path, monkeypatch):
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    explicit = tmp_path / "custom.task"
    explicit.write_bytes(b"x")
    assert find_asset(path=explicit) == explicit  # 1. explicit path
    assert find_asset() == MODELS / FACE_LANDMARKER.filename  # 2. $FACIAL_SEARCH_MODELS
    (cache / "facial-search").mkdir(parents=True)
    cached = cache / "facial-search" / FACE_LANDMARKER.filename
    cached.write_bytes(b"y")
    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(tmp_path / "empty"))
    assert find_asset() == cached  # 3. user cache
    cached.unlink()
    with pytest.raises(AssetError, match=str(cached)):
        find_asset(download=False)  # 4. would download; refused here
    with pytest.raises(AssetError, match="not found"):
        find_asset(path=tmp_path / "missing.task")
