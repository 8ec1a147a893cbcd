"""ci/fetch.sh: downloads are verified by sha256; a corrupted file is refused, named and deleted.

The registry is a local PEP 503 index on 127.0.0.1 (PYPI_SIMPLE), the cache a temp SEF_CACHE_DIR.
"""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASE, run_script, serve_simple_index

SDIST = BASE["VLLM_SDIST"]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A simple index at http://127.0.0.1:PORT/simple/ listing vllm's sdist; returns (url, the file
    the index serves)."""
    www = tmp_path / "www"
    (www / "simple" / "vllm").mkdir(parents=True)
    (www / "files").mkdir()
    (www / "simple" / "vllm" / "index.html").write_text(
        f'<html><body><a href="../../files/{SDIST}#sha256=0">{SDIST}</a></body></html>\n'
    )
    with serve_simple_index(www) as url:
        yield url, www / "files" / SDIST


@pytest.fixture(scope="module")
def real_sdist() -> Path:
    """The genuine sdist from the normal cache (fetched there once if missing)."""
    path = Path(run_script("fetch.sh", "sdist").stdout.strip())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BASE["VLLM_SDIST_SHA256"]
    return path


def fetch(cache: Path, url: str, check: bool = False):
    return run_script(
        "fetch.sh", "sdist", env={"SEF_CACHE_DIR": str(cache), "PYPI_SIMPLE": url}, check=check
    )


def test_corrupt_cache_and_corrupt_download_are_refused(tmp_path: Path, index) -> None:
    url, served = index
    served.write_bytes(b"not the vllm sdist")
    cached = tmp_path / "cache" / "downloads" / SDIST
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupted in the cache")

    proc = fetch(tmp_path / "cache", url)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert f"cached {SDIST} has sha256" in proc.stderr
    assert f"sha256 mismatch for {SDIST}" in proc.stderr
    assert "(file deleted)" in proc.stderr
    assert list(cached.parent.iterdir()) == [], "the bad file (or a .part) was left behind"


def test_corrupt_cache_is_replaced_by_a_good_download(
    tmp_path: Path, index, real_sdist: Path
) -> None:
    url, served = index
    served.symlink_to(real_sdist)
    cached = tmp_path / "cache" / "downloads" / SDIST
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")

    proc = fetch(tmp_path / "cache", url, check=True)
    assert proc.stdout.strip() == str(cached)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == BASE["VLLM_SDIST_SHA256"]


def test_verified_cache_needs_no_registry(tmp_path: Path, real_sdist: Path) -> None:
    cached = tmp_path / "cache" / "downloads" / SDIST
    cached.parent.mkdir(parents=True)
    cached.symlink_to(real_sdist)
    proc = fetch(tmp_path / "cache", "http://127.0.0.1:9/simple", check=True)
    assert proc.stdout.strip() == str(cached)


def test_file_missing_from_the_index_fails(tmp_path: Path, index) -> None:
    url, _ = index
    proc = fetch(tmp_path / "cache", url.replace("/simple", "/nothing"))
    assert proc.returncode != 0
    assert f"{SDIST} is not listed" in proc.stderr
