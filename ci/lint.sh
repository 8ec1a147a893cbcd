#!/usr/bin/env bash
# Lint our own code (not the series: that is ci/check.sh): ruff (ruff.toml) on our Python, shellcheck
# (.shellcheckrc) on our shell scripts, and actionlint on the GitHub workflows where it is installed
# (its PyPI wrapper needs GitHub to build; tests/test_nightly.py parses the workflows).
#   ci/lint.sh
# Runs every linter, then exits 1 if any failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

failures=()
fail() { log "FAIL: $*"; failures+=("$1"); }
tools_bin=$("$ROOT/ci/tools.sh")
ruff=$tools_bin/ruff

own_py=$(cd "$ROOT" && git ls-files --cached --others --exclude-standard -- '*.py' | grep -v '^vllm/' || true)
if [ -n "$own_py" ]; then
  (cd "$ROOT" && "$ruff" check --config ruff.toml . && "$ruff" format --check --config ruff.toml .) \
    || fail ruff "ruff on our Python (run: build/tools-venv/bin/ruff format . && build/tools-venv/bin/ruff check --fix .)"
fi
mapfile -t own_sh < <(cd "$ROOT" && { git ls-files --cached --others --exclude-standard -- '*.sh'; echo .ci/run; } | sort -u)
(cd "$ROOT" && "$tools_bin/shellcheck" -x "${own_sh[@]}") || fail shellcheck "shellcheck"
if command -v actionlint >/dev/null && compgen -G "$ROOT/.github/workflows/*.yml" >/dev/null; then
  (cd "$ROOT" && PATH=$tools_bin:$PATH actionlint) || fail actionlint "actionlint"
fi
[ "${#failures[@]}" -eq 0 ] || die "failed: ${failures[*]}"
log "our code is clean"
