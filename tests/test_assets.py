"""Model lookup and download: the download path runs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import shutil
import sys

import pytest
from helpers import MODELS, closed_port, serve_folder

from facial_search.errors import AssetError
from facial_search.io.assets import (
    FACE_LANDMARKER,
    Asset,
    cache_dir,
    download_asset,
    fetch,
    find_asset,
    sha256_file,
)


@pytest.fixture()
def model_server(shared):
    with serve_folder(MODELS) as url:
        yield url


def _local(url: str) -> Asset:
    """The landmarker, served from 127.0.0.1 instead of Google."""
    return Asset(FACE_LANDMARKER.filename, f"{url}/{FACE_LANDMARKER.filename}", FACE_LANDMARKER.sha256)


def test_shared_copy_matches_pinned_sha256(shared):
    assert sha256_file(MODELS / FACE_LANDMARKER.filename) == FACE_LANDMARKER.sha256


def test_sha256_file_of_known_bytes(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_checks_sha256_and_writes_atomically(model_server, tmp_path):
    dest = tmp_path / "cache" / FACE_LANDMARKER.filename
    got = download_asset(FACE_LANDMARKER, dest, url=f"{model_server}/{FACE_LANDMARKER.filename}")
    assert got == dest and sha256_file(dest) == FACE_LANDMARKER.sha256
    assert [p.name for p in dest.parent.iterdir()] == [FACE_LANDMARKER.filename]  # no temporary file left


def test_download_with_wrong_checksum_leaves_nothing(model_server, tmp_path):
    bad = Asset(FACE_LANDMARKER.filename, FACE_LANDMARKER.url, "0" * 64)
    dest = tmp_path / bad.filename
    with pytest.raises(AssetError) as e:
        download_asset(bad, dest, url=f"{model_server}/{bad.filename}")
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "0" * 64 in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_fails_its_sha256_is_replaced_not_kept(model_server, tmp_path):
    dest = tmp_path / FACE_LANDMARKER.filename
    dest.write_bytes(b"a truncated model")
    download_asset(FACE_LANDMARKER, dest, url=f"{model_server}/{FACE_LANDMARKER.filename}")
    assert sha256_file(dest) == FACE_LANDMARKER.sha256


def test_offline_error_is_one_line_and_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / FACE_LANDMARKER.filename
    with pytest.raises(AssetError) as e:
        download_asset(FACE_LANDMARKER, dest, url=f"{closed_port()}/face_landmarker.task", timeout=5)
    msg = str(e.value)
    assert str(dest) in msg and "FACIAL_SEARCH_MODELS" in msg and "--model" in msg
    assert FACE_LANDMARKER.url in msg and FACE_LANDMARKER.sha256 in msg
    assert "Connection refused" in msg and "\n" not in msg and "Traceback" not in msg
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_named(model_server, tmp_path):
    with pytest.raises(AssetError, match="HTTP 404"):
        fetch(f"{model_server}/no-such-file.task", FACE_LANDMARKER.sha256, tmp_path / "x.task", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_env_override_and_platform_default(tmp_path, monkeypatch):
    monkeypatch.setenv("FACIAL_SEARCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FACIAL_SEARCH_CACHE")
    import platformdirs

    assert cache_dir() == platformdirs.user_cache_path("facial-search", appauthor=False)
    if sys.platform.startswith("linux"):  # platformdirs honours the XDG base directory spec
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "xdg" / "facial-search"


def test_lookup_order(shared, model_server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACIAL_SEARCH_CACHE", str(cache))
    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(MODELS))
    asset = _local(model_server)
    explicit = tmp_path / "custom.task"
    explicit.write_bytes(b"x")
    assert find_asset(asset, path=explicit) == explicit  # 1. explicit path (a custom model: not checksummed)
    assert find_asset(asset) == MODELS / asset.filename  # 2. $FACIAL_SEARCH_MODELS
    monkeypatch.setenv("FACIAL_SEARCH_MODELS", str(tmp_path / "empty"))
    cached = cache / asset.filename
    cache.mkdir()
    shutil.copy(MODELS / asset.filename, cached)
    assert find_asset(asset, download=False) == cached  # 3. user cache
    cached.write_bytes(b"damaged")
    with pytest.raises(AssetError, match="fails its sha256 check"):
        find_asset(asset, download=False)  # a damaged cached copy is never used
    assert find_asset(asset) == cached and sha256_file(cached) == asset.sha256  # ... it is downloaded again
    cached.unlink()
    with pytest.raises(AssetError, match="downloads are disabled") as e:
        find_asset(asset, download=False)  # 4. would download; refused here
    assert str(cached) in str(e.value)
    assert find_asset(asset) == cached  # 4. downloaded into the cache
    assert sorted(p.name for p in cache.iterdir()) == [asset.filename]
    with pytest.raises(AssetError, match="not found"):
        find_asset(asset, path=tmp_path / "missing.task")
