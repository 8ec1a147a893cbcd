#!/usr/bin/env bash
# Promote a port to the pinned base, the gitlink vllm with it (README, "Bases and rebasing"):
#   ci/promote.sh VERSION        (make promote TO=VERSION)
# In this repository (REPO_DIR): tags HEAD sef-<old version> (the last state of the old base), makes
# ports/v<VERSION>/ the new patches/ (git rm + git mv), and sets the gitlink vllm to the port's
# VLLM_GIT_COMMIT_FULL. All of it is staged, nothing committed: update the version in README.md and
# the tests' expectations, then commit. vllm/ still holds the old base: move it away, then make apply.
# Refuses a port whose full upstream commit is not recorded with its tree manifest (ci/pin-base.sh with
# BASE_FILE=ports/v<VERSION>/base.env, where upstream is reachable), and uncommitted changes in patches/
# or ports/.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

version=${1:-}
[ -n "$version" ] || die "usage: $0 VERSION (a port: ports/v<VERSION>/)"
rgit() { git -C "$REPO_DIR" "$@"; }
rgit rev-parse -q --verify HEAD >/dev/null || die "$REPO_DIR is not a git repository with a commit"
port_rel=ports/v$version
port=$REPO_DIR/$port_rel
[ -f "$port/series" ] && [ -f "$port/base.env" ] || die "$port_rel is not a port (series, base.env)"
env_value() { sed -n "s/^$1=//p" "$2"; }
full=$(env_value VLLM_GIT_COMMIT_FULL "$port/base.env")
short=$(env_value VLLM_GIT_COMMIT "$port/base.env")
[ -n "$full" ] || die "$port_rel/base.env records no full upstream commit (VLLM_GIT_COMMIT_FULL), so the gitlink vllm cannot follow it: run BASE_FILE=$port_rel/base.env ci/pin-base.sh where upstream is reachable, commit, and rerun"
[[ "$full" =~ ^[0-9a-f]{40}$ ]] && [[ "$full" == "$short"* ]] \
  || die "$port_rel/base.env: VLLM_GIT_COMMIT_FULL=$full is not a full commit id starting with VLLM_GIT_COMMIT=$short"
manifest=$UPSTREAM_MANIFEST_DIR/$version.txt
grep -qx "commit $full" "$manifest" 2>/dev/null \
  || die "no manifest of upstream $full ($manifest; ci/pin-base.sh writes it)"
[ -z "$(rgit status --porcelain --untracked-files=all -- patches ports)" ] \
  || die "patches/ or ports/ have uncommitted changes: commit or remove them first"

old_version=$(env_value VLLM_VERSION "$REPO_DIR/patches/base.env")
tag=sef-$old_version
head=$(rgit rev-parse HEAD)
if old=$(rgit rev-parse -q --verify "refs/tags/$tag^{commit}"); then
  [ "$old" = "$head" ] || die "tag $tag exists at $old, not at HEAD ($head)"
else
  rgit tag "$tag" HEAD
fi
rgit rm -q -r -- patches
rgit mv -- "$port_rel" patches
rgit update-index --add --cacheinfo "160000,$full,vllm"
mkdir -p "$REPO_DIR/vllm"
# A vllm/ made from the sdist (or on branch sef) must not move the gitlink: see ci/vllm-source.sh.
if [ -e "$REPO_DIR/vllm/.git" ]; then rgit update-index --skip-worktree -- vllm; fi
log "tagged $tag; staged: patches/ = $port_rel (vLLM $version), gitlink vllm = $full"
log "next: the version in README.md and the tests' expectations, then git commit; move vllm/ (vLLM $old_version) away and make apply"
