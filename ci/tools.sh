#!/usr/bin/env bash
# Make sure the tools venv (build/tools-venv: ruff, wheel, shellcheck) exists with ci/tools-requirements.txt.
#   ci/tools.sh        prints the venv's bin directory
# Idempotent: reinstalls only when ci/tools-requirements.txt changed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
req=$ROOT/ci/tools-requirements.txt
stamp=$TOOLS_VENV/.requirements.sha256
if [ -x "$TOOLS_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$(sha256 "$req")" ]; then
  echo "$TOOLS_VENV/bin"; exit 0
fi
log "creating $TOOLS_VENV"
rm -rf "$TOOLS_VENV"
"$PYTHON" -m venv "$TOOLS_VENV"
"$TOOLS_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req" 2> >(pip_noise_filter >&2) >&2 \
  || die "installing $req into $TOOLS_VENV failed"
sha256 "$req" > "$stamp"
echo "$TOOLS_VENV/bin"
