"""The nightly rebase workflow: valid YAML that only calls make targets and ci/ scripts; and
ci/latest-release.sh, against a local index."""

import re
from pathlib import Path

import yaml
from conftest import ROOT, run_script, serve_simple_index

WORKFLOW = ROOT / ".github" / "workflows" / "nightly-rebase.yml"


def load() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def test_workflow_triggers_and_permissions() -> None:
    data = load()
    assert data["on"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"]  # every night
    assert "workflow_dispatch" in data["on"]
    assert data["permissions"] == {
        "contents": "write",
        "pull-requests": "write",
        "issues": "write",
    }


def test_workflow_steps_only_call_make_and_ci_scripts() -> None:
    jobs = load()["jobs"]
    assert len(jobs) == 1
    job = next(iter(jobs.values()))
    allowed = re.compile(r"(make [a-z-]+( TO=\"\$TO\")?|ci/[a-z-]+\.sh|exit 1)$")
    for step in job["steps"]:
        if "uses" in step:
            # third-party actions pinned by commit
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            continue
        run = step["run"].strip()
        if step.get("id") == "to":
            assert run == 'echo "to=${INPUT_TO:-$(ci/latest-release.sh)}" >> "$GITHUB_OUTPUT"'
        else:
            assert allowed.fullmatch(run), run
        for script in re.findall(r"ci/[a-z-]+\.sh", run):
            assert (ROOT / script).is_file(), script
        for target in re.findall(r"make ([a-z-]+)", run):
            assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target
    publish = next(s for s in job["steps"] if s.get("run") == "ci/publish-rebase.sh")
    assert publish["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


def test_latest_release(tmp_path: Path) -> None:
    """The highest final release with a sdist; yanked files and pre-releases don't count."""
    (tmp_path / "simple" / "vllm").mkdir(parents=True)
    files = [
        ("vllm-0.9.2.tar.gz", ""),
        ("vllm-0.33.0.tar.gz", ""),
        ("vllm-0.33.1-cp38-abi3-manylinux_2_28_x86_64.whl", ""),  # no sdist
        ("vllm-0.34.0rc1.tar.gz", ""),
        ("vllm-0.35.0.tar.gz", ' data-yanked="broken"'),
        ("vllm-0.10.0.tar.gz", ""),
    ]
    (tmp_path / "simple" / "vllm" / "index.html").write_text(
        "".join(
            f'<a href="../../files/{name}#sha256={"0" * 64}"{extra}>{name}</a><br/>\n'
            for name, extra in files
        )
    )
    with serve_simple_index(tmp_path) as url:
        proc = run_script("latest-release.sh", env={"PYPI_SIMPLE": url})
    assert proc.stdout == "0.33.0\n"
