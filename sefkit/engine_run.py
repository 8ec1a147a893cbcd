"""Run one vLLM engine on a tiny checkpoint and write what the tests compare.

Run in its own process, one per setting, as users run vLLM: the fusion
setting is read from the environment at start-up. One process serves several
checkpoints in turn (one engine each), which saves vLLM's import time.

    python sefkit/engine_run.py OUT_DIR MODEL_DIR... --dtype bfloat16 --replicas 1

Writes OUT_DIR/<model dir name>.json with the prompts, prompt logprobs,
greedy continuations with their top logprobs, and the structure of every MoE
layer of the loaded model (separate shared MLP or not, expert slots, and
whether every fused slot holds exactly the checkpoint's shared expert; under
tensor parallelism, "layers_by_rank" holds that for every rank). If an
engine fails to start or to run, its JSON holds the error message instead
(and the process goes on with the next checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import traceback


def make_prompts(seed: int, n: int, vocab: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(rng.randrange(16, 48))] for _ in range(n)]


def inspect_model(model, checkpoint_dir: str) -> list[dict]:
    """Structure of each MoE layer; runs inside the engine, on every worker."""
    from safetensors.torch import load_file

    ckpt = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    tp_rank, tp_size = _tp_rank_and_size()
    layers = []
    for name, module in model.named_modules():
        runner = getattr(module, "experts", None)
        if not hasattr(runner, "routed_experts"):
            continue
        router = runner.router
        n_fused = getattr(router, "num_fused_shared_experts", 0)
        info = {
            "name": name,
            "has_shared_mlp": getattr(module, "shared_experts", None) is not None,
            "num_slots": int(runner.routed_experts.w13_weight.shape[0]),
            "num_fused_shared_experts": n_fused,
            "fusion": None,
        }
        if n_fused:
            info["fusion"] = {
                "replicas": router.fused_shared_expert_replicas,
                "shared_expert_weight": router.shared_expert_weight,
                "router_scaling_factor": getattr(router, "routed_scaling_factor", 1.0),
                "runner_scaling_factor": runner.routed_scaling_factor,
            }
            prefix = name.replace(".mtp_block", "") + ".shared_experts"
            info["slots_equal_checkpoint"] = _slots_equal_checkpoint(
                runner, ckpt, prefix, tp_rank, tp_size
            )
            if tp_size > 1:
                info["fusion"]["probe_shared_ids"] = _probe_shared_ids(runner)
                # Compared with each rank's slice: True only for this rank's.
                info["slots_equal_rank_slices"] = [
                    _slots_equal_checkpoint(runner, ckpt, prefix, k, tp_size)
                    for k in range(tp_size)
                ]
        layers.append(info)
    return layers


def _tp_rank_and_size() -> tuple[int, int]:
    """This worker's tensor-parallel rank and the TP size (0, 1 without TP)."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
    )


def _probe_shared_ids(runner, tokens: int = 5) -> list[list[int]] | str:
    """The fused shared-expert entries the router appends for ``tokens``
    tokens of fixed random router logits (the last n_shared top-k ids of each
    token); on every rank they must be the same. The error text on failure."""
    import torch

    router = runner.router
    config = runner.moe_config
    device = runner.routed_experts.w13_weight.device
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, config.num_logical_experts, generator=gen).to(device)
    hidden = torch.zeros(tokens, config.hidden_dim, dtype=config.in_dtype, device=device)
    try:
        _, ids = router.select_experts(hidden, logits)
    except Exception as exc:  # reported, not raised: inspection goes on
        return f"{type(exc).__name__}: {exc}"
    return ids[:, -router.num_fused_shared_experts :].cpu().tolist()


def _slots_equal_checkpoint(
    runner, ckpt: dict, prefix: str, tp_rank: int = 0, tp_size: int = 1
) -> list[list[bool]]:
    """Does every fused slot hold its chunk of the checkpoint's shared expert?

    Copy r of the n shared experts sits in slots n_routed + r * n + j.
    Compares weights (and FP8 block scales) as the kernels store them: gate
    rows then up rows in w13; CPU kernels prepack each expert. Under tensor
    parallelism each rank holds its slice of every chunk's intermediate
    dimension (rows of gate and up, columns of down, scales alike), as for the
    routed experts: rank k of tp_size the k-th of tp_size equal parts.
    """
    import torch

    experts = runner.routed_experts
    router = runner.router
    n, replicas = router.num_fused_shared_experts, router.fused_shared_expert_replicas
    n_routed = experts.w13_weight.shape[0] - n * replicas

    def rank_part(t: torch.Tensor, dim: int) -> torch.Tensor:
        size = t.shape[dim] // tp_size
        return t.narrow(dim, tp_rank * size, size)

    def stacked(suffix: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        gate = ckpt[f"{prefix}.gate_proj.{suffix}"].to(dtype).chunk(n)
        up = ckpt[f"{prefix}.up_proj.{suffix}"].to(dtype).chunk(n)
        down = ckpt[f"{prefix}.down_proj.{suffix}"].to(dtype).chunk(n, dim=1)
        w13 = torch.stack(
            [torch.cat([rank_part(g, 0), rank_part(u, 0)]) for g, u in zip(gate, up, strict=False)]
        )
        w2 = torch.stack([rank_part(d, 1) for d in down])
        return w13.contiguous(), w2.contiguous()

    w13, w2 = stacked("weight", experts.w13_weight.dtype)
    scales = None
    if hasattr(experts, "w13_weight_scale_inv"):
        scales = stacked("weight_scale_inv", torch.float32)
    pairs = list(
        zip(_kernel_layout(runner, w13, w2, scales), _expert_tensors(experts), strict=True)
    )
    return [
        [
            all(bool(torch.equal(p[n_routed + r * n + j].cpu(), w[j])) for w, p in pairs)
            for j in range(n)
        ]
        for r in range(replicas)
    ]


def loaded_cpu_ops() -> list[str]:
    """vLLM's compiled CPU op libraries in this process (_C, _C_AVX512 or _C_AVX2)."""
    with open("/proc/self/maps") as maps:
        names = {os.path.basename(line.split()[-1]) for line in maps if "/vllm/_C" in line}
    return sorted(n.split(".")[0] for n in names if re.fullmatch(r"_C(_AVX\w+)?\.abi3\.so", n))


def force_avx2() -> None:
    """Run vLLM's AVX2 CPU path on an AVX-512 machine: vLLM picks its compiled ops, MoE
    and attention kernels from torch.cpu's capability checks (set SEF_CPU_ISA=avx2 with
    ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 for torch's and oneDNN's own)."""
    import torch

    for check in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        setattr(torch.cpu, check, lambda: False)


def _expert_tensors(experts) -> list:
    """w13, w2 and, for FP8 block, their scales, as the layer holds them."""
    tensors = [experts.w13_weight, experts.w2_weight]
    if hasattr(experts, "w13_weight_scale_inv"):
        tensors += [experts.w13_weight_scale_inv, experts.w2_weight_scale_inv]
    return tensors


def _kernel_layout(runner, w13, w2, scales) -> list:
    """Checkpoint tensors stacked per expert, in the layout the MoE kernel keeps.

    GPU kernels keep the loaded layout. CPU kernels prepack: the unquantized
    ones per ISA (ops.cpu_prepack_moe_weight), the FP8 W8A16 ones the weights
    (torch.ops._C.convert_weight_packed), the FP8 W8A8 ones weights and scales.
    """
    from vllm import _custom_ops as ops

    out = [w13, w2] + (list(scales) if scales is not None else [])
    if runner.routed_experts.w13_weight.device.type != "cpu":
        return out
    kernel = runner._quant_method.moe_kernel.fused_experts
    kind = type(kernel).__name__
    if hasattr(kernel, "isa"):
        return [ops.cpu_prepack_moe_weight(w, kernel.isa) for w in (w13, w2)] + out[2:]
    if kind == "CPUExpertsFp8":
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import (
            prepare_fp8_moe_layer_for_cpu,
        )

        return [*prepare_fp8_moe_layer_for_cpu(w13, w2), *out[2:]]
    if kind == "CPUExpertsFp8W8A8":
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import (
            prepare_fp8_w8a8_moe_layer_for_cpu,
        )

        p13, s13, p2, s2 = prepare_fp8_w8a8_moe_layer_for_cpu(w13, w2, *scales)
        return [p13, p2, s13, s2]
    raise NotImplementedError(f"slots_equal_checkpoint: no CPU layout for {kind}")


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
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ.get("SEF_CPU_ISA") == "avx2":
        force_avx2()

    from vllm import LLM

    os.makedirs(args.out_dir, exist_ok=True)
    for model in args.models:
        out = os.path.join(args.out_dir, os.path.basename(model.rstrip("/")) + ".json")
        with open(out, "w") as f:
            json.dump(run_model(LLM, model, args), f)


def run_model(llm_cls, model: str, args: argparse.Namespace) -> dict:
    """Start an engine on ``model``, generate, inspect, and shut it down."""
    import gc

    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.platforms import current_platform

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
    if current_platform.is_cpu():
        # The same attention kernels on every CPU: vLLM picks AMX_MLA where
        # the CPU has AMX, and that backend does not run fp32.
        engine_args["attention_backend"] = "CPU_MLA"
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        engine_args[key] = json.loads(value)

    try:
        llm = llm_cls(**engine_args)
    except Exception as exc:
        traceback.print_exc()
        cleanup_dist_env_and_memory()
        return {"error": f"{type(exc).__name__}: {exc}", "phase": "start"}
    try:
        return _generate_and_inspect(llm, model, args, engine_args)
    except Exception as exc:
        # Reported as this model's error; the process goes on with the next.
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}", "phase": "run"}
    finally:
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def _generate_and_inspect(llm, model: str, args: argparse.Namespace, engine_args) -> dict:
    from vllm import SamplingParams

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
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)

    def top(d):  # {token id: logprob} of one position
        return None if d is None else {str(k): v.logprob for k, v in d.items()}

    result: dict = {
        "settings": {"dtype": args.dtype, "replicas": args.replicas},
        "cpu_ops": loaded_cpu_ops(),
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
    if args.inspect:
        # One list per worker, in rank order; "layers" is the first rank's.
        # (A function given to collective_rpc travels to worker processes by
        # cloudpickle; apply_model's argument would need plain pickle.)
        by_rank = llm.collective_rpc(lambda worker: inspect_model(worker.get_model(), model))
        result["layers"] = by_rank[0]
        if len(by_rank) > 1:
            result["layers_by_rank"] = by_rank
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
    return result


if __name__ == "__main__":
    main()
