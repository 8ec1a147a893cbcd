"""The README and the docs against the tree: lists that would drift are checked here, and the
README's commands that can run on a CPU machine run as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LOCAL_VERSION, PATCHED, ROOT, VERSION

README = ROOT / "README.md"
MAX_README_LINES = 150


def shell_blocks(text: str) -> list[str]:
    """The command lines of the ```sh blocks (continuations joined, comments dropped)."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"(?m)^([a-z][a-z0-9-]*):", text))


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def test_readme_make_commands_exist() -> None:
    text = README.read_text()
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", text))
    named |= {cmd.split()[1] for cmd in shell_blocks(text) if cmd.startswith("make ")}
    assert named, "the README names no make target"
    assert named <= make_targets(), named - make_targets()


def test_readme_lists_every_other_target() -> None:
    """'Other targets' names every target of `make help` but the two commands."""
    listed = README.read_text().split("## Other targets", 1)[1]
    listed_targets = set(re.findall(r"`([a-z][a-z0-9-]*)(?: [A-Z]+=<v>)?`", listed))
    helped = set(re.findall(r"(?m)^## make ([a-z][a-z0-9-]*)", (ROOT / "Makefile").read_text()))
    assert listed_targets == helped - {"build", "test"}


def test_readme_paths_and_documents_exist() -> None:
    text = README.read_text()
    table_paths = re.findall(r"(?m)^\| `([^`]+)` \|", text)
    assert table_paths
    for path in table_paths:
        assert (ROOT / path.rstrip("/")).exists() or path == "vllm/", path
    for doc in re.findall(r"`((?:docs|docker)/[\w./-]+\.md|CHANGELOG\.md)`", text):
        assert (ROOT / doc).is_file(), doc


def test_readme_wheel_names_are_the_built_ones() -> None:
    """`pip install dist/...` in the README names the wheels `make build` writes."""
    installs = [cmd for cmd in shell_blocks(README.read_text()) if cmd.startswith("pip install")]
    named = {shlex.split(cmd)[2] for cmd in installs}
    assert named == {f"dist/{PATCHED['cuda']}", f"dist/{PATCHED['cpu']}"}
    for wheel in named:
        assert (ROOT / wheel).is_file(), f"{wheel}: run make build"


def test_readme_vllm_version_runs() -> None:
    """`vllm --version`, with the CPU wheel installed (the test venv)."""
    assert "vllm --version" in shell_blocks(README.read_text())
    vllm = Path(sys.executable).parent / "vllm"
    proc = subprocess.run([str(vllm), "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{VERSION}+{LOCAL_VERSION}"


def test_readme_image_tag_follows_the_base() -> None:
    tags = re.findall(r"vllm-sef:(\S+)", README.read_text())
    assert tags
    variants = {"", "-cpu", "-cuda", "-source"}  # the Makefile's docker-* images
    assert set(tags) <= {f"{VERSION}-{LOCAL_VERSION}{v}" for v in variants}, tags


def test_testing_doc_covers_every_test_file() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    described = set(re.findall(r"`(test_\w+\.py)`", doc))
    assert files - described == set(), "not described in docs/testing.md"
    assert described - files == set(), "described in docs/testing.md but missing"


def test_changelog_has_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {VERSION}+{LOCAL_VERSION} " in text


@pytest.mark.parametrize("folder", ["tests", "benchmarks", "tools", "ci", "docker"])
def test_no_import_path_edits(folder: str) -> None:
    """Shared helpers are imported, not found through sys.path edits."""
    needle = "sys.path." + "insert"
    for path in (ROOT / folder).rglob("*.py"):
        assert needle not in path.read_text(), path
