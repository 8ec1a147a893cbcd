"""vllm/ as a submodule: the gitlink, the full upstream commit in base.env, and the sdist import.

- The pinned state: patches/base.env's VLLM_GIT_COMMIT_FULL, the gitlink vllm of this repository's
  index and .gitmodules agree; a recorded commit has its manifest (tests/data/upstream/), and the
  sdist import (ci/vllm-source.sh offline) has exactly the content the manifest records for it.
- On a synthetic upstream (a local repository: the 0.32.0 sdist's tree without setuptools'
  generated files, plus a file that the sdist leaves out, tagged v0.32.0; GitHub's URL is redirected
  to it with git's url.<base>.insteadOf): ci/pin-base.sh records the commit, the manifest and the
  gitlink, and refuses an upstream whose files differ; `git clone --recurse-submodules` gives the
  pinned commit, which ci/vllm-source.sh takes as the base; with network it checks out the
  submodule; offline it imports the sdist; either way `git status` stays clean and `git add -A`
  leaves the gitlink alone.
- ci/promote.sh (make promote) moves the gitlink with the port it makes patches/.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import BASE, CI, ROOT, git, run_script

GITHUB = BASE["VLLM_GIT_URL"]
TAG = BASE["VLLM_GIT_TAG"]
GENERATED = [
    "PKG-INFO",
    "setup.cfg",
    "vllm.egg-info/PKG-INFO",
    "vllm.egg-info/SOURCES.txt",
    "vllm.egg-info/dependency_links.txt",
    "vllm.egg-info/entry_points.txt",
    "vllm.egg-info/requires.txt",
    "vllm.egg-info/top_level.txt",
    "vllm/_version.py",
]
# Fixed identity and date: the synthetic upstream commit is the same on every run.
UPSTREAM_IDENTITY = {
    "GIT_AUTHOR_NAME": "Upstream",
    "GIT_AUTHOR_EMAIL": "upstream@example.com",
    "GIT_AUTHOR_DATE": "2026-10-18T00:00:00+00:00",
    "GIT_COMMITTER_NAME": "Upstream",
    "GIT_COMMITTER_EMAIL": "upstream@example.com",
    "GIT_COMMITTER_DATE": "2026-10-18T00:00:00+00:00",
}
IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]


def read_env(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


def gitlink(repo: Path) -> str:
    """The commit of the gitlink vllm in repo's index ('' if none)."""
    out = git(repo, "ls-files", "--stage", "--", "vllm")
    match = re.fullmatch(r"160000 ([0-9a-f]{40}) 0\tvllm\n", out)
    assert match or out == "", out
    return match.group(1) if match else ""


def redirect(upstream: Path) -> dict[str, str]:
    """Environment that sends git's requests for GitHub's vLLM to the local upstream."""
    return {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": f"url.file://{upstream}.insteadOf",
        "GIT_CONFIG_VALUE_0": GITHUB,
        "GIT_CONFIG_KEY_1": "protocol.file.allow",
        "GIT_CONFIG_VALUE_1": "always",
    }


def assert_clean_with_gitlink(repo: Path, commit: str) -> None:
    """git status is clean, and git add -A / commit -a do not move the gitlink."""
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    git(repo, "add", "-A")
    assert gitlink(repo) == commit
    assert git(repo, "diff", "--cached", "--name-only") == ""


# --- the pinned state of this repository


def test_pinned_base_is_consistent() -> None:
    """base.env's full commit, the gitlink and .gitmodules agree (patches/ and every port)."""
    modules = (ROOT / ".gitmodules").read_text()
    assert '[submodule "vllm"]' in modules
    assert "\tpath = vllm\n" in modules
    assert f"\turl = {GITHUB}\n" in modules
    for env_file in [ROOT / "patches" / "base.env", *sorted(ROOT.glob("ports/*/base.env"))]:
        env = read_env(env_file)
        full = env["VLLM_GIT_COMMIT_FULL"]
        assert full == "" or (
            re.fullmatch(r"[0-9a-f]{40}", full) and full.startswith(env["VLLM_GIT_COMMIT"])
        ), env_file
        if full and env.get("VLLM_SDIST"):
            manifest = ROOT / "tests" / "data" / "upstream" / f"{env['VLLM_VERSION']}.txt"
            assert f"commit {full}\n" in manifest.read_text(), env_file
    assert gitlink(ROOT) == BASE["VLLM_GIT_COMMIT_FULL"]


def test_sdist_import_is_the_pinned_upstream_tree(base_repo: Path) -> None:
    """Offline: every file of the sdist import that upstream tracks is upstream's, byte for byte."""
    full = BASE["VLLM_GIT_COMMIT_FULL"]
    if not full:
        pytest.skip(f"the full upstream commit of {TAG} is not recorded yet (ci/pin-base.sh)")
    manifest = ROOT / "tests" / "data" / "upstream" / f"{BASE['VLLM_VERSION']}.txt"
    subprocess.run(
        ["python3", str(CI / "upstream_tree.py"), "verify", str(base_repo), "sef-base", manifest],
        check=True,
    )
    generated = [
        line.split(" ", 1)[1]
        for line in manifest.read_text().splitlines()
        if line.startswith("sdist-only ")
    ]
    assert generated == GENERATED


# --- a synthetic upstream


@pytest.fixture(scope="session")
def upstream(base_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The upstream repository (tag v0.32.0, annotated) and the tag's commit."""
    repo = tmp_path_factory.mktemp("upstream") / "vllm"
    subprocess.run(["git", "clone", "-q", "--shared", str(base_repo), str(repo)], check=True)
    git(repo, "tag", "-d", "sef-base")
    git(repo, "rm", "-q", "-r", "--", *GENERATED)
    (repo / "CONTRIBUTING.md").write_text("Only upstream: the sdist leaves this out.\n")
    git(repo, "add", "CONTRIBUTING.md")
    git(repo, "commit", "-q", "-m", "upstream at the release", env=UPSTREAM_IDENTITY)
    git(repo, "tag", "-a", "-m", "release", TAG, env=UPSTREAM_IDENTITY)
    commit = git(repo, "rev-parse", "HEAD").strip()
    # main moves on: the tag's commit is not the branch tip a shallow clone gets
    git(repo, "commit", "-q", "--allow-empty", "-m", "after the release", env=UPSTREAM_IDENTITY)
    return repo, commit


def make_project(repo: Path, commit: str) -> Path:
    """A copy of this repository's set-up (.gitmodules, .gitignore, patches/, ports/) in repo,
    committed, whose patches/base.env names the commit (abbreviated) as its upstream."""
    repo.mkdir()
    for f in [".gitmodules", ".gitignore"]:
        shutil.copy2(ROOT / f, repo / f)
    shutil.copytree(ROOT / "patches", repo / "patches")
    shutil.copytree(ROOT / "ports", repo / "ports")
    env = repo / "patches" / "base.env"
    env.write_text(
        re.sub(r"(?m)^VLLM_GIT_COMMIT=.*$", f"VLLM_GIT_COMMIT={commit[:9]}", env.read_text())
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "-q", "-m", "project")
    return repo


@pytest.fixture
def project(upstream: tuple[Path, str], tmp_path: Path) -> Callable[[], Path]:
    """Factory of a project (make_project) on the synthetic upstream's commit."""
    return lambda: make_project(tmp_path / "project", upstream[1])


def pin(repo: Path, source: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"REPO_DIR": str(repo), "BASE_FILE": str(repo / "patches" / "base.env")}
    return run_script("pin-base.sh", str(source), env=env, check=check)


class Pinned(NamedTuple):
    repo: Path
    log: str  # ci/pin-base.sh's stderr
    staged: list[str]  # what it staged


@pytest.fixture(scope="session")
def pinned(
    upstream: tuple[Path, str], base_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Pinned:
    """A project pinned to the synthetic upstream by ci/pin-base.sh, with a vllm/ made from the
    sdist beforehand; committed (the tests clone it)."""
    repo = make_project(tmp_path_factory.mktemp("pinned") / "project", upstream[1])
    subprocess.run(
        ["git", "clone", "-q", "--shared", str(base_repo), str(repo / "vllm")], check=True
    )
    proc = pin(repo, upstream[0])
    staged = git(repo, "diff", "--cached", "--name-only").split()
    git(repo, *IDENTITY, "commit", "-q", "-m", "pin")
    return Pinned(repo, proc.stderr, staged)


def clone_of(repo: Path, dest: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    subprocess.run(
        ["git", "clone", "-q", *args, f"file://{repo}", str(dest)],
        env={**os.environ, **(env or {})},
        check=True,
    )
    return dest


def test_pin_base_records_the_commit(
    pinned: Pinned, upstream: tuple[Path, str], base_repo: Path
) -> None:
    repo, commit = pinned.repo, upstream[1]
    assert f"vLLM {BASE['VLLM_VERSION']} is upstream {commit}" in pinned.log
    assert f"only in the sdist ({len(GENERATED)}): {' '.join(GENERATED)}" in pinned.log
    assert "only upstream (1): CONTRIBUTING.md" in pinned.log
    env = (repo / "patches" / "base.env").read_text()
    assert f"\nVLLM_GIT_COMMIT_FULL={commit}\n" in env
    assert (
        f"# Full upstream commit of {TAG} (the gitlink vllm when this base is patches/).\n" in env
    )
    manifest = repo / "tests" / "data" / "upstream" / f"{BASE['VLLM_VERSION']}.txt"
    lines = manifest.read_text().splitlines()
    assert f"commit {commit}" in lines
    assert [x for x in lines if x.startswith(("sdist-only ", "upstream-only "))] == [
        *(f"sdist-only {p}" for p in GENERATED),
        "upstream-only CONTRIBUTING.md",
    ]
    # staged: base.env, the manifest and the gitlink; the sdist-made vllm/ does not move it
    manifest_rel = f"tests/data/upstream/{BASE['VLLM_VERSION']}.txt"
    assert pinned.staged == ["patches/base.env", manifest_rel, "vllm"]
    assert git(repo, "ls-files", "-v", "--", "vllm") == "S vllm\n"
    assert_clean_with_gitlink(repo, commit)
    # the manifest is what the offline check reads: the sdist import passes it
    subprocess.run(
        ["python3", str(CI / "upstream_tree.py"), "verify", str(base_repo), "sef-base", manifest],
        check=True,
    )


def test_pin_base_refuses_an_upstream_that_differs(
    project, upstream: tuple[Path, str], base_repo: Path, tmp_path: Path
) -> None:
    """One file of the sdist changed upstream: named, nothing written; a commit that is not the
    sdist's (abbreviated id) likewise."""
    source, commit = upstream
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", "--shared", str(source), str(other)], check=True)
    envs = other / "vllm" / "envs.py"
    envs.write_text(envs.read_text() + "# changed upstream\n")
    git(other, "commit", "-q", "-am", "change", env=UPSTREAM_IDENTITY)
    git(other, "tag", "-f", "-a", "-m", "release", TAG, env=UPSTREAM_IDENTITY)
    changed = git(other, "rev-parse", "HEAD").strip()

    repo = project()
    env = repo / "patches" / "base.env"
    before = env.read_text()
    proc = pin(repo, other, check=False)
    assert proc.returncode != 0
    assert (
        f"tag {TAG} of {other} is commit {changed}, but the sdist says {commit[:9]}" in proc.stderr
    )

    env.write_text(
        before.replace(f"VLLM_GIT_COMMIT={commit[:9]}", f"VLLM_GIT_COMMIT={changed[:9]}")
    )
    git(repo, *IDENTITY, "commit", "-q", "-am", "other commit")
    proc = pin(repo, other, check=False)
    assert proc.returncode != 0
    assert "content differs: vllm/envs.py" in proc.stderr
    assert f"the sdist {BASE['VLLM_SDIST']} is not upstream {changed}" in proc.stderr
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert gitlink(repo) == ""
    # a manifest that does not match the sdist import fails the offline check
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"commit {changed}\nshared 1 {'0' * 64}\n")
    proc = subprocess.run(
        ["python3", str(CI / "upstream_tree.py"), "verify", str(base_repo), "sef-base", manifest],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert f"is not upstream {changed}" in proc.stderr


def vllm_source(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        "REPO_DIR": str(repo),
        "VLLM_DIR": str(repo / "vllm"),
        "BASE_FILE": str(repo / "patches" / "base.env"),
        **env,
    }
    return subprocess.run(
        [str(CI / "vllm-source.sh")],
        env={**os.environ, **full},
        capture_output=True,
        text=True,
        check=True,
    )


def apply_sample(repo: Path, sample_series: Path) -> None:
    env = {
        "REPO_DIR": str(repo),
        "VLLM_DIR": str(repo / "vllm"),
        "BASE_FILE": str(repo / "patches" / "base.env"),
        "PATCH_DIR": str(sample_series),
    }
    run_script("apply.sh", env=env)
    assert len(git(repo / "vllm", "rev-list", "sef-base..sef").split()) == 2


def test_clone_with_submodules_gives_the_pinned_commit(
    pinned: Pinned, upstream: tuple[Path, str], sample_series: Path, tmp_path: Path
) -> None:
    """git clone --recurse-submodules: vllm/ at the pinned commit, which make apply takes as its
    base (the synthetic upstream is reachable here)."""
    source, commit = upstream
    clone = clone_of(pinned.repo, tmp_path / "clone", "--recurse-submodules", env=redirect(source))
    assert git(clone / "vllm", "rev-parse", "HEAD").strip() == commit
    assert git(clone / "vllm", "rev-parse", "--is-shallow-repository").strip() == "true"
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    proc = vllm_source(clone, SEF_OFFLINE="1")
    assert "the checked-out upstream commit" in proc.stderr
    assert git(clone / "vllm", "rev-parse", "sef-base^{commit}").strip() == commit
    apply_sample(clone, sample_series)
    assert_clean_with_gitlink(clone, commit)


def test_vllm_source_uses_the_submodule_with_network(
    pinned: Pinned, upstream: tuple[Path, str], sample_series: Path, tmp_path: Path
) -> None:
    source, commit = upstream
    clone = clone_of(pinned.repo, tmp_path / "clone")
    assert sorted(os.listdir(clone / "vllm")) == []
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    proc = vllm_source(clone, **redirect(source))
    assert f"checking out the submodule vllm at {commit}" in proc.stderr
    assert git(clone / "vllm", "rev-parse", "sef-base^{commit}").strip() == commit
    apply_sample(clone, sample_series)
    assert_clean_with_gitlink(clone, commit)


def test_vllm_source_imports_the_sdist_offline(
    pinned: Pinned, upstream: tuple[Path, str], sample_series: Path, tmp_path: Path
) -> None:
    """Offline, the sdist is imported where the submodule would be; git status stays clean, git
    add -A and git stash leave the gitlink alone."""
    _, commit = upstream
    clone = clone_of(pinned.repo, tmp_path / "clone")
    proc = vllm_source(clone, SEF_OFFLINE="1")
    assert "importing" in proc.stderr
    message = git(clone / "vllm", "log", "-1", "--format=%B", "sef-base")
    assert f"sha256 {BASE['VLLM_SDIST_SHA256']}" in message
    assert git(clone, "ls-files", "-v", "--", "vllm") == "S vllm\n"
    apply_sample(clone, sample_series)
    assert_clean_with_gitlink(clone, commit)
    series = clone / "patches" / "series"
    series.write_text(series.read_text() + "# stashed\n")
    git(clone, "stash", "-q")
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    git(clone, "stash", "pop", "-q")
    git(clone, *IDENTITY, "commit", "-q", "-am", "series comment")
    assert git(clone, "ls-tree", "HEAD", "vllm").split()[2] == commit


def test_vllm_source_refuses_another_base(base_repo: Path, tmp_path: Path) -> None:
    """A vllm/ whose sef-base is not the base of base.env (e.g. the old base after a promotion)."""
    repo = tmp_path / "vllm"
    subprocess.run(["git", "clone", "-q", "--shared", str(base_repo), str(repo)], check=True)
    port = ROOT / "ports" / "v0.33.0" / "base.env"
    env = {"VLLM_DIR": str(repo), "BASE_FILE": str(port), "SEF_OFFLINE": "1"}
    proc = run_script("vllm-source.sh", env=env, check=False)
    assert proc.returncode != 0
    assert f"{repo} holds another base" in proc.stderr
    assert "not vLLM 0.33.0" in proc.stderr


# --- promotion


def test_promote_moves_the_gitlink_with_the_port(pinned: Pinned, tmp_path: Path) -> None:
    """make promote TO=0.33.0: patches/ := ports/v0.33.0, the gitlink := its full commit (staged),
    tag sef-0.32.0 at HEAD; refused while the port has no full commit."""
    repo = clone_of(pinned.repo, tmp_path / "project")
    port = repo / "ports" / "v0.33.0"
    proc = run_script("promote.sh", "0.33.0", env={"REPO_DIR": str(repo)}, check=False)
    assert proc.returncode != 0
    assert "records no full upstream commit" in proc.stderr
    assert "ci/pin-base.sh" in proc.stderr
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(repo, "tag", "--list") == ""

    # what ci/pin-base.sh would have recorded for 0.33.0 (a made-up commit with the sdist's prefix)
    env = read_env(port / "base.env")
    full = env["VLLM_GIT_COMMIT"] + "0" * (40 - len(env["VLLM_GIT_COMMIT"]))
    subprocess.run(
        ["bash", "-c", f'. "{CI}/lib.sh" && set_full_commit "$0" "$1"', port / "base.env", full],
        check=True,
    )
    manifest = repo / "tests" / "data" / "upstream" / "0.33.0.txt"
    manifest.write_text(f"commit {full}\nshared 0 {'0' * 64}\n")
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "-q", "-m", "pin 0.33.0")
    head = git(repo, "rev-parse", "HEAD").strip()
    expected = {p.name: p.read_bytes() for p in port.iterdir()}

    proc = run_script("promote.sh", "0.33.0", env={"REPO_DIR": str(repo)})
    assert f"gitlink vllm = {full}" in proc.stderr
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "rev-parse", "sef-0.32.0^{commit}").strip() == head
    assert gitlink(repo) == full
    assert {p.name: p.read_bytes() for p in (repo / "patches").iterdir()} == expected
    assert not port.exists()
    staged = set(git(repo, "diff", "--cached", "--name-only").split())
    assert "vllm" in staged
    assert "ports/v0.33.0/base.env" in staged
    assert "patches/base.env" in staged
