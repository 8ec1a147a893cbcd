#!/usr/bin/env bash
# Make DEST a throw-away copy of vllm/ with the series applied (branch sef), leaving vllm/ itself alone.
#   ci/scratch-tree.sh DEST
# A `git clone --shared` of vllm/'s base (made by ci/vllm-source.sh if missing) + ci/apply.sh on it;
# fails like apply.sh when a patch does not apply. DEST is replaced if it exists.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
[ -n "${1:-}" ] || die "usage: $0 DEST"
dest=$(realpath -m "$1")
[ "$dest" != "$VLLM_DIR" ] || die "DEST must not be $VLLM_DIR"
"$ROOT/ci/vllm-source.sh"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
git clone -q --shared --no-checkout "$VLLM_DIR" "$dest"
# FORCE: the fresh clone has no checkout yet (apply.sh makes it).
VLLM_DIR=$dest FORCE=1 "$ROOT/ci/apply.sh"
