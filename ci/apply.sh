#!/usr/bin/env bash
# Rebuild vllm/ from the patch queue: branch sef = sef-base + every patch of patches/series, by git am.
#   ci/apply.sh                refuses to run over uncommitted changes in vllm/
#   FORCE=1 ci/apply.sh        discards them
# Author dates (and, for reproducible commit ids, committer dates) come from the patches.
# On a patch that does not apply: aborts the am, leaves vllm/ on branch sef at sef-base with a clean
# tree, names the patch and its files (those that conflicted first), and exits 1.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

[ -f "$PATCH_DIR/series" ] || die "$PATCH_DIR/series does not exist"
"$ROOT/ci/vllm-source.sh"

am_dir() { printf '%s/rebase-apply\n' "$(vgit rev-parse --absolute-git-dir)"; }
reset_to_base() {
  if [ -d "$(am_dir)" ]; then vgit am --abort >/dev/null 2>&1 || vgit am --quit || true; fi
  vgit checkout -q -f -B "$SERIES_BRANCH" "$BASE_REF"
  vgit clean -q -fd
}

if [ "${FORCE:-0}" != 1 ]; then
  [ -d "$(am_dir)" ] && die "a git am is in progress in $VLLM_DIR: finish or abort it, or rerun with FORCE=1"
  dirty=$(vgit status --porcelain)
  [ -z "$dirty" ] || die "$VLLM_DIR has uncommitted changes (commit them and run make refresh, or rerun with FORCE=1 to discard them):
$(head -n 20 <<< "$dirty")$([ "$(wc -l <<< "$dirty")" -le 20 ] || printf '\n...')"
fi

old=$(vgit rev-parse -q --verify "refs/heads/$SERIES_BRANCH" || true)
base=$(vgit rev-parse "$BASE_REF^{commit}")
reset_to_base
if [ -n "$old" ] && [ "$old" != "$base" ]; then
  log "previous $SERIES_BRANCH was $old (git -C $VLLM_DIR branch <name> $old brings it back)"
fi

mapfile -t patches < <(series_patches)
i=0
for patch in "${patches[@]}"; do
  i=$((i + 1))
  name=$(basename "$patch")
  [ -f "$patch" ] || { reset_to_base; die "patch $i of ${#patches[@]}, $name, listed in series, does not exist"; }
  # Options pin everything a user's git config could change about the result.
  if out=$(vgit am -q --no-3way --keep-non-patch --no-keep-cr --no-scissors --no-message-id \
      --whitespace=warn --committer-date-is-author-date "$patch" 2>&1); then
    [ -z "$out" ] || printf '%s\n' "$out" | sed "s|^|[apply.sh] $name: |" >&2
    continue
  fi
  touched=$(patch_files "$patch" 2>/dev/null | paste -sd' ' || true)
  conflicted=$(printf '%s\n' "$out" | sed -n \
    -e 's/^error: patch failed: \(.*\):[0-9][0-9]*$/\1/p' \
    -e 's/^error: \(.*\): \(patch does not apply\|does not exist in index\|already exists in index\|already exists in working directory\|does not match index\|No such file or directory\)$/\1/p' \
    | sort -u | paste -sd' ' || true)
  reset_to_base
  {
    printf '[apply.sh] error: patch %d of %d does not apply: %s\n' "$i" "${#patches[@]}" "$name"
    printf '[apply.sh]   conflicting files: %s\n' "${conflicted:-(none reported)}"
    printf '[apply.sh]   files it touches: %s\n' "${touched:-(none found)}"
    printf '[apply.sh]   git am said:\n'
    # am's own advice (--continue, --skip, ...) is moot: the am has been aborted.
    printf '%s\n' "$out" | grep -v -e '^hint: ' -e '^When you have resolved' -e '^If you prefer to skip' \
      -e '^To restore the original branch' -e '^Patch failed at ' | sed 's/^/[apply.sh]     /'
    printf '[apply.sh] %s is back at %s (branch %s, clean tree); nothing of the series is applied\n' \
      "$VLLM_DIR" "$BASE_REF" "$SERIES_BRANCH"
  } >&2
  exit 1
done
log "applied ${#patches[@]} patch(es): $SERIES_BRANCH = $(vgit rev-parse --short HEAD) on $BASE_REF"
