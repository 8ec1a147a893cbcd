"""End to end on one GPU: stock vLLM vs the series with fusion off and on.

Measures decode ITL, TTFT and offline throughput of a DeepSeek-V3-shaped model
(hidden 7168, MLA 1536/512/64/128, 256 routed + 1 shared expert, top-8 of 8
groups, FP8 block [128, 128]; per-rank TP8 widths with --shard 8) with dummy
weights and realistic routing, served by vLLM with torch.compile and CUDA graphs.

Realistic routing: vLLM's dummy loader fills every tensor with
uniform(-1e-3, 1e-3) from one seed, so router logits differ by ~1e-5 while the
correction bias differs by ~1e-3 and sends every token to the same ~9 experts.
After the load, every MoE layer's router gets seeded values of a trained
router's scale (gate weights N(0, (1.5 / sqrt(hidden))^2), so logits of the
unit-RMS MoE input have std 1.5; correction bias N(0, 0.05^2)) and every RMSNorm
weight is 1, so the MoE input has unit RMS. --probe runs one eager process that
records the distinct experts per MoE layer per decode step at each batch size.

Variants: NAME[,replicas=R][,site=DIR][,set=MODULE.NAME=VALUE ...][,engine=ARG=VALUE ...];
site is prepended to PYTHONPATH (stock vLLM lives in another site than the patched
one); set gives a module constant another value in every process of the variant, the
engine's included (benchmarks/constants_site; checked in the engine before the
measurements), e.g. to move a threshold the CUDA graphs' capture bakes in; engine
passes an engine argument to vLLM's LLM (VALUE a Python literal, or else a string),
e.g. engine=linear_backend=marlin, for a kernel choice every variant can make (a dict, e.g.
compilation_config, adds to the one the script passes).
Processes alternate: each round runs every variant once, so a slow process cannot
favour one variant.

    python -m benchmarks.e2e --variants stock,site=/root/stock-site off fused,replicas=1 \\
        --rounds 2 --workloads itl throughput --out e2e.jsonl
    python -m benchmarks.e2e --probe --out probe.jsonl
    python -m benchmarks.e2e --variants fused,replicas=1 fused_aux,replicas=1,set=\
vllm.model_executor.layers.fused_moe.experts.triton_moe.FUSED_SHARED_STREAM_MIN_TOKENS=16
    python -m benchmarks.e2e --variants stock,site=/root/stock-site \
        stock_marlin,site=/root/stock-site,engine=linear_backend=marlin --workloads itl profile

Prefix caching is off: the repetitions send the same prompts, and before 2026-12-02 (sef5)
vLLM's default prefix caching served their prefill from the cache after the first repetition,
so TTFT medians and the mixed workload measured cache hits (ITL, decode only, did not).

Per process, after warm-up generates that are dropped (each shape once):
- itl: per batch B, ITL from vLLM's request stats of B requests of --itl-prompt
  tokens generating 65 ((last - first token time) / 64, mean over requests;
  the prompts fit one prefill step, so the decode steps are pure) and TTFT, the
  wall time of B requests of --ttft-prompt tokens generating 1 token; medians
  of --reps. TTFT rows also carry engine_values: per repetition, the engine
  core's part (scheduled to first token: the prefill step), the rest being the
  front end's.
- throughput: decode-heavy (256 requests, 64 prompt + 400 generated tokens)
  and mixed (512 requests, 1000 + 200) at vLLM's default chunked prefill
  (LLM's default on an H100 / H200: 16,384 tokens a step; `vllm serve`'s is
  8,192: a variant's engine=max_num_batched_tokens=8192 measures with it):
  generated tokens per second of LLM.generate, median of --reps. Every row
  records the engine's max_num_batched_tokens.
- profile: per batch B, torch.profiler (through vLLM's profiler, in the engine)
  over PROFILE_STEPS decode steps of B requests, after PROFILE_DELAY steps (the
  prefill and the first decode steps stay out): each kernel's device time,
  launches and share of the busy time per step (what it adds beyond the kernels
  started before it: a programmatic dependent's wait and a kernel hidden beside
  another on the auxiliary stream add nothing), the kernels' union per step (the
  GPU's busy time) and the steps' span. Steps are counted by the routing kernel
  (one launch per MoE layer per step). Run after itl in the same process, so it
  does not disturb it.
- prefill_profile: per batch B, the TTFT requests' first engine step (B prompts of
  --ttft-prompt tokens, one token generated) under torch.profiler after a warm-up
  at its shape, with the host's wall time of that generate: the GPU's busy time
  against the step's span and the wall time tell whether a prefill waits on the
  GPU or on the host (prefills above the largest capture size run without a CUDA
  graph, launch by launch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.in_engine import (
    engine_constants,
    engine_replacements,
    realistic_routing,
    wanted_constants,
    wanted_replacements,
)

ROOT = Path(__file__).resolve().parents[1]
# The sitecustomize that applies a variant's set= options in each of its processes.
CONSTANTS_SITE = Path(__file__).resolve().parent / "constants_site"

BATCHES = [1, 4, 16, 64, 256]
# The engine's CUDA-graph sizes (--capture-sizes); every measured batch size must be one.
CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
WORKLOAD_NAMES = ("itl", "throughput", "profile", "prefill_profile")
PROFILE_WORKLOADS = {"profile", "prefill_profile"}
# Decode steps profiled per batch, and the engine steps skipped first (the prefill).
PROFILE_STEPS = 24
PROFILE_DELAY = 4
# In the name of the routing kernel, one launch per MoE layer per step: stock's
# grouped_topk_fused_small_expert_count_kernel and patch 0003's
# _grouped_topk_fused_shared_kernel.
ROUTING_KERNEL = "grouped_topk"
WORKLOADS = {
    # name: (requests, prompt tokens, generated tokens)
    "decode_heavy": (256, 64, 400),
    "mixed": (512, 1000, 200),
}


# A CPU-sized model for a smoke run of this script (--tiny): MLA dims as vLLM's
# CPU backend needs them, bf16, eager.
TINY = {
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "first_k_dense_replace": 1,
}


def write_config(out: Path, layers: int, shard: int = 8, tiny: bool = False) -> Path:
    config = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 129280 // shard,
        "hidden_size": 7168,
        "intermediate_size": 18432 // shard,
        "moe_intermediate_size": 2048 // shard,
        "num_hidden_layers": layers,
        "first_k_dense_replace": 3,
        "moe_layer_freq": 1,
        "num_attention_heads": 128 // shard,
        "num_key_value_heads": 128 // shard,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "n_group": 8,
        "topk_group": 4,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "num_nextn_predict_layers": 0,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
        },
    }
    if tiny:
        config.update(TINY)
        del config["quantization_config"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def with_engine_arguments(kwargs: dict, engine: dict) -> dict:
    """``kwargs`` with a variant's engine= arguments. A dict adds to the script's own dict of
    that name instead of replacing it: engine=compilation_config={'pass_config':{...}} keeps
    the capture sizes."""
    merged = dict(kwargs)
    for name, value in engine.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def make_llm(args, **overrides) -> tuple:
    """The engine with realistic routers, and its number of MoE layers."""
    from vllm import LLM

    kwargs = dict(
        model=args.model,
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=2048,
        max_num_seqs=256,
        gpu_memory_utilization=args.gpu_memory_utilization,
        compilation_config={"cudagraph_capture_sizes": args.capture_sizes},
        seed=0,
        disable_log_stats=False,  # request stats: first and last token times
        # Every repetition sends the same prompts: with vLLM's default prefix caching the
        # second and later ones would find their prefill cached (TTFT, the mixed workload).
        enable_prefix_caching=False,
    )
    if args.tiny:
        kwargs.update(enforce_eager=True, max_model_len=1024, max_num_seqs=16)
    if PROFILE_WORKLOADS & set(args.workloads):
        kwargs["profiler_config"] = {
            "profiler": "torch",
            "torch_profiler_dir": args.profile_dir,
            "torch_profiler_activities": ["CPU"] if args.tiny else ["CUDA"],
            "torch_profiler_with_stack": False,
            "torch_profiler_dump_cuda_time_total": False,
            "ignore_frontend": True,
        }
    kwargs = with_engine_arguments(kwargs, args.engine)
    kwargs.update(overrides)
    llm = LLM(**kwargs)
    counts = llm.apply_model(realistic_routing)[0]
    print(f"realistic routing: {counts}", flush=True)
    assert counts["moe_layers"] > 0, "no MoE layer found"
    assert args.tiny or counts["gates_reset"] == counts["moe_layers"], counts
    return llm, counts["moe_layers"]


def prompts(n: int, length: int, seed: int, vocab: int = 16000) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(2, vocab) for _ in range(length)]} for _ in range(n)
    ]


def generate(llm, requests: list[dict], tokens: int) -> tuple[float, list]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start, outputs


def ttft_times(llm, requests: list[dict]) -> tuple[float, float]:
    """One TTFT repetition, ms: the host's wall time of a one-token generate of ``requests``,
    and the engine core's part of it, from scheduling the first request to the last one's
    first token (vLLM's request stats, the engine core's clock): the prefill step, host and
    GPU. The rest of the wall time is the front end's (adding the requests, handing them to
    the engine core, collecting the outputs)."""
    seconds, outputs = generate(llm, requests, 1)
    scheduled = min(o.metrics.scheduled_ts for o in outputs)
    first_token = max(o.metrics.first_token_ts for o in outputs)
    return seconds * 1e3, (first_token - scheduled) * 1e3


def tokens_digest(outputs) -> str:
    """The generated token ids of ``outputs`` (in request order), hashed."""
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def measure(args) -> None:
    """One process of one variant (--worker)."""
    began = time.time()
    llm, moe_layers = make_llm(args)
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    base = {
        "variant": args.variant,
        "round": args.round,
        "routing": "realistic",
        "startup_s": round(time.time() - began, 1),
        # The most tokens a step schedules (vLLM's default by device unless set): the size of
        # the prefill chunks, for settings that apply up to a token count.
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
    }
    for option, key, wanted, reader in (
        ("set=", "constants", wanted_constants(), engine_constants),
        ("replace=", "replace", wanted_replacements(), engine_replacements),
    ):
        if wanted:
            found = llm.apply_model(reader)[0]
            if found != wanted:
                raise SystemExit(f"{option} in the engine: wanted {wanted}, found {found}")
            base[key] = wanted
    if args.engine:
        base["engine"] = args.engine
    if os.environ.get("SEF_VARIANT_ENV"):
        base["env"] = {n: os.environ[n] for n in json.loads(os.environ["SEF_VARIANT_ENV"])}
    generate(llm, prompts(8, 64, 99, args.vocab), 16)  # warm-up, dropped
    if "itl" in args.workloads:
        for batch in args.batches:
            # Warm-ups at this size, for both prompt lengths (new shapes compile).
            generate(llm, prompts(batch, args.itl_prompt, 1, args.vocab), 8)
            generate(llm, prompts(batch, args.ttft_prompt, 1, args.vocab), 1)
            ttft, engine_ttft, itl, digests = [], [], [], set()
            for _ in range(args.reps):
                wall, engine = ttft_times(llm, prompts(batch, args.ttft_prompt, 2, args.vocab))
                ttft.append(wall)
                engine_ttft.append(engine)
                outputs = generate(llm, prompts(batch, args.itl_prompt, 3, args.vocab), 65)[1]
                digests.add(tokens_digest(outputs))
                itl.append(
                    statistics.fmean(
                        (o.metrics.last_token_ts - o.metrics.first_token_ts)
                        / (o.metrics.num_generation_tokens - 1)
                        for o in outputs
                    )
                    * 1e3
                )
            for metric, values in (("itl_ms", itl), ("ttft_ms", ttft)):
                emit(
                    {
                        **base,
                        "scenario": "e2e",
                        "batch": batch,
                        "metric": metric,
                        "median": statistics.median(values),
                        "values": values,
                        # Greedy tokens of the timed requests: variants whose
                        # kernels give the same bits must give the same tokens.
                        **({"tokens": sorted(digests)} if metric == "itl_ms" else {}),
                        # Per repetition, the engine core's part of the wall time.
                        **({"engine_values": engine_ttft} if metric == "ttft_ms" else {}),
                    }
                )
    if "profile" in args.workloads:
        profile_batches(args, llm, base, moe_layers)
    if "prefill_profile" in args.workloads:
        profile_prefills(args, llm, base, moe_layers)
    if "throughput" in args.workloads:
        for workload, (n, prompt_len, gen_len) in WORKLOADS.items():
            if args.tiny:
                n, prompt_len, gen_len = n // 64, prompt_len // 16, gen_len // 50
            requests = prompts(n, prompt_len, 4, args.vocab)
            generate(llm, requests, gen_len)  # warm-up: the whole workload once
            values = []
            for _ in range(args.reps):
                seconds, _ = generate(llm, requests, gen_len)
                values.append(n * gen_len / seconds)
            emit(
                {
                    **base,
                    "scenario": "throughput",
                    "workload": workload,
                    "metric": "tok_s",
                    "median": statistics.median(values),
                    "values": values,
                }
            )


def step_profile(events: list[dict], moe_layers: int) -> dict:
    """Per decode step, from a torch.profiler trace's events: each kernel's device time,
    launches and busy share, the kernels' sum, their union (the GPU's busy time) and the span
    from the first kernel's start to the last one's end. A kernel's busy share is the part of its
    intervals that no kernel started before it covers: the shares add up to the busy time, and a
    programmatic dependent that waits for its primary (its duration counts the wait) or a kernel
    beside another on a second stream gets only what it adds. The steps are the routing
    kernel's launches over ``moe_layers``."""
    kernels = sorted(
        (e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"),
        key=lambda e: (e["ts"], e["ts"] + e["dur"]),
    )
    routing = sum(1 for e in kernels if ROUTING_KERNEL in e["name"])
    if routing < moe_layers:
        raise ValueError(f"{routing} routing launches in the trace: not one decode step")
    # Whole steps unless the profiler's window cut one (then a fraction shows it).
    steps = routing / moe_layers
    table: dict[str, list[float]] = {}
    streams: dict[str, float] = {}
    busy, end = 0.0, -float("inf")
    for e in kernels:
        start, stop = e["ts"], e["ts"] + e["dur"]
        added = max(0.0, stop - max(start, end))
        busy += added
        end = max(end, stop)
        row = table.setdefault(e["name"], [0.0, 0, 0.0])
        row[0] += e["dur"]
        row[1] += 1
        row[2] += added
        stream = str(e.get("args", {}).get("stream", "?"))
        streams[stream] = streams.get(stream, 0.0) + e["dur"]
    return {
        "steps": round(steps, 3),
        "span_us": (end - kernels[0]["ts"]) / steps,
        "busy_us": busy / steps,
        "kernel_sum_us": sum(row[0] for row in table.values()) / steps,
        "launches": sum(row[1] for row in table.values()) / steps,
        "streams_us": {k: v / steps for k, v in sorted(streams.items())},
        "kernels": [
            {"kernel": name, "us": us / steps, "launches": n / steps, "busy_us": added / steps}
            for name, (us, n, added) in sorted(table.items(), key=lambda kv: -kv[1][2])
        ],
    }


def read_trace(folder: Path, since: float) -> list[dict]:
    """The events of the newest trace vLLM's profiler wrote in ``folder`` after
    ``since`` (waits up to a minute: the worker writes it when it stops)."""
    import gzip

    deadline = time.time() + 60
    while True:
        traces = [f for f in folder.glob("*.pt.trace.json*") if f.stat().st_mtime >= since]
        if traces:
            newest = max(traces, key=lambda f: f.stat().st_mtime)
            opener = gzip.open if newest.suffix == ".gz" else open
            try:
                with opener(newest, "rt") as f:
                    return json.load(f)["traceEvents"]
            except (OSError, EOFError, json.JSONDecodeError):
                pass  # still being written
        if time.time() > deadline:
            raise RuntimeError(f"no complete profiler trace in {folder}")
        time.sleep(2)


def profile_batches(args, llm, base: dict, moe_layers: int) -> None:
    """The profile workload: PROFILE_STEPS decode steps per batch size."""
    folder = Path(args.profile_dir)
    for batch in args.batches:
        requests = prompts(batch, args.itl_prompt, 3, args.vocab)
        generate(llm, requests, 8)  # warm-up at this size
        since = time.time()
        llm.start_profile(delay_iterations=PROFILE_DELAY, max_iterations=PROFILE_STEPS)
        generate(llm, requests, PROFILE_DELAY + PROFILE_STEPS + 8)
        llm.stop_profile()
        if args.tiny:  # CPU: no kernels to count
            continue
        table = step_profile(read_trace(folder, since), moe_layers)
        table["kernels"] = table["kernels"][:60]
        emit({**base, "scenario": "e2e_profile", "batch": batch, **table})


def profile_prefills(args, llm, base: dict, moe_layers: int) -> None:
    """The prefill_profile workload: the first engine step of the TTFT requests per batch size
    (one step where the B prompts fit the step's token budget)."""
    folder = Path(args.profile_dir)
    for batch in args.batches:
        requests = prompts(batch, args.ttft_prompt, 2, args.vocab)
        generate(llm, requests, 1)  # warm-up at this shape
        since = time.time()
        llm.start_profile(delay_iterations=0, max_iterations=1)
        seconds, _ = generate(llm, requests, 1)
        llm.stop_profile()
        if args.tiny:  # CPU: no kernels to count
            continue
        table = step_profile(read_trace(folder, since), moe_layers)
        table["kernels"] = table["kernels"][:60]
        emit(
            {
                **base,
                "scenario": "e2e_prefill_profile",
                "batch": batch,
                "prompt_tokens": args.ttft_prompt,
                "wall_ms": seconds * 1e3,
                **table,
            }
        )


def probe(args) -> None:
    """Distinct experts per MoE layer per decode step (--worker --probe): an
    eager engine, so the router's Python runs on every step."""
    from collections import defaultdict

    from vllm.model_executor.layers.fused_moe.router import base_router

    seen: dict[int, list[int]] = defaultdict(list)
    select = base_router.BaseRouter._select_experts

    def counting(self, hidden_states, router_logits, *a, **kw):
        weights, ids = select(self, hidden_states, router_logits, *a, **kw)
        seen[ids.shape[0]].append(int(ids[:, : self.top_k].unique().numel()))
        return weights, ids

    base_router.BaseRouter._select_experts = counting
    llm, _ = make_llm(args, enforce_eager=True)
    for batch in args.batches:
        generate(llm, prompts(batch, 16, 5, args.vocab), 4)  # prefills: batch * 16 tokens
        seen.clear()
        generate(llm, prompts(batch, 16, 6, args.vocab), 9)
        steps = seen.get(batch) or [0]
        emit(
            {
                "scenario": "routing_probe",
                "routing": "realistic",
                "batch": batch,
                "metric": "distinct_experts",
                "median": statistics.median(steps),
                "mean": statistics.fmean(steps),
                "min": min(steps),
                "max": max(steps),
                "layer_steps": len(steps),
            }
        )


def worker_env(variant: dict, probe_mode: bool = False) -> dict[str, str]:
    """The environment of a variant's worker process."""
    env = dict(
        os.environ,
        VLLM_SHARED_EXPERT_FUSION_REPLICAS=variant.get("replicas", "0"),
        # apply_model sends benchmarks.in_engine functions to the engine, which
        # imports it from this repository.
        VLLM_ALLOW_INSECURE_SERIALIZATION="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    if probe_mode:  # the probe patches the router in this process
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if "site" in variant:
        env["PYTHONPATH"] = os.pathsep.join([variant["site"], env.get("PYTHONPATH", "")])
    if variant.get("env"):
        env.update(variant["env"])
        env["SEF_VARIANT_ENV"] = json.dumps(sorted(variant["env"]))
    if variant.get("set"):
        env["SEF_SET_CONSTANTS"] = json.dumps(variant["set"])
    if variant.get("replace"):
        env["SEF_REPLACE"] = json.dumps(variant["replace"])
    if variant.get("set") or variant.get("replace"):
        env["PYTHONPATH"] = os.pathsep.join([str(CONSTANTS_SITE), env["PYTHONPATH"]])
        # vLLM keys its compile cache by its settings and its own sources, not by a constant set
        # or a function replaced at import (a compile pass's op, say): such a variant's graphs
        # get a cache of their own, so that no process loads another variant's.
        changes = json.dumps([variant.get("set"), variant.get("replace")], sort_keys=True)
        root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(
            os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "vllm"
        )
        digest = hashlib.sha256(changes.encode()).hexdigest()[:12]
        env["VLLM_CACHE_ROOT"] = os.path.join(root, "sef-variants", f"{variant['name']}-{digest}")
    return env


def run_worker(args, variant: dict, round_: int, model: Path, probe_mode: bool) -> None:
    env = worker_env(variant, probe_mode)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.e2e",
        "--worker",
        "--model",
        str(model),
        "--variant",
        variant["name"],
        "--round",
        str(round_),
        "--batches",
        *map(str, args.batches),
        "--capture-sizes",
        *map(str, args.capture_sizes),
        "--workloads",
        *args.workloads,
        "--reps",
        str(args.reps),
        "--itl-prompt",
        str(args.itl_prompt),
        "--ttft-prompt",
        str(args.ttft_prompt),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        *(
            ["--profile-dir", str(Path(args.profile_dir).resolve() / f"{variant['name']}-{round_}")]
            if args.profile_dir
            else []
        ),
        *(["--engine", json.dumps(variant["engine"])] if variant.get("engine") else []),
        *(["--probe"] if probe_mode else []),
        *(["--tiny"] if args.tiny else []),
    ]
    rows, tail = 0, []
    with (
        subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
        open(args.out, "a") as out,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:  # rows land in the file as they come
            if line.startswith("RESULT "):
                out.write(line[len("RESULT ") :])
                out.flush()
                rows += 1
                print(line[len("RESULT ") :].strip()[:160], flush=True)
            tail = [*tail, line][-40:]
    print(f"{variant['name']} round {round_}: {rows} rows, exit {proc.returncode}", flush=True)
    if proc.returncode:
        print("".join(tail), flush=True)


def check_capture_sizes(parser: argparse.ArgumentParser, args) -> None:
    """Every measured batch size must be a CUDA-graph size (else the engine pads it to the next
    one, or runs it without a graph); the throughput workload's decode batches take every size up
    to max_num_seqs, so it keeps the default sizes."""
    missing = sorted(set(args.batches) - set(args.capture_sizes))
    if missing:
        parser.error(f"--capture-sizes {args.capture_sizes} lacks the --batches {missing}")
    if "throughput" in args.workloads and sorted(args.capture_sizes) != CAPTURE_SIZES:
        parser.error(
            f"--capture-sizes {args.capture_sizes} with the throughput workload: it decodes at "
            f"every batch size up to 256, so keep the default {CAPTURE_SIZES}"
        )


# Arguments the script passes to its worker processes; given to the script itself they would be
# dropped, not applied to the variants.
WORKER_ARGUMENTS = ("model", "variant", "round", "engine")


def refuse_worker_arguments(parser: argparse.ArgumentParser, args) -> None:
    """The worker's own arguments are refused outside a worker, naming the variant option that
    does what was meant (engine arguments are per variant)."""
    given = [f"--{name}" for name in WORKER_ARGUMENTS if getattr(args, name)]
    if given and not args.worker:
        parser.error(
            f"{', '.join(given)}: set by this script for its worker processes; give engine "
            "arguments per variant (NAME,engine=ARG=VALUE, e.g. "
            "fused,replicas=1,engine=max_num_batched_tokens=8192)"
        )


def parse_variant(text: str) -> dict:
    import ast

    name, *options = text.split(",")
    variant: dict = {"name": name}
    usage = (
        "replicas=R, site=DIR, set=MODULE.NAME=VALUE, engine=ARG=VALUE, env=NAME=VALUE, "
        "replace=MODULE:PATH=benchmarks.prototypes:FUNCTION"
    )
    for option in options:
        key, _, value = option.partition("=")
        if key not in ("replicas", "site", "set", "engine", "env", "replace") or not value:
            raise SystemExit(f"bad variant option {option!r} in {text!r} ({usage})")
        if key == "replace":
            target, _, function = value.partition("=")
            module, _, path = target.partition(":")
            source, _, name = function.partition(":")
            if not (
                all(p.isidentifier() for p in (module + "." + path).split("."))
                and source.startswith("benchmarks.prototypes")
                and name.isidentifier()
            ):
                raise SystemExit(
                    f"bad replace option {option!r} in {text!r}: "
                    "replace=MODULE:PATH=benchmarks.prototypes:FUNCTION"
                )
            variant.setdefault("replace", []).append([module, path, function])
            continue
        if key == "env":
            name, _, setting = value.partition("=")
            if not name.startswith("VLLM_") or not name.isidentifier() or not setting:
                raise SystemExit(
                    f"bad env option {option!r} in {text!r}: env=NAME=VALUE, NAME a vLLM "
                    "environment variable (VLLM_...)"
                )
            variant.setdefault("env", {})[name] = setting
            continue
        if key == "engine":
            arg, _, literal = value.partition("=")
            if not arg.isidentifier() or not literal:
                raise SystemExit(
                    f"bad engine option {option!r} in {text!r}: engine=ARG=VALUE, ARG one of "
                    "vLLM's engine arguments (e.g. linear_backend)"
                )
            try:
                parsed = ast.literal_eval(literal)
            except (ValueError, SyntaxError):
                parsed = literal  # a bare word: the string
            variant.setdefault("engine", {})[arg] = parsed
            continue
        if key != "set":
            variant[key] = value
            continue
        target, _, literal = value.partition("=")
        module, _, constant = target.rpartition(".")
        try:
            parsed = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            parsed = None
        if not module or not constant or parsed is None:
            raise SystemExit(
                f"bad set option {option!r} in {text!r}: set=MODULE.NAME=VALUE, VALUE a "
                "Python literal"
            )
        variant.setdefault("set", []).append([module, constant, parsed])
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["off", "fused,replicas=1"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--first-round", type=int, default=0, help="number of the first round")
    parser.add_argument(
        "--workloads", nargs="+", default=["itl", "throughput"], choices=WORKLOAD_NAMES
    )
    parser.add_argument("--batches", nargs="+", type=int, default=BATCHES)
    parser.add_argument(
        "--capture-sizes",
        nargs="+",
        type=int,
        default=CAPTURE_SIZES,
        help="the engine's CUDA-graph batch sizes (fewer: a shorter start); must hold --batches",
    )
    parser.add_argument("--layers", type=int, default=61)
    parser.add_argument("--shard", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--itl-prompt", type=int, default=32)
    parser.add_argument("--ttft-prompt", type=int, default=512)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--probe", action="store_true", help="distinct experts per step")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke run")
    parser.add_argument("--out", default="e2e.jsonl")
    parser.add_argument(
        "--profile-dir",
        help="profile workload: where the traces go (default: a new temporary folder)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = parser.parse_args()
    refuse_worker_arguments(parser, args)
    check_capture_sizes(parser, args)
    if args.profile_dir is None and PROFILE_WORKLOADS & set(args.workloads):
        args.profile_dir = tempfile.mkdtemp(prefix="e2e-profiles-")
    args.vocab = TINY["vocab_size"] if args.tiny else 16000
    if args.worker:
        probe(args) if args.probe else measure(args)
        return
    variants = [parse_variant(v) for v in args.variants]
    model = write_config(
        Path(tempfile.mkdtemp()) / f"dsv3-shard{args.shard}", args.layers, args.shard, args.tiny
    )
    if args.probe:
        run_worker(args, variants[0], 0, model, probe_mode=True)
        return
    for round_ in range(args.first_round, args.first_round + args.rounds):
        for variant in variants:
            run_worker(args, variant, round_, model, probe_mode=False)


if __name__ == "__main__":
    main()
