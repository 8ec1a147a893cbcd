#!/usr/bin/env bash
# Pin a base to its full upstream commit, checked against the sdist, and stage it for a commit:
#   ci/pin-base.sh [UPSTREAM]     UPSTREAM: a git URL or repository with tag $VLLM_GIT_TAG (default
#                                 $VLLM_GIT_URL); BASE_FILE picks the base (default patches/base.env)
# The tag's commit must start with $VLLM_GIT_COMMIT (the sdist's abbreviated id), and every file the
# sdist shares with the commit's tree must be byte-identical (ci/upstream_tree.py compare: it prints
# every difference, and the files only one side has). Then it writes
#   - VLLM_GIT_COMMIT_FULL in BASE_FILE,
#   - $UPSTREAM_MANIFEST_DIR/<version>.txt (default tests/data/upstream/): the manifest with which the
#     tests check the sdist import against that commit offline,
#   - for patches/base.env, the gitlink vllm of this repository (REPO_DIR) at the commit,
# and stages them (git add / update-index) in REPO_DIR; nothing is committed. On any failure nothing
# is written.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

upstream=${1:-$VLLM_GIT_URL}
[ -d "$upstream" ] && upstream=$(realpath "$upstream")
base_file=$(realpath -m "$BASE_FILE")
manifest=$UPSTREAM_MANIFEST_DIR/$VLLM_VERSION.txt
work=$(mktemp -d)
at_exit 'rm -rf "$work"'

log "fetching tag $VLLM_GIT_TAG from $upstream"
git init -q --bare "$work/upstream"
git -C "$work/upstream" fetch -q --depth 1 "$upstream" "+refs/tags/$VLLM_GIT_TAG:refs/tags/$VLLM_GIT_TAG" \
  || die "cannot fetch tag $VLLM_GIT_TAG from $upstream"
commit=$(git -C "$work/upstream" rev-parse "refs/tags/$VLLM_GIT_TAG^{commit}")
case "$commit" in
  "$VLLM_GIT_COMMIT"*) ;;
  *) die "tag $VLLM_GIT_TAG of $upstream is commit $commit, but the sdist says $VLLM_GIT_COMMIT" ;;
esac
recorded=${VLLM_GIT_COMMIT_FULL:-}
[ -z "$recorded" ] || [ "$recorded" = "$commit" ] \
  || die "$base_file already records VLLM_GIT_COMMIT_FULL=$recorded, not $commit"

# The sdist as ci/vllm-source.sh imports it offline (not build/bases/: a base made online is a clone).
SEF_OFFLINE=1 VLLM_DIR=$work/sdist "$ROOT/ci/vllm-source.sh"
"$PYTHON" "$ROOT/ci/upstream_tree.py" compare "$work/sdist" "$BASE_REF" "$work/upstream" "$commit" \
  "$work/manifest.txt" || die "the sdist $VLLM_SDIST is not upstream $commit (differences above)"

mkdir -p "$UPSTREAM_MANIFEST_DIR"
mv "$work/manifest.txt" "$manifest"
set_full_commit "$base_file" "$commit"
staged=()
for f in "$base_file" "$manifest"; do
  case "$f" in "$REPO_DIR"/*) git -C "$REPO_DIR" add -- "${f#"$REPO_DIR"/}"; staged+=("${f#"$REPO_DIR"/}") ;; esac
done
if [ "$base_file" = "$REPO_DIR/patches/base.env" ]; then
  grep -q '^\[submodule "vllm"\]' "$REPO_DIR/.gitmodules" 2>/dev/null \
    || die "$REPO_DIR/.gitmodules does not declare the submodule vllm"
  git -C "$REPO_DIR" update-index --add --cacheinfo "160000,$commit,vllm"
  # A vllm/ made from the sdist (or on branch sef) must not move the gitlink: see ci/vllm-source.sh.
  if [ -e "$REPO_DIR/vllm/.git" ]; then git -C "$REPO_DIR" update-index --skip-worktree -- vllm; fi
  mkdir -p "$REPO_DIR/vllm"  # what a clone has where the submodule is not checked out
  staged+=("vllm (gitlink)")
fi
log "vLLM $VLLM_VERSION is upstream $commit; staged: ${staged[*]:-nothing (outside $REPO_DIR)}"
