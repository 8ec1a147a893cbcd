#!/usr/bin/env bash
# A cached git repository of a base (made by ci/vllm-source.sh), for scripts that need several bases.
#   ci/base-repo.sh BASE_ENV        prints the repository's path (tag sef-base; never modified later)
# Kept under $SEF_BASES_DIR (default build/bases/), one per base: <version>-<sha256 prefix of the sdist,
# or the upstream commit>. Made in a temporary directory and moved in place, so an interrupted run leaves
# nothing half-made. Callers clone it (`git clone --shared`) instead of changing it.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
env_file=$(realpath -m "${1:-}")
[ -f "$env_file" ] || die "usage: $0 BASE_ENV (a base.env file)"
# shellcheck source=../patches/base.env
. "$env_file"
bases=$(realpath -m "${SEF_BASES_DIR:-$BUILD_DIR/bases}")
key=${VLLM_SDIST_SHA256:-$VLLM_GIT_COMMIT}
repo=$bases/$VLLM_VERSION-${key:0:12}
if git -C "$repo" rev-parse -q --verify "$BASE_REF^{commit}" >/dev/null 2>&1; then
  echo "$repo"; exit 0
fi
mkdir -p "$bases"
tmp=$(mktemp -d "$bases/.new.XXXXXX")
at_exit 'rm -rf "$tmp"'
BASE_FILE=$env_file VLLM_DIR=$tmp/vllm "$ROOT/ci/vllm-source.sh" >&2
rm -rf "$repo"
mv "$tmp/vllm" "$repo"
echo "$repo"
