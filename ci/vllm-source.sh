#!/usr/bin/env bash
# Make vllm/ a git repository at the pinned base, tagged sef-base, checked out on a clean work tree.
#   ci/vllm-source.sh
# With network: the upstream commit. For this repository's vllm/ that is the submodule: its gitlink is
# the base's $VLLM_GIT_COMMIT_FULL (`git submodule update --init vllm`); for another VLLM_DIR, or a base
# without a recorded full commit, a shallow clone of tag $VLLM_GIT_TAG (its commit must be
# $VLLM_GIT_COMMIT_FULL, or start with $VLLM_GIT_COMMIT). A vllm/ already checked out at the gitlink
# (`git clone --recurse-submodules`) is taken as it is.
# Without (GitHub unreachable, or SEF_OFFLINE=1): the registry's sdist of the same release
# (sha256-verified), imported as one base commit with a fixed author and date, so the base commit id is
# the same on every machine. Every file the sdist shares with the upstream commit is the same
# (ci/upstream_tree.py, tests/test_upstream.py); the sdist adds setuptools' generated files.
# When vllm/ is this repository's submodule path, its gitlink is marked skip-worktree, so that the
# sdist import or the series' commits there never show in `git status` nor get staged by `git add`.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

full=${VLLM_GIT_COMMIT_FULL:-}
# The submodule: vllm/ of this repository, whose gitlink is the base's full commit.
submodule=0
link=$(gitlink "$REPO_DIR")
if [ "$VLLM_DIR" = "$REPO_DIR/vllm" ] && [ -n "$link" ]; then
  [ "$link" = "$full" ] || [ "$BASE_FILE" != "$REPO_DIR/patches/base.env" ] \
    || die "the gitlink vllm is $link but patches/base.env says VLLM_GIT_COMMIT_FULL=$full: make them agree (ci/pin-base.sh)"
  [ "$link" = "$full" ] && submodule=1
fi
protect_gitlink() {
  [ -n "$link" ] && [ "$VLLM_DIR" = "$REPO_DIR/vllm" ] || return 0
  [[ "$(git -C "$REPO_DIR" ls-files -v -- vllm)" == "S "* ]] \
    || git -C "$REPO_DIR" update-index --skip-worktree -- vllm
}

# Is the commit the base of this base.env (the upstream commit, or the import of its sdist)?
is_base() {
  local c=$1
  [ -n "$full" ] && [ "$c" = "$full" ] && return 0
  [[ -n "$VLLM_GIT_COMMIT" && "$c" == "$VLLM_GIT_COMMIT"* ]] && return 0
  [[ "$(vgit log -1 --format=%B "$c")" == *"sdist, sha256 $VLLM_SDIST_SHA256;"* ]]
}

if [ -d "$VLLM_DIR/.git" ] || [ -f "$VLLM_DIR/.git" ]; then
  base=$(vgit rev-parse -q --verify "$BASE_REF^{commit}" || true)
  if [ -n "$base" ] && is_base "$base"; then
    protect_gitlink
    exit 0
  fi
  # A clean checkout of the full commit (a clone with --recurse-submodules, or `git submodule update`
  # after the gitlink moved): it becomes the base.
  if [ -n "$full" ] && [ "$(vgit rev-parse -q --verify HEAD || true)" = "$full" ] \
      && [ -z "$(vgit status --porcelain --untracked-files=all)" ]; then
    vgit tag -f "$BASE_REF" HEAD >/dev/null
    protect_gitlink
    log "vllm/ at $BASE_REF = $full (the checked-out upstream commit)"
    exit 0
  fi
  [ -z "$base" ] || die "$VLLM_DIR holds another base ($BASE_REF = $base, not vLLM $VLLM_VERSION); move it away and rerun"
  die "$VLLM_DIR is a git repository without the $BASE_REF tag; move it away and rerun"
fi
if [ -e "$VLLM_DIR" ] && [ -n "$(ls -A "$VLLM_DIR" 2>/dev/null)" ]; then
  die "$VLLM_DIR exists and is not a git repository; move it away and rerun"
fi

from_upstream() {
  [ "${SEF_OFFLINE:-0}" = 1 ] && return 1
  timeout 20 git ls-remote --exit-code "$VLLM_GIT_URL" "refs/tags/$VLLM_GIT_TAG" >/dev/null 2>&1 || return 1
  if [ "$submodule" = 1 ]; then
    log "checking out the submodule vllm at $full"
    git -C "$REPO_DIR" submodule update --init -- vllm || return 1
  else
    log "cloning $VLLM_GIT_URL at $VLLM_GIT_TAG"
    rm -rf "$VLLM_DIR"
    git clone -q --depth 1 --branch "$VLLM_GIT_TAG" "$VLLM_GIT_URL" "$VLLM_DIR" || return 1
  fi
  local head; head=$(vgit rev-parse HEAD)
  case "$head" in
    "${full:-$VLLM_GIT_COMMIT}"*) ;;
    *) die "upstream $VLLM_GIT_TAG is $head, expected ${full:-$VLLM_GIT_COMMIT}" ;;
  esac
  vgit tag -f "$BASE_REF" HEAD >/dev/null
}

from_sdist() {
  local sdist; sdist=$("$ROOT/ci/fetch.sh" sdist)
  log "GitHub unreachable: importing $VLLM_SDIST as the base commit"
  rm -rf "$VLLM_DIR"; mkdir -p "$VLLM_DIR"
  tar -xzf "$sdist" -C "$VLLM_DIR" --strip-components=1
  vgit init -q -b main
  vgit add -A -f
  GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
    vgit commit -q --no-verify -m "vLLM $VLLM_VERSION (sdist $VLLM_SDIST)" \
    -m "Imported from the registry sdist, sha256 $VLLM_SDIST_SHA256; upstream tag $VLLM_GIT_TAG, commit $VLLM_GIT_COMMIT."
  vgit tag -f "$BASE_REF" HEAD >/dev/null
}

from_upstream || from_sdist
protect_gitlink
log "vllm/ at $BASE_REF = $(vgit rev-parse --short HEAD)"
