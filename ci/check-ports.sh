#!/usr/bin/env bash
# Check every ported series, ports/*/ (a series and base.env each, see README "Bases and rebasing"), the
# way ci/check.sh checks patches/: applies to its base with plain git am, patch hygiene, whitespace,
# vLLM's ruff (that base's pin), canonical form. The bases are cached repositories (ci/base-repo.sh).
#   ci/check-ports.sh
# Runs every port, then exits 1 if any failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export TOOLS_VENV
failed=()
n=0
for dir in "$ROOT"/ports/*/; do
  dir=${dir%/}
  [ -f "$dir/series" ] || continue
  n=$((n + 1))
  name=ports/$(basename "$dir")
  [ -f "$dir/base.env" ] || { log "FAIL: $name has no base.env"; failed+=("$name"); continue; }
  base=$("$ROOT/ci/base-repo.sh" "$dir/base.env") || { failed+=("$name"); continue; }
  BASE_FILE=$dir/base.env PATCH_DIR=$dir VLLM_DIR=$base "$ROOT/ci/check.sh" \
    || failed+=("$name")
  phase_done "$name"
done
[ "${#failed[@]}" = 0 ] || die "failed: ${failed[*]}"
log "$n port(s) checked"
