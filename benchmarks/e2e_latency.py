"""End-to-end decode ITL and prefill TTFT, stock vs fused shared experts.

A DeepSeek-V3-shaped model at per-rank TP8 shapes (hidden 7168, 16 heads,
MLA 1536/512/64/128, MoE intermediate 256, 256 routed + 1 shared expert,
top-8 of 8 groups, FP8 block [128, 128]) with dummy weights, served by vLLM
with torch.compile and CUDA graphs on one GPU. One engine per setting, each
in its own process (the setting is read at start-up); settings alternate.

    python benchmarks/e2e_latency.py --settings 0 1 --out results.jsonl

Per batch size B: ITL = (time of B requests generating 129 tokens - time of
B requests generating 33 tokens) / 96, which cancels the prefill; TTFT = time
of B requests generating 1 token. Prompts are 512 random tokens. Each is the
median of --reps runs.
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


def write_config(out: Path, layers: int) -> Path:
    config = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 129280 // 8,
        "hidden_size": 7168,
        "intermediate_size": 18432 // 8,
        "moe_intermediate_size": 2048 // 8,
        "num_hidden_layers": layers,
        "first_k_dense_replace": 3,
        "moe_layer_freq": 1,
        "num_attention_heads": 128 // 8,
        "num_key_value_heads": 128 // 8,
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
        gpu_memory_utilization=args.gpu_memory_utilization,
        compilation_config={"cudagraph_capture_sizes": sorted(set(args.batches))},
        seed=0,
    )
    startup = time.time() - began
    rng = random.Random(0)
    prompts = [
        {"prompt_token_ids": [rng.randrange(2, 16000) for _ in range(args.input_len)]}
        for _ in range(max(args.batches))
    ]

    def run(batch: int, tokens: int) -> float:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts[:batch], params, use_tqdm=False)
        return time.perf_counter() - start

    run(max(args.batches), 4)  # warm up every graph size once
    for batch in args.batches:
        short, long, first = [], [], []
        for _ in range(args.reps):
            first.append(run(batch, 1))
            short.append(run(batch, 33))
            long.append(run(batch, 129))
        itl = [(b - a) / 96 * 1e3 for a, b in zip(short, long, strict=False)]
        for metric, values in (("itl_ms", itl), ("ttft_ms", [t * 1e3 for t in first])):
            row = {
                "setting": args.setting,
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
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    parser.add_argument("--out", default="e2e_latency.jsonl")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        measure(args)
        return

    model = write_config(Path(tempfile.mkdtemp()) / "dsv3-tp8-rank", args.layers)
    for setting in args.settings:
        env = dict(os.environ, VLLM_SHARED_EXPERT_FUSION_REPLICAS=setting)
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
