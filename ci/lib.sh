# Shared by the scripts in ci/: paths, the pinned base, and small helpers. Source it, don't run it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# BASE_FILE may point at another base (the rebase job does); default is the pinned one.
BASE_FILE=${BASE_FILE:-$ROOT/patches/base.env}
# shellcheck source=../patches/base.env
. "$BASE_FILE"
VLLM_DIR=${VLLM_DIR:-$ROOT/vllm}
PATCH_DIR=${PATCH_DIR:-$ROOT/patches}
DIST_DIR=${DIST_DIR:-$ROOT/dist}
# Downloads are cached across runs (and clones) where the machine keeps $HOME.
CACHE_DIR=${SEF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-sef}
PYPI_SIMPLE=${PYPI_SIMPLE:-https://pypi.org/simple}
# The tag every script uses for the base commit inside vllm/ (a clone or the sdist import).
BASE_REF=sef-base
# Branch that holds the series as commits on top of BASE_REF.
SERIES_BRANCH=sef
PYTHON=${PYTHON:-python3}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# The patches of the series, in order, as paths.
series_patches() {
  local name
  while IFS= read -r name || [ -n "$name" ]; do
    case "$name" in ''|'#'*) continue ;; esac
    printf '%s\n' "$PATCH_DIR/$name"
  done < "$PATCH_DIR/series"
}

# git inside vllm/ with a fixed identity, so commits made by am are reproducible.
vgit() {
  git -C "$VLLM_DIR" -c user.name="vllm-sef" -c user.email="vllm-sef@users.noreply.github.com" \
    -c commit.gpgsign=false -c core.autocrlf=false "$@"
}
