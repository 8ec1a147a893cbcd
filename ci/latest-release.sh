#!/usr/bin/env bash
# Print the newest final release of vLLM on the registry (PEP 503 simple index): the highest version
# with a not-yanked sdist vllm-X.tar.gz, X digits and dots only (no pre-releases).
#   ci/latest-release.sh
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
page=$(curl -fsSL --retry 3 "$PYPI_SIMPLE/vllm/") || die "cannot read $PYPI_SIMPLE/vllm/"
latest=$(grep -o '<a [^>]*>[^<]*</a>' <<< "$page" | grep -v 'data-yanked' \
  | sed -n 's|.*>vllm-\([0-9][0-9.]*[0-9]\)\.tar\.gz</a>$|\1|p' | sort -u -V | tail -n 1)
[ -n "$latest" ] || die "no vllm release sdist on $PYPI_SIMPLE/vllm/"
echo "$latest"
