#!/usr/bin/env bash
# Steps of a GPU session on a host without registry access (../shared/gpu-host/README.md):
# the official vLLM 0.32.0 CUDA wheel, bundled in pieces, staged under /root, patched with
# this series. On a machine where `pip install dist/vllm-*.whl` works, skip stage/install
# and run the other steps with the patched wheel installed.
#   benchmarks/gpu_host.sh prepare [WHEEL] (here, with registry access; $VLLM_DIR, default vllm/,
#                                          holding the series: make apply)
#                                          what a GPU session carries, under $GPU_DIR (default .gpu):
#                                          bin/ (the scripts of $GPU_HOST_SCRIPTS, default
#                                          ../shared/gpu-host), bundle/ (WHEEL, default the pinned
#                                          CUDA wheel from ci/fetch.sh, as vllm.partNN + deps.tar),
#                                          intree/ (the intree step); ~4 minutes on 2 cores
#   benchmarks/gpu_host.sh extras DIR      (here, with registry access) the CUDA wheel's requirements
#                                          nvidia-cutlass-dsl[cu13] and quack-kernels that the shared
#                                          bundle leaves out, as pieces DIR/extras.partNN (< 64 MiB each)
#   benchmarks/gpu_host.sh stage DIR       copy the pieces in DIR to /root/stage
#   benchmarks/gpu_host.sh install         unpack vLLM + deps (+ extras, if staged) into /root/site,
#                                          apply patches/; /root/stock-site: the same site with
#                                          unpatched vLLM
#   benchmarks/gpu_host.sh intree [DIR]    (here) copy vLLM's MoE kernel tests and their helpers from
#                                          the patched tree $VLLM_DIR (default vllm/) to DIR
#                                          (default .gpu/intree)
#   benchmarks/gpu_host.sh unit [DIR [PYTEST_ARGS]]  the series' in-tree CUDA tests, copied to DIR
#                                          (default .gpu/intree, a tree like vllm/tests), e.g.
#                                          unit .gpu/intree -k shared_stream
#   benchmarks/gpu_host.sh check           layer-level numerics vs an fp32 reference
#   benchmarks/gpu_host.sh equiv           end-to-end fused vs unfused engines (pytest)
#   benchmarks/gpu_host.sh bench [ARGS]    layer benchmark (benchmarks/moe_layer.py bench)
#   benchmarks/gpu_host.sh profile [ARGS]  per-kernel tables (benchmarks/moe_layer.py profile)
#   benchmarks/gpu_host.sh routing [ARGS]  the fused routing's variants timed (benchmarks/routing.py)
#   benchmarks/gpu_host.sh split-k [ARGS]  the layer per SPLIT_K (benchmarks/moe_layer.py split-k)
#   benchmarks/gpu_host.sh naive-fill [ARGS]  the layer with / without stock's padded-count fill
#   benchmarks/gpu_host.sh pdl [ARGS]      the layer with programmatic dependent launch off / on
#   benchmarks/gpu_host.sh shared-stream [ARGS]  the layer with the fused shared experts in one launch /
#                                          on the auxiliary stream
#   benchmarks/gpu_host.sh tiles [ARGS]    one GEMM's tile swept in the layer (moe_layer.py tiles)
#   benchmarks/gpu_host.sh assignment [ARGS]  the layer with the naive / the aligned block
#                                          assignment at few tokens (moe_layer.py assignment)
#   benchmarks/gpu_host.sh quantize-align [ARGS]  the layer with the input quantized and the blocks
#                                          assigned apart / in one launch (moe_layer.py quantize-align)
#   benchmarks/gpu_host.sh moe-sum [ARGS]  the layer with the top-k outputs summed by ops.moe_sum /
#                                          by the Triton launch (moe_layer.py moe-sum)
#   benchmarks/gpu_host.sh prefetch-shared [ARGS]  the layer with vLLM's MoE runner / the fused shared
#                                          expert prefetched into L2, L2 emptied per replay
#                                          (moe_layer.py prefetch-shared)
#   benchmarks/gpu_host.sh dense-fp8 [ARGS]  the dense block-FP8 GEMMs, cutlass / Triton, per shape and
#                                          batch size (benchmarks/dense_fp8.py)
#   benchmarks/gpu_host.sh norm-quant [ARGS]  RMSNorm + FP8 group quantization, vLLM's fused op /
#                                          a Triton prototype (benchmarks/norm_quant.py)
#   benchmarks/gpu_host.sh dense-pdl [ARGS]  attention's producer -> split-K GEMM pairs without /
#                                          with programmatic dependent launch (benchmarks/dense_pdl.py)
#   benchmarks/gpu_host.sh router-gemm [ARGS]  the MoE router's bf16 GEMM, cuBLAS / a split-K Triton
#                                          prototype (benchmarks/router_gemm.py)
#   benchmarks/gpu_host.sh tuned-site SITE CONFIGS NEW  NEW := SITE (e.g. /root/stock-site) with its own
#                                          copy of vLLM holding the block-FP8 config files in CONFIGS
#                                          (dense-fp8 --write-configs), for an e2e variant site=NEW
#   benchmarks/gpu_host.sh tune [ARGS]     Triton tile tuning (benchmarks/tune_moe.py)
#   benchmarks/gpu_host.sh moe-configs-as FROM DIR [NAME]  the MoE config files vLLM has for GPU
#                                          FROM (e.g. NVIDIA_H200) in DIR under the name NAME (default
#                                          this GPU's) where vLLM has none for NAME, for
#                                          VLLM_TUNED_CONFIG_FOLDER=DIR: does another GPU's tuning
#                                          carry over?
#   benchmarks/gpu_host.sh probe [ARGS]    distinct experts per step (benchmarks/e2e.py --probe)
#   benchmarks/gpu_host.sh e2e [ARGS]      ITL/TTFT/throughput, stock/off/fused (benchmarks/e2e.py)
# Results go to $OUT (default ./gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
GPU_DIR=${GPU_DIR:-.gpu}
VLLM_DIR=${VLLM_DIR:-vllm}  # the patched tree the intree step copies from (make apply)
# What intree copies: vLLM's MoE kernel tests, the series' other CUDA tests, their helpers.
INTREE_FILES=(tests/__init__.py tests/kernels/__init__.py tests/kernels/utils.py
  tests/kernels/quant_utils.py tests/kernels/moe tests/kernels/quantization/nvfp4_utils.py
  tests/kernels/quantization/test_block_fp8_split_k.py
  tests/kernels/quantization/test_rms_norm_group_quant_triton.py
  tests/kernels/quantization/test_block_fp8_split_k_pdl.py tests/kernels/allclose_default.py
  tests/quantization/__init__.py tests/quantization/reference_mxfp4.py
  tests/distributed/__init__.py tests/distributed/eplb_utils.py)
BIN=${GPU_BIN:-$GPU_DIR/bin}
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
[ -d /root/site ] && export PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # sefkit, benchmarks
step=$1; shift
case "$step" in
  prepare)
    scripts=${GPU_HOST_SCRIPTS:-../shared/gpu-host}
    host_files=(bundle.sh stage.sh apply-patches.sh host-packages.txt)
    for f in "${host_files[@]}"; do
      [ -f "$scripts/$f" ] || { echo "GPU_HOST_SCRIPTS=$scripts has no $f" >&2; exit 2; }
    done
    for f in "${INTREE_FILES[@]}"; do
      [ -e "$VLLM_DIR/$f" ] \
        || { echo "VLLM_DIR=$VLLM_DIR has no $f: run make apply first" >&2; exit 2; }
    done
    wheel=${1:-$(ci/fetch.sh cuda-wheel)}
    [ -f "$wheel" ] || { echo "no wheel $wheel" >&2; exit 2; }
    mkdir -p "$GPU_DIR/bin"
    for f in "${host_files[@]}"; do cp "$scripts/$f" "$GPU_DIR/bin/"; done
    bash "$GPU_DIR/bin/bundle.sh" "$wheel" "$GPU_DIR/bundle"
    bash benchmarks/gpu_host.sh intree "$GPU_DIR/intree"
    ls -l "$GPU_DIR"/bundle "$GPU_DIR"/bin
    ;;
  extras)
    # vLLM 0.32.0's CUDA requirements pin nvidia-cutlass-dsl[cu13]==4.8.0 and quack-kernels==0.6.5
    # (ll_bf16 compiles its kernels with quack's helpers; quack needs torch-c-dlpack-ext); with them
    # GateLinear runs the router GEMM with vLLM's ll_bf16 kernel at M <= 16, as on a user's install,
    # for gates with float32 logits (moe_router_dtype; DeepSeek-V3's config has none: bf16 F.linear).
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d "$tmp" nvidia-cutlass-dsl==4.8.0 \
      nvidia-cutlass-dsl-libs-base==4.8.0 nvidia-cutlass-dsl-libs-core==4.8.0 \
      nvidia-cutlass-dsl-libs-cu13==4.8.0 \
      quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5
    mkdir -p "$1" && rm -f "$1"/extras.part*
    tar cf - -C "$tmp" . | split -b 48M -d - "$1/extras.part"
    rm -rf "$tmp" && ls -l "$1"/extras.part*
    ;;
  stage)
    bash "$BIN/stage.sh" "$1"
    if compgen -G "$1/extras.part*" >/dev/null; then cp "$1"/extras.part* /root/stage/; fi
    ;;
  install)
    bash "$BIN/stage.sh" /nonexistent install
    if compgen -G "/root/stage/extras.part*" >/dev/null; then
      rm -rf /root/stage/extras && mkdir -p /root/stage/extras
      cat /root/stage/extras.part* | tar xf - -C /root/stage/extras
      python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site \
        /root/stage/extras/*.whl
      # The DSL's packages live in nvidia_cutlass_dsl/dsl_packages, put on sys.path by a .pth
      # file, which Python reads in site directories only, not in a PYTHONPATH entry: link them.
      for p in /root/site/nvidia_cutlass_dsl/dsl_packages/*; do ln -sfn "$p" /root/site/; done
    fi
    export PYTHONPATH=/root/site
    mapfile -t series < <(sed 's|^|patches/|' patches/series)
    bash "$BIN/apply-patches.sh" "${series[@]}"
    rm -rf /root/stock-site && mkdir -p /root/stock-site
    for f in /root/site/*; do
      [ "$(basename "$f")" = vllm ] || ln -s "$f" /root/stock-site/
    done
    ln -s /root/stage/vllm.pristine /root/stock-site/vllm
    python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
    python3 -c "from vllm.model_executor.kernels.linear.cute_dsl.ll_bf16 import is_available as a
print('ll_bf16 router GEMM available:', a())"
    ;;
  intree)
    dir=${1:-.gpu/intree}
    [[ $dir = /* ]] || dir=$PWD/$dir
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$VLLM_DIR" && cp -r --parents "${INTREE_FILES[@]}" "$dir/")
    # Not copied: tests/utils.py (it imports the API clients, which the GPU host lacks), so seven
    # MoE test files (DeepEP, MoRI, ...: none of the series') stay collection errors there; run
    # `unit` with -k and --continue-on-collection-errors.
    # vLLM's tests/conftest.py needs the whole test suite: its workspace_init fixture alone.
    python3 -c '
import ast, sys
source = open(sys.argv[2]).read()
(fixture,) = [n for n in ast.parse(source).body if getattr(n, "name", "") == "workspace_init"]
lines = source.splitlines()[fixture.decorator_list[0].lineno - 1 : fixture.end_lineno]
header = "# The workspace_init fixture of vLLM tests/conftest.py (gpu_host.sh intree).\n"
with open(sys.argv[1], "w") as f:
    f.write(header + "import pytest\nimport torch\n\n\n" + "\n".join(lines) + "\n")
' "$dir/tests/conftest.py" "$VLLM_DIR/tests/conftest.py"
    ;;
  unit)
    # From DIR, with its own pytest.ini: vLLM's `tests` package, not this repository's.
    dir=${1:-.gpu/intree}
    [ $# -gt 0 ] && shift
    [ -f "$dir/pytest.ini" ] || printf '[pytest]\n' >"$dir/pytest.ini"
    (cd "$dir" && python3 -m pytest -q -p no:cacheprovider tests "$@") 2>&1 | tee "$OUT/unit.log" | tail -n 15
    ;;
  check) python3 -m benchmarks.moe_layer check --out "$OUT/layer_check.json" "$@" ;;
  equiv)
    python3 -m pytest -q -s -p no:cacheprovider tests/test_fusion_gpu.py --basetemp=/root/equiv "$@" \
      2>&1 | tee "$OUT/equiv.log" | grep -E "prompt logprobs|passed|failed|Error" ;;
  bench) python3 -m benchmarks.moe_layer bench --out "$OUT/layer_bench.json" "$@" ;;
  profile) python3 -m benchmarks.moe_layer profile --out "$OUT/layer_profile.json" "$@" ;;
  routing) python3 -m benchmarks.routing --out "$OUT/routing.json" "$@" ;;
  split-k) python3 -m benchmarks.moe_layer split-k --out "$OUT/layer_split_k.json" "$@" ;;
  naive-fill) python3 -m benchmarks.moe_layer naive-fill --out "$OUT/layer_naive_fill.json" "$@" ;;
  pdl) python3 -m benchmarks.moe_layer pdl --out "$OUT/layer_pdl.json" "$@" ;;
  shared-stream)
    python3 -m benchmarks.moe_layer shared-stream --out "$OUT/layer_shared_stream.json" "$@" ;;
  tiles) python3 -m benchmarks.moe_layer tiles --out "$OUT/layer_tiles.json" "$@" ;;
  assignment)
    python3 -m benchmarks.moe_layer assignment --out "$OUT/layer_assignment.json" "$@" ;;
  quantize-align)
    python3 -m benchmarks.moe_layer quantize-align --out "$OUT/layer_quantize_align.json" "$@" ;;
  moe-sum) python3 -m benchmarks.moe_layer moe-sum --out "$OUT/layer_moe_sum.json" "$@" ;;
  prefetch-shared)
    python3 -m benchmarks.moe_layer prefetch-shared --out "$OUT/layer_prefetch_shared.json" "$@" ;;
  dense-fp8) python3 -m benchmarks.dense_fp8 --out "$OUT/dense_fp8.json" "$@" ;;
  norm-quant) python3 -m benchmarks.norm_quant --out "$OUT/norm_quant.json" "$@" ;;
  dense-pdl) python3 -m benchmarks.dense_pdl --out "$OUT/dense_pdl.json" "$@" ;;
  router-gemm) python3 -m benchmarks.router_gemm --out "$OUT/router_gemm.json" "$@" ;;
  tuned-site)
    [ $# -eq 3 ] || { echo "usage: gpu_host.sh tuned-site SITE CONFIGS NEW" >&2; exit 2; }
    site=$1 configs=$2 new=$3
    compgen -G "$configs/N=*.json" >/dev/null || { echo "no config files in $configs" >&2; exit 2; }
    rm -rf "$new" && mkdir -p "$new"
    for f in "$site"/*; do
      [ "$(basename "$f")" = vllm ] || ln -s "$(readlink -f "$f")" "$new/"
    done
    cp -a "$(readlink -f "$site/vllm")" "$new/vllm"
    cp "$configs"/N=*.json "$new/vllm/model_executor/layers/quantization/utils/configs/"
    echo "$new: $(find "$configs" -name 'N=*.json' | wc -l) config files over $site"
    ;;
  tune) python3 -m benchmarks.tune_moe --out-dir "$OUT" "$@" ;;
  moe-configs-as)
    [ $# -ge 2 ] || { echo "usage: gpu_host.sh moe-configs-as FROM DIR [NAME]" >&2; exit 2; }
    from=$1 dir=$2
    # As vLLM's get_config_file_name spells the device.
    name=${3:-$(python3 -c "from vllm.platforms import current_platform as p
print(p.get_device_name().replace(' ', '_'))")}
    src=$(python3 -c "import importlib.util, os  # where vllm is, without importing it
print(os.path.join(os.path.dirname(importlib.util.find_spec('vllm').origin),
                   'model_executor', 'layers', 'fused_moe', 'configs'))")
    shopt -s nullglob
    files=("$src"/*"device_name=$from".json "$src"/*"device_name=$from,"*.json)
    shopt -u nullglob
    [ ${#files[@]} -gt 0 ] || { echo "no MoE config files for device_name=$from in $src" >&2; exit 2; }
    mkdir -p "$dir"
    copied=0
    for f in "${files[@]}"; do
      target=$(basename "$f" | sed "s/device_name=$from\([,.]\)/device_name=$name\1/")
      # Shapes vLLM has tuned for this GPU keep their files (the folder would override them).
      [ -e "$src/$target" ] && continue
      cp "$f" "$dir/$target" && copied=$((copied + 1))
    done
    echo "$dir: $copied MoE config files of $from as $name (shapes without a $name file)"
    ;;
  probe) python3 -m benchmarks.e2e --probe --variants stock,site=/root/stock-site --out "$OUT/probe.jsonl" "$@" ;;
  e2e) python3 -m benchmarks.e2e --out "$OUT/e2e.jsonl" "$@" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
