"""End-to-end decode ITL and prefill TTFT, stock vs fused shared experts.

A DeepSeek-V3-shaped model (hidden 7168, MLA 1536/512/64/128, 256 routed +
1 shared expert, top-8 of 8 groups, FP8 block [128, 128]) with dummy
weights, served by vLLM with torch.compile and CUDA graphs. By default at
per-rank TP8 shapes on one GPU (--shard 8: 16 heads, MoE intermediate 256);
--shard 1 --tp 2 is the full-width model split over two GPUs. One engine per
setting, each in its own process (the setting is read at start-up).

    python benchmarks/e2e_latency.py --settings 0 1 1:128 --out results.jsonl

A setting is VLLM_SHARED_EXPERT_FUSION_REPLICAS, optionally with
:VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS.

Per batch size B, after a warm-up at that size: ITL from vLLM's request
stats of B requests generating 65 tokens, (last_token_ts - first_token_ts) /
64 averaged over the requests, which leaves the prefill out; TTFT = wall
time of B requests generating 1 token, whose prefills run as one step.
Prompts are 512 random tokens. Each
is the median of --reps runs (all values are kept in the output rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCHES = [1, 4, 16, 64, 256]


def write_config(out: Path, layers: int, shard: int = 8) -> Path:
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def measure(args) -> None:
    """Runs inside one engine process (--worker)."""
    import random

    from vllm import LLM, SamplingParams

    began = time.time()
    llm = LLM(
        model=args.model,
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=1024,
        max_num_seqs=max(args.batches),
        # Every prefill in one step: the decode steps that ITL times are pure.
        max_num_batched_tokens=max(max(args.batches) * args.input_len, 1024),
        tensor_parallel_size=args.tp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        compilation_config={"cudagraph_capture_sizes": sorted(set(args.batches))},
        seed=0,
        disable_log_stats=False,  # request stats: first and last token times
    )
    startup = time.time() - began
    rng = random.Random(0)
    prompts = [
        {"prompt_token_ids": [rng.randrange(2, 16000) for _ in range(args.input_len)]}
        for _ in range(max(args.batches))
    ]

    def run(batch: int, tokens: int) -> tuple[float, list]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompts[:batch], params, use_tqdm=False)
        return time.perf_counter() - start, outputs

    def decode_ms_per_token(outputs: list) -> float:
        per_request = [
            (o.metrics.last_token_ts - o.metrics.first_token_ts)
            / (o.metrics.num_generation_tokens - 1)
            for o in outputs
        ]
        return statistics.fmean(per_request) * 1e3

    for batch in args.batches:
        run(batch, 8)  # warm-up at this size
        first, itl = [], []
        for _ in range(args.reps):
            first.append(run(batch, 1)[0] * 1e3)
            itl.append(decode_ms_per_token(run(batch, 65)[1]))
        for metric, values in (("itl_ms", itl), ("ttft_ms", first)):
            row = {
                "setting": args.setting,
                "tp": args.tp,
                "shard": args.shard,
                "batch": batch,
                "metric": metric,
                "median": statistics.median(values),
                "values": values,
                "startup_s": round(startup, 1),
            }
            print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["0", "1"])
    parser.add_argument("--batches", nargs="+", type=int, default=BATCHES)
    parser.add_argument("--layers", type=int, default=61)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument(
        "--shard", type=int, default=8, help="divide the model's widths as TP=SHARD would"
    )
    parser.add_argument("--out", default="e2e_latency.jsonl")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        measure(args)
        return

    model = write_config(
        Path(tempfile.mkdtemp()) / f"dsv3-shard{args.shard}", args.layers, args.shard
    )
    for setting in args.settings:
        replicas, _, max_tokens = setting.partition(":")
        env = dict(
            os.environ,
            VLLM_SHARED_EXPERT_FUSION_REPLICAS=replicas,
            VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS=max_tokens or "0",
        )
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--model",
            str(model),
            "--setting",
            setting,
            "--batches",
            *map(str, args.batches),
            "--input-len",
            str(args.input_len),
            "--reps",
            str(args.reps),
            "--gpu-memory-utilization",
            str(args.gpu_memory_utilization),
            "--tp",
            str(args.tp),
            "--shard",
            str(args.shard),
        ]
        tail: list[str] = []
        rows = 0
        with (
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ) as proc,
            open(args.out, "a") as out,
        ):
            assert proc.stdout is not None
            for line in proc.stdout:  # rows land in the file as they come
                if line.startswith("RESULT "):
                    out.write(line[len("RESULT ") :])
                    out.flush()
                    rows += 1
                tail = [*tail, line][-40:]
        print(f"setting {setting}: {rows} rows, exit {proc.returncode}", flush=True)
        if proc.returncode:
            print("".join(tail), flush=True)


if __name__ == "__main__":
    main()
