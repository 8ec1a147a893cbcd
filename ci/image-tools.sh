#!/usr/bin/env bash
# Make sure the tools for building images without a docker engine are installed: buildah (builds and
# runs images with chroot isolation; no daemon) and mmdebstrap (the Debian base root filesystem).
#   ci/image-tools.sh        installs what is missing with apt-get (as root), else names it and fails
# Both come from Debian's archive (Debian 12: buildah 1.28, mmdebstrap 1.3); nothing from Docker Hub.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) or use a docker engine"
  fi
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  phase_done "apt-get install ${missing[*]}"
fi
log "buildah $(buildah --version | awk '{ print $3 }'), mmdebstrap $(mmdebstrap --version | awk '{ print $2 }')"
