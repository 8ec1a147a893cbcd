#!/usr/bin/env bash
# Make vllm/ a git repository at the pinned base, tagged sef-base, checked out on a clean work tree.
#   ci/vllm-source.sh
# With network: the upstream submodule at tag $VLLM_GIT_TAG (its commit must match $VLLM_GIT_COMMIT).
# Without (GitHub unreachable): the registry's sdist of the same release (sha256-verified), imported as
# one base commit with a fixed author and date, so the base commit id is the same on every machine.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ -d "$VLLM_DIR/.git" ] || [ -f "$VLLM_DIR/.git" ]; then
  if vgit rev-parse -q --verify "$BASE_REF^{commit}" >/dev/null; then
    exit 0
  fi
  die "$VLLM_DIR is a git repository without the $BASE_REF tag; move it away and rerun"
fi
if [ -e "$VLLM_DIR" ] && [ -n "$(ls -A "$VLLM_DIR" 2>/dev/null)" ]; then
  die "$VLLM_DIR exists and is not a git repository; move it away and rerun"
fi

from_upstream() {
  [ "${SEF_OFFLINE:-0}" = 1 ] && return 1
  timeout 20 git ls-remote --exit-code "$VLLM_GIT_URL" "refs/tags/$VLLM_GIT_TAG" >/dev/null 2>&1 || return 1
  log "cloning $VLLM_GIT_URL at $VLLM_GIT_TAG"
  rm -rf "$VLLM_DIR"
  git clone -q --depth 1 --branch "$VLLM_GIT_TAG" "$VLLM_GIT_URL" "$VLLM_DIR" || return 1
  local head; head=$(vgit rev-parse HEAD)
  case "$head" in
    "$VLLM_GIT_COMMIT"*) ;;
    *) die "upstream $VLLM_GIT_TAG is $head, expected $VLLM_GIT_COMMIT" ;;
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
log "vllm/ at $BASE_REF = $(vgit rev-parse --short HEAD)"
