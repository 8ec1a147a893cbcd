"""Run one vLLM engine on a tiny checkpoint and write what the tests compare.

Run in its own process, one per setting, as users run vLLM: the fusion
setting is read from the environment at start-up. One process serves several
checkpoints in turn (one engine each), which saves vLLM's import time.

    python tests/engine_run.py OUT_DIR MODEL_DIR... --dtype bfloat16 --replicas 1

Writes OUT_DIR/<model dir name>.json with the prompts, prompt logprobs,
greedy continuations with their top logprobs, and the structure of every MoE
layer of the loaded model (separate shared MLP or not, expert slots, and
whether every fused slot holds exactly the checkpoint's shared expert). If an
engine fails to start, its JSON holds the error message instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import traceback
from collections import Counter

# Batch sizes (tokens) of the MoE calls that used the fused shared-expert
# entries and of those that ran the separate shared-expert MLP (--count-paths).
PATHS: dict[str, Counter] = {"fused": Counter(), "shared_mlp": Counter()}


def make_prompts(seed: int, n: int, vocab: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(rng.randrange(16, 48))] for _ in range(n)]


def inspect_model(model, checkpoint_dir: str) -> list[dict]:
    """Structure of each MoE layer; runs inside the engine (apply_model)."""
    from safetensors.torch import load_file

    ckpt = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    layers = []
    for name, module in model.named_modules():
        runner = getattr(module, "experts", None)
        if not hasattr(runner, "routed_experts"):
            continue
        experts = runner.routed_experts
        fusion = getattr(runner.router, "shared_expert_fusion", None)
        info = {
            "name": name,
            "has_shared_mlp": getattr(module, "shared_experts", None) is not None,
            "num_slots": int(experts.w13_weight.shape[0]),
            "top_k_per_token": int(runner.moe_config.experts_per_token),
            "fusion": None
            if fusion is None
            else {
                "num_routed_experts": fusion.num_routed_experts,
                "num_shared_experts": fusion.num_shared_experts,
                "replicas": fusion.replicas,
                "weight": fusion.weight,
                "max_tokens": getattr(fusion, "max_tokens", 0),
            },
        }
        if fusion is not None:
            info["slots_equal_checkpoint"] = _slots_equal_checkpoint(
                runner, ckpt, name.replace(".mtp_block", "") + ".shared_experts"
            )
        layers.append(info)
    return layers


def _slots_equal_checkpoint(runner, ckpt: dict, prefix: str) -> list[list[bool]]:
    """Does every fused slot hold its chunk of the checkpoint's shared expert?

    Compares weights (and FP8 block scales) as the kernels store them: gate
    rows then up rows in w13; CPU kernels prepack each expert.
    """
    import torch
    from vllm import _custom_ops as ops

    experts = runner.routed_experts
    fusion = runner.router.shared_expert_fusion
    n = fusion.num_shared_experts

    def stacked(suffix: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        gate = ckpt[f"{prefix}.gate_proj.{suffix}"].to(dtype).chunk(n)
        up = ckpt[f"{prefix}.up_proj.{suffix}"].to(dtype).chunk(n)
        down = ckpt[f"{prefix}.down_proj.{suffix}"].to(dtype).chunk(n, dim=1)
        w13 = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up, strict=False)])
        return w13.contiguous(), torch.stack(down).contiguous()

    w13, w2 = stacked("weight", experts.w13_weight.dtype)
    pairs = [(experts.w13_weight, w13), (experts.w2_weight, w2)]
    if experts.w13_weight.device.type == "cpu":
        isa = runner._quant_method.moe_kernel.fused_experts.isa
        pairs = [(p, ops.cpu_prepack_moe_weight(w, isa)) for p, w in pairs]
    if hasattr(experts, "w13_weight_scale_inv"):
        s13, s2 = stacked("weight_scale_inv", torch.float32)
        pairs += [
            (experts.w13_weight_scale_inv, s13),
            (experts.w2_weight_scale_inv, s2),
        ]
    return [
        [
            all(bool(torch.equal(p[slot].cpu(), w[j])) for p, w in pairs)
            for j, slot in enumerate(fusion.slot_ids(r))
        ]
        for r in range(fusion.replicas)
    ]


def count_paths() -> None:
    """Count, per batch size, the MoE calls that append the fused entries and
    those that run the separate shared-expert MLP (engine in this process)."""
    from vllm.model_executor.layers.fused_moe import shared_expert_fusion
    from vllm.model_executor.layers.fused_moe.runner import shared_experts

    fusion_cls = shared_expert_fusion.SharedExpertFusion
    append = fusion_cls.append

    def counted_append(self, topk_weights, topk_ids):
        PATHS["fused"][topk_ids.size(0)] += 1
        return append(self, topk_weights, topk_ids)

    fusion_cls.append = counted_append
    experts_cls = shared_experts.SharedExperts
    forward = experts_cls.forward

    def counted_forward(self, shared_experts_input, order):
        ran = forward(self, shared_experts_input, order)
        if self._output[self._output_idx] is not None:
            PATHS["shared_mlp"][shared_experts_input.size(0)] += 1
        return ran

    experts_cls.forward = counted_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--replicas", default="unset", help="the setting's raw value, or unset")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--logprobs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inspect", action="store_true")
    parser.add_argument(
        "--fusion-max-tokens",
        help="raw value of VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS (default: unset)",
    )
    parser.add_argument(
        "--count-paths",
        action="store_true",
        help="record the batch sizes of fused and separate shared-expert calls",
    )
    parser.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra LLM(...) argument, e.g. enable_lora=true",
    )
    args = parser.parse_args()

    if args.replicas == "unset":
        os.environ.pop("VLLM_SHARED_EXPERT_FUSION_REPLICAS", None)
    else:
        os.environ["VLLM_SHARED_EXPERT_FUSION_REPLICAS"] = args.replicas
    if args.fusion_max_tokens is not None:
        os.environ["VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS"] = args.fusion_max_tokens
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM

    if args.count_paths:
        count_paths()
    os.makedirs(args.out_dir, exist_ok=True)
    for model in args.models:
        out = os.path.join(args.out_dir, os.path.basename(model.rstrip("/")) + ".json")
        with open(out, "w") as f:
            json.dump(run_model(LLM, model, args), f)


def run_model(llm_cls, model: str, args: argparse.Namespace) -> dict:
    """Start an engine on ``model``, generate, inspect, and shut it down."""
    import gc

    from vllm import SamplingParams
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    engine_args = {
        "model": model,
        "dtype": args.dtype,
        "skip_tokenizer_init": True,
        "enforce_eager": True,
        "max_model_len": 256,
        "gpu_memory_utilization": 0.5,
        "max_num_seqs": 16,
        "seed": 0,
    }
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        engine_args[key] = json.loads(value)

    try:
        llm = llm_cls(**engine_args)
    except Exception as exc:
        traceback.print_exc()
        cleanup_dist_env_and_memory()
        return {"error": f"{type(exc).__name__}: {exc}"}

    with open(os.path.join(model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    prompts = make_prompts(args.seed, args.prompts, vocab)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=0.0,
        prompt_logprobs=args.logprobs,
        logprobs=args.logprobs,
        ignore_eos=True,
    )
    for counter in PATHS.values():
        counter.clear()  # count generation only, not start-up's profiling run
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)

    def top(d):  # {token id: logprob} of one position
        return None if d is None else {str(k): v.logprob for k, v in d.items()}

    result: dict = {
        "settings": {"dtype": args.dtype, "replicas": args.replicas},
        "sequences": [
            {
                "prompt": prompt,
                "prompt_logprobs": [top(d) for d in out.prompt_logprobs],
                "tokens": list(out.outputs[0].token_ids),
                "logprobs": [top(d) for d in out.outputs[0].logprobs],
            }
            for prompt, out in zip(prompts, outputs, strict=False)
        ],
    }
    if args.count_paths:
        result["paths"] = {path: dict(sizes) for path, sizes in PATHS.items()}
    if args.inspect:
        result["layers"] = llm.apply_model(lambda m: inspect_model(m, model))[0]
        if llm.llm_engine.vllm_config.speculative_config is not None:
            result["draft_layers"] = llm.collective_rpc(
                lambda worker: inspect_model(worker.model_runner.drafter.model, model)
            )[0]
    if not engine_args.get("disable_log_stats", True):
        result["spec_decode"] = {
            m.name: m.value
            for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode_num_") and hasattr(m, "value")
        }
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
    return result


if __name__ == "__main__":
    main()
