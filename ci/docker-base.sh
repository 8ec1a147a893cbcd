#!/usr/bin/env bash
# The Debian base of the images built from registries this project reaches (docker/Dockerfile.cpu,
# docker/Dockerfile.cuda): Debian 12 (bookworm, with its updates and security suites) from Debian's
# archive, made by mmdebstrap and imported into the engine as $SEF_BASE_IMAGE
# (localhost/vllm-sef-debian:bookworm). Docker Hub is never asked.
#   ci/docker-base.sh            makes it unless the engine has it from the same recipe (label
#                                ai.vllm-sef.base.recipe); SEF_BASE_REFRESH=1 makes it anew (today's
#                                Debian packages: security updates)
#   SEF_DEBIAN_MIRROR            the archive (default http://deb.debian.org/debian; apt verifies
#                                the packages with Debian's keys, so http is fine)
# What it holds: Debian's python3 (3.11) with venv and headers, CA certificates, curl (the health
# check), libnuma1 (vLLM's CPU ops), gcc/g++ and libc headers (run-time compilation: Triton's
# launcher stubs, torch.compile's C++ on CPU). dpkg keeps no manual pages or docs (copyrights stay)
# and uses unsafe I/O (no fsync: a build step's files are committed as a layer anyway), as Docker's
# own Debian images do. ~50 s: mmdebstrap in RAM (/dev/shm) where there is room, then the import.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=image-lib.sh
. "$ROOT/ci/image-lib.sh"

mirror=${SEF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${SEF_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
packages=(python3 python3-venv python3-dev ca-certificates curl libnuma1 gcc g++ libc6-dev)
dpkg_opts=(
  force-unsafe-io
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/info/*'
)
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $security $suite-security main"
)
recipe=$(printf '%s\n' "$suite" "${packages[@]}" "${dpkg_opts[@]}" "${sources[@]}" | sha256sum | cut -c1-16)
eng=$(engine)

if [ "${SEF_BASE_REFRESH:-0}" != 1 ] && [ "$(image_label "$SEF_BASE_IMAGE" ai.vllm-sef.base.recipe)" = "$recipe" ]; then
  log "$SEF_BASE_IMAGE is there (recipe $recipe, made $(image_label "$SEF_BASE_IMAGE" org.opencontainers.image.created))"
  exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (ci/image-tools.sh installs it)"

# Scratch: RAM when it has room (dpkg in a tmpfs is fast), else build/.
scratch_parent=$BUILD_DIR
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((3 * 1024 * 1024)) ]; then
  scratch_parent=/dev/shm
fi
mkdir -p "$scratch_parent"
scratch=$(mktemp -d "$scratch_parent/sef-debian.XXXXXX")
at_exit 'rm -rf "$scratch"'
mode=root
[ "$(id -u)" = 0 ] || mode=unshare
log "mmdebstrap $suite (${packages[*]}) from $mirror, mode $mode, in $scratch"
mm_args=(--mode="$mode" --variant=apt --include="$(IFS=,; echo "${packages[*]}")" --format=tar)
for opt in "${dpkg_opts[@]}"; do mm_args+=(--dpkgopt="$opt"); done
TMPDIR=$scratch mmdebstrap --quiet "${mm_args[@]}" "$suite" "$scratch/base.tar" "${sources[@]}" >&2 \
  || die "mmdebstrap failed"
phase_done "mmdebstrap ($(du -m "$scratch/base.tar" | cut -f1) MB)"

old_id=$(image_id "$SEF_BASE_IMAGE")
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
labels=(
  "org.opencontainers.image.title=vllm-sef-debian"
  "org.opencontainers.image.description=Debian 12 ($suite) made by mmdebstrap from $mirror: ${packages[*]}"
  "org.opencontainers.image.created=$created"
  "ai.vllm-sef.base.recipe=$recipe"
)
if [ "$eng" = docker ]; then
  changes=(--change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8')
  for label in "${labels[@]}"; do changes+=(--change "LABEL ${label%%=*}=\"${label#*=}\""); done
  "$DOCKER" import "${changes[@]}" "$scratch/base.tar" "$SEF_BASE_IMAGE" >/dev/null || die "docker import failed"
else
  ctr=$(bh from scratch)
  at_exit 'bh rm "$ctr" >/dev/null 2>&1'
  bh add --quiet "$ctr" "$scratch/base.tar" / || die "buildah add failed"
  config=(--cmd /bin/bash --env LANG=C.UTF-8)
  for label in "${labels[@]}"; do config+=(--label "$label"); done
  bh config "${config[@]}" "$ctr"
  bh commit --quiet --format docker --rm "$ctr" "$SEF_BASE_IMAGE" >/dev/null || die "buildah commit failed"
fi
# The image this one replaces, now untagged, is not kept (unless something still uses it).
[ -z "$old_id" ] || remove_image "$old_id"
phase_done "import as $SEF_BASE_IMAGE ($eng)"
log "$SEF_BASE_IMAGE: $(image_size "$SEF_BASE_IMAGE"), recipe $recipe"
