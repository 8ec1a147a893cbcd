"""make check's jobs: ci/check.sh (the series: a clean one passes; bad hygiene, whitespace and vLLM
ruff findings fail it), ci/lint.sh (our code) and ci/lint-docker.sh (a bad Dockerfile fails)."""

from collections.abc import Callable
from pathlib import Path

from conftest import ROOT, commit_all, refresh_into, run_script


def check(base_repo: Path, patches: Path, tmp_path: Path, **env: str):
    env = {
        "VLLM_DIR": str(base_repo),
        "PATCH_DIR": str(patches),
        "BUILD_DIR": str(tmp_path),
        **env,
    }
    return run_script("check.sh", env=env, check=False)


def test_project_series_passes(base_repo: Path, tmp_path: Path) -> None:
    """`make check` on patches/ itself: CI holds the real series to the same rules."""
    proc = check(base_repo, ROOT / "patches", tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_bad_dockerfile_fails_the_hadolint_step(tmp_path: Path) -> None:
    """ci/lint-docker.sh (part of make check): hadolint on DOCKER_DIR's Dockerfiles can fail."""
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "Dockerfile").write_text(
        "FROM ubuntu:latest\nRUN cd /tmp && apt-get install -y curl\nCMD curl localhost\n"
    )
    proc = run_script("lint-docker.sh", env={"DOCKER_DIR": str(docker)}, check=False)
    assert proc.returncode != 0
    for rule in ["DL3007", "DL3003", "DL3008", "DL3015", "DL3025"]:
        assert f"{docker}/Dockerfile:" in proc.stdout
        assert rule in proc.stdout, rule


def test_our_code_is_clean() -> None:
    """ci/lint.sh (part of make check): ruff and shellcheck on our own code."""
    proc = run_script("lint.sh", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_clean_series_passes(base_repo: Path, sample_series: Path, tmp_path: Path) -> None:
    proc = check(base_repo, sample_series, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all checks passed" in proc.stderr
    assert "(d) vLLM ruff 0.14.0 on 4 file(s)" in proc.stderr


def test_bad_patch_fails_hygiene_whitespace_and_ruff(
    base_repo: Path, clone: Callable[..., Path], tmp_path: Path
) -> None:
    repo = clone()
    module = repo / "vllm" / "sef_bad.py"
    module.write_text("import os\nx=1   \n")  # unused import, unformatted, trailing spaces
    commit_all(repo, "bad: a careless patch", "Signed-off-by: nobody", signoff=False)
    patches = refresh_into(repo, tmp_path / "patches")
    (patches / "0099-stray.patch").write_text("not in the series\n")

    proc = check(base_repo, patches, tmp_path / "build")
    assert proc.returncode != 0
    err = proc.stderr
    assert (
        "FAIL (b): 0001-bad-a-careless-patch.patch has no 'Signed-off-by: Name <email>' line" in err
    )
    assert "FAIL (c): 0001-bad-a-careless-patch.patch adds whitespace errors" in err
    assert "vllm/sef_bad.py:2: trailing whitespace" in err
    assert "FAIL (d): ruff check (vLLM config)" in err
    assert "F401" in proc.stdout + err
    assert "FAIL (d): ruff format (vLLM config)" in err
    assert "FAIL (e): patches/0099-stray.patch is not in the series" in err
    assert "failed checks: b c d e" in err


def test_patch_without_body_fails(
    base_repo: Path, clone: Callable[..., Path], tmp_path: Path
) -> None:
    repo = clone()
    (repo / "vllm" / "envs.py").write_text((repo / "vllm" / "envs.py").read_text() + "# x\n")
    commit_all(repo, "envs: no description", "")
    patches = refresh_into(repo, tmp_path / "patches")
    proc = check(base_repo, patches, tmp_path / "build")
    assert proc.returncode != 0
    assert "has no body" in proc.stderr


def test_series_that_does_not_apply_fails(
    base_repo: Path, sample_series: Path, tmp_path: Path
) -> None:
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "series").write_text("0001-envs-sample-comment-and-probe-module.patch\n")
    text = (sample_series / "0001-envs-sample-comment-and-probe-module.patch").read_text()
    broken = text.replace(" # SPDX-FileCopyrightText", " # SPDX-Changed", 1)
    assert broken != text
    (patches / "0001-envs-sample-comment-and-probe-module.patch").write_text(broken)
    proc = check(base_repo, patches, tmp_path / "build")
    assert proc.returncode != 0
    assert "FAIL (a): the series does not apply" in proc.stderr
