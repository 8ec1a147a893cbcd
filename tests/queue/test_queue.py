"""The patch queue: apply/refresh round trip, and the clean failure of a conflicting patch."""

from collections.abc import Callable
from pathlib import Path

from conftest import ROOT, commit_all, git, read_dir, refresh_into, run_script


def apply(repo: Path, patches: Path, check: bool = True, **env: str):
    return run_script(
        "apply.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patches), **env}, check=check
    )


def assert_at_clean_base(repo: Path) -> None:
    """vllm/ as apply.sh must leave it after a failure: branch sef == sef-base, clean, no am."""
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == "sef"
    assert (
        git(repo, "rev-parse", "sef").strip() == git(repo, "rev-parse", "sef-base^{commit}").strip()
    )
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    git_dir = Path(git(repo, "rev-parse", "--absolute-git-dir").strip())
    assert not (git_dir / "rebase-apply").exists(), "a git am is still in progress"


def test_roundtrip_sample_series_is_byte_identical(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path], tmp_path
) -> None:
    patches = patch_copy(sample_series)
    repo = clone()
    apply(repo, patches)
    subjects = git(repo, "log", "--reverse", "--format=%s|%an|%aI", "sef-base..sef").splitlines()
    assert subjects == [
        "envs: sample comment and probe module|Sample Author|2026-01-02T03:04:05+00:00",
        "config: drop a README, append a comment|Sample Author|2026-01-02T03:04:05+00:00",
    ]
    # refresh into the same directory: nothing may change
    run_script("refresh.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patches)})
    assert read_dir(patches) == read_dir(sample_series)
    # and into an empty one: the same files, nothing else
    again = refresh_into(repo, tmp_path / "again")
    assert read_dir(again) == read_dir(sample_series)


def test_apply_is_deterministic(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    """The same series gives the same commit ids (author and committer dates from the patches)."""
    patches = patch_copy(sample_series)
    a, b = clone("a"), clone("b")
    apply(a, patches)
    apply(b, patches)
    assert git(a, "rev-parse", "sef") == git(b, "rev-parse", "sef")
    assert git(a, "rev-parse", "sef") != git(a, "rev-parse", "sef-base^{commit}")


def test_roundtrip_of_the_project_series(
    clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    """`make apply && make refresh` leaves patches/ unchanged (here on a copy of patches/)."""
    patches = patch_copy(ROOT / "patches")
    before = read_dir(patches)
    repo = clone()
    apply(repo, patches)
    run_script("refresh.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patches)})
    assert read_dir(patches) == before


def test_refresh_removes_stale_patches_and_rewrites_series(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    patches = patch_copy(sample_series)
    repo = clone()
    apply(repo, patches)
    (patches / "0009-stale.patch").write_text("stale\n")
    (patches / "series").write_text("# hand-edited\n0009-stale.patch\n")
    git(repo, "reset", "-q", "--hard", "sef~1")  # drop the second commit
    run_script("refresh.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patches)})
    files = read_dir(patches)
    assert sorted(files) == ["0001-envs-sample-comment-and-probe-module.patch", "series"]
    assert files["series"] == b"0001-envs-sample-comment-and-probe-module.patch\n"


def test_refresh_refuses_uncommitted_changes(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    patches = patch_copy(sample_series)
    repo = clone()
    apply(repo, patches)
    (repo / "vllm" / "envs.py").write_text("changed\n")
    proc = run_script(
        "refresh.sh", env={"VLLM_DIR": str(repo), "PATCH_DIR": str(patches)}, check=False
    )
    assert proc.returncode != 0
    assert "uncommitted changes" in proc.stderr
    assert read_dir(patches) == read_dir(sample_series)


def make_conflicting_patch(clone: Callable[..., Path], tmp_path: Path) -> Path:
    """A real patch whose context is not in the base: it was made on top of an earlier change of the
    same line (the second of two commits, without the first)."""
    repo = clone("conflict-src")
    target = repo / "vllm" / "logger.py"
    lines = target.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.startswith("import "))
    original = lines[index]
    lines[index] = original.rstrip("\n") + "  # first change\n"
    target.write_text("".join(lines))
    commit_all(repo, "logger: first change", "Needed by the second.")
    lines[index] = original.rstrip("\n") + "  # second change\n"
    target.write_text("".join(lines))
    commit_all(repo, "logger: second change", "Applies only on top of the first.")
    out = refresh_into(repo, tmp_path / "conflict-patches")
    return out / "0002-logger-second-change.patch"


def test_conflicting_patch_fails_cleanly(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path], tmp_path
) -> None:
    bad = make_conflicting_patch(clone, tmp_path)
    patches = patch_copy(sample_series)
    (patches / bad.name).write_bytes(bad.read_bytes())
    series = (patches / "series").read_text()
    (patches / "series").write_text(series + bad.name + "\n")

    repo = clone()
    proc = apply(repo, patches, check=False)
    assert proc.returncode != 0
    assert f"patch 3 of 3 does not apply: {bad.name}" in proc.stderr
    assert "conflicting files: vllm/logger.py" in proc.stderr
    assert "files it touches: vllm/logger.py" in proc.stderr
    assert_at_clean_base(repo)

    # the good part of the series alone still applies afterwards
    (patches / "series").write_text(series)
    apply(repo, patches)
    assert len(git(repo, "rev-list", "sef-base..sef").split()) == 2


def test_missing_patch_fails_cleanly(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    patches = patch_copy(sample_series)
    with (patches / "series").open("a") as f:
        f.write("0003-not-there.patch\n")
    repo = clone()
    proc = apply(repo, patches, check=False)
    assert proc.returncode != 0
    assert "0003-not-there.patch" in proc.stderr
    assert_at_clean_base(repo)


def test_apply_refuses_to_discard_uncommitted_work(
    sample_series: Path, clone: Callable[..., Path], patch_copy: Callable[[Path], Path]
) -> None:
    patches = patch_copy(sample_series)
    repo = clone()
    edited = repo / "vllm" / "envs.py"
    edited.write_text("work in progress\n")
    proc = apply(repo, patches, check=False)
    assert proc.returncode != 0
    assert "uncommitted changes" in proc.stderr
    assert edited.read_text() == "work in progress\n"
    apply(repo, patches, FORCE="1")
    assert edited.read_text() != "work in progress\n"
    assert git(repo, "status", "--porcelain") == ""
