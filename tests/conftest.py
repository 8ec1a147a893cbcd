"""Fixtures for the workflow tests: the ci/ scripts run against scratch copies.

Every test points the scripts at temporary directories (VLLM_DIR, PATCH_DIR, DIST_DIR, BUILD_DIR,
SEF_CACHE_DIR), so the user's vllm/, patches/ and dist/ are never touched. The pinned downloads are
reused from the normal cache (no test downloads the 326 MB wheel again).
"""

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "ci"


def read_base_env() -> dict[str, str]:
    """patches/base.env as a dict (KEY=VALUE lines, comments skipped)."""
    env = {}
    for line in (ROOT / "patches" / "base.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


BASE = read_base_env()
VERSION = BASE["VLLM_VERSION"]
LOCAL_VERSION = BASE["LOCAL_VERSION"]
OFFICIAL = {"cuda": BASE["VLLM_CUDA_WHEEL"], "cpu": BASE["VLLM_CPU_WHEEL"]}
PATCHED = {
    flavour: name.replace(f"-{VERSION}-", f"-{VERSION}+{LOCAL_VERSION}-")
    for flavour, name in OFFICIAL.items()
}
# The tools venv is shared with the real runs (a BUILD_DIR override would otherwise move it).
TOOLS_VENV = os.environ.get("TOOLS_VENV", str(ROOT / "build" / "tools-venv"))

# Fixed identities and dates: the sample series is the same bytes on every run.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Sample Author",
    "GIT_AUTHOR_EMAIL": "sample@example.com",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00",
    "GIT_COMMITTER_NAME": "Sample Author",
    "GIT_COMMITTER_EMAIL": "sample@example.com",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00",
}
SIGNOFF = "Signed-off-by: Sample Author <sample@example.com>"


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ci/<script> with extra environment; on check, fail the test with its output."""
    full_env = {**os.environ, "TOOLS_VENV": TOOLS_VENV, **(env or {})}
    proc = subprocess.run(
        [str(CI / script), *args],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"ci/{script} {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """git -C repo ..., returning stdout; fails the test on error."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed in {repo}:\n{proc.stderr}")
    return proc.stdout


def commit_all(repo: Path, subject: str, body: str, signoff: bool = True) -> None:
    """Commit every change in repo with the fixed sample identity."""
    message = f"{subject}\n\n{body}\n" + (f"\n{SIGNOFF}\n" if signoff else "")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", "-m", message, env=GIT_IDENTITY)


def refresh_into(repo: Path, patch_dir: Path) -> Path:
    """ci/refresh.sh from repo's sef-base..sef into patch_dir (created, with an empty series)."""
    patch_dir.mkdir(parents=True, exist_ok=True)
    (patch_dir / "series").touch()
    run_script("refresh.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patch_dir)})
    return patch_dir


def read_dir(path: Path) -> dict[str, bytes]:
    """Every file directly in path, by name."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="session")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vLLM base repository (tag sef-base) made by ci/vllm-source.sh in a temp dir."""
    repo = tmp_path_factory.mktemp("base") / "vllm"
    run_script("vllm-source.sh", env={"VLLM_DIR": str(repo)})
    return repo


@pytest.fixture
def clone(base_repo: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Factory of cheap clones of the base repository (objects shared, no checkout)."""

    def make(name: str = "vllm") -> Path:
        dest = tmp_path / name
        subprocess.run(
            ["git", "clone", "-q", "--shared", "--no-checkout", str(base_repo), str(dest)],
            check=True,
        )
        git(dest, "checkout", "-q", "-f", "-B", "sef", "sef-base")
        return dest

    return make


@pytest.fixture(scope="session")
def sample_series(base_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real series, written by ci/refresh.sh, exercising every kind of change:

    0001 changes one line of vllm/envs.py (a comment), adds vllm/sef_infra_probe.py and a test file
         outside vllm/ (tests/, which the wheels must not get);
    0002 deletes vllm/model_executor/layers/fused_moe/configs/README and appends a comment to
         vllm/config/__init__.py.
    """
    work = tmp_path_factory.mktemp("sample")
    repo = work / "vllm"
    subprocess.run(["git", "clone", "-q", "--shared", str(base_repo), str(repo)], check=True)
    git(repo, "checkout", "-q", "-b", "sef", "sef-base")

    envs = repo / "vllm" / "envs.py"
    text = envs.read_text()
    old = "# SPDX-License-Identifier: Apache-2.0\n"
    assert text.startswith(old)
    envs.write_text(text.replace(old, old + "# sef-infra sample: one comment line\n", 1))
    (repo / "vllm" / "sef_infra_probe.py").write_text('"""Added by the sef infra tests."""\n')
    (repo / "tests" / "test_sef_infra_probe.py").write_text("def test_probe():\n    assert True\n")
    commit_all(repo, "envs: sample comment and probe module", "A sample patch of the infra tests.")

    (repo / "vllm" / "model_executor" / "layers" / "fused_moe" / "configs" / "README").unlink()
    config = repo / "vllm" / "config" / "__init__.py"
    config.write_text(config.read_text() + "# sef-infra sample: appended comment\n")
    commit_all(repo, "config: drop a README, append a comment", "Second sample patch.")

    patches = refresh_into(repo, work / "patches")
    assert (patches / "series").read_text().splitlines() == [
        "0001-envs-sample-comment-and-probe-module.patch",
        "0002-config-drop-a-README-append-a-comment.patch",
    ]
    return patches


@pytest.fixture
def patch_copy(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a patch directory (series + *.patch) to a fresh temp dir."""

    def make(src: Path) -> Path:
        dest = tmp_path / f"patches-{src.parent.name}-{src.name}"
        dest.mkdir()
        for f in src.iterdir():
            if f.name == "series" or f.suffix == ".patch":
                shutil.copy2(f, dest / f.name)
        return dest

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_simple_index(www: Path) -> Iterator[str]:
    """Serve the directory ``www`` over HTTP on 127.0.0.1; yields the URL of its simple/ index."""
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
