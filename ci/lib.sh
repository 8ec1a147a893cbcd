# Shared by the scripts in ci/: paths, the pinned base, and small helpers. Source it, don't run it.
# shellcheck shell=bash disable=SC2034  # (variables are used by the scripts that source it)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# BASE_FILE may point at another base (the rebase job does); default is the pinned one.
BASE_FILE=${BASE_FILE:-$ROOT/patches/base.env}
# shellcheck source=../patches/base.env
. "$BASE_FILE"
# Absolute, so that `git -C` and `cd` inside the scripts don't change what they mean.
VLLM_DIR=$(realpath -m "${VLLM_DIR:-$ROOT/vllm}")
PATCH_DIR=$(realpath -m "${PATCH_DIR:-$ROOT/patches}")
DIST_DIR=$(realpath -m "${DIST_DIR:-$ROOT/dist}")
# Scratch space of the scripts (unpacked wheels, throw-away clones) and the tools venv.
BUILD_DIR=$(realpath -m "${BUILD_DIR:-$ROOT/build}")
TOOLS_VENV=$(realpath -m "${TOOLS_VENV:-$BUILD_DIR/tools-venv}")
# The test environment: the patched CPU wheel and the test dependencies.
VENV_DIR=$(realpath -m "${VENV_DIR:-$ROOT/.venv}")
# Optional extra index for torch==2.13.0+cpu where it is not on the default index
# (e.g. https://download.pytorch.org/whl/cpu). Empty: pip's own configuration only.
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
# Downloads are cached across runs (and clones) where the machine keeps $HOME.
CACHE_DIR=${SEF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-sef}
PYPI_SIMPLE=${PYPI_SIMPLE:-https://pypi.org/simple}
# The tag every script uses for the base commit inside vllm/ (a clone or the sdist import).
BASE_REF=sef-base
# Branch that holds the series as commits on top of BASE_REF.
SERIES_BRANCH=sef
# This repository: its gitlink vllm (the submodule) pins patches/' base, VLLM_GIT_COMMIT_FULL.
REPO_DIR=$(realpath -m "${REPO_DIR:-$ROOT}")
# Where ci/pin-base.sh writes, and the tests read, the manifest of each pinned base's upstream tree.
UPSTREAM_MANIFEST_DIR=$(realpath -m "${UPSTREAM_MANIFEST_DIR:-$REPO_DIR/tests/data/upstream}")
PYTHON=${PYTHON:-python3}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Commands run when the script exits, however it exits (temp dirs, git worktree state).
_exit_cmds=()
at_exit() { _exit_cmds+=("$1"); }
_run_exit_cmds() {
  local cmd
  for cmd in "${_exit_cmds[@]}"; do eval "$cmd" || true; done
}
trap _run_exit_cmds EXIT

# Seconds since the last call (or the script's start), for the per-phase timings.
_phase_t0=$SECONDS
phase_done() {
  log "$* took $((SECONDS - _phase_t0))s"
  _phase_t0=$SECONDS
}

# stderr filter for pip: drops the warnings of a pip configuration that names local index folders
# which do not exist (one per package looked up), keeps everything else.
pip_noise_filter() {
  grep -v "^WARNING: Location 'file:.*' is ignored: it is neither a file nor a directory\.$" || true
}

# A vLLM release version (digits and dots, optionally a pre/post-release suffix), not a git ref.
is_release_version() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?$ ]]; }

# sha256 of a file, hex.
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# The official wheel of a flavour (cuda|cpu), and the name of our patched build of it:
# the same name with the version 0.32.0 replaced by 0.32.0+$LOCAL_VERSION.
official_wheel() {
  case "$1" in
    cuda) printf '%s\n' "$VLLM_CUDA_WHEEL" ;;
    cpu) printf '%s\n' "$VLLM_CPU_WHEEL" ;;
    *) die "unknown wheel flavour '$1' (cuda|cpu)" ;;
  esac
}
official_wheel_sha256() {
  case "$1" in
    cuda) printf '%s\n' "$VLLM_CUDA_WHEEL_SHA256" ;;
    cpu) printf '%s\n' "$VLLM_CPU_WHEEL_SHA256" ;;
    *) die "unknown wheel flavour '$1' (cuda|cpu)" ;;
  esac
}
patched_wheel() {
  local official; official=$(official_wheel "$1")
  printf '%s\n' "${official/-$VLLM_VERSION-/-$VLLM_VERSION+$LOCAL_VERSION-}"
}

# The patches of the series, in order, as paths.
series_patches() {
  local name
  while IFS= read -r name || [ -n "$name" ]; do
    case "$name" in ''|'#'*) continue ;; esac
    printf '%s\n' "$PATCH_DIR/$name"
  done < "$PATCH_DIR/series"
}

# The paths a patch touches, one a line (from /, so that no repository around changes git apply's view).
patch_files() { (cd / && git apply --numstat "$1" | cut -f3-); }

# git inside vllm/ with a fixed identity, so commits made by am are reproducible.
vgit() {
  git -C "$VLLM_DIR" -c user.name="vllm-sef" -c user.email="vllm-sef@users.noreply.github.com" \
    -c commit.gpgsign=false -c core.autocrlf=false "$@"
}

# The commit the gitlink vllm of a repository's index records; nothing if none (or not a repository).
gitlink() {
  { git -C "$1" ls-files --stage -- vllm 2>/dev/null || true; } | sed -n 's/^160000 \([0-9a-f]\{40\}\) 0\tvllm$/\1/p'
}

# Record the full upstream commit in a base.env, right after VLLM_GIT_COMMIT (the same two lines
# wherever it is written: ci/pin-base.sh, ci/rebase.sh); an empty commit records that it is unknown.
set_full_commit() {
  local file=$1 commit=$2 tag comment
  tag=$(sed -n 's/^VLLM_GIT_TAG=//p' "$file")
  if [ -n "$commit" ]; then
    comment="# Full upstream commit of $tag (the gitlink vllm when this base is patches/)."
  else
    comment="# Full upstream commit of $tag: not recorded yet (ci/pin-base.sh records it where upstream is reachable)."
  fi
  awk -v comment="$comment" -v commit="$commit" '
    /^# Full upstream commit of / || /^VLLM_GIT_COMMIT_FULL=/ { next }
    { print }
    /^VLLM_GIT_COMMIT=/ { print comment; print "VLLM_GIT_COMMIT_FULL=" commit }
  ' "$file" > "$file.new"
  mv "$file.new" "$file"
}
