#!/usr/bin/env bash
# Make .venv the test environment: our vllm_cpu wheel from dist/ plus tests/requirements.txt, pinned by
# tests/constraints.txt; torchvision/torchaudio/torchcodec removed (they break `import vllm` beside the
# CPU torch). Then check that `import vllm` works and the installed version is 0.32.0+$LOCAL_VERSION.
#   ci/venv.sh             (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where torch+cpu is not
#                           on the default index)
# Idempotent: a venv made from the same requirements/constraints is kept; a changed wheel (by sha256) is
# reinstalled alone; anything else makes a new venv.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

wheel=$DIST_DIR/$(patched_wheel cpu)
[ -f "$wheel" ] || die "$wheel does not exist: run make build first"
req=$ROOT/tests/requirements.txt
cons=$ROOT/tests/constraints.txt
env_id=$({ "$PYTHON" -c 'import sys; print(sys.version)'; cat "$req" "$cons"; echo "$TORCH_INDEX_URL"; } \
  | sha256sum | cut -d' ' -f1)
wheel_sha=$(sha256 "$wheel")
env_stamp=$VENV_DIR/.sef-env.sha256
wheel_stamp=$VENV_DIR/.sef-wheel.sha256
vpip() { "$VENV_DIR/bin/python" -m pip --disable-pip-version-check "$@" 2> >(pip_noise_filter >&2); }
index_args=()
[ -z "$TORCH_INDEX_URL" ] || index_args=(--extra-index-url "$TORCH_INDEX_URL")

if ! [ -x "$VENV_DIR/bin/python" ] || [ "$(cat "$env_stamp" 2>/dev/null)" != "$env_id" ]; then
  log "creating $VENV_DIR with $(basename "$wheel") (a few minutes)"
  rm -rf "$VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
  vpip install -q "${index_args[@]}" -c "$cons" -r "$req" "$wheel" || die "pip install into $VENV_DIR failed"
  printf '%s\n' "$env_id" > "$env_stamp"
  printf '%s\n' "$wheel_sha" > "$wheel_stamp"
  phase_done "venv: install"
elif [ "$(cat "$wheel_stamp" 2>/dev/null)" != "$wheel_sha" ]; then
  log "reinstalling $(basename "$wheel") (changed) into $VENV_DIR"
  vpip install -q --no-deps --force-reinstall "$wheel" || die "reinstalling $wheel failed"
  printf '%s\n' "$wheel_sha" > "$wheel_stamp"
  phase_done "venv: wheel reinstall"
else
  log "$VENV_DIR already has $(basename "$wheel") (sha256 $wheel_sha)"
fi
vpip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v '^WARNING: Skipping' >&2 || true

# From /, in isolated mode: nothing but the venv decides what `import vllm` is.
(cd / && "$VENV_DIR/bin/python" -I - "$VENV_DIR" "$VLLM_VERSION+$LOCAL_VERSION") <<'EOF' || die "$VENV_DIR is broken"
import importlib.metadata as md
import pathlib
import sys

venv, want = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
got = md.version("vllm_cpu")
assert got == want, f"installed vllm_cpu is {got}, expected {want}"
for extra in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(extra)
    except md.PackageNotFoundError:
        continue
    raise AssertionError(f"{extra} is installed; it breaks import vllm beside the CPU torch")
import vllm  # noqa: E402

where = pathlib.Path(vllm.__file__).resolve()
assert venv in where.parents, f"vllm imported from {where}, not from {venv}"
print(f"[venv.sh] import vllm OK: vllm_cpu {got} from {where.parent}", file=sys.stderr)
EOF
phase_done "venv: import check"
