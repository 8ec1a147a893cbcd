#!/usr/bin/env bash
# Check the patch queue (patches/, or PATCH_DIR with BASE_FILE for a port), without touching vllm/'s
# work tree:
#   (a) the series applies cleanly to the base (in a throw-away clone of vllm/, ci/scratch-tree.sh);
#   (b) every patch has a subject, a body besides its trailers, and a Signed-off-by: line;
#   (c) no patch adds whitespace errors (git diff --check);
#   (d) vLLM's ruff, at the version its .pre-commit-config.yaml pins (a venv of its own under build/
#       when that is not ci/tools-requirements.txt's), with its pyproject.toml settings:
#       `ruff check` and `ruff format --check` on every .py/.pyi file the series adds or changes;
#   (e) patches/ is what `make refresh` would write (so apply + refresh is a byte-for-byte round trip);
#   ci/check.sh
# Our own code is ci/lint.sh's job, the Dockerfiles ci/lint-docker.sh's (make check runs all three).
# Runs every check it can, then exits 1 if any failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

failures=()
fail() { log "FAIL ($1): ${*:2}"; failures+=("$1"); }
tools_bin=$("$ROOT/ci/tools.sh")
ruff=$tools_bin/ruff

# (a) the series applies, in a throw-away tree
mkdir -p "$BUILD_DIR"
scratch=$(mktemp -d "$BUILD_DIR/check.XXXXXX")
at_exit 'rm -rf "$scratch"'
tree=$scratch/vllm
mapfile -t patches < <(series_patches)
if ! "$ROOT/ci/scratch-tree.sh" "$tree"; then
  fail a "the series does not apply to $BASE_REF"
  log "failed: ${failures[*]}"
  exit 1
fi
tgit() { git -C "$tree" "$@"; }
mapfile -t commits < <(tgit rev-list --reverse "$BASE_REF..$SERIES_BRANCH")
[ "${#commits[@]}" = "${#patches[@]}" ] || fail a "${#patches[@]} patches gave ${#commits[@]} commits"
phase_done "(a) ${#patches[@]} patch(es) apply"

# (b) patch hygiene and (c) whitespace, per patch
for i in "${!commits[@]}"; do
  c=${commits[$i]}
  name=$(basename "${patches[$i]:-commit $c}")
  subject=$(tgit log -1 --format=%s "$c")
  body=$(tgit log -1 --format=%b "$c")
  [ -n "${subject// /}" ] || fail b "$name has no subject"
  grep -Eq '^Signed-off-by: .+ <[^>]+>$' <<< "$body" || fail b "$name has no 'Signed-off-by: Name <email>' line"
  trailers=$(tgit log -1 --format='%(trailers:only,unfold)' "$c")
  grep -vxF -f <(printf '%s\n' "$trailers") <<< "$body" | grep -q '[^[:space:]]' \
    || fail b "$name has no body (a description besides its trailers)"
  ws=$(tgit -c core.whitespace= diff --check "$c^" "$c" || true)
  [ -z "$ws" ] || fail c "$name adds whitespace errors:
$ws"
done
phase_done "(b, c) patch hygiene and whitespace"

# (d) vLLM's ruff on the files the series touches, as they are after applying. The version is
# the base's pin (its rev, or the "# frozen: vX" note beside a commit-hash rev): the tools venv's
# ruff when it is that version, else that version in a venv of its own under build/.
want=$(awk '/repo: .*astral-sh\/ruff-pre-commit/ { f = 1; next }
  f && /rev:/ { if (match($0, /frozen: *v?[0-9][^ ]*/)) { v = substr($0, RSTART, RLENGTH); sub(/frozen: *v?/, "", v) }
                else { v = $0; sub(/.*rev: *v?/, "", v); sub(/ .*/, "", v) }
                print v; exit }' "$tree/.pre-commit-config.yaml")
have=$("$ruff" --version | awk '{ print $2 }')
if ! [[ $want =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  fail d "no ruff version in $tree/.pre-commit-config.yaml (ruff-pre-commit rev or '# frozen: vX.Y.Z'): got '$want'"
else
  if [ "$want" != "$have" ]; then
    venv=$BUILD_DIR/ruff-$want
    if ! [ -x "$venv/bin/ruff" ]; then
      log "vLLM's pre-commit here pins ruff $want (tools venv: $have): installing it into $venv"
      rm -rf "$venv" && "$PYTHON" -m venv "$venv"
      "$venv/bin/python" -m pip install -q --disable-pip-version-check "ruff==$want" \
        2> >(pip_noise_filter >&2) >&2 || die "installing ruff==$want into $venv failed"
    fi
    ruff=$venv/bin/ruff
  fi
  mapfile -t changed < <(tgit diff --name-only --no-renames --diff-filter=d "$BASE_REF" "$SERIES_BRANCH" -- '*.py' '*.pyi')
  if [ "${#changed[@]}" -gt 0 ]; then
    # From the tree's root, as vLLM's pre-commit runs it: its pyproject.toml configures ruff.
    (cd "$tree" && "$ruff" check --force-exclude "${changed[@]}") || fail d "ruff check (vLLM config)"
    (cd "$tree" && "$ruff" format --check --diff --force-exclude "${changed[@]}") || fail d "ruff format (vLLM config)"
  fi
  phase_done "(d) vLLM ruff $want on ${#changed[@]} file(s)"
fi

# (e) canonical form: what refresh would write from the applied tree
mkdir -p "$scratch/patches"
PATCH_DIR=$scratch/patches VLLM_DIR=$tree "$ROOT/ci/refresh.sh" 2>/dev/null || fail e "refresh failed on the applied tree"
mapfile -t names < <({ ls -A "$scratch/patches"; cd "$PATCH_DIR" && ls -A -- *.patch series 2>/dev/null; } | sort -u)
for name in "${names[@]}"; do
  f=$scratch/patches/$name
  if [ ! -e "$PATCH_DIR/$name" ]; then fail e "refresh would write $name, missing from patches/"
  elif [ ! -e "$scratch/patches/$name" ]; then fail e "patches/$name is not in the series (refresh would delete it)"
  elif ! cmp -s "$f" "$PATCH_DIR/$name"; then
    fail e "patches/$name differs from what make refresh writes:
$(diff -u "$PATCH_DIR/$name" "$scratch/patches/$name" | head -n 40)"
  fi
done
phase_done "(e) canonical form"

if [ "${#failures[@]}" -gt 0 ]; then
  die "failed checks: $(printf '%s\n' "${failures[@]}" | sort -u | paste -sd' ')"
fi
log "all checks passed"
