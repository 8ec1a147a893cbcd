"""`make build-cuda` (ci/build-cuda.sh), as far as it runs without a CUDA toolchain: its pre-flight
checks fail early and cleanly, naming what is missing, before touching vllm/ or dist/.

The compile itself needs nvcc, a CUDA torch and about an hour of a large machine; it is not run
here (docker/Dockerfile.source runs it). A fake toolkit (an nvcc that prints its version, a
cuda_runtime.h) and a fake torch module take each check in turn; the last case passes them all and
stops at the build dependencies, after `make apply` has put the series on the tree.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, TOOLS_VENV, git


def write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def path_without_nvcc() -> str:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "nvcc").exists())


def make_build_cuda(tmp_path: Path, vllm_dir: Path | None = None, **env: str):
    """`make build-cuda` with scratch vllm/, dist/ and build/ and no CUDA toolkit but `env`'s."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"CUDA_HOME", "CUDA_PATH", "CXX", "PYTHON"}
    }
    full_env.update(
        PATH=path_without_nvcc(),
        TOOLS_VENV=TOOLS_VENV,
        VLLM_DIR=str(vllm_dir or tmp_path / "vllm"),
        DIST_DIR=str(tmp_path / "dist"),
        BUILD_DIR=str(tmp_path / "build"),
        **env,
    )
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "build-cuda"],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )


def fake_toolkit(tmp_path: Path, release: str = "13.0") -> Path:
    cuda = tmp_path / "cuda"
    write_exe(
        cuda / "bin" / "nvcc",
        "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
        f"echo 'Cuda compilation tools, release {release}, V{release}.88'\n",
    )
    (cuda / "include").mkdir()
    (cuda / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    return cuda


def fake_python(tmp_path: Path, torch_version: str, torch_cuda: str | None) -> Path:
    """This Python without site-packages (python -S: no setuptools, no real torch) and with a
    fake torch module of the given version and CUDA."""
    pkg = tmp_path / "fakepy" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"__version__ = {torch_version!r}\n\n\nclass version:\n    cuda = {torch_cuda!r}\n"
    )
    return write_exe(
        tmp_path / "bin" / "python",
        f'#!/bin/sh\nPYTHONPATH={pkg.parent} exec {sys.executable} -S "$@"\n',
    )


def fake_cxx(tmp_path: Path, major: int) -> Path:
    return write_exe(tmp_path / "bin" / "g++", f"#!/bin/sh\necho {major}\n")


def assert_nothing_touched(tmp_path: Path) -> None:
    assert not (tmp_path / "vllm").exists(), "build-cuda touched vllm/ before its checks passed"
    assert not (tmp_path / "dist").exists(), "build-cuda wrote dist/ before its checks passed"


def test_without_nvcc_it_fails_naming_the_toolkit(tmp_path: Path) -> None:
    """CUDA_HOME names a directory without nvcc (this machine may have a toolkit elsewhere)."""
    empty = tmp_path / "no-cuda"
    empty.mkdir()
    proc = make_build_cuda(tmp_path, CUDA_HOME=str(empty))
    assert proc.returncode != 0
    assert "no CUDA toolkit (nvcc and headers) found" in proc.stderr
    assert "set CUDA_HOME" in proc.stderr
    assert_nothing_touched(tmp_path)


@pytest.mark.parametrize(
    ("torch_version", "torch_cuda", "message"),
    [
        ("2.13.0+cpu", None, "has torch 2.13.0+cpu, a CPU-only build"),
        ("2.12.0+cu130", "13.0", "has torch 2.12.0+cu130; vLLM 0.32.0 builds against torch 2.13.0"),
        ("2.13.0+cu129", "12.9", "nvcc is CUDA 13.0 but torch was built for CUDA 12.9"),
    ],
)
def test_wrong_torch_is_refused(
    tmp_path: Path, torch_version: str, torch_cuda: str | None, message: str
) -> None:
    python = fake_python(tmp_path, torch_version, torch_cuda)
    proc = make_build_cuda(tmp_path, CUDA_HOME=str(fake_toolkit(tmp_path)), PYTHON=str(python))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert_nothing_touched(tmp_path)


def test_missing_torch_is_refused(tmp_path: Path) -> None:
    python = write_exe(tmp_path / "bin" / "python", f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    proc = make_build_cuda(tmp_path, CUDA_HOME=str(fake_toolkit(tmp_path)), PYTHON=str(python))
    assert proc.returncode != 0
    assert "cannot import torch: install torch==2.13.0 built for CUDA" in proc.stderr
    assert_nothing_touched(tmp_path)


def test_old_gcc_is_refused(tmp_path: Path) -> None:
    proc = make_build_cuda(
        tmp_path,
        CUDA_HOME=str(fake_toolkit(tmp_path)),
        PYTHON=str(fake_python(tmp_path, "2.13.0+cu130", "13.0")),
        CXX=str(fake_cxx(tmp_path, 12)),
    )
    assert proc.returncode != 0
    assert "is version 12; vLLM's build needs GCC/G++ >= 13" in proc.stderr
    assert_nothing_touched(tmp_path)


def test_checks_pass_then_it_applies_and_names_missing_build_deps(
    tmp_path: Path, clone: Callable[..., Path]
) -> None:
    repo = clone()
    proc = make_build_cuda(
        tmp_path,
        vllm_dir=repo,
        CUDA_HOME=str(fake_toolkit(tmp_path)),
        PYTHON=str(fake_python(tmp_path, "2.13.0+cu130", "13.0")),
        CXX=str(fake_cxx(tmp_path, 13)),
    )
    assert proc.returncode != 0
    assert "CUDA 13.0 at" in proc.stderr
    assert "torch 2.13.0+cu130 (CUDA 13.0)" in proc.stderr
    assert "missing build dependencies (setuptools" in proc.stderr
    assert "requirements/build/cuda.txt" in proc.stderr
    # make apply ran: the series is on branch sef; nothing was built.
    series = [
        line
        for line in (ROOT / "patches" / "series").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    commits = git(repo, "rev-list", "--count", "sef-base..sef").strip()
    assert int(commits) == len(series)
    assert git(repo, "status", "--porcelain") == ""
    assert not (tmp_path / "dist").exists()
