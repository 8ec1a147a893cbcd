#!/usr/bin/env bash
# Regenerate patches/*.patch and patches/series from the commits sef-base..sef in vllm/.
#   ci/refresh.sh
# One patch per commit, by git format-patch with every option that could vary pinned, so that
# `make apply && make refresh` reproduces patches/ byte for byte. Patch files no longer produced
# are deleted; series is rewritten (it holds only the patch names, in order).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

[ -d "$VLLM_DIR/.git" ] || [ -f "$VLLM_DIR/.git" ] || die "$VLLM_DIR is not a git repository (run make apply)"
vgit rev-parse -q --verify "$BASE_REF^{commit}" >/dev/null || die "$VLLM_DIR has no $BASE_REF tag (run make apply)"
vgit rev-parse -q --verify "refs/heads/$SERIES_BRANCH" >/dev/null || die "$VLLM_DIR has no branch $SERIES_BRANCH"
[ -d "$(vgit rev-parse --absolute-git-dir)/rebase-apply" ] && die "a git am or rebase is in progress in $VLLM_DIR"
dirty=$(vgit status --porcelain --untracked-files=no)
[ -z "$dirty" ] || die "$VLLM_DIR has uncommitted changes; commit them on $SERIES_BRANCH first:
$dirty"
untracked=$(vgit status --porcelain | sed -n 's/^?? //p')
[ -z "$untracked" ] || log "warning: untracked files in $VLLM_DIR are not part of the series: $(echo "$untracked" | paste -sd' ')"
[ "$(vgit symbolic-ref -q --short HEAD || true)" = "$SERIES_BRANCH" ] \
  || log "warning: HEAD is not on $SERIES_BRANCH; refreshing from branch $SERIES_BRANCH anyway"
vgit merge-base --is-ancestor "$BASE_REF" "$SERIES_BRANCH" \
  || die "$SERIES_BRANCH is not based on $BASE_REF; rebase it onto $BASE_REF"
[ -z "$(vgit rev-list --merges "$BASE_REF..$SERIES_BRANCH")" ] \
  || die "$BASE_REF..$SERIES_BRANCH contains merge commits; a patch queue needs a linear history"

tmp=$(mktemp -d)
at_exit 'rm -rf "$tmp"'
# Pinned output: no commit ids, no version signature, [PATCH] without n/m, full blob ids (abbreviated
# ones grow with the repository), no rename detection (plain diffs any patch tool applies), and the
# user's diff/format configuration overridden.
vgit -c diff.noprefix=false -c diff.mnemonicPrefix=false -c diff.statGraphWidth=-1 \
  -c diff.suppressBlankEmpty=false -c format.headers= -c format.mboxrd=false \
  -c i18n.logOutputEncoding=UTF-8 \
  format-patch -q -o "$tmp" --zero-commit --no-signature -N --full-index --no-renames --binary \
  --subject-prefix=PATCH --suffix=.patch --filename-max-length=64 --start-number=1 \
  --no-cover-letter --no-thread --no-to --no-cc --no-add-header --no-attach --no-base --no-notes \
  --no-from --no-force-in-body-from --encode-email-headers --src-prefix=a/ --dst-prefix=b/ \
  -U3 --inter-hunk-context=0 --diff-algorithm=myers --indent-heuristic --submodule=short \
  -O/dev/null --no-relative --stat=72 \
  "$BASE_REF..$SERIES_BRANCH"

mapfile -t names < <(cd "$tmp" && find . -maxdepth 1 -name '*.patch' -printf '%f\n' | LC_ALL=C sort)
mkdir -p "$PATCH_DIR"
for old in "$PATCH_DIR"/*.patch; do
  [ -e "$old" ] || continue
  [ -e "$tmp/$(basename "$old")" ] || { rm -f "$old"; log "removed stale $(basename "$old")"; }
done
for name in "${names[@]}"; do
  if ! cmp -s "$tmp/$name" "$PATCH_DIR/$name"; then
    cp "$tmp/$name" "$PATCH_DIR/$name"
    log "wrote $name"
  fi
done
if [ "${#names[@]}" -eq 0 ]; then : > "$PATCH_DIR/series"; else printf '%s\n' "${names[@]}" > "$PATCH_DIR/series"; fi
log "${#names[@]} patch(es) in $PATCH_DIR/series"
