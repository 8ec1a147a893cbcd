# Shared by the image scripts (ci/docker-*.sh): which engine builds and runs the images, and the names.
# Source it after lib.sh, don't run it.
# shellcheck shell=bash disable=SC2034  # (variables are used by the scripts that source it)

# The engine: `docker` where a docker engine answers (`docker info`), else buildah with chroot
# isolation (no daemon, no runc/crun; see docker/README.md). SEF_IMAGE_ENGINE=docker|buildah forces one.
DOCKER=${DOCKER:-docker}
SEF_IMAGE_ENGINE=${SEF_IMAGE_ENGINE:-auto}
# buildah's storage driver: vfs (plain directory copies) works everywhere, overlay is much faster where
# the kernel lets root mount overlayfs (it does on the Debian 12 machines CI runs on).
BUILDAH_STORAGE_DRIVER=${BUILDAH_STORAGE_DRIVER:-vfs}
# The Debian base made here by ci/docker-base.sh (mmdebstrap from Debian's archive; no Docker Hub).
SEF_BASE_IMAGE=${SEF_BASE_IMAGE:-localhost/vllm-sef-debian:bookworm}
# The images, by variant: vllm-sef:<VLLM_VERSION>-<LOCAL_VERSION>[-cpu|-cuda|-source]; DOCKER_IMAGE is the stem.
DOCKER_IMAGE=${DOCKER_IMAGE:-vllm-sef:$VLLM_VERSION-$LOCAL_VERSION}

engine() {
  case "$SEF_IMAGE_ENGINE" in
    docker|buildah) printf '%s\n' "$SEF_IMAGE_ENGINE" ;;
    auto)
      if command -v "$DOCKER" >/dev/null && "$DOCKER" info >/dev/null 2>&1; then echo docker; else echo buildah; fi ;;
    *) die "SEF_IMAGE_ENGINE=$SEF_IMAGE_ENGINE: docker, buildah or auto" ;;
  esac
}

bh() { buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" "$@"; }

# A label of a local image, empty if the image or the label is missing.
image_label() {
  local image=$1 key=$2
  if [ "$(engine)" = docker ]; then
    "$DOCKER" image inspect --format "{{ index .Config.Labels \"$key\" }}" "$image" 2>/dev/null || true
  else
    bh inspect --type image --format "{{ index .OCIv1.Config.Labels \"$key\" }}" "$image" 2>/dev/null || true
  fi
}

# Size of a local image as the engine counts it (e.g. "3.4 GB"), empty if it is missing.
image_size() {
  if [ "$(engine)" = docker ]; then
    "$DOCKER" image inspect --format '{{ .Size }}' "$1" 2>/dev/null | numfmt --to=si --suffix=B || true
  else
    bh images --format '{{ .Size }}' "$1" 2>/dev/null || true
  fi
}

# The ID of a local image, empty if it is missing.
image_id() {
  if [ "$(engine)" = docker ]; then
    "$DOCKER" image inspect --format '{{ .Id }}' "$1" 2>/dev/null || true
  else
    bh inspect --type image --format '{{ .FromImageID }}' "$1" 2>/dev/null || true
  fi
}

# Remove a local image by ID where nothing else uses or names it (errors ignored).
remove_image() {
  if [ "$(engine)" = docker ]; then
    "$DOCKER" image rm "$1" >/dev/null 2>&1 || true
  else
    bh rmi "$1" >/dev/null 2>&1 || true
  fi
}
