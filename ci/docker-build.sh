#!/usr/bin/env bash
# Build one serving image (docker/README.md): with `docker build` where a docker engine answers, else
# with buildah (chroot isolation: no daemon, no runc; installed by ci/image-tools.sh where missing).
#   ci/docker-build.sh cpu        docker/Dockerfile.cpu     -> vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-cpu
#   ci/docker-build.sh cuda       docker/Dockerfile.cuda    -> vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-cuda
#   ci/docker-build.sh official   docker/Dockerfile         -> vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>
#   ci/docker-build.sh source     docker/Dockerfile.source  -> vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>-source
# cpu and cuda start from the Debian base made here (ci/docker-base.sh, first if needed); official
# and source from Docker Hub images (vllm/vllm-openai, nvidia/cuda), for hosts that reach it.
# Every build gets VLLM_VERSION and LOCAL_VERSION from patches/base.env (the Dockerfiles have no
# defaults for them). Settings (environment; make passes its variables of the same names):
#   DOCKER_IMAGE        the tag's stem (vllm-sef:$VLLM_VERSION-$LOCAL_VERSION; the variant's suffix
#                       is appended)
#   DOCKER_BUILD_ARGS   more build arguments, shell-split (e.g. --build-arg BASE_IMAGE=...)
#   SEF_IMAGE_ENGINE    docker|buildah|auto (auto); DOCKER (docker), BUILDAH_STORAGE_DRIVER (vfs)
#   DRY_RUN=1           print the build command instead of running it (no tools needed)
# With buildah, the build also gets what the host has and the build cannot know: its CA bundle
# (mounted over the image's during the build only, for hosts behind a TLS-inspecting proxy), its pip
# settings (index-url, extra-index-url, find-links; local directories among them mounted read-only
# at the same paths; TORCH_INDEX_URL added), PYPI_SIMPLE, and its download cache as make's
# (SEF_CACHE_DIR: sha256-verified files, so sharing them is safe). None of it stays in the image.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=image-lib.sh
. "$ROOT/ci/image-lib.sh"

variant=${1:-}
case "$variant" in
  cpu) file=docker/Dockerfile.cpu tag=$DOCKER_IMAGE-cpu debian=1 ;;
  cuda) file=docker/Dockerfile.cuda tag=$DOCKER_IMAGE-cuda debian=1 ;;
  official) file=docker/Dockerfile tag=$DOCKER_IMAGE debian=0 ;;
  source) file=docker/Dockerfile.source tag=$DOCKER_IMAGE-source debian=0 ;;
  *) die "usage: $0 cpu|cuda|official|source" ;;
esac
dry=${DRY_RUN:-0}
eng=$(engine)

args=(-f "$file" -t "$tag" --build-arg "VLLM_VERSION=$VLLM_VERSION" --build-arg "LOCAL_VERSION=$LOCAL_VERSION")
[ "$debian" = 0 ] || args+=(--build-arg "BASE_IMAGE=$SEF_BASE_IMAGE")

# The effective value of a pip option on this host: PIP_<NAME>, else pip's configuration files.
host_pip() {
  local name=$1 var
  var=PIP_$(tr 'a-z-' 'A-Z_' <<< "$name")
  if [ -n "${!var:-}" ]; then printf '%s\n' "${!var}"; return; fi
  "$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^\(global\|install\)\.$name='\(.*\)'\$/\2/p" | tail -n 1
}

if [ "$eng" = buildah ]; then
  # HEALTHCHECK exists in docker's image format only (OCI's has no health check).
  cmd=(buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" bud --isolation chroot --format docker)
  ca=${SEF_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
  [ ! -f "$ca" ] || cmd+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
  declare -A mounted=()
  mount_local() {
    local path=${1#file://}
    path=${path%/simple}  # an index's files may lie beside its simple/ directory
    if [ -e "$path" ] && [ -z "${mounted[$path]:-}" ]; then
      cmd+=(-v "$path:$path:ro")
      mounted[$path]=1
    fi
  }
  for opt in index-url extra-index-url find-links; do
    value=$(host_pip "$opt")
    [ "$opt" != extra-index-url ] || [ -z "$TORCH_INDEX_URL" ] || value="${value:+$value }$TORCH_INDEX_URL"
    [ -n "$value" ] || continue
    for word in $value; do mount_local "$word"; done
    args+=(--build-arg "PIP_$(tr 'a-z-' 'A-Z_' <<< "$opt")=$value")
  done
  args+=(--build-arg "PYPI_SIMPLE=$PYPI_SIMPLE")
  mkdir -p "$CACHE_DIR"
  cmd+=(-v "$CACHE_DIR:/var/cache/vllm-sef")
  args+=(--build-arg SEF_CACHE_DIR=/var/cache/vllm-sef)
else
  cmd=("$DOCKER" build)
fi
read -r -a extra <<< "${DOCKER_BUILD_ARGS:-}"
full=("${cmd[@]}" "${args[@]}" "${extra[@]}" "$ROOT")

if [ "$dry" = 1 ]; then
  printf '%q ' "${full[@]}"; echo
  exit 0
fi
[ "$eng" = docker ] || "$ROOT/ci/image-tools.sh"
[ "$debian" = 0 ] || "$ROOT/ci/docker-base.sh"
old_id=$(image_id "$tag")
log "building $tag from $file with $eng"
(cd "$ROOT" && "${full[@]}") || die "building $tag failed"
phase_done "$tag ($eng)"
# The image this one replaces, now untagged, is not kept (it is several GB).
new_id=$(image_id "$tag")
[ -z "$old_id" ] || [ "$old_id" = "$new_id" ] || remove_image "$old_id"
log "$tag: $(image_size "$tag")"
