#!/usr/bin/env bash
# Build our wheel of one flavour from the official one: the series' vllm/ changes, version <base>+<LOCAL_VERSION> (patches/base.env).
#   ci/build-wheel.sh cuda|cpu
# Output: dist/<official file name with 0.32.0 -> 0.32.0+$LOCAL_VERSION>, and dist/SHA256SUMS.
#
# The official wheel (sha256-verified by ci/fetch.sh) is unpacked with `wheel unpack`; each patch of the
# series is applied to its vllm/ files with `git apply --include='vllm/*'` (no fuzz: a patch must apply
# exactly); the .dist-info directory is renamed and METADATA's Version set; `wheel pack` writes the
# new RECORD. Compiled files are the official ones, byte for byte, so a series that changes compiled
# sources or the build (csrc/, CMakeLists.txt, ...) is refused: build it with `make build-cuda`.
# Reproducible: zip timestamps come from SOURCE_DATE_EPOCH (fixed below), the order from `wheel pack`.
# Skips the work when dist/ already holds the output for the same inputs.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

flavour=${1:-}
case "$flavour" in cuda|cpu) ;; *) die "usage: $0 cuda|cpu" ;; esac
official=$(official_wheel "$flavour")
out=$(patched_wheel "$flavour")
umask 022
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-946684800}  # 2000-01-01, the base commit's date
export LC_ALL=C

[ -f "$PATCH_DIR/series" ] || die "$PATCH_DIR/series does not exist"
mapfile -t patches < <(series_patches)
for patch in "${patches[@]}"; do
  [ -f "$patch" ] || die "$(basename "$patch"), listed in series, does not exist"
done

# Everything the output depends on; the same inputs give the same bytes.
inputs=$({
  printf '%s %s %s %s\n' "$official" "$(official_wheel_sha256 "$flavour")" "$LOCAL_VERSION" "$SOURCE_DATE_EPOCH"
  for patch in "${patches[@]}"; do printf '%s %s\n' "$(basename "$patch")" "$(sha256 "$patch")"; done
  sha256sum "$ROOT/ci/build-wheel.sh" "$ROOT/ci/lib.sh" "$ROOT/ci/tools-requirements.txt" | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)
stamp=$DIST_DIR/.$out.inputs
if [ -f "$DIST_DIR/$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ] \
  && grep -qx "$(sha256 "$DIST_DIR/$out")  $out" "$DIST_DIR/SHA256SUMS" 2>/dev/null; then
  log "$out is up to date"
  exit 0
fi

# Refuse what a repacked wheel cannot carry.
for patch in "${patches[@]}"; do
  while IFS= read -r path; do
    case "$path" in
      vllm/*) ;;  # the package, data files included (e.g. sources that vLLM compiles at run time)
      csrc/*|cmake/*|CMakeLists.txt|setup.py|pyproject.toml|requirements/*|rust/*|*.cu|*.cuh|*.cpp|*.cc|*.c|*.h|*.hpp)
        die "$(basename "$patch") changes $path: a repacked official wheel cannot carry that (its compiled files and metadata are upstream's); use make build-cuda" ;;
    esac
  done < <(patch_files "$patch")
done

tools_bin=$("$ROOT/ci/tools.sh")
src=$("$ROOT/ci/fetch.sh" "$flavour-wheel")
phase_done "$flavour: tools and sha256-verified $official"
# Scratch space for the unpacked wheel (~0.8 GB for CUDA): RAM (/dev/shm) when it has 4 GB free,
# since writing and deleting that many files on a disk costs ~10 s per GB; else build/.
stage_parent=${SEF_STAGE_DIR:-}
if [ -z "$stage_parent" ]; then
  stage_parent=$BUILD_DIR
  if [ -d /dev/shm ] && [ -w /dev/shm ] \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((4 * 1024 * 1024)) ]; then
    stage_parent=/dev/shm
  fi
fi
mkdir -p "$stage_parent" "$DIST_DIR"
stage=$(mktemp -d "$stage_parent/sef-wheel-$flavour.XXXXXX")
packed=$(mktemp -d "$DIST_DIR/.packing.XXXXXX")
at_exit 'rm -rf "$stage" "$packed"'
log "building $out from $official (${#patches[@]} patch(es)), unpacked in $stage"

"$tools_bin/wheel" unpack -d "$stage" "$src" >/dev/null
tree=$(find "$stage" -mindepth 1 -maxdepth 1 -type d)
phase_done "$flavour: wheel unpack (RECORD hashes checked)"

# GIT_CEILING_DIRECTORIES keeps git from finding the outer repository: without a repository, git apply
# takes the paths as relative to $tree. --whitespace=nowarn: apply exactly what the patch says.
for patch in "${patches[@]}"; do
  GIT_CEILING_DIRECTORIES=$stage git -C "$tree" apply --include='vllm/*' --whitespace=nowarn "$patch" \
    || die "$(basename "$patch") does not apply to the vllm/ files of $official"
done
phase_done "$flavour: applied ${#patches[@]} patch(es) to vllm/"

# Version 0.32.0 -> 0.32.0+$LOCAL_VERSION: the .dist-info name and METADATA's Version (nothing else;
# vllm/_version.py stays upstream's, so every vllm/ file differs from upstream exactly by the series).
old_info=$(find "$tree" -mindepth 1 -maxdepth 1 -type d -name "*-$VLLM_VERSION.dist-info")
[ -n "$old_info" ] || die "no *-$VLLM_VERSION.dist-info in $official"
dist=$(basename "$old_info" "-$VLLM_VERSION.dist-info")
info=$tree/$dist-$VLLM_VERSION+$LOCAL_VERSION.dist-info
mv "$old_info" "$info"
sed -i "0,/^Version: ${VLLM_VERSION//./\\.}\$/s//Version: $VLLM_VERSION+$LOCAL_VERSION/" "$info/METADATA"
if [ "$(grep -c '^Version: ' "$info/METADATA")" != 1 ] \
  || ! grep -qx "Version: $VLLM_VERSION+$LOCAL_VERSION" "$info/METADATA"; then
  die "could not set Version in $info/METADATA"
fi
# WHEEL's Tag lines name the tags of the official file name (upstream's WHEEL says linux_x86_64, the
# CPU one even cp312-cp312, while the published files are cp38-abi3-manylinux_2_28_x86_64); `wheel
# pack` names the file after them.
IFS=- read -r -a parts <<< "${official%.whl}"
n=${#parts[@]}
tags=()
for py in ${parts[n - 3]//./ }; do
  for abi in ${parts[n - 2]//./ }; do
    for plat in ${parts[n - 1]//./ }; do tags+=("Tag: $py-$abi-$plat"); done
  done
done
awk -v tags="$(printf '%s\n' "${tags[@]}")" \
  '/^Tag: / { if (!done) print tags; done = 1; next } { print }' "$info/WHEEL" > "$info/WHEEL.new"
mv "$info/WHEEL.new" "$info/WHEEL"

"$tools_bin/wheel" pack -d "$packed" "$tree" >/dev/null
[ -f "$packed/$out" ] || die "wheel pack wrote $(ls "$packed"), expected $out"
phase_done "$flavour: wheel pack (RECORD regenerated)"

rm -f "$DIST_DIR/$dist-$VLLM_VERSION+"*.whl "$DIST_DIR/.$dist-$VLLM_VERSION+"*.inputs
mv "$packed/$out" "$DIST_DIR/$out"
printf '%s\n' "$inputs" > "$stamp"
(cd "$DIST_DIR" && sha256sum -- *.whl > SHA256SUMS)
log "wrote $DIST_DIR/$out ($(du -m "$DIST_DIR/$out" | cut -f1) MB) in $SECONDS s"
