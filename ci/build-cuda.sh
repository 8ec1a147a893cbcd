#!/usr/bin/env bash
# Build vLLM with its CUDA ops compiled from the patched tree (vLLM's own setup.py + CMake build).
# For a series that changes csrc/ or the build (which `make build` refuses), for users with a CUDA
# toolchain, and for a docker image (e.g. FROM a CUDA "devel" image with torch installed). Not run in CI.
#   ci/build-cuda.sh
# Environment:
#   TORCH_CUDA_ARCH_LIST  CUDA architectures to compile (default "9.0": H100/H200)
#   MAX_JOBS              parallel compile jobs (default: nproc; lower it when memory runs out)
#   NVCC_THREADS          threads per nvcc (vLLM's default when unset)
#   CUDA_HOME             the CUDA toolkit (default: from nvcc on PATH, else /usr/local/cuda)
#   PYTHON                the Python whose torch (2.13.0, a CUDA build) and build deps are used
#   VLLM_CUTLASS_SRC_DIR, VLLM_FLASH_ATTN_SRC_DIR, FLASH_MLA_SRC_DIR, DEEPGEMM_SRC_DIR, QUTLASS_SRC_DIR,
#   ... local checkouts of the sources vLLM's CMake otherwise clones from GitHub (offline builds).
# Steps: preflight checks (fail early), ci/apply.sh (vllm/ := sef-base + series; it refuses to discard
# uncommitted work), the vllm-rs frontend binary taken from the sha256-verified official CUDA wheel
# (the same sources; no Rust toolchain needed), then `pip wheel --no-build-isolation` in vllm/ with the
# version forced to 0.32.0+$LOCAL_VERSION (VLLM_VERSION_OVERRIDE, so no +cuXXX suffix).
# Output: dist/source/vllm-0.32.0+$LOCAL_VERSION-cp38-abi3-linux_x86_64.whl and dist/source/SHA256SUMS.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
MAX_JOBS=${MAX_JOBS:-$(nproc)}
export MAX_JOBS
version=$VLLM_VERSION+$LOCAL_VERSION

# --- preflight: everything that would otherwise fail an hour into the build
[ "$(uname -s)" = Linux ] || die "vLLM's CUDA build needs Linux"
CUDA_HOME=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -z "$CUDA_HOME" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
[ -n "$CUDA_HOME" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && [ -f "$CUDA_HOME/include/cuda_runtime.h" ] \
  || die "no CUDA toolkit (nvcc and headers) found: install one (a CUDA 'devel' image has it) and set CUDA_HOME"
export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
torch_info=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")' 2>/dev/null) \
  || die "$PYTHON cannot import torch: install torch==2.13.0 built for CUDA (pip install torch==2.13.0; the PyTorch index has other CUDA versions)"
read -r torch_version torch_cuda <<< "$torch_info"
[ "$torch_cuda" != none ] || die "$PYTHON has torch $torch_version, a CPU-only build: install torch==2.13.0 built for CUDA"
case "$torch_version" in 2.13.0|2.13.0+*) ;; *) die "$PYTHON has torch $torch_version; vLLM $VLLM_VERSION builds against torch 2.13.0" ;; esac
[ "${nvcc_version%%.*}" = "${torch_cuda%%.*}" ] \
  || die "nvcc is CUDA $nvcc_version but torch was built for CUDA $torch_cuda: use a matching toolkit"
cxx=${CXX:-g++}
cxx_major=$("$cxx" -dumpversion 2>/dev/null | cut -d. -f1) || die "no C++ compiler ($cxx)"
[ "${cxx_major:-0}" -ge 13 ] || die "$cxx is version $cxx_major; vLLM's build needs GCC/G++ >= 13"
log "CUDA $nvcc_version at $CUDA_HOME, torch $torch_version (CUDA $torch_cuda), $cxx $cxx_major," \
  "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

# --- the patched tree
"$ROOT/ci/apply.sh"
missing=$("$PYTHON" - <<'EOF'
import importlib.util
import shutil

mods = ["setuptools", "setuptools_scm", "setuptools_rust", "wheel", "packaging", "jinja2"]
missing = [m for m in mods if importlib.util.find_spec(m) is None]
missing += [t for t in ("cmake", "ninja") if shutil.which(t) is None]
print(" ".join(missing))
EOF
)
[ -z "$missing" ] || die "missing build dependencies ($missing): $PYTHON -m pip install -r $VLLM_DIR/requirements/build/cuda.txt"
phase_done "preflight and make apply"

# --- the Rust frontend (vllm/vllm-rs, ignored by vLLM's .gitignore): upstream's binary, unless present
if [ ! -x "$VLLM_DIR/vllm/vllm-rs" ]; then
  official=$("$ROOT/ci/fetch.sh" cuda-wheel)
  "$PYTHON" -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("vllm/vllm-rs") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$official" "$VLLM_DIR/vllm/vllm-rs"
  chmod 755 "$VLLM_DIR/vllm/vllm-rs"
  log "vllm/vllm-rs taken from $(basename "$official")"
fi

# --- vLLM's own build
out=$DIST_DIR/source
mkdir -p "$out"
rm -f "$out"/vllm-*.whl
# The build rewrites tracked files of the sdist import (vllm/_version.py, vllm.egg-info/): put them back
# afterwards so that vllm/ stays a clean sef branch.
at_exit 'vgit checkout -q -f HEAD -- . 2>/dev/null'
log "building vLLM $version with CUDA ops (this takes long: ~1 h on 32 cores for one architecture)"
(cd "$VLLM_DIR" && VLLM_TARGET_DEVICE=cuda VLLM_VERSION_OVERRIDE=$version \
  "$PYTHON" -m pip wheel --no-build-isolation --no-deps -v -w "$out" .) || die "vLLM's build failed"
built=$(find "$out" -maxdepth 1 -name "vllm-$version-*.whl")
[ -n "$built" ] || die "the build wrote no vllm-$version-*.whl into $out"
(cd "$out" && sha256sum -- *.whl > SHA256SUMS)
phase_done "CUDA build"
log "wrote $built"
